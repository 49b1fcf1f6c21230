//! Gradient-boosted regression trees over the dense features: a small histogram-based trainer
//! (squared loss, best-first growth to a leaf budget, L2 on leaf values) and a compact forest that
//! scores a feature vector in a few microseconds.
//!
//! The learned scorer blends the forest's prediction with its logistic heads. The trees see the raw
//! dense features, so they can use thresholds and interactions that the linear heads, which shrink
//! those features hard, cannot.

use serde::{Deserialize, Serialize};

/// Boosting settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeConfig {
    /// Boosting rounds (trees); 0 = no forest.
    pub rounds: usize,
    pub learning_rate: f32,
    /// Leaves per tree (best-first growth).
    pub max_leaves: usize,
    /// Fewest training rows in a leaf.
    pub min_leaf: usize,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// Most bins per feature (split candidates: one fewer, at quantiles of the training values).
    pub max_bins: usize,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            rounds: 200,
            learning_rate: 0.04,
            max_leaves: 15,
            min_leaf: 40,
            l2: 1.0,
            max_bins: 255,
        }
    }
}

/// A node's `feature` when it is a leaf.
const LEAF: i16 = -1;
/// Largest output a valid forest may reach (base plus the largest leaf of every tree).
const MAX_OUTPUT: f64 = 1e6;

/// One regression tree in flat arrays. For a split, `value` is the threshold (`x <= value` goes
/// left); for a leaf (`feature == -1`), the leaf's output. Children always come after their parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    feature: Vec<i16>,
    value: Vec<f32>,
    left: Vec<u16>,
    right: Vec<u16>,
}

impl Tree {
    fn predict(&self, x: &[f32]) -> f32 {
        let mut i = 0usize;
        loop {
            let f = self.feature[i];
            if f < 0 {
                return self.value[i];
            }
            let v = x.get(f as usize).copied().unwrap_or(0.0);
            i = if clean(v) <= self.value[i] {
                self.left[i] as usize
            } else {
                self.right[i] as usize
            };
        }
    }

    fn len(&self) -> usize {
        self.feature.len()
    }
}

/// A trained forest: `base + sum of trees`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    /// Number of input features.
    pub n_features: usize,
    pub base: f32,
    pub trees: Vec<Tree>,
}

/// NaN would fall right of every threshold on some paths and left on none; make it 0.
fn clean(x: f32) -> f32 {
    if x.is_nan() { 0.0 } else { x }
}

impl Forest {
    /// The forest's output for one feature vector (`n_features` values; missing ones read as 0).
    pub fn predict(&self, x: &[f32]) -> f32 {
        self.base + self.trees.iter().map(|t| t.predict(x)).sum::<f32>()
    }

    /// Checks a forest read from a file: every index in range, children after their parent (so
    /// prediction always ends), and outputs bounded (no sum of leaves can overflow to infinity).
    pub fn validate(&self) -> Result<(), String> {
        if !self.base.is_finite() {
            return Err("forest base is not finite".into());
        }
        let mut bound = f64::from(self.base.abs());
        for (k, t) in self.trees.iter().enumerate() {
            let n = t.len();
            if n == 0 || t.value.len() != n || t.left.len() != n || t.right.len() != n {
                return Err(format!("tree {k}: node arrays differ in length or are empty"));
            }
            let mut largest_leaf = 0.0f64;
            for i in 0..n {
                if !t.value[i].is_finite() {
                    return Err(format!("tree {k}: value of node {i} is not finite"));
                }
                let f = t.feature[i];
                if f == LEAF {
                    largest_leaf = largest_leaf.max(f64::from(t.value[i].abs()));
                    continue;
                }
                let (l, r) = (t.left[i] as usize, t.right[i] as usize);
                if f < 0 || f as usize >= self.n_features || l <= i || r <= i || l >= n || r >= n {
                    return Err(format!("tree {k}: node {i} has a bad feature or child"));
                }
            }
            bound += largest_leaf;
        }
        if bound > MAX_OUTPUT {
            return Err(format!("forest outputs can reach {bound:e}"));
        }
        Ok(())
    }
}

/// Candidate thresholds of one feature: the distinct values when there are few, else quantiles.
/// A value's bin is the number of thresholds below it, so bin `<= b` means `x <= thresholds[b]`.
fn thresholds(values: &mut [f32], max_bins: usize) -> Vec<f32> {
    values.sort_by(f32::total_cmp);
    let mut distinct: Vec<f32> = values.to_vec();
    distinct.dedup();
    // the largest value needs no threshold: nothing lies right of it
    let cuts: Vec<f32> = if distinct.len() <= max_bins {
        distinct[..distinct.len().saturating_sub(1)].to_vec()
    } else {
        let n = values.len();
        let mut c: Vec<f32> = (1..max_bins).map(|k| values[k * n / max_bins]).collect();
        c.dedup();
        if c.last() == distinct.last() {
            c.pop();
        }
        c
    };
    cuts
}

/// Sums of gradients, hessians and rows in a histogram bin or a node.
#[derive(Clone, Copy, Default)]
struct Sums {
    g: f64,
    h: f64,
    n: usize,
}

impl Sums {
    fn add(&mut self, g: f64, h: f64) {
        self.g += g;
        self.h += h;
        self.n += 1;
    }

    fn score(&self, l2: f64) -> f64 {
        self.g * self.g / (self.h + l2)
    }
}

/// The best split of a node: rows with `bin <= bin` of `feature` go left.
struct Split {
    feature: usize,
    bin: usize,
    gain: f64,
}

struct Trainer<'a> {
    cfg: &'a TreeConfig,
    n: usize,
    /// Bin of row `i` for feature `f` at `f * n + i`.
    bins: Vec<u8>,
    cuts: Vec<Vec<f32>>,
}

impl Trainer<'_> {
    fn best_split(&self, rows: &[u32], grad: &[f64], hess: &[f64], total: Sums) -> Option<Split> {
        let mut best: Option<Split> = None;
        let mut hist = vec![Sums::default(); 256];
        let parent = total.score(self.cfg.l2);
        for (f, cuts) in self.cuts.iter().enumerate() {
            if cuts.is_empty() {
                continue;
            }
            hist[..=cuts.len()].fill(Sums::default());
            let col = &self.bins[f * self.n..(f + 1) * self.n];
            for &i in rows {
                let i = i as usize;
                hist[col[i] as usize].add(grad[i], hess[i]);
            }
            let mut left = Sums::default();
            for (b, s) in hist[..cuts.len()].iter().enumerate() {
                left.g += s.g;
                left.h += s.h;
                left.n += s.n;
                let right = Sums {
                    g: total.g - left.g,
                    h: total.h - left.h,
                    n: total.n - left.n,
                };
                if left.n < self.cfg.min_leaf {
                    continue;
                }
                if right.n < self.cfg.min_leaf {
                    break;
                }
                let gain = left.score(self.cfg.l2) + right.score(self.cfg.l2) - parent;
                if gain > 1e-12 && best.as_ref().is_none_or(|s| gain > s.gain) {
                    best = Some(Split {
                        feature: f,
                        bin: b,
                        gain,
                    });
                }
            }
        }
        best
    }

    fn sums(rows: &[u32], grad: &[f64], hess: &[f64]) -> Sums {
        let mut s = Sums::default();
        for &i in rows {
            s.add(grad[i as usize], hess[i as usize]);
        }
        s
    }

    /// Grows one tree best-first on the gradients and returns it with each row's leaf output.
    fn grow(&self, grad: &[f64], hess: &[f64], out: &mut [f32]) -> Tree {
        let cfg = self.cfg;
        let mut tree = Tree {
            feature: vec![LEAF],
            value: vec![0.0],
            left: vec![0],
            right: vec![0],
        };
        // open leaves: node index, rows, sums, best split
        let all: Vec<u32> = (0..self.n as u32).collect();
        let total = Self::sums(&all, grad, hess);
        let split = self.best_split(&all, grad, hess, total);
        let mut open = vec![(0usize, all, total, split)];
        let mut leaves = 1;
        while leaves < cfg.max_leaves {
            let Some(k) = open
                .iter()
                .enumerate()
                .filter_map(|(k, o)| o.3.as_ref().map(|s| (k, s.gain)))
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(k, _)| k)
            else {
                break;
            };
            let (node, rows, _, Some(split)) = open.swap_remove(k) else {
                break; // not reached: only leaves with a split are picked
            };
            let col = &self.bins[split.feature * self.n..(split.feature + 1) * self.n];
            let (l_rows, r_rows): (Vec<u32>, Vec<u32>) =
                rows.iter().partition(|&&i| col[i as usize] as usize <= split.bin);
            let (l, r) = (tree.feature.len(), tree.feature.len() + 1);
            tree.feature[node] = split.feature as i16;
            tree.value[node] = self.cuts[split.feature][split.bin];
            tree.left[node] = l as u16;
            tree.right[node] = r as u16;
            for _ in 0..2 {
                tree.feature.push(LEAF);
                tree.value.push(0.0);
                tree.left.push(0);
                tree.right.push(0);
            }
            leaves += 1;
            for (child, child_rows) in [(l, l_rows), (r, r_rows)] {
                let s = Self::sums(&child_rows, grad, hess);
                let sp = if child_rows.len() >= 2 * cfg.min_leaf {
                    self.best_split(&child_rows, grad, hess, s)
                } else {
                    None
                };
                open.push((child, child_rows, s, sp));
            }
        }
        for (node, rows, s, _) in open {
            let v = (-(s.g / (s.h + cfg.l2)) * cfg.learning_rate as f64) as f32;
            tree.value[node] = v;
            for i in rows {
                out[i as usize] = v;
            }
        }
        tree
    }
}

/// Fits a forest to `targets` (squared loss) with row weights. `x[i]` are row `i`'s features, all of
/// the same length. Deterministic.
pub fn fit<R: AsRef<[f32]>>(x: &[R], targets: &[f32], weights: &[f32], cfg: &TreeConfig) -> Result<Forest, String> {
    let n = x.len();
    if n == 0 || targets.len() != n || weights.len() != n {
        return Err("trees: rows, targets and weights differ in number or are empty".into());
    }
    let x: Vec<&[f32]> = x.iter().map(AsRef::as_ref).collect();
    let d = x[0].len();
    if x.iter().any(|r| r.len() != d) || d > i16::MAX as usize {
        return Err("trees: rows have different numbers of features".into());
    }
    if !(2..=4096).contains(&cfg.max_leaves) || !(2..=255).contains(&cfg.max_bins) || cfg.min_leaf == 0 {
        return Err("trees: max_leaves must be in 2..=4096, max_bins in 2..=255, min_leaf at least 1".into());
    }
    if targets.iter().chain(weights).any(|v| !v.is_finite()) {
        return Err("trees: targets and weights must be finite".into());
    }
    if !(cfg.learning_rate > 0.0 && cfg.learning_rate <= 1.0) || cfg.l2.is_nan() || cfg.l2 < 0.0 {
        return Err("trees: learning rate must be in (0, 1] and l2 >= 0".into());
    }
    let w: Vec<f64> = weights.iter().map(|&w| w.max(0.0) as f64).collect();
    let wsum: f64 = w.iter().sum();
    if wsum <= 0.0 {
        return Err("trees: all weights are zero".into());
    }
    let y: Vec<f64> = targets.iter().map(|&t| t as f64).collect();
    let base = y.iter().zip(&w).map(|(y, w)| y * w).sum::<f64>() / wsum;
    let mut cuts = Vec::with_capacity(d);
    let mut bins = vec![0u8; d * n];
    for f in 0..d {
        let mut col: Vec<f32> = x.iter().map(|r| clean(r[f])).collect();
        let c = thresholds(&mut col, cfg.max_bins);
        for (i, r) in x.iter().enumerate() {
            bins[f * n + i] = c.partition_point(|&t| t < clean(r[f])) as u8;
        }
        cuts.push(c);
    }
    let trainer = Trainer { cfg, n, bins, cuts };
    let mut pred = vec![base; n];
    let mut grad = vec![0.0f64; n];
    let mut out = vec![0.0f32; n];
    let mut trees = Vec::with_capacity(cfg.rounds);
    for _ in 0..cfg.rounds {
        for i in 0..n {
            grad[i] = w[i] * (pred[i] - y[i]);
        }
        let tree = trainer.grow(&grad, &w, &mut out);
        if tree.len() == 1 && tree.value[0].abs() < 1e-9 {
            break; // nothing left to learn
        }
        for (p, &o) in pred.iter_mut().zip(&out) {
            *p += o as f64;
        }
        trees.push(tree);
    }
    Ok(Forest {
        n_features: d,
        base: base as f32,
        trees,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mse(f: &Forest, x: &[Vec<f32>], y: &[f32]) -> f32 {
        x.iter().zip(y).map(|(r, &t)| (f.predict(r) - t).powi(2)).sum::<f32>() / y.len() as f32
    }

    /// A deterministic pseudo-random stream in [0, 1).
    fn lcg(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (*state >> 40) as f32 / (1u64 << 24) as f32
    }

    #[test]
    fn learns_a_step_and_an_interaction_that_a_line_cannot() {
        let mut s = 7u64;
        let x: Vec<Vec<f32>> = (0..2000).map(|_| vec![lcg(&mut s), lcg(&mut s), lcg(&mut s)]).collect();
        // y = 1 when both of the first two features are high (XOR-free interaction), feature 2 is noise
        let y: Vec<f32> = x
            .iter()
            .map(|r| if r[0] > 0.5 && r[1] > 0.5 { 1.0 } else { 0.0 })
            .collect();
        let w = vec![1.0; x.len()];
        let cfg = TreeConfig {
            rounds: 100,
            learning_rate: 0.2,
            ..TreeConfig::default()
        };
        let f = fit(&x, &y, &w, &cfg).unwrap();
        let constant = y.iter().map(|&t| (t - 0.25f32).powi(2)).sum::<f32>() / y.len() as f32;
        assert!(mse(&f, &x, &y) < 0.02 * constant, "{} vs {constant}", mse(&f, &x, &y));
        assert!(f.predict(&[0.9, 0.9, 0.1]) > 0.9);
        assert!(f.predict(&[0.9, 0.1, 0.9]) < 0.1);
        // the first tree starts with one of the two informative features, not the noise
        assert!(f.trees[0].feature[0] == 0 || f.trees[0].feature[0] == 1);
        f.validate().unwrap();
    }

    #[test]
    fn deterministic_and_round_trips_through_json() {
        let mut s = 3u64;
        let x: Vec<Vec<f32>> = (0..500)
            .map(|_| vec![lcg(&mut s), (lcg(&mut s) * 4.0).floor()])
            .collect();
        let y: Vec<f32> = x.iter().map(|r| r[0] * 0.5 + r[1] * 0.1).collect();
        let w = vec![1.0; x.len()];
        let cfg = TreeConfig::default();
        let a = fit(&x, &y, &w, &cfg).unwrap();
        assert_eq!(a, fit(&x, &y, &w, &cfg).unwrap());
        let back: Forest = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a, back);
        assert!(x.iter().all(|r| a.predict(r) == back.predict(r)));
    }

    #[test]
    fn leaves_respect_the_row_minimum_and_budget() {
        let x: Vec<Vec<f32>> = (0..100).map(|i| vec![i as f32]).collect();
        let y: Vec<f32> = (0..100).map(|i| (i % 7) as f32).collect();
        let w = vec![1.0; 100];
        let cfg = TreeConfig {
            rounds: 5,
            min_leaf: 30,
            max_leaves: 15,
            ..TreeConfig::default()
        };
        let f = fit(&x, &y, &w, &cfg).unwrap();
        for t in &f.trees {
            // 100 rows with >= 30 per leaf: at most 3 leaves
            assert!(t.feature.iter().filter(|&&v| v == LEAF).count() <= 3);
        }
        // a constant target needs no tree
        let flat = fit(&x, &vec![0.3; 100], &w, &cfg).unwrap();
        assert!(flat.trees.is_empty());
        assert!((flat.predict(&[5.0]) - 0.3).abs() < 1e-6);
    }

    /// One tree, no shrinkage and no L2, on values that sit exactly on the split points: each leaf is
    /// the weighted mean of its rows, and inference sends every value where training put it.
    #[test]
    fn leaves_are_weighted_means_and_ties_go_left() {
        let x: Vec<Vec<f32>> = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0].iter().map(|&v| vec![v]).collect();
        let (y, w) = ([0.0, 1.0, 1.0, 1.0, 1.0, 0.0], [3.0, 1.0, 1.0, 1.0, 1.0, 3.0]);
        let cfg = TreeConfig {
            rounds: 1,
            learning_rate: 1.0,
            min_leaf: 1,
            l2: 0.0,
            ..TreeConfig::default()
        };
        let f = fit(&x, &y, &w, &cfg).unwrap();
        for (v, want) in [(0.0, 0.25), (1.0, 1.0), (2.0, 0.25), (-5.0, 0.25), (9.0, 0.25)] {
            assert!((f.predict(&[v]) - want).abs() < 1e-6, "{v}: {}", f.predict(&[v]));
        }
    }

    fn leaf_of(t: &Tree, x: &[f32]) -> usize {
        let mut i = 0usize;
        while t.feature[i] != LEAF {
            let f = t.feature[i] as usize;
            i = if clean(x[f]) <= t.value[i] {
                t.left[i]
            } else {
                t.right[i]
            } as usize;
        }
        i
    }

    /// Inference sends every training row to the leaf training put it in: each leaf holds at least
    /// `min_leaf` rows, and its value is `-G / (H + l2)` over the rows inference routes there.
    /// Features with few values (ties on the split points), many values (quantile cuts) and NaN.
    #[test]
    fn inference_agrees_with_the_training_partition() {
        let mut s = 11u64;
        let mut next = || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 33) as u32
        };
        for (card, n) in [(3u32, 300usize), (50, 1000), (100_000, 3000), (7, 50)] {
            let x: Vec<Vec<f32>> = (0..n)
                .map(|_| vec![(next() % card) as f32 * 0.5, (next() % 4) as f32, f32::NAN])
                .collect();
            let y: Vec<f32> = x
                .iter()
                .map(|r| (r[0] as u32 % 5) as f32 * 0.2 + r[1] * 0.1 + (next() % 10) as f32 * 0.01)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 3) as f32).collect();
            for min_leaf in [1usize, 5, 40] {
                let cfg = TreeConfig {
                    rounds: 1,
                    learning_rate: 1.0,
                    min_leaf,
                    max_leaves: 31,
                    ..TreeConfig::default()
                };
                let f = fit(&x, &y, &w, &cfg).unwrap();
                let Some(t) = f.trees.first() else {
                    // no split can leave min_leaf rows on both sides, and the base already fits
                    assert!(n < 2 * min_leaf, "{card}/{min_leaf}: no tree");
                    continue;
                };
                let (mut g, mut h, mut c) = (vec![0f64; t.len()], vec![0f64; t.len()], vec![0usize; t.len()]);
                for i in 0..n {
                    let l = leaf_of(t, &x[i]);
                    g[l] += w[i] as f64 * (f.base as f64 - y[i] as f64);
                    h[l] += w[i] as f64;
                    c[l] += 1;
                }
                for l in (0..t.len()).filter(|&l| t.feature[l] == LEAF) {
                    assert!(c[l] >= min_leaf, "{card}/{min_leaf}: leaf {l} has {} rows", c[l]);
                    let v = -g[l] / (h[l] + cfg.l2);
                    assert!(
                        (v - t.value[l] as f64).abs() < 1e-4,
                        "{card}/{min_leaf}: leaf {l}: {v} vs {}",
                        t.value[l]
                    );
                }
            }
        }
    }

    #[test]
    fn weights_count_and_bad_input_is_an_error() {
        // the same x twice with different targets: the weighted mean wins
        let x = vec![vec![0.0f32]; 2];
        let f = fit(&x, &[0.0, 1.0], &[3.0, 1.0], &TreeConfig::default()).unwrap();
        assert!((f.predict(&[0.0]) - 0.25).abs() < 1e-6);
        assert!(fit::<Vec<f32>>(&[], &[], &[], &TreeConfig::default()).is_err());
        assert!(fit(&x, &[0.0], &[1.0, 1.0], &TreeConfig::default()).is_err());
        assert!(fit(&x, &[0.0, 1.0], &[0.0, 0.0], &TreeConfig::default()).is_err());
        let bad = TreeConfig {
            learning_rate: 0.0,
            ..TreeConfig::default()
        };
        assert!(fit(&x, &[0.0, 1.0], &[1.0, 1.0], &bad).is_err());
        let bad = TreeConfig {
            min_leaf: 0,
            ..TreeConfig::default()
        };
        assert!(fit(&x, &[0.0, 1.0], &[1.0, 1.0], &bad).is_err());
        assert!(fit(&x, &[f32::INFINITY, 1.0], &[1.0, 1.0], &TreeConfig::default()).is_err());
        assert!(fit(&x, &[0.0, 1.0], &[f32::NAN, 1.0], &TreeConfig::default()).is_err());
    }

    #[test]
    fn validate_rejects_cycles_and_bad_features() {
        let t = Tree {
            feature: vec![0, LEAF, LEAF],
            value: vec![0.5, 1.0, 2.0],
            left: vec![1, 0, 0],
            right: vec![2, 0, 0],
        };
        let mut f = Forest {
            n_features: 1,
            base: 0.0,
            trees: vec![t],
        };
        f.validate().unwrap();
        assert_eq!(f.predict(&[0.2]), 1.0);
        assert_eq!(f.predict(&[0.7]), 2.0);
        assert_eq!(f.predict(&[]), 1.0, "missing features read as 0");
        f.trees[0].left[0] = 0; // a loop
        assert!(f.validate().is_err());
        f.trees[0].left[0] = 1;
        f.trees[0].feature[0] = 1; // no such feature
        assert!(f.validate().is_err());
        f.trees[0].feature[0] = 0;
        f.trees[0].value[1] = f32::NAN;
        assert!(f.validate().is_err());
        // finite leaves whose sum would overflow
        f.trees[0].value[1] = f32::MAX;
        f.trees.push(f.trees[0].clone());
        assert!(f.validate().is_err());
    }
}
