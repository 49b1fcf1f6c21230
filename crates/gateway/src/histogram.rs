//! A histogram of durations recorded with atomics only.
//!
//! prometheus_client's `Histogram` takes a mutex on every `observe`; the gateway observes several
//! durations per request on every core, so that mutex is a shared cache line bounced between cores on
//! the hot path. Here an observation is two relaxed `fetch_add`s: the bucket's count and the sum, kept
//! in integer nanoseconds. The total count is the sum of the buckets when read, so an exposition never
//! shows a count that disagrees with its buckets.
//!
//! The same type backs the `/api/stats` latency percentiles with fine buckets ([`AtomicHistogram::fine`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; the last one is `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// Buckets with the given finite upper bounds (seconds), plus `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut b: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        b.push(f64::INFINITY);
        let counts = b.iter().map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram(Arc::new(Inner {
            bounds: b.into_boxed_slice(),
            counts,
            sum_nanos: AtomicU64::new(0),
        }))
    }

    /// Buckets 2% apart from 10 µs to one hour (about 1,000 buckets): quantiles within 2%.
    pub fn fine() -> Self {
        let mut bounds = Vec::with_capacity(1000);
        let mut b = 1e-5;
        while b < 3600.0 {
            bounds.push(b);
            b *= 1.02;
        }
        Self::new(bounds)
    }

    /// Records one duration in seconds. NaN counts in the `+Inf` bucket, like prometheus_client.
    pub fn observe(&self, secs: f64) {
        let inner = &*self.0;
        let last = inner.bounds.len() - 1;
        let i = if secs.is_nan() {
            last
        } else {
            inner.bounds.partition_point(|&b| b < secs).min(last)
        };
        inner.counts[i].fetch_add(1, Relaxed);
        // NaN and negative durations add nothing; the cap (about 31 years) keeps the sum from wrapping.
        if secs > 0.0 {
            inner.sum_nanos.fetch_add((secs * 1e9).min(1e18) as u64, Relaxed);
        }
    }

    /// (count, sum in seconds, per-bucket counts with their upper bounds).
    pub fn snapshot(&self) -> (u64, f64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(inner.counts.iter())
            .map(|(&b, c)| (b, c.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        (count, inner.sum_nanos.load(Relaxed) as f64 / 1e9, buckets)
    }

    /// For each of `qs`, the upper bound of the bucket that holds that quantile's observation, all
    /// from one snapshot; None when empty. Observations in the `+Inf` bucket report the largest finite
    /// bound.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let (count, _, buckets) = self.snapshot();
        qs.map(|q| {
            if count == 0 {
                return None;
            }
            let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let mut last_finite = 0.0;
            for &(bound, c) in &buckets {
                if bound.is_finite() {
                    last_finite = bound;
                }
                seen += c;
                if seen >= rank {
                    return Some(if bound.is_finite() { bound } else { last_finite });
                }
            }
            Some(last_finite)
        })
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn encode(register: impl FnOnce(&mut Registry)) -> String {
        let mut r = Registry::default();
        register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn encodes_exactly_like_prometheus_clients_histogram() {
        let bounds = [0.001, 0.01, 0.1, 1.0];
        let ours = AtomicHistogram::new(bounds);
        let theirs = Histogram::new(bounds);
        for v in [0.0005, 0.001, 0.002, 0.05, 0.05, 0.7, 3.0, 250.0, f64::NAN] {
            ours.observe(v);
            theirs.observe(v);
        }
        let a = encode(|r| r.register("d", "durations", ours.clone()));
        let b = encode(|r| r.register("d", "durations", theirs.clone()));
        // Same buckets and count; the sum differs only by our nanosecond rounding (NaN counts 0 here).
        let strip_sum = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("d_sum"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip_sum(&a), strip_sum(&b));
        assert!(a.contains("d_bucket{le=\"+Inf\"} 9"), "{a}");
        assert!(a.contains("d_count 9"), "{a}");
        let (_, sum, _) = ours.snapshot();
        assert!((sum - 253.8035).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = AtomicHistogram::new([0.01, 0.1]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..10_000 {
                        h.observe(if (i + t) % 2 == 0 { 0.005 } else { 0.05 });
                    }
                });
            }
        });
        let (count, sum, buckets) = h.snapshot();
        assert_eq!(count, 40_000);
        assert_eq!(buckets.iter().map(|b| b.1).collect::<Vec<_>>(), [20_000, 20_000, 0]);
        assert!((sum - (20_000.0 * 0.005 + 20_000.0 * 0.05)).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn quantiles_of_fine_buckets_are_within_two_percent() {
        let h = AtomicHistogram::fine();
        assert_eq!(h.quantiles([0.5]), [None]);
        // 1..=1000 ms: the true p50 is 500 ms, p99 990 ms.
        for ms in 1..=1000 {
            h.observe(ms as f64 / 1000.0);
        }
        let qs = [0.5, 0.95, 0.99, 1.0];
        // The quantile of n evenly spread values 0.001..1 s is q seconds itself.
        for (got, q) in h.quantiles(qs).into_iter().zip(qs) {
            let got = got.unwrap();
            assert!(got >= q && got <= q * 1.02, "q{q}: {got}");
        }
        // Beyond the last bound: reported as the largest finite bound, not +Inf.
        h.observe(1e6);
        assert!(h.quantiles([1.0])[0].unwrap() < 3700.0);
    }
}
