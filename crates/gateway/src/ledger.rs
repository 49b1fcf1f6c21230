//! The cost ledger and live statistics behind `/api/stats`. Money is integer nano-dollars in atomics;
//! floats appear only when rendering.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use optiroute_protocol::pricing::Nanos;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::Config;
use crate::state::{AppState, Deployment};

#[derive(Default)]
pub struct DeploymentStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cost: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
}

/// One 5-second slot of history.
#[derive(Clone, Copy, Default)]
struct Slot {
    t: u64,
    requests: u64,
    cost: u64,
}

pub struct Ledger {
    started: Instant,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cost: AtomicU64,
    pub saved_cache: AtomicU64,
    pub saved_routing: AtomicU64,
    tiers: Vec<(String, AtomicU64)>,
    pub per_deployment: Vec<DeploymentStats>,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    history: Mutex<VecDeque<Slot>>,
}

const SLOT_SECS: u64 = 5;
const HISTORY_SLOTS: usize = 120;

impl Ledger {
    pub fn new(cfg: &Config, deps: &[Deployment]) -> Ledger {
        let mut tiers: Vec<(String, AtomicU64)> = cfg
            .routing
            .tiers
            .iter()
            .map(|t| (t.clone(), AtomicU64::new(0)))
            .collect();
        for d in deps {
            if let Some(t) = &d.tier
                && !tiers.iter().any(|(n, _)| n == t)
            {
                tiers.push((t.clone(), AtomicU64::new(0)));
            }
        }
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
            .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable_hist()));
        Ledger {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cost: AtomicU64::new(0),
            saved_cache: AtomicU64::new(0),
            saved_routing: AtomicU64::new(0),
            tiers,
            per_deployment: deps.iter().map(|_| DeploymentStats::default()).collect(),
            latency: Mutex::new(hist),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SLOTS + 1)),
        }
    }

    /// Records one finished client request.
    pub fn record_request(&self, latency_us: u64, cost: Nanos, ok: bool) {
        self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
        self.cost.fetch_add(cost.0, Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(latency_us.max(1));
        }
        let now = unix_secs();
        let slot_t = now - now % SLOT_SECS;
        if let Ok(mut hist) = self.history.lock() {
            match hist.back_mut() {
                Some(s) if s.t == slot_t => {
                    s.requests += 1;
                    s.cost += cost.0;
                }
                _ => {
                    hist.push_back(Slot {
                        t: slot_t,
                        requests: 1,
                        cost: cost.0,
                    });
                    while hist.len() > HISTORY_SLOTS {
                        hist.pop_front();
                    }
                }
            }
        }
    }

    pub fn record_tier(&self, tier: &str) {
        if let Some((_, c)) = self.tiers.iter().find(|(n, _)| n == tier) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn stats_json(&self, st: &AppState) -> Value {
        let hits = self.cache_hits.load(Relaxed);
        let misses = self.cache_misses.load(Relaxed);
        let (p50, p95, p99) = match self.latency.lock() {
            Ok(h) if !h.is_empty() => (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.95) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
            ),
            _ => (0.0, 0.0, 0.0),
        };
        let now = unix_secs();
        let (history, recent) = match self.history.lock() {
            Ok(h) => {
                let points: Vec<Value> = h
                    .iter()
                    .map(|s| json!({"t": s.t, "requests": s.requests, "cost_usd": Nanos(s.cost).as_usd()}))
                    .collect();
                // Requests in the last two full slots plus the current one.
                let since = now.saturating_sub(2 * SLOT_SECS);
                let recent: u64 = h.iter().filter(|s| s.t + SLOT_SECS > since).map(|s| s.requests).sum();
                (points, recent)
            }
            Err(_) => (Vec::new(), 0),
        };
        let window = (now - now % SLOT_SECS).saturating_sub(now.saturating_sub(2 * SLOT_SECS)) + (now % SLOT_SECS) + 1;
        let uptime = self.started.elapsed().as_secs_f64();
        let rps = recent as f64 / (window as f64).min(uptime.max(1.0));
        let saved_cache = Nanos(self.saved_cache.load(Relaxed));
        let saved_routing = Nanos(self.saved_routing.load(Relaxed));
        let deployments: Vec<Value> = st
            .deployments
            .iter()
            .zip(&self.per_deployment)
            .map(|(d, s)| {
                json!({
                    "name": d.name,
                    "provider": d.provider_name,
                    "kind": d.provider.kind(),
                    "model": d.model,
                    "tier": d.tier,
                    "requests": s.requests.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "cost_usd": Nanos(s.cost.load(Relaxed)).as_usd(),
                    "tokens_in": s.tokens_in.load(Relaxed),
                    "tokens_out": s.tokens_out.load(Relaxed),
                    "in_flight": d.in_flight.load(Relaxed),
                    "breaker": d.breaker.state().as_str(),
                })
            })
            .collect();
        let tiers: serde_json::Map<String, Value> = self
            .tiers
            .iter()
            .map(|(n, c)| (n.clone(), json!(c.load(Relaxed))))
            .collect();
        json!({
            "uptime_s": uptime,
            "requests": self.requests.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "requests_per_s": rps,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "cache": {
                "hits": hits,
                "misses": misses,
                "hit_rate": if hits + misses > 0 { hits as f64 / (hits + misses) as f64 } else { 0.0 },
                "backend": st.cache.backend_name(),
            },
            "cost_usd": Nanos(self.cost.load(Relaxed)).as_usd(),
            "saved_usd": {
                "cache": saved_cache.as_usd(),
                "routing": saved_routing.as_usd(),
                "total": (saved_cache + saved_routing).as_usd(),
            },
            "tiers": tiers,
            "deployments": deployments,
            "history": history,
        })
    }
}

fn unreachable_hist() -> hdrhistogram::Histogram<u64> {
    // Both constructors above only fail on invalid bounds, which are constants; keep a safe fallback.
    hdrhistogram::Histogram::new_with_max(1_000_000, 1).unwrap_or_else(|_| unreachable_hist())
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
