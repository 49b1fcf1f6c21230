//! Prometheus metrics (names are public interface: keep them here and in the README) and logging.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type FloatCounter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderModel {
    pub provider: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub provider: String,
    pub model: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tokens {
    pub provider: String,
    pub model: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Http {
    pub method: String,
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventType {
    pub event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabel {
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FromTo {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerTransition {
    pub deployment: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Decision {
    pub tier: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheOp {
    pub backend: &'static str,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitOp {
    pub op: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    pub cost_usd: Family<ProviderModel, FloatCounter>,
    pub cache_events: Family<EventType, Counter>,
    pub http_duration: Family<Http, Histogram>,
    pub http_requests: Family<Http, Counter>,
    pub llm_requests: Family<Outcome, Counter>,
    pub upstream_duration: Family<ProviderModel, Histogram>,
    pub ttft: Family<ProviderModel, Histogram>,
    pub tokens: Family<Tokens, Counter>,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub retries: Family<DeploymentLabel, Counter>,
    pub fallbacks: Family<FromTo, Counter>,
    pub breaker_state: Family<DeploymentLabel, Gauge<i64, AtomicI64>>,
    pub breaker_transitions: Family<BreakerTransition, Counter>,
    pub routing: Family<Decision, Counter>,
    pub saved_usd: Family<Reason, FloatCounter>,
    pub cache_errors: Family<CacheOp, Counter>,
    pub overhead: Histogram,
    /// Shared-limit (Redis) failures by operation; each one means a fallback policy applied.
    pub limits_redis_errors: Family<LimitOp, Counter>,
    /// Request-log entries dropped (queue full or the store refused them).
    pub request_log_dropped: Counter,
}

fn llm_buckets() -> impl Iterator<Item = f64> {
    // 5 ms .. ~330 s
    exponential_buckets(0.005, 2.0, 17)
}

fn http_buckets() -> impl Iterator<Item = f64> {
    // 100 us .. ~420 s: cache hits and full generations on one scale
    exponential_buckets(0.0001, 2.0, 23)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            cost_usd: Family::default(),
            cache_events: Family::default(),
            http_duration: Family::new_with_constructor(|| Histogram::new(http_buckets())),
            http_requests: Family::default(),
            llm_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(llm_buckets())),
            ttft: Family::new_with_constructor(|| Histogram::new(llm_buckets())),
            tokens: Family::default(),
            in_flight: Gauge::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            routing: Family::default(),
            saved_usd: Family::default(),
            cache_errors: Family::default(),
            // 10 us .. ~160 ms
            overhead: Histogram::new(exponential_buckets(0.00001, 2.0, 15)),
            limits_redis_errors: Family::default(),
            request_log_dropped: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "llm_total_cost_usd",
            "Money spent on upstream calls, USD",
            m.cost_usd.clone(),
        );
        r.register(
            "llm_cache_events",
            "Response cache lookups by result",
            m.cache_events.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to serve an HTTP request (for streams: until the last byte)",
            m.http_duration.clone(),
        );
        r.register("http_requests", "HTTP requests served", m.http_requests.clone());
        r.register("llm_requests", "Upstream calls by outcome", m.llm_requests.clone());
        r.register(
            "llm_upstream_duration_seconds",
            "Time of a successful upstream call until its last byte",
            m.upstream_duration.clone(),
        );
        r.register(
            "llm_time_to_first_token_seconds",
            "Time from sending a request upstream to its first streamed token",
            m.ttft.clone(),
        );
        r.register("llm_tokens", "Tokens in and out", m.tokens.clone());
        r.register(
            "llm_in_flight_requests",
            "Completion requests being served",
            m.in_flight.clone(),
        );
        r.register("llm_retries", "Retried upstream attempts", m.retries.clone());
        r.register(
            "llm_fallbacks",
            "Requests served by a later candidate",
            m.fallbacks.clone(),
        );
        r.register(
            "llm_circuit_breaker_state",
            "Breaker state per deployment: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        r.register(
            "llm_circuit_breaker_transitions",
            "Breaker state changes",
            m.breaker_transitions.clone(),
        );
        r.register(
            "llm_routing_decisions",
            "Routing decisions by tier and reason",
            m.routing.clone(),
        );
        r.register(
            "llm_cost_saved_usd",
            "Money saved compared with the reference deployment, USD, by reason",
            m.saved_usd.clone(),
        );
        r.register(
            "llm_cache_errors",
            "Cache backend errors (treated as misses)",
            m.cache_errors.clone(),
        );
        r.register(
            "gateway_overhead_seconds",
            "Time spent inside the gateway (total minus waiting on the upstream)",
            m.overhead.clone(),
        );
        r.register(
            "llm_limits_redis_errors",
            "Failed Redis operations of the shared limits (the on_redis_error policy applied)",
            m.limits_redis_errors.clone(),
        );
        r.register(
            "llm_request_log_dropped",
            "Request-log entries dropped instead of written (queue full or store error)",
            m.request_log_dropped.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Installs the tracing subscriber: text or JSON lines on stderr, level from `RUST_LOG` (default info).
pub fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_compatibility_names() {
        let m = Metrics::new();
        m.cost_usd
            .get_or_create(&ProviderModel {
                provider: "p".into(),
                model: "m".into(),
            })
            .inc_by(0.25);
        m.cache_events.get_or_create(&EventType { event_type: "hit" }).inc();
        let h = Http {
            method: "POST".into(),
            endpoint: "/generate",
            status: 200,
        };
        m.http_requests.get_or_create(&h).inc();
        m.http_duration.get_or_create(&h).observe(0.01);
        let text = m.render();
        assert!(
            text.contains(r#"llm_total_cost_usd_total{provider="p",model="m"} 0.25"#),
            "{text}"
        );
        assert!(text.contains(r#"llm_cache_events_total{event_type="hit"} 1"#));
        assert!(text.contains(r#"http_requests_total{method="POST",endpoint="/generate",status="200"} 1"#));
        assert!(text.contains("http_request_duration_seconds_bucket"));
    }
}
