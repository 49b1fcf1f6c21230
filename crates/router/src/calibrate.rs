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

    /// Scores in the window that fall in bins `0..bins`.
    fn count_below(&self, bins: usize) -> u32 {
        let mut i = bins.min(BINS);
        let mut sum = 0u32;
        while i > 0 {
            sum += self.tree[i];
            i &= i - 1;
        }
        sum
    }

    /// The threshold: route to the strong model when `score >= threshold`. About `target_share` of
    /// the scores in the window lie at or above it (to the resolution of 1/4096). When many scores
    /// are equal, far more than `target_share` may lie at or above it: [`cut`](Self::cut) says which
    /// share of the scores tied at it to send.
    pub fn threshold(&self) -> f32 {
        self.cut().threshold
    }

    /// The calibrated decision rule: the threshold, and the share of the scores tied at it (in its
    /// 1/4096 bin) that go to the strong model so that the expected strong share is the target.
    pub fn cut(&self) -> Cut {
        let n = self.ring.len();
        if n < self.min_samples {
            return Cut::plain(self.fallback);
        }
        let strong = (self.target_share * n as f64).round() as usize;
        if strong == 0 {
            return Cut::plain(f32::INFINITY);
        }
        if strong >= n {
            return Cut::plain(0.0);
        }
        // the (n - strong)-th smallest score (0-based) is the lowest one still sent to strong
        let bin = self.bin_with_rank((n - strong) as u32);
        let below = self.count_below(bin) as usize;
        let at = self.count_below(bin + 1) as usize - below;
        let above = n - below - at;
        // above < strong <= above + at, as the rank falls in this bin
        Cut {
            threshold: bin as f32 / BINS as f32,
            tie_share: (strong.saturating_sub(above) as f64 / at.max(1) as f64).clamp(0.0, 1.0),
        }
    }

    /// Observes `score` and decides with the cut that includes it; `key` (a hash of the request,
    /// see [`tie_key`]) decides a score tied at the threshold.
    pub fn route_strong(&mut self, score: f32, key: u64) -> bool {
        self.observe(score);
        self.cut().route_strong(score, || key)
    }
}

/// A calibrated decision rule (see [`ThresholdCalibrator::cut`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    /// Scores below go to the cheap model, scores in a higher bin to the strong one.
    pub threshold: f32,
    /// The share of scores tied at the threshold (in its bin) that go to the strong model.
    pub tie_share: f64,
}

impl Cut {
    /// A plain threshold: every score at or above it goes to the strong model.
    pub fn plain(threshold: f32) -> Self {
        Cut {
            threshold,
            tie_share: 1.0,
        }
    }

    /// Whether `score` is a tie this cut splits: in the threshold's 1/4096 bin (not below the
    /// threshold), with only a share of such scores going to the strong model.
    pub fn splits(&self, score: f32) -> bool {
        self.tie_share < 1.0
            && score >= self.threshold
            && self.threshold.is_finite()
            && bin_of(score) == bin_of(self.threshold)
    }

    /// Whether a request with this score goes to the strong model. A split tie goes strong when the
    /// request's key (asked for only then) falls in the first `tie_share` of the key space:
    /// deterministic for a request, and over distinct requests the ties split in the calibrated
    /// proportion.
    pub fn route_strong(&self, score: f32, key: impl FnOnce() -> u64) -> bool {
        if !self.splits(score) {
            return score >= self.threshold;
        }
        // the top 53 bits, mixed, as a fraction in [0, 1)
        ((mix(key()) >> 11) as f64 / (1u64 << 53) as f64) < self.tie_share
    }
}

/// The splitmix64 finaliser: spreads keys that differ in a few bits over the whole range.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable key for [`Cut::route_strong`] from a request's parts (roles and texts, say): FNV-1a over
/// each part and its length, the same on every platform and Rust version, so a replayed request is
/// decided the same way.
pub fn tie_key<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for p in parts {
        eat(&(p.len() as u64).to_le_bytes());
        eat(p.as_bytes());
    }
    h
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
            let routed = c.route_strong(s, i);
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
    fn identical_scores_split_at_the_target_share() {
        // Templated traffic: every request scores the same. Sending every tie to the strong model
        // gave 100% strong calls for a target of 30%.
        let mut c = ThresholdCalibrator::new(0.3, 1000, 100, 0.5);
        let mut strong = 0;
        for i in 0..5000u64 {
            let key = tie_key(["user", &format!("Summarise ticket #{i} in one line.")]);
            let routed = c.route_strong(0.42, key);
            if i >= 1000 && routed {
                strong += 1;
            }
        }
        let share = f64::from(strong) / 4000.0;
        assert!((share - 0.3).abs() < 0.03, "{share}");
        let cut = c.cut();
        assert!(cut.splits(0.42), "{cut:?}");
        assert!((cut.tie_share - 0.3).abs() < 1e-9, "{cut:?}");
        // Scores off the tie are decided by the threshold alone, without asking for the key.
        let asked = std::cell::Cell::new(0);
        let key = || {
            asked.set(asked.get() + 1);
            0
        };
        assert!(cut.route_strong(0.9, key));
        assert!(!cut.route_strong(0.1, key));
        assert_eq!(asked.get(), 0, "the key is asked for only on a tie");
        cut.route_strong(0.42, key);
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn ties_take_only_the_share_left_by_higher_scores() {
        // 20% score 0.9, 80% score 0.5: for 30% strong, all of the 0.9s and 1 in 8 of the 0.5s.
        let mut c = ThresholdCalibrator::new(0.3, 1000, 1, 0.5);
        for i in 0..1000 {
            c.observe(if i % 5 == 0 { 0.9 } else { 0.5 });
        }
        let cut = c.cut();
        assert!(cut.splits(0.5) && !cut.splits(0.9), "{cut:?}");
        assert!((cut.tie_share - 0.125).abs() < 1e-9, "{cut:?}");
        let strong = (0..1000u64)
            .filter(|&i| {
                let score = if i % 5 == 0 { 0.9 } else { 0.5 };
                cut.route_strong(score, || tie_key([i.to_string().as_str()]))
            })
            .count();
        assert!((250..=350).contains(&strong), "{strong}");
        // Before the window fills, the fallback threshold decides alone.
        let fresh = ThresholdCalibrator::new(0.3, 1000, 100, 0.5);
        assert_eq!(
            fresh.cut(),
            Cut {
                threshold: 0.5,
                tie_share: 1.0
            }
        );
        assert!(fresh.cut().route_strong(0.5, || 0));
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
        assert!(!c.route_strong(1.0, 1));
        c.set_target_share(1.0);
        assert!(c.route_strong(0.0, 2));
        assert_eq!(ThresholdCalibrator::new(f64::NAN, 0, 0, 0.5).target_share(), 0.0);
    }

    #[test]
    fn cost_threshold_is_monotone() {
        assert!(threshold_for_cost(0.01, 1.0) < threshold_for_cost(0.1, 1.0));
        assert!(threshold_for_cost(0.01, 1.0) > threshold_for_cost(0.01, 10.0));
        assert_eq!(threshold_for_cost(0.0, 1.0), 0.5);
    }
}
