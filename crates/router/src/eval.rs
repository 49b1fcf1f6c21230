//! Offline evaluation: scores for a data file from any router (with k-fold cross-validation or
//! train-on-other-files for the learned one), the full metric report, and the comparison baselines.

use crate::cascade::{self, CascadeReport, CheckOptions};
use crate::data::{Row, outcomes};
use crate::learned::{Example, LearnedScorer, TrainConfig, TrainError, TreeFit, train};
use crate::metrics::{Curve, MetricError, OperatingPoint, operating_point};
use crate::scorer::{HeuristicScorer, LengthRule, RandomScorer, Scorer};
use serde::Serialize;
use std::collections::HashMap;

/// Training examples from rows with outcomes, labelled for `cfg.target`. With group smoothing, each
/// row's outcomes are first pulled toward the mean outcomes of its group (`subject`/`category`).
pub fn examples(rows: &[Row], cfg: &TrainConfig) -> Vec<Example> {
    let a = cfg.group_smooth.clamp(0.0, 1.0) as f64;
    let mut group_mean: HashMap<&str, (f64, f64, usize)> = HashMap::new();
    if a > 0.0 {
        for r in rows {
            if let (Some(g), Some(o)) = (r.group.as_deref(), r.outcome) {
                let e = group_mean.entry(g).or_insert((0.0, 0.0, 0));
                e.0 += o.strong;
                e.1 += o.weak;
                e.2 += 1;
            }
        }
    }
    rows.iter()
        .filter_map(|r| {
            r.outcome.map(|o| {
                let smoothed = match r.group.as_deref().and_then(|g| group_mean.get(g)) {
                    Some(&(gs, gw, n)) if a > 0.0 => Some((
                        (1.0 - a) * o.strong + a * gs / n as f64,
                        (1.0 - a) * o.weak + a * gw / n as f64,
                    )),
                    _ => None,
                };
                let (s, w) = smoothed.unwrap_or((o.strong, o.weak));
                Example {
                    conv: r.conv.clone(),
                    labels: cfg.target.labels(s, w),
                    weight: 1.0,
                    unsmoothed: smoothed.map(|_| cfg.target.labels(o.strong, o.weak)),
                }
            })
        })
        .collect()
}

/// Scores every row with a scorer.
pub fn score_rows(scorer: &dyn Scorer, rows: &[Row]) -> Vec<f32> {
    rows.iter().map(|r| scorer.score(&r.conv)).collect()
}

/// A seeded permutation of `0..n` (Fisher-Yates over a 64-bit LCG).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = ((state >> 33) % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// The fold (`0..k`) of each of `n` rows: round-robin over a seeded permutation, so fold sizes
/// differ by at most one.
pub fn folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut fold = vec![0usize; n];
    for (pos, &i) in permutation(n, seed).iter().enumerate() {
        fold[i] = pos % k;
    }
    fold
}

/// Out-of-fold scores of a cross-validation.
#[derive(Clone, Debug)]
pub struct CvScores {
    pub scores: Vec<f32>,
    /// Fold of each row.
    pub folds: Vec<usize>,
    /// The boosted trees of each fold's model ([`LearnedScorer::tree_fit`]).
    pub trees: Vec<TreeFit>,
}

/// Out-of-fold scores from k-fold cross-validation (folds from a seeded shuffle). `extra` rows are
/// added to every fold's training set. Folds train in parallel on up to `threads` threads.
pub fn cross_val_scores(
    rows: &[Row],
    extra: &[Row],
    k: usize,
    seed: u64,
    cfg: &TrainConfig,
    threads: usize,
) -> Result<CvScores, TrainError> {
    if k < 2 || k > rows.len() {
        return Err(TrainError::Config(format!(
            "--cv {k} needs 2 <= k <= {} rows",
            rows.len()
        )));
    }
    let fold_of = folds(rows.len(), k, seed);
    let extra_ex = examples(extra, cfg);
    type FoldScores = (Vec<(usize, f32)>, TreeFit);
    let run_fold = |f: usize| -> Result<FoldScores, TrainError> {
        let train_rows: Vec<Row> = rows
            .iter()
            .zip(&fold_of)
            .filter(|(_, g)| **g != f)
            .map(|(r, _)| r.clone())
            .collect();
        let mut ex = examples(&train_rows, cfg);
        ex.extend(extra_ex.iter().cloned());
        let model = train(&ex, cfg)?;
        let scores = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| fold_of[*i] == f)
            .map(|(i, r)| (i, model.score(&r.conv)))
            .collect();
        Ok((scores, model.tree_fit()))
    };
    let mut scores = vec![0.0f32; rows.len()];
    let mut trees = Vec::with_capacity(k);
    let threads = threads.clamp(1, k);
    let folds: Vec<usize> = (0..k).collect();
    for chunk in folds.chunks(threads) {
        let results: Vec<Result<FoldScores, TrainError>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|&f| s.spawn(move || run_fold(f))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(TrainError::Config("fold thread panicked".into())))
                })
                .collect()
        });
        for r in results {
            let (fold_scores, fit) = r?;
            for (i, sc) in fold_scores {
                scores[i] = sc;
            }
            trees.push(fit);
        }
    }
    Ok(CvScores {
        scores,
        folds: fold_of,
        trees,
    })
}

/// Margin of a curve over a baseline at strong-call budgets of 1%, 2%, ..., 89%.
#[derive(Clone, Debug, Serialize)]
pub struct Margin {
    /// Smallest PGR(router) - PGR(baseline) over the budgets 1%..89% (1% steps).
    pub min_margin: f64,
    pub at_share: f64,
    /// `min_margin > 0`: better at every budget below 90%.
    pub beats_below_90: bool,
}

fn margin(curve: &Curve, base: &Curve) -> Option<Margin> {
    (1..90)
        .map(|p| {
            let s = p as f64 / 100.0;
            (s, curve.pgr_at(s) - base.pgr_at(s))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, m)| Margin {
            min_margin: m,
            at_share: s,
            beats_below_90: m > 0.0,
        })
}

/// The headline figures of a PGR curve.
#[derive(Clone, Debug, Serialize)]
pub struct CurveSummary {
    pub apgr: f64,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
    pub pgr_at_20: f64,
    pub pgr_at_30: f64,
    pub pgr_at_50: f64,
}

impl CurveSummary {
    pub fn of(c: &Curve) -> Self {
        CurveSummary {
            apgr: c.apgr(),
            cpt50: c.cpt(0.5),
            cpt80: c.cpt(0.8),
            pgr_at_20: c.pgr_at(0.2),
            pgr_at_30: c.pgr_at(0.3),
            pgr_at_50: c.pgr_at(0.5),
        }
    }
}

/// Everything `router eval --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub router: String,
    /// How the scores were obtained: "cv", "train-test", "shipped" or "rule".
    pub mode: String,
    pub data: String,
    pub trained_on: Vec<String>,
    pub cv_folds: Option<usize>,
    pub seed: u64,
    pub n: usize,
    pub q_strong: f64,
    pub q_weak: f64,
    #[serde(flatten)]
    pub summary: CurveSummary,
    pub max_pgr: f64,
    pub max_pgr_at: f64,
    /// APGR of each cross-validation fold scored on its own (the headline figures pool all folds).
    pub fold_apgr: Vec<f64>,
    /// Weight of the boosted trees in the learned model of each fold (one value without folds; empty
    /// for rules).
    pub tree_blend: Vec<f32>,
    /// The trees' leaf size in the same models (0: no trees).
    pub tree_min_leaf: Vec<usize>,
    /// The legacy rule `prompt > 60 chars -> strong` as one operating point.
    pub length_rule: OperatingPoint,
    /// Versus the length rule used under a budget (random pick among prompts over 60 chars).
    pub vs_length_rule: Option<Margin>,
    /// Prompt length as a ranking score (any threshold): a stronger baseline than the fixed rule.
    pub length_curve: CurveSummary,
    pub vs_length_curve: Option<Margin>,
    /// Cascade checks on the stored cheap answers, when the file has `weak_response`.
    pub cascade: Option<CascadeReport>,
    /// The cascade with the verifier: escalations ranked by the risk that the cheap answer is wrong
    /// (math-style files with `weak_response`).
    pub cascade_verifier: Option<GradedCascade>,
    #[serde(skip)]
    pub curve: Curve,
    #[serde(skip)]
    pub length_rule_curve: Curve,
    #[serde(skip)]
    pub length_score_curve: Curve,
}

/// Where a set of scores came from (copied into the report).
#[derive(Clone, Debug, Default)]
pub struct Provenance<'a> {
    pub router: &'a str,
    /// "cv", "train-test", "shipped" or "rule".
    pub mode: &'a str,
    pub data: &'a str,
    pub trained_on: Vec<String>,
    pub seed: u64,
    /// Fold of each row and the number of folds, for cross-validated scores.
    pub folds: Option<(&'a [usize], usize)>,
    /// The learned models' boosted trees (see [`EvalReport::tree_blend`]); empty for rules.
    pub trees: Vec<TreeFit>,
    /// The cascade's ranking scores ([`crate::verifier::cascade_scores`]) and where its verifier came from.
    pub cascade_scores: Option<(&'a [f32], String)>,
}

/// The escalation threshold the gateway uses by default (`[routing] cascade_max_risk`).
pub const DEFAULT_MAX_RISK: f64 = 0.5;

/// The cascade as a curve: the cheap model answers every prompt, and the strong model is called for the
/// answers that fail a check first, then in order of the verifier's risk.
#[derive(Clone, Debug, Serialize)]
pub struct GradedCascade {
    /// "cv" (trained on the other folds), "train-test" or "shipped".
    pub verifier: String,
    #[serde(flatten)]
    pub summary: CurveSummary,
    pub max_risk: f64,
    /// Escalating on a failed check or `risk >= max_risk`, as the gateway does.
    pub at_max_risk: OperatingPoint,
    /// The gateway's combined policy: the top `direct_share` of prompts by router score go straight to
    /// the strong model, the rest through the cascade at `max_risk`.
    pub with_routing: Vec<HybridPoint>,
    #[serde(skip)]
    pub curve: Curve,
}

/// One operating point of routing and cascade combined.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HybridPoint {
    pub direct_share: f64,
    /// Direct plus escalated.
    pub strong_share: f64,
    /// Prompts that get a cheap call (all but the direct ones).
    pub cheap_share: f64,
    pub pgr: f64,
    /// The cascade alone with as many strong calls (its risk-ranked curve).
    pub cascade_alone_pgr: f64,
}

/// [`HybridPoint`]s for the given direct shares; ties in `router_scores` are broken by row order.
pub fn hybrid_points(
    router_scores: &[f32],
    cascade_scores: &[f32],
    max_risk: f64,
    direct_shares: &[f64],
    out: &[crate::metrics::Outcome],
) -> Result<Vec<HybridPoint>, MetricError> {
    let cascade_curve = Curve::from_scores(cascade_scores, out)?;
    let n = router_scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| router_scores[b].total_cmp(&router_scores[a]));
    direct_shares
        .iter()
        .map(|&d| {
            let k = ((d * n as f64).round() as usize).min(n);
            let mut strong = vec![false; n];
            for &i in &order[..k] {
                strong[i] = true;
            }
            for (s, &c) in strong.iter_mut().zip(cascade_scores) {
                *s |= c as f64 >= max_risk;
            }
            let p = operating_point(&strong, out)?;
            let strong_calls = strong.iter().filter(|&&s| s).count();
            Ok(HybridPoint {
                direct_share: k as f64 / n.max(1) as f64,
                strong_share: p.strong_share,
                cheap_share: 1.0 - k as f64 / n.max(1) as f64,
                pgr: p.pgr,
                cascade_alone_pgr: cascade_curve.pgr_k(strong_calls),
            })
        })
        .collect()
}

/// The cascade checks that apply to a file: math-style when every row is a GSM8K row.
pub fn cascade_options(rows: &[Row]) -> CheckOptions {
    CheckOptions {
        math: !rows.is_empty() && rows.iter().all(|r| r.benchmark.eq_ignore_ascii_case("gsm8k")),
        json: false,
        hit_length_limit: false,
    }
}

/// Builds the report for `scores` on `rows`.
pub fn report(p: Provenance<'_>, rows: &[Row], scores: &[f32]) -> Result<EvalReport, MetricError> {
    let Provenance {
        router,
        mode,
        data,
        trained_on,
        seed,
        folds: fold_of,
        trees,
        cascade_scores,
    } = p;
    let out = outcomes(rows);
    let curve = Curve::from_scores(scores, &out)?;
    let rule = LengthRule::default();
    let rule_scores = score_rows(&rule, rows);
    let rule_decisions: Vec<bool> = rule_scores.iter().map(|&s| s > 0.5).collect();
    let length_rule = operating_point(&rule_decisions, &out)?;
    let length_rule_curve = Curve::from_scores(&rule_scores, &out)?;
    let len_scores: Vec<f32> = rows.iter().map(|r| r.conv.last_user().chars().count() as f32).collect();
    let length_score_curve = Curve::from_scores(&len_scores, &out)?;
    let mut fold_apgr = Vec::new();
    if let Some((fold_of, k)) = fold_of {
        for f in 0..k {
            let idx: Vec<usize> = (0..rows.len()).filter(|&i| fold_of[i] == f).collect();
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            let o: Vec<_> = idx.iter().map(|&i| out[i]).collect();
            if let Ok(c) = Curve::from_scores(&s, &o) {
                fold_apgr.push(c.apgr());
            }
        }
    }
    let cascade = if rows.iter().any(|r| r.weak_response.is_some()) {
        let answers: Vec<Option<&str>> = rows.iter().map(|r| r.weak_response.as_deref()).collect();
        Some(cascade::evaluate(&answers, &out, cascade_options(rows))?)
    } else {
        None
    };
    let cascade_verifier = match cascade_scores {
        Some((ranked, verifier)) => {
            let curve = Curve::from_scores(ranked, &out)?;
            let escalate: Vec<bool> = ranked.iter().map(|&s| s as f64 >= DEFAULT_MAX_RISK).collect();
            Some(GradedCascade {
                verifier,
                summary: CurveSummary::of(&curve),
                max_risk: DEFAULT_MAX_RISK,
                at_max_risk: operating_point(&escalate, &out)?,
                with_routing: hybrid_points(scores, ranked, DEFAULT_MAX_RISK, &[0.05, 0.1, 0.2, 0.3], &out)?,
                curve,
            })
        }
        None => None,
    };
    let (max_pgr_at, max_pgr) = curve.max_pgr();
    Ok(EvalReport {
        router: router.to_string(),
        mode: mode.to_string(),
        data: data.to_string(),
        trained_on,
        cv_folds: fold_of.map(|f| f.1),
        seed,
        n: rows.len(),
        q_strong: curve.q_strong,
        q_weak: curve.q_weak,
        summary: CurveSummary::of(&curve),
        max_pgr,
        max_pgr_at,
        fold_apgr,
        tree_blend: trees.iter().map(|t| t.blend).collect(),
        tree_min_leaf: trees.iter().map(|t| t.min_leaf).collect(),
        length_rule,
        vs_length_rule: margin(&curve, &length_rule_curve),
        length_curve: CurveSummary::of(&length_score_curve),
        vs_length_curve: margin(&curve, &length_score_curve),
        cascade,
        cascade_verifier,
        curve,
        length_rule_curve,
        length_score_curve,
    })
}

/// The rule-based scorers by name.
pub fn rule_scorer(name: &str, seed: u64) -> Option<Box<dyn Scorer>> {
    match name {
        "heuristic" => Some(Box::new(HeuristicScorer::default())),
        "length" => Some(Box::new(LengthRule::default())),
        "random" => Some(Box::new(RandomScorer { seed })),
        _ => None,
    }
}

/// Trains on all `rows` (for `router train`).
pub fn train_on(rows: &[Row], cfg: &TrainConfig) -> Result<LearnedScorer, TrainError> {
    train(&examples(rows, cfg), cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hybrid_points_send_the_top_prompts_direct_and_cascade_the_rest() {
        use crate::metrics::Outcome;
        let o = |strong: f64, weak: f64| Outcome { strong, weak };
        // Prompt 0 is hard (router score high), prompt 2's cheap answer is risky.
        let out = [o(1.0, 0.0), o(1.0, 1.0), o(1.0, 0.0), o(0.0, 0.0)];
        let router = [0.9, 0.5, 0.1, 0.2];
        let cascade = [0.1, 0.2, 0.8, 0.3];
        let p = hybrid_points(&router, &cascade, 0.5, &[0.0, 0.25, 0.5], &out).unwrap();
        // Cascade alone escalates prompt 2; quality 2/4, q_weak 1/4, q_strong 3/4.
        assert_eq!((p[0].strong_share, p[0].cheap_share, p[0].pgr), (0.25, 1.0, 0.5));
        assert_eq!(p[0].cascade_alone_pgr, 0.5);
        // The cascade's second escalation (prompt 3, wrong on both) adds nothing.
        assert_eq!(p[1].cascade_alone_pgr, 0.5);
        // Plus prompt 0 directly: quality 3/4.
        assert_eq!((p[1].strong_share, p[1].cheap_share, p[1].pgr), (0.5, 0.75, 1.0));
        // Plus prompt 1, already right on the cheap model.
        assert_eq!((p[2].direct_share, p[2].strong_share, p[2].pgr), (0.5, 0.75, 1.0));
    }

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let p = permutation(100, 3);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 3));
        assert_ne!(p, permutation(100, 4));
    }
}
