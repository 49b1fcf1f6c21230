//! Prometheus metrics (names are public interface: keep them here and in the README) and logging.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

pub use crate::histogram::AtomicHistogram;

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
    pub method: &'static str,
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
    pub http_duration: Family<Http, AtomicHistogram>,
    pub http_requests: Family<Http, Counter>,
    pub llm_requests: Family<Outcome, Counter>,
    pub upstream_duration: Family<ProviderModel, AtomicHistogram>,
    pub ttft: Family<ProviderModel, AtomicHistogram>,
    pub tokens: Family<Tokens, Counter>,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub retries: Family<DeploymentLabel, Counter>,
    pub fallbacks: Family<FromTo, Counter>,
    pub breaker_state: Family<DeploymentLabel, Gauge<i64, AtomicI64>>,
    pub breaker_transitions: Family<BreakerTransition, Counter>,
    pub routing: Family<Decision, Counter>,
    pub saved_usd: Family<Reason, FloatCounter>,
    pub cache_errors: Family<CacheOp, Counter>,
    pub overhead: AtomicHistogram,
    /// Shared-limit (Redis) failures by operation; each one means a fallback policy applied.
    pub limits_redis_errors: Family<LimitOp, Counter>,
    /// Request-log entries dropped (queue full or the store refused them).
    pub request_log_dropped: Counter,
    /// Ratings accepted by `POST /v1/feedback`.
    pub feedback: Counter,
    /// Cascade escalations by reason (a failed check, or `likely_wrong` from the verifier); every
    /// reason's series exists from the start.
    pub cascade_escalations: Family<Reason, Counter>,
    /// Series recorded on most requests, resolved once so that recording them hashes no labels and
    /// takes no family lock.
    pub hot: HotSeries,
}

/// See [`Metrics::hot`].
pub struct HotSeries {
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub cache_coalesced: Counter,
    pub saved_cache: FloatCounter,
    pub saved_routing: FloatCounter,
    /// `POST` with status 200 on the two completion endpoints: (requests, duration).
    chat_ok: (Counter, AtomicHistogram),
    generate_ok: (Counter, AtomicHistogram),
    /// Routing decisions for every configured tier and known reason code (see [`Metrics::resolve_routing`]).
    routing: Vec<(String, &'static str, Counter)>,
}

impl HotSeries {
    fn resolve(
        cache_events: &Family<EventType, Counter>,
        saved_usd: &Family<Reason, FloatCounter>,
        http_requests: &Family<Http, Counter>,
        http_duration: &Family<Http, AtomicHistogram>,
    ) -> Self {
        // One statement per series: `get_or_create` returns a read guard that lives to the end of its
        // statement, and creating a second series in the same family needs the write lock.
        let ok = |endpoint| {
            let labels = Http {
                method: "POST",
                endpoint,
                status: 200,
            };
            let count = http_requests.get_or_create(&labels).clone();
            let duration = http_duration.get_or_create(&labels).clone();
            (count, duration)
        };
        let event = |event_type| cache_events.get_or_create(&EventType { event_type }).clone();
        let saved = |reason| saved_usd.get_or_create(&Reason { reason }).clone();
        let (cache_hit, cache_miss, cache_coalesced) = (event("hit"), event("miss"), event("coalesced"));
        let (saved_cache, saved_routing) = (saved("cache"), saved("routing"));
        HotSeries {
            cache_hit,
            cache_miss,
            cache_coalesced,
            saved_cache,
            saved_routing,
            chat_ok: ok("/v1/chat/completions"),
            generate_ok: ok("/generate"),
            routing: Vec::new(),
        }
    }
}

/// The reason codes of routing decisions (`Plan::reason`) whose series are resolved at start. A code
/// missing here is still counted, through the label family.
pub const ROUTE_REASONS: &[&str] = &[
    "direct",
    "group",
    "forced",
    "sticky",
    "length_rule",
    "score_high",
    "score_low",
    "cascade_escalated",
    "context_window",
    "needs_tools",
    "needs_json",
    "needs_vision",
    "unsupported",
];

/// One deployment's hot metric series, resolved once at start: recording then touches only the
/// series' atomics, with no label hashing, no label allocation and no family lock per request.
/// Series are shared handles, so deployments with the same provider and model share them.
#[derive(Clone, Debug)]
pub struct DeploymentMetrics {
    pub cost_usd: FloatCounter,
    pub tokens_in: Counter,
    pub tokens_out: Counter,
    pub success: Counter,
    pub upstream_duration: AtomicHistogram,
    pub ttft: AtomicHistogram,
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
    /// The series of one deployment (see [`DeploymentMetrics`]).
    pub fn for_deployment(&self, labels: &ProviderModel) -> DeploymentMetrics {
        let tokens = |direction| {
            self.tokens
                .get_or_create(&Tokens {
                    provider: labels.provider.clone(),
                    model: labels.model.clone(),
                    direction,
                })
                .clone()
        };
        // Every outcome exists at 0 from start: a series born at its first error is invisible to
        // `rate()` until its second, so an error-rate alert would miss the first burst.
        for outcome in ["error", "timeout", "rate_limited", "cancelled"] {
            drop(self.llm_requests.get_or_create(&Outcome {
                provider: labels.provider.clone(),
                model: labels.model.clone(),
                outcome,
            }));
        }
        DeploymentMetrics {
            cost_usd: self.cost_usd.get_or_create(labels).clone(),
            tokens_in: tokens("input"),
            tokens_out: tokens("output"),
            success: self
                .llm_requests
                .get_or_create(&Outcome {
                    provider: labels.provider.clone(),
                    model: labels.model.clone(),
                    outcome: "success",
                })
                .clone(),
            upstream_duration: self.upstream_duration.get_or_create(labels).clone(),
            ttft: self.ttft.get_or_create(labels).clone(),
        }
    }

    pub fn new() -> Self {
        let mut r = Registry::default();
        let cache_events = Family::default();
        let saved_usd = Family::default();
        let http_requests = Family::default();
        let http_duration: Family<Http, AtomicHistogram> =
            Family::new_with_constructor(|| AtomicHistogram::new(http_buckets()));
        let hot = HotSeries::resolve(&cache_events, &saved_usd, &http_requests, &http_duration);
        let m = Metrics {
            cost_usd: Family::default(),
            cache_events,
            http_duration,
            http_requests,
            llm_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(|| AtomicHistogram::new(llm_buckets())),
            ttft: Family::new_with_constructor(|| AtomicHistogram::new(llm_buckets())),
            tokens: Family::default(),
            in_flight: Gauge::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            routing: Family::default(),
            saved_usd,
            cache_errors: Family::default(),
            // 10 us .. ~160 ms
            overhead: AtomicHistogram::new(exponential_buckets(0.00001, 2.0, 15)),
            limits_redis_errors: Family::default(),
            request_log_dropped: Counter::default(),
            feedback: Counter::default(),
            cascade_escalations: {
                let f: Family<Reason, Counter> = Family::default();
                for e in optiroute_router::cascade::Escalation::ALL {
                    let _ = f.get_or_create(&Reason { reason: e.as_str() });
                }
                f
            },
            registry: Registry::default(),
            hot,
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
            "Time from receiving a request's headers until its response headers are ready: reading the request body is included, sending the response body is not (a stream is timed to its start)",
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
        r.register(
            "llm_feedback",
            "Ratings of answers accepted by POST /v1/feedback",
            m.feedback.clone(),
        );
        r.register(
            "llm_cascade_escalations",
            "Cheap answers escalated to the strongest tier in cascade mode, by reason",
            m.cascade_escalations.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Resolves the routing-decision series of these tiers for every code in [`ROUTE_REASONS`], so
    /// that [`record_routing`](Self::record_routing) takes no lock and allocates nothing for them.
    pub fn resolve_routing<'a>(&mut self, tiers: impl IntoIterator<Item = &'a str>) {
        for tier in tiers {
            if self.hot.routing.iter().any(|(t, _, _)| t == tier) {
                continue;
            }
            for &reason in ROUTE_REASONS {
                let labels = Decision {
                    tier: tier.to_owned(),
                    reason,
                };
                let counter = self.routing.get_or_create(&labels).clone();
                self.hot.routing.push((labels.tier, reason, counter));
            }
        }
    }

    /// Counts one cascade escalation (rare: one family lookup is fine).
    pub fn record_cascade_escalation(&self, why: optiroute_router::cascade::Escalation) {
        self.cascade_escalations
            .get_or_create(&Reason { reason: why.as_str() })
            .inc();
    }

    /// Counts one routing decision.
    pub fn record_routing(&self, tier: &str, reason: &'static str) {
        match self.hot.routing.iter().find(|(t, r, _)| *r == reason && t == tier) {
            Some((_, _, counter)) => {
                counter.inc();
            }
            None => {
                self.routing
                    .get_or_create(&Decision {
                        tier: tier.to_owned(),
                        reason,
                    })
                    .inc();
            }
        }
    }

    /// Counts one served HTTP request and its duration.
    pub fn record_http(&self, labels: &Http, secs: f64) {
        let hot = match (labels.method, labels.endpoint, labels.status) {
            ("POST", "/v1/chat/completions", 200) => Some(&self.hot.chat_ok),
            ("POST", "/generate", 200) => Some(&self.hot.generate_ok),
            _ => None,
        };
        match hot {
            Some((count, duration)) => {
                count.inc();
                duration.observe(secs);
            }
            None => {
                self.http_requests.get_or_create(labels).inc();
                self.http_duration.get_or_create(labels).observe(secs);
            }
        }
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
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        // Into a file or a log pipeline: no colour codes, and a plain formatter. The default one
        // (styled field names, `Debug` for every value) cost a tenth of the gateway's CPU per request.
        builder.event_format(PlainText).try_init()
    };
}

/// `2026-11-30T10:27:21.123456Z  INFO optiroute::http::chat: request request_id=req_1 status=200 ...`:
/// the default text layout, without colour, written with as little formatting machinery as possible.
struct PlainText;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainText
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut w)?;
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => " ERROR ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::INFO => "  INFO ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::TRACE => " TRACE ",
        };
        w.write_str(level)?;
        w.write_str(meta.target())?;
        w.write_str(":")?;
        let mut v = PlainFields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut v);
        v.result?;
        w.write_char('\n')
    }
}

/// Writes ` message` then ` name=value` for each field; strings and numbers without `Debug`.
struct PlainFields<'a, 'w> {
    w: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    result: std::fmt::Result,
}

impl PlainFields<'_, '_> {
    fn field(&mut self, field: &tracing::field::Field, value: std::fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.w.write_char(' ').and_then(|_| self.w.write_fmt(value))
        } else {
            self.w
                .write_char(' ')
                .and_then(|_| self.w.write_str(field.name()))
                .and_then(|_| self.w.write_char('='))
                .and_then(|_| self.w.write_fmt(value))
        };
    }
}

impl tracing::field::Visit for PlainFields<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field, format_args!("{value}"));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, format_args!("{value}"));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, format_args!("{value}"));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, format_args!("{value}"));
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.field(field, format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
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
            method: "POST",
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

    #[test]
    fn hot_series_are_the_family_series() {
        let m = Metrics::new();
        let chat = |status| Http {
            method: "POST",
            endpoint: "/v1/chat/completions",
            status,
        };
        // Hot path (resolved at start) and family path (any other label set) record into the same
        // exposition, and a hot series is the one the family would hand out.
        m.record_http(&chat(200), 0.002);
        m.record_http(&chat(200), 0.004);
        m.record_http(&chat(429), 0.001);
        m.http_requests.get_or_create(&chat(200)).inc();
        m.hot.cache_miss.inc();
        m.cache_events.get_or_create(&EventType { event_type: "miss" }).inc();
        m.hot.saved_routing.inc_by(0.5);
        let text = m.render();
        let line = |l: &str| assert!(text.contains(l), "{l} missing in\n{text}");
        line(r#"http_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"} 3"#);
        line(r#"http_requests_total{method="POST",endpoint="/v1/chat/completions",status="429"} 1"#);
        line(r#"http_request_duration_seconds_count{method="POST",endpoint="/v1/chat/completions",status="200"} 2"#);
        line(r#"http_request_duration_seconds_sum{method="POST",endpoint="/v1/chat/completions",status="200"} 0.006"#);
        line(r#"llm_cache_events_total{event_type="miss"} 2"#);
        line(r#"llm_cost_saved_usd_total{reason="routing"} 0.5"#);
        // Resolved at start: the common series exist (at zero) before the first request.
        line(r#"llm_cache_events_total{event_type="hit"} 0"#);
        line(r#"http_requests_total{method="POST",endpoint="/generate",status="200"} 0"#);
    }

    #[test]
    fn every_call_outcome_of_a_deployment_exists_at_zero() {
        let m = Metrics::new();
        m.for_deployment(&ProviderModel {
            provider: "p".into(),
            model: "m".into(),
        });
        let text = m.render();
        for outcome in ["success", "error", "timeout", "rate_limited", "cancelled"] {
            let l = format!(r#"llm_requests_total{{provider="p",model="m",outcome="{outcome}"}} 0"#);
            assert!(text.contains(&l), "{l} missing in\n{text}");
        }
    }

    #[test]
    fn routing_decisions_of_resolved_and_unknown_labels_are_both_counted() {
        let mut m = Metrics::new();
        m.resolve_routing(["local", "cloud", "local"]);
        assert_eq!(m.hot.routing.len(), 2 * ROUTE_REASONS.len());
        m.record_routing("cloud", "score_high");
        m.record_routing("cloud", "score_high");
        m.record_routing("edge", "score_low"); // a tier not resolved at start
        m.record_routing("local", "some_new_reason");
        let text = m.render();
        let line = |l: &str| assert!(text.contains(l), "{l} missing in\n{text}");
        line(r#"llm_routing_decisions_total{tier="cloud",reason="score_high"} 2"#);
        line(r#"llm_routing_decisions_total{tier="local",reason="score_high"} 0"#);
        line(r#"llm_routing_decisions_total{tier="edge",reason="score_low"} 1"#);
        line(r#"llm_routing_decisions_total{tier="local",reason="some_new_reason"} 1"#);
    }
}
