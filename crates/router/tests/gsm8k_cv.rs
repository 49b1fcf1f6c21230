//! Cross-validation on the shared GSM8K file (924 prompts) with a reduced training budget so it stays
//! fast in debug builds. Skipped, with a notice, when the data directory is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use optiroute_router::data::{Row, load_rows, outcomes};
use optiroute_router::eval::{cross_val_scores, score_rows};
use optiroute_router::features::HashConfig;
use optiroute_router::metrics::Curve;
use optiroute_router::{LearnedScorer, TrainConfig};
use std::path::PathBuf;

/// The shared GSM8K rows, or None (with a notice) when the data directory is absent.
fn gsm8k_rows() -> Option<Vec<Row>> {
    let dir = match std::env::var_os("ROUTELLM_DATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routellm"),
    };
    let file = dir.join("gsm8k.dev.jsonl");
    if !file.is_file() {
        eprintln!("NOTICE: routellm data not found (set ROUTELLM_DATA); skipping a GSM8K test");
        return None;
    }
    Some(load_rows(&file, true).unwrap())
}

#[test]
fn gsm8k_cross_validation_beats_random_and_shipped_weights_score_every_line() {
    let Some(rows) = gsm8k_rows() else { return };
    assert_eq!(rows.len(), 924);
    let out = outcomes(&rows);

    // a small, fast model: word uni+bigrams into 4096 buckets plus the dense features
    let cfg = TrainConfig {
        hash: HashConfig {
            bits: 12,
            char_min: 0,
            char_max: 0,
            word_max: 2,
            ..HashConfig::default()
        },
        l2: 2.0,
        max_iters: 40,
        ..TrainConfig::default()
    };
    let cv = cross_val_scores(&rows, &[], 3, 7, &cfg, 2).unwrap();
    let (scores, folds) = (cv.scores, cv.folds);
    assert_eq!(cv.trees.len(), 3);
    assert!(
        cv.trees.iter().all(|t| (0.0..=0.6).contains(&t.blend)),
        "{:?}",
        cv.trees
    );
    // each fold's trees use a leaf size from the grid its inner cross-validation chose among
    assert!(
        cv.trees
            .iter()
            .all(|t| optiroute_router::learned::MIN_LEAF_GRID.contains(&t.min_leaf)),
        "{:?}",
        cv.trees
    );
    assert_eq!(folds.iter().filter(|&&f| f == 0).count(), 308);
    let curve = Curve::from_scores(&scores, &out).unwrap();
    let apgr = curve.apgr();
    eprintln!("GSM8K 3-fold APGR (reduced model): {apgr:.4}");
    assert!(
        apgr > 0.55,
        "cross-validated APGR {apgr} is not clearly above random (0.5)"
    );

    // the shipped model scores every prompt with a finite probability
    let shipped = LearnedScorer::embedded().unwrap();
    let s = score_rows(&shipped, &rows);
    assert!(s.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)));
}

#[test]
fn gsm8k_cascade_verifier_cross_validated_beats_the_rule_checks() {
    use optiroute_router::eval::{Provenance, cascade_options, report};
    use optiroute_router::verifier::cross_val_cascade_scores;
    let Some(rows) = gsm8k_rows() else { return };
    let opts = cascade_options(&rows);
    assert!(opts.math);
    let folds: Vec<usize> = (0..rows.len()).map(|i| i % 5).collect();
    let cascade = cross_val_cascade_scores(&rows, &folds, 5, 1.0, opts).unwrap();
    let lengths: Vec<f32> = rows.iter().map(|r| r.prompt.len() as f32).collect();
    let rep = report(
        Provenance {
            router: "length-ranking",
            mode: "rule",
            cascade_scores: Some((&cascade, "cv".into())),
            ..Default::default()
        },
        &rows,
        &lengths,
    )
    .unwrap();
    let rules = rep.cascade.unwrap();
    let g = rep.cascade_verifier.unwrap();
    eprintln!(
        "cascade: rules {:.3} at {:.3}; verifier APGR {:.4}, at risk >= 0.5 {:.3} at {:.3}",
        rules.pgr, rules.strong_share, g.summary.apgr, g.at_max_risk.pgr, g.at_max_risk.strong_share
    );
    // The verifier escalates more than the checks alone and recovers clearly more of the gap.
    assert!(g.summary.apgr > 0.7, "{}", g.summary.apgr);
    assert!(g.at_max_risk.strong_share > rules.strong_share && g.at_max_risk.strong_share < 0.4);
    assert!(g.at_max_risk.pgr > rules.pgr + 0.1);
    // PGR 0.5 needs fewer strong calls than prompt length as a ranking (37.8%).
    assert!(g.summary.cpt50.unwrap() < rep.summary.cpt50.unwrap());
    assert_eq!(g.with_routing.len(), 4);
}
