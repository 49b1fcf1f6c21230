//! The cost ledger and live statistics behind `/api/stats`. Money is integer nano-dollars in atomics;
//! floats appear only when rendering. Recording a request takes no lock: counters, the latency
//! histogram and the history ring are all atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use optiroute_protocol::pricing::Nanos;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::Config;
use crate::histogram::AtomicHistogram;
use crate::state::{AppState, Deployment};

#[derive(Default)]
pub struct DeploymentStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cost: AtomicU64,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
}

/// One 5-second slot of the history ring: the period it holds (unix seconds / 5; 0 = never used) and
/// the ledger's running totals just before that period's first request. A period's requests and cost
/// are the difference to the next used slot (or to the current totals), so nothing is ever reset and
/// no concurrent update can be lost; a request racing the period change is counted in one of the two.
/// (The ledger's first period starts from zero, see `Ledger::first_period`.)
#[derive(Default)]
struct Slot {
    period: AtomicU64,
    start_requests: AtomicU64,
    start_cost: AtomicU64,
}

pub struct Ledger {
    started: Instant,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Lookups that missed but were answered by an identical request already in flight.
    pub coalesced: AtomicU64,
    pub cost: AtomicU64,
    pub saved_cache: AtomicU64,
    pub saved_routing: AtomicU64,
    tiers: Vec<(String, AtomicU64)>,
    pub per_deployment: Vec<DeploymentStats>,
    latency: AtomicHistogram,
    history: Box<[Slot]>,
    /// The first period any request was recorded in (0 = none yet). Its slot starts from zero: the
    /// request that claimed it need not be the first one counted (another may have taken its number
    /// first and lost the race to claim), and nothing comes before it.
    first_period: AtomicU64,
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
        Ledger {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            cost: AtomicU64::new(0),
            saved_cache: AtomicU64::new(0),
            saved_routing: AtomicU64::new(0),
            tiers,
            per_deployment: deps.iter().map(|_| DeploymentStats::default()).collect(),
            latency: AtomicHistogram::fine(),
            history: (0..HISTORY_SLOTS).map(|_| Slot::default()).collect(),
            first_period: AtomicU64::new(0),
        }
    }

    /// Records one finished client request.
    pub fn record_request(&self, latency_us: u64, cost: Nanos, ok: bool) {
        self.record_at(unix_secs(), latency_us, cost, ok);
    }

    fn record_at(&self, now: u64, latency_us: u64, cost: Nanos, ok: bool) {
        let before_requests = self.requests.fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
        let before_cost = self.cost.fetch_add(cost.0, Relaxed);
        self.latency.observe(latency_us as f64 / 1e6);
        let period = now / SLOT_SECS;
        if self.first_period.load(Relaxed) == 0 {
            let _ = self.first_period.compare_exchange(0, period, Relaxed, Relaxed);
        }
        let slot = &self.history[(period % HISTORY_SLOTS as u64) as usize];
        let seen = slot.period.load(Relaxed);
        // The first request of a period claims its slot and stamps the totals before it.
        if seen < period && slot.period.compare_exchange(seen, period, Relaxed, Relaxed).is_ok() {
            slot.start_requests.store(before_requests, Relaxed);
            slot.start_cost.store(before_cost, Relaxed);
        }
    }

    /// The used slots of the last [`HISTORY_SLOTS`] periods, oldest first, as (unix time, requests, cost).
    fn history(&self, now: u64) -> Vec<(u64, u64, u64)> {
        let current = now / SLOT_SECS;
        let first = self.first_period.load(Relaxed);
        let mut used: Vec<(u64, u64, u64)> = self
            .history
            .iter()
            .map(|s| {
                let period = s.period.load(Relaxed);
                if period == first {
                    return (period, 0, 0);
                }
                (period, s.start_requests.load(Relaxed), s.start_cost.load(Relaxed))
            })
            .filter(|&(p, _, _)| p != 0 && p <= current && p + HISTORY_SLOTS as u64 > current)
            .collect();
        used.sort_unstable_by_key(|s| s.0);
        let totals = (self.requests.load(Relaxed), self.cost.load(Relaxed));
        let ends = used
            .iter()
            .skip(1)
            .map(|&(_, r, c)| (r, c))
            .chain(std::iter::once(totals));
        used.iter()
            .zip(ends)
            .map(|(&(p, r0, c0), (r1, c1))| (p * SLOT_SECS, r1.saturating_sub(r0), c1.saturating_sub(c0)))
            .collect()
    }

    pub fn record_tier(&self, tier: &str) {
        if let Some((_, c)) = self.tiers.iter().find(|(n, _)| n == tier) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn stats_json(&self, st: &AppState) -> Value {
        let hits = self.cache_hits.load(Relaxed);
        let misses = self.cache_misses.load(Relaxed);
        let coalesced = self.coalesced.load(Relaxed);
        let lookups = hits + misses + coalesced;
        let [p50, p95, p99] = self
            .latency
            .quantiles([0.5, 0.95, 0.99])
            .map(|s| s.map_or(0.0, |s| s * 1000.0));
        let now = unix_secs();
        let slots = self.history(now);
        let history: Vec<Value> = slots
            .iter()
            .map(|&(t, requests, cost)| json!({"t": t, "requests": requests, "cost_usd": Nanos(cost).as_usd()}))
            .collect();
        let uptime = self.started.elapsed().as_secs_f64();
        let rps = requests_per_s(&slots, now, uptime);
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
                "coalesced": coalesced,
                "hit_rate": if lookups > 0 { hits as f64 / lookups as f64 } else { 0.0 },
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

/// The request rate over the last two full slots plus the current one (`slots` as from
/// [`Ledger::history`]): those hold the requests of the `2 * SLOT_SECS` seconds before the current
/// slot and of its elapsed seconds, `now`'s included. Over the uptime instead, when that is shorter.
fn requests_per_s(slots: &[(u64, u64, u64)], now: u64, uptime: f64) -> f64 {
    let since = now.saturating_sub(2 * SLOT_SECS);
    let recent: u64 = slots.iter().filter(|s| s.0 + SLOT_SECS > since).map(|s| s.1).sum();
    let window = 2 * SLOT_SECS + now % SLOT_SECS + 1;
    recent as f64 / (window as f64).min(uptime.max(1.0))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(&Config::test_default(), &[])
    }

    #[test]
    fn history_splits_requests_and_cost_by_five_second_period() {
        let l = ledger();
        let t0 = 1_700_000_000; // a multiple of 5
        l.record_at(t0, 1000, Nanos(10), true);
        l.record_at(t0 + 4, 2000, Nanos(20), false);
        l.record_at(t0 + 5, 3000, Nanos(40), true);
        // Nothing in t0+10..t0+14; two requests in t0+15.
        l.record_at(t0 + 15, 4000, Nanos(80), true);
        l.record_at(t0 + 19, 5000, Nanos(160), true);
        assert_eq!(l.history(t0 + 19), [(t0, 2, 30), (t0 + 5, 1, 40), (t0 + 15, 2, 240)]);
        assert_eq!(l.errors.load(Relaxed), 1);
        // Periods older than the ring are dropped; a slot reused by a later period starts afresh.
        let later = t0 + SLOT_SECS * HISTORY_SLOTS as u64;
        l.record_at(later, 1000, Nanos(1), true);
        assert_eq!(l.history(later), [(t0 + 5, 1, 40), (t0 + 15, 2, 240), (later, 1, 1)]);
        assert_eq!(l.history(later + SLOT_SECS * 200), []);
        let ms = l.latency.quantiles([0.5])[0].unwrap() * 1000.0;
        assert!((2.0..2.05).contains(&ms), "{ms}"); // of 1, 1, 2, 3, 4 and 5 ms
    }

    #[test]
    fn requests_per_s_is_exact_for_a_constant_rate_at_every_point_of_a_slot() {
        let l = ledger();
        let t0 = 1_700_000_000; // a multiple of 5
        // Three requests in every second from well before the window on.
        for now in t0 - 60..t0 + 2 * SLOT_SECS {
            for _ in 0..3 {
                l.record_at(now, 100, Nanos(1), true);
            }
            if now >= t0 {
                let rps = requests_per_s(&l.history(now), now, 1e6);
                assert_eq!(rps, 3.0, "at {} s into a slot", now % SLOT_SECS);
            }
        }
    }

    #[test]
    fn concurrent_requests_are_never_lost_across_a_period_change() {
        let l = ledger();
        let t0 = 1_700_000_000;
        std::thread::scope(|s| {
            for th in 0..4u64 {
                let l = &l;
                s.spawn(move || {
                    for i in 0..5000u64 {
                        // Each thread crosses from period t0 into t0+5 at a different point.
                        let t = if i < 1000 * (th + 1) { t0 } else { t0 + 5 };
                        l.record_at(t, 100, Nanos(3), true);
                    }
                });
            }
        });
        let h = l.history(t0 + 5);
        assert_eq!(h.len(), 2);
        assert_eq!(h.iter().map(|s| s.1).sum::<u64>(), 20_000);
        assert_eq!(h.iter().map(|s| s.2).sum::<u64>(), 60_000);
        assert_eq!(l.latency.snapshot().0, 20_000);
    }
}
