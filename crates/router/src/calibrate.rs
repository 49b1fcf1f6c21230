//! Calibrating the routing threshold on live traffic so that a target share of strong calls holds.
//!
//! [`ThresholdCalibrator`] keeps the last `window` scores in a ring buffer and their distribution in a
//! Fenwick tree over fixed bins of [0, 1]. Observing a score is O(log B) and the threshold (the
//! `1 - target` quantile of the window) is O(log B), with B = 4096 bins; memory is fixed.

/// Number of histogram bins over [0, 1].
const BINS: usize = 4096;

#[derive(Clone, Debug)]
pub struct ThresholdCalibrator {
    target_share: f64,
    window: usize,
    min_samples: usize,
    fallback: f32,
    ring: Vec<u16>,
    next: usize,
    tree: Vec<u32>,
}

fn bin_of(score: f32) -> u16 {
    let s = if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) };
    ((s * BINS as f32) as usize).min(BINS - 1) as u16
}

impl ThresholdCalibrator {
    /// `target_share` of strong calls (clamped to [0, 1]) over the last `window` scores (at least 1);
    /// until `min_samples` scores were seen, [`threshold`](Self::threshold) returns `fallback`.
    pub fn new(target_share: f64, window: usize, min_samples: usize, fallback: f32) -> Self {
        ThresholdCalibrator {
            target_share: if target_share.is_nan() {
                0.0
            } else {
                target_share.clamp(0.0, 1.0)
            },
            window: window.max(1),
            min_samples: min_samples.max(1),
            fallback,
            ring: Vec::with_capacity(window.clamp(1, 1 << 20)),
            next: 0,
            tree: vec![0; BINS + 1],
        }
    }

    pub fn target_share(&self) -> f64 {
        self.target_share
    }

    pub fn set_target_share(&mut self, share: f64) {
        self.target_share = if share.is_nan() { 0.0 } else { share.clamp(0.0, 1.0) };
    }

    /// Scores currently in the window.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    fn add(&mut self, bin: u16, delta: i64) {
        let mut i = bin as usize + 1;
        while i <= BINS {
            self.tree[i] = (self.tree[i] as i64 + delta) as u32;
            i += i & i.wrapping_neg();
        }
    }

    /// Records a score, evicting the oldest once the window is full.
    pub fn observe(&mut self, score: f32) {
        let b = bin_of(score);
        if self.ring.len() < self.window {
            self.ring.push(b);
        } else {
            let old = self.ring[self.next];
            self.add(old, -1);
            self.ring[self.next] = b;
            self.next = (self.next + 1) % self.window;
        }
        self.add(b, 1);
    }

    /// The smallest bin index whose cumulative count exceeds `k` (Fenwick descent).
    fn bin_with_rank(&self, k: u32) -> usize {
        let mut pos = 0usize;
        let mut rem = k;
        let mut step = BINS.next_power_of_two();
        while step > 0 {
            let nxt = pos + step;
            if nxt <= BINS && self.tree[nxt] <= rem {
                pos = nxt;
                rem -= self.tree[nxt];
            }
            step >>= 1;
        }
        pos
    }

    /// The threshold: route to the strong model when `score >= threshold`. About `target_share` of
    /// the scores in the window lie at or above it (to the resolution of 1/4096).
    pub fn threshold(&self) -> f32 {
        let n = self.ring.len();
        if n < self.min_samples {
            return self.fallback;
        }
        let strong = (self.target_share * n as f64).round() as usize;
        if strong == 0 {
            return f32::INFINITY;
        }
        if strong >= n {
            return 0.0;
        }
        // the (n - strong)-th smallest score (0-based) is the lowest one still sent to strong
        let bin = self.bin_with_rank((n - strong) as u32);
        bin as f32 / BINS as f32
    }

    /// Observes `score` and decides with the threshold that includes it.
    pub fn route_strong(&mut self, score: f32) -> bool {
        self.observe(score);
        score >= self.threshold()
    }
}

/// The score threshold for a cost weight, for scorers trained with the `gain` target (score
/// `p = (1 + gain) / 2`): send to the strong model when the expected quality gain, valued at
/// `usd_per_quality_point` (USD for one fully-correct answer's worth of quality), exceeds the extra
/// cost of the strong call.
pub fn threshold_for_cost(extra_cost_usd: f64, usd_per_quality_point: f64) -> f32 {
    if usd_per_quality_point <= 0.0 {
        return f32::INFINITY;
    }
    let gain = extra_cost_usd / usd_per_quality_point;
    ((1.0 + gain) / 2.0).clamp(0.0, 1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_target_share_on_a_shifted_distribution() {
        let mut c = ThresholdCalibrator::new(0.3, 1000, 100, 0.5);
        assert_eq!(c.threshold(), 0.5);
        // scores concentrated in [0.6, 0.8): a fixed 0.5 threshold would send everything to strong
        let mut state = 1u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut strong = 0;
        for i in 0..5000 {
            let s = 0.6 + 0.2 * next();
            let routed = c.route_strong(s);
            if i >= 1000 && routed {
                strong += 1;
            }
        }
        let share = strong as f64 / 4000.0;
        assert!((share - 0.3).abs() < 0.03, "{share}");
        let t = c.threshold();
        assert!(t > 0.7 && t < 0.8, "{t}");
        assert_eq!(c.len(), 1000);
    }

    #[test]
    fn window_forgets_old_scores() {
        let mut c = ThresholdCalibrator::new(0.5, 10, 1, 0.5);
        for _ in 0..10 {
            c.observe(0.1);
        }
        assert!(c.threshold() <= 0.1001);
        for _ in 0..10 {
            c.observe(0.9);
        }
        assert!(c.threshold() >= 0.89, "{}", c.threshold());
    }

    #[test]
    fn extreme_targets() {
        let mut c = ThresholdCalibrator::new(0.0, 10, 1, 0.5);
        c.observe(1.0);
        assert!(!c.route_strong(1.0));
        c.set_target_share(1.0);
        assert!(c.route_strong(0.0));
        assert_eq!(ThresholdCalibrator::new(f64::NAN, 0, 0, 0.5).target_share(), 0.0);
    }

    #[test]
    fn cost_threshold_is_monotone() {
        assert!(threshold_for_cost(0.01, 1.0) < threshold_for_cost(0.1, 1.0));
        assert!(threshold_for_cost(0.01, 1.0) > threshold_for_cost(0.01, 10.0));
        assert_eq!(threshold_for_cost(0.0, 1.0), 0.5);
    }
}
