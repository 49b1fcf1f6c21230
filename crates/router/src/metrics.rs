//! Routing metrics as defined by RouteLLM: the quality-vs-strong-share curve, PGR, APGR and CPT.
//!
//! A router scores every prompt; sending the top share `s` of prompts (by score) to the strong model and
//! the rest to the weak one gives quality `q(s)`, the mean outcome of the routed answers.
//! `PGR(s) = (q(s) - q_weak) / (q_strong - q_weak)`; APGR is the area under PGR over `s` in [0, 1];
//! CPT(x) is the smallest share of strong calls whose PGR reaches `x`.
//!
//! The curve is computed at full resolution (one point per prompt, `s = k / n`). Prompts with equal
//! scores cannot be ordered by the router, so within a tie group the curve takes the expectation over
//! random tie-breaking (a straight line across the group). A constant router therefore gets exactly the
//! diagonal, APGR 0.5.

use serde::Serialize;

/// Outcome of one prompt for each model (1/0 for correct/incorrect, or a normalised score).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub strong: f64,
    pub weak: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricError {
    #[error("no prompts to evaluate")]
    Empty,
    #[error("{scores} scores for {outcomes} outcomes")]
    LengthMismatch { scores: usize, outcomes: usize },
    #[error("strong and weak models have the same mean quality ({0}); PGR is undefined")]
    NoGap(f64),
}

/// The quality-vs-strong-share curve at full resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub n: usize,
    pub q_strong: f64,
    pub q_weak: f64,
    /// Expected quality when the top `k` prompts go to the strong model, `k = 0..=n`.
    pub quality: Vec<f64>,
}

/// One fixed routing decision per prompt (e.g. the length rule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OperatingPoint {
    pub strong_share: f64,
    pub quality: f64,
    pub pgr: f64,
}

fn means(outcomes: &[Outcome]) -> Result<(f64, f64), MetricError> {
    if outcomes.is_empty() {
        return Err(MetricError::Empty);
    }
    let n = outcomes.len() as f64;
    let qs = outcomes.iter().map(|o| o.strong).sum::<f64>() / n;
    let qw = outcomes.iter().map(|o| o.weak).sum::<f64>() / n;
    if (qs - qw).abs() < 1e-12 {
        return Err(MetricError::NoGap(qs));
    }
    Ok((qs, qw))
}

impl Curve {
    pub fn from_scores(scores: &[f32], outcomes: &[Outcome]) -> Result<Curve, MetricError> {
        if scores.len() != outcomes.len() {
            return Err(MetricError::LengthMismatch {
                scores: scores.len(),
                outcomes: outcomes.len(),
            });
        }
        let (q_strong, q_weak) = means(outcomes)?;
        let n = outcomes.len();
        // NaN scores sort last (never preferred for the strong model).
        let key = |i: usize| {
            let s = scores[i];
            if s.is_nan() { f32::NEG_INFINITY } else { s }
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
        let mut quality = Vec::with_capacity(n + 1);
        let mut total = outcomes.iter().map(|o| o.weak).sum::<f64>();
        quality.push(total / n as f64);
        let mut i = 0;
        while i < n {
            let mut j = i;
            let mut gain = 0.0;
            while j < n && key(order[j]) == key(order[i]) {
                let o = outcomes[order[j]];
                gain += o.strong - o.weak;
                j += 1;
            }
            let step = gain / (j - i) as f64;
            for _ in i..j {
                total += step;
                quality.push(total / n as f64);
            }
            i = j;
        }
        Ok(Curve {
            n,
            q_strong,
            q_weak,
            quality,
        })
    }

    fn pgr_of(&self, q: f64) -> f64 {
        (q - self.q_weak) / (self.q_strong - self.q_weak)
    }

    /// PGR at `k` strong calls.
    pub fn pgr_k(&self, k: usize) -> f64 {
        self.pgr_of(self.quality[k.min(self.n)])
    }

    /// `(share, pgr)` for `k = 0..=n`.
    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        (0..=self.n).map(|k| (k as f64 / self.n as f64, self.pgr_k(k)))
    }

    /// Area under PGR over the strong share in [0, 1] (trapezoid rule at full resolution).
    pub fn apgr(&self) -> f64 {
        let mut area = 0.0;
        for k in 1..=self.n {
            area += (self.pgr_k(k - 1) + self.pgr_k(k)) / 2.0;
        }
        area / self.n as f64
    }

    /// PGR at a strong share in [0, 1], interpolated linearly between neighbouring points.
    pub fn pgr_at(&self, share: f64) -> f64 {
        let x = share.clamp(0.0, 1.0) * self.n as f64;
        let lo = x.floor() as usize;
        let hi = (lo + 1).min(self.n);
        let t = x - lo as f64;
        self.pgr_k(lo) * (1.0 - t) + self.pgr_k(hi) * t
    }

    /// CPT: the smallest strong share `k / n` whose PGR reaches `target` (e.g. 0.5), if any.
    pub fn cpt(&self, target: f64) -> Option<f64> {
        (0..=self.n)
            .find(|&k| self.pgr_k(k) >= target - 1e-12)
            .map(|k| k as f64 / self.n as f64)
    }

    /// Largest PGR anywhere on the curve and the share where it is reached.
    pub fn max_pgr(&self) -> (f64, f64) {
        let mut best = (0.0, f64::NEG_INFINITY);
        for (s, p) in self.points() {
            if p > best.1 {
                best = (s, p);
            }
        }
        best
    }

    /// Smallest `self - other` PGR margin over shares in (`from`, `to`) (shares `k / n` of `self`),
    /// with the share where it occurs.
    pub fn min_margin_over(&self, other: &Curve, from: f64, to: f64) -> Option<(f64, f64)> {
        let mut worst: Option<(f64, f64)> = None;
        for (s, p) in self.points() {
            if s <= from || s >= to {
                continue;
            }
            let m = p - other.pgr_at(s);
            if worst.is_none_or(|w| m < w.1) {
                worst = Some((s, m));
            }
        }
        worst
    }
}

/// The exact quality of fixed decisions (`true` = strong model).
pub fn operating_point(strong: &[bool], outcomes: &[Outcome]) -> Result<OperatingPoint, MetricError> {
    if strong.len() != outcomes.len() {
        return Err(MetricError::LengthMismatch {
            scores: strong.len(),
            outcomes: outcomes.len(),
        });
    }
    let (qs, qw) = means(outcomes)?;
    let n = outcomes.len() as f64;
    let mut q = 0.0;
    let mut k = 0usize;
    for (&d, o) in strong.iter().zip(outcomes) {
        if d {
            q += o.strong;
            k += 1;
        } else {
            q += o.weak;
        }
    }
    let quality = q / n;
    Ok(OperatingPoint {
        strong_share: k as f64 / n,
        quality,
        pgr: (quality - qw) / (qs - qw),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn o(s: f64, w: f64) -> Outcome {
        Outcome { strong: s, weak: w }
    }

    /// 2 prompts where only the strong model is right, 2 where both are.
    fn tiny() -> Vec<Outcome> {
        vec![o(1.0, 0.0), o(1.0, 1.0), o(1.0, 0.0), o(1.0, 1.0)]
    }

    #[test]
    fn oracle_curve_by_hand() {
        let out = tiny();
        // oracle puts the two strong-only prompts first
        let c = Curve::from_scores(&[0.9, 0.1, 0.8, 0.2], &out).unwrap();
        assert_eq!(c.q_strong, 1.0);
        assert_eq!(c.q_weak, 0.5);
        let pgr: Vec<f64> = c.points().map(|p| p.1).collect();
        assert_eq!(pgr, vec![0.0, 0.5, 1.0, 1.0, 1.0]);
        // trapezoids: (0+.5)/2 + (.5+1)/2 + 1 + 1 = 3.0, over 4
        assert!((c.apgr() - 0.75).abs() < 1e-12);
        assert_eq!(c.cpt(0.5), Some(0.25));
        assert_eq!(c.cpt(0.8), Some(0.5));
        assert!((c.pgr_at(0.125) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn oracle_apgr_tends_to_one_when_few_prompts_need_the_strong_model() {
        let mut out = vec![o(1.0, 1.0); 999];
        out.push(o(1.0, 0.0));
        let scores: Vec<f32> = out.iter().map(|x| (x.strong - x.weak) as f32).collect();
        let c = Curve::from_scores(&scores, &out).unwrap();
        assert!(c.apgr() > 0.99, "{}", c.apgr());
        assert_eq!(c.cpt(1.0), Some(0.001));
    }

    #[test]
    fn reversed_router_is_below_half_and_constant_is_exactly_half() {
        let out = tiny();
        let rev = Curve::from_scores(&[0.1, 0.9, 0.2, 0.8], &out).unwrap();
        // pgr: 0, 0, 0, .5, 1 -> (0 + 0 + .25 + .75) / 4
        assert!((rev.apgr() - 0.25).abs() < 1e-12);
        let flat = Curve::from_scores(&[0.5; 4], &out).unwrap();
        assert!((flat.apgr() - 0.5).abs() < 1e-12);
        let pgr: Vec<f64> = flat.points().map(|p| p.1).collect();
        assert_eq!(pgr, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn random_router_is_half_in_expectation() {
        // deterministic LCG scores over many mixed prompts
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let out: Vec<Outcome> = (0..4000)
            .map(|i| match i % 5 {
                0 | 1 => o(1.0, 0.0),
                2 => o(0.0, 1.0),
                _ => o(1.0, 1.0),
            })
            .collect();
        let mut total = 0.0;
        for _ in 0..5 {
            let scores: Vec<f32> = out.iter().map(|_| next() as f32).collect();
            total += Curve::from_scores(&scores, &out).unwrap().apgr();
        }
        let mean = total / 5.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn partial_ties_interpolate_within_the_group() {
        let out = vec![o(1.0, 0.0), o(1.0, 1.0), o(1.0, 0.0), o(0.0, 0.0)];
        // first prompt alone on top, the other three tied
        let c = Curve::from_scores(&[1.0, 0.0, 0.0, 0.0], &out).unwrap();
        let q: Vec<f64> = c.quality.clone();
        assert_eq!(q[0], 0.25);
        assert_eq!(q[1], 0.5);
        assert!((q[2] - (0.5 + 0.25 / 3.0)).abs() < 1e-12);
        assert!((q[4] - 0.75).abs() < 1e-12);
    }

    #[test]
    fn operating_point_and_errors() {
        let out = tiny();
        let p = operating_point(&[true, false, false, false], &out).unwrap();
        assert_eq!(p.strong_share, 0.25);
        assert_eq!(p.quality, 0.75);
        assert_eq!(p.pgr, 0.5);
        assert_eq!(Curve::from_scores(&[], &[]), Err(MetricError::Empty));
        assert!(matches!(
            Curve::from_scores(&[0.1], &[o(1.0, 1.0)]),
            Err(MetricError::NoGap(_))
        ));
        assert!(matches!(
            Curve::from_scores(&[0.1, 0.2], &[o(1.0, 0.0)]),
            Err(MetricError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn margins_against_another_curve() {
        let out = tiny();
        let oracle = Curve::from_scores(&[0.9, 0.1, 0.8, 0.2], &out).unwrap();
        let flat = Curve::from_scores(&[0.5; 4], &out).unwrap();
        let (s, m) = oracle.min_margin_over(&flat, 0.0, 0.9).unwrap();
        assert!(m > 0.0);
        assert!((0.0..0.9).contains(&s));
        let (_, m2) = flat.min_margin_over(&oracle, 0.0, 0.9).unwrap();
        assert!(m2 < 0.0);
    }
}
