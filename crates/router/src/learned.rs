//! The learned scorer: cheap dense features plus hashed word/char n-grams into an L2-regularised
//! logistic regression, trained with L-BFGS by [`train`]. Weights serialise to a small JSON file; the
//! default weights ship inside the crate (`weights/default.json`).

use crate::conversation::Conversation;
use crate::features::{
    DENSE_NAMES, GENERAL_DENSE, HashConfig, NUMERIC_END, Sparse, TextStats, dense_features, hashed_ngrams,
};
use crate::metrics::{Curve, Outcome};
use crate::scorer::{Scorer, sigmoid};
use crate::trees::{self, Forest, TreeConfig};
use serde::{Deserialize, Serialize};

/// The weights that ship with the crate.
pub const EMBEDDED_WEIGHTS: &str = include_str!("../weights/default.json");

const FORMAT: &str = "optiroute-router/logreg";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported weights format {0:?} (expected {FORMAT:?} version 1)")]
    Format(String),
    #[error("weights file is inconsistent: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training examples")]
    Empty,
    #[error("invalid training config: {0}")]
    Config(String),
}

/// What the model learns to predict from the two models' outcomes `s` (strong) and `w` (weak) in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Two logistic heads, `P(strong correct)` and `P(weak wrong)`; the score is their mean,
    /// `(1 + P(s) - P(w)) / 2`, which orders prompts by the strong model's expected quality gain.
    #[default]
    TwoHeads,
    /// One head on the soft label `(1 + s - w) / 2` (same meaning as `TwoHeads`, fitted directly).
    Gain,
    /// Label `max(s - w, 0)`: the probability that only the strong model gets it right.
    StrongNeeded,
    /// Label `1 - w`: the probability that the weak model fails.
    WeakWrong,
    /// Label `s`: the probability that the strong model succeeds.
    StrongCorrect,
}

impl Target {
    /// The soft label of each head for outcomes `strong`, `weak`.
    pub fn labels(self, strong: f64, weak: f64) -> Vec<f32> {
        let (s, w) = (strong.clamp(0.0, 1.0), weak.clamp(0.0, 1.0));
        let v = match self {
            Target::TwoHeads => vec![s, 1.0 - w],
            Target::Gain => vec![(1.0 + s - w) / 2.0],
            Target::StrongNeeded => vec![(s - w).max(0.0)],
            Target::WeakWrong => vec![1.0 - w],
            Target::StrongCorrect => vec![s],
        };
        v.into_iter().map(|x| x as f32).collect()
    }

    pub fn heads(self) -> usize {
        if self == Target::TwoHeads { 2 } else { 1 }
    }
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub hash: HashConfig,
    /// L2 penalty on all weights but the bias, relative to the summed loss: the objective is
    /// `sum_i loss_i + l2 / 2 * |w|^2`, so the same value suits small and large training sets.
    pub l2: f64,
    /// Extra L2 multiplier for the dense features. They are few and standardised, but on the
    /// benchmark files they overfit unless shrunk hard (cross-validation picked 100).
    pub dense_l2_mult: f64,
    /// L2 multiplier for the numeric-structure features (the dense features from [`GENERAL_DENSE`] to
    /// [`NUMERIC_END`]; the ones after them get `dense_l2_mult`); cross-validation on GSM8K picked 10.
    #[serde(default = "default_numeric_l2_mult")]
    pub numeric_l2_mult: f64,
    /// Neighbour-outcome features: the mean labels of the `knn_k` training prompts most similar to
    /// the prompt (idf-weighted cosine over the hashed n-grams), plus their mean similarity; 0 = off.
    /// The index of the training prompts ships with the weights.
    #[serde(default)]
    pub knn_k: usize,
    /// Hashed n-grams kept per stored training prompt (the largest idf-weighted ones).
    #[serde(default = "default_knn_top")]
    pub knn_top: usize,
    /// L2 multiplier for the neighbour-outcome features.
    #[serde(default = "default_knn_l2_mult")]
    pub knn_l2_mult: f64,
    /// Also feed the neighbour features to the logistic heads (else they are only blended).
    #[serde(default)]
    pub knn_stack: bool,
    /// Weight of the neighbours' mean label in the score: `(1 - a) * heads + a * neighbours`.
    #[serde(default)]
    pub knn_blend: f32,
    pub max_iters: usize,
    pub target: Target,
    /// Use the dense (count/signal) features.
    pub dense: bool,
    /// Group smoothing in [0, 1]: a training row's label becomes `(1 - a) * own + a * mean of its
    /// group` (rows with a `subject`/`category`). Denoises per-prompt 0/1 outcomes; inference is unchanged.
    #[serde(default)]
    pub group_smooth: f32,
    /// Boosted trees on the raw dense features, fitted to the gain label `(1 + s - w) / 2` and blended
    /// with the heads' score (`trees.rounds = 0`: none). Needs a two-head or gain target.
    #[serde(default = "no_trees")]
    pub trees: TreeConfig,
    /// Weight of the trees in the score, `(1 - a) * heads + a * trees`. `None`: chosen from
    /// [`BLEND_GRID`] by 5-fold cross-validation inside the training set (the APGR of the blend).
    #[serde(default)]
    pub tree_blend: Option<f32>,
    /// Leaf sizes (the fewest rows a leaf) tried by the same inner cross-validation, together with the
    /// blend weight. Empty: `trees.min_leaf`, fixed. Small training sets (a few hundred prompts) want
    /// smaller leaves than large ones.
    #[serde(default)]
    pub tree_min_leaf_grid: Vec<usize>,
}

fn no_trees() -> TreeConfig {
    TreeConfig {
        rounds: 0,
        ..TreeConfig::default()
    }
}

/// Tree blend weights tried when [`TrainConfig::tree_blend`] is `None`.
pub const BLEND_GRID: [f32; 7] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
/// Leaf sizes tried by default ([`TrainConfig::tree_min_leaf_grid`]); on ties the larger wins.
pub const MIN_LEAF_GRID: [usize; 3] = [40, 20, 10];
/// Folds of the inner cross-validation that picks the blend weight, and the seed of their shuffle.
const BLEND_FOLDS: usize = 5;
const BLEND_SEED: u64 = 7;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hash: HashConfig::default(),
            l2: 2.5,
            dense_l2_mult: 100.0,
            numeric_l2_mult: default_numeric_l2_mult(),
            knn_k: 0,
            knn_top: default_knn_top(),
            knn_l2_mult: default_knn_l2_mult(),
            knn_stack: false,
            knn_blend: 0.0,
            max_iters: 150,
            target: Target::TwoHeads,
            dense: true,
            group_smooth: 0.5,
            trees: TreeConfig::default(),
            tree_blend: None,
            tree_min_leaf_grid: MIN_LEAF_GRID.to_vec(),
        }
    }
}

fn default_numeric_l2_mult() -> f64 {
    10.0
}

fn default_knn_top() -> usize {
    48
}

fn default_knn_l2_mult() -> f64 {
    1.0
}

/// One training example: a conversation and one soft label in [0, 1] per head
/// (see [`Target::labels`]).
#[derive(Clone, Debug)]
pub struct Example {
    pub conv: Conversation,
    pub labels: Vec<f32>,
    pub weight: f32,
    /// The labels before group smoothing, when smoothing changed them. Only the choice of the tree
    /// blend reads them: judged against smoothed labels, a held-out row would carry the outcomes of
    /// the training rows of its group.
    pub unsmoothed: Option<Vec<f32>>,
}

/// A training example given as precomputed features instead of a conversation (e.g. logged by the
/// gateway, see [`crate::traffic`]): `sparse` hashed with the training [`HashConfig`], `dense` the raw
/// (unstandardised) [`dense_features`], one soft label per head.
#[derive(Clone, Debug)]
pub struct FeatureExample {
    pub sparse: Sparse,
    pub dense: Vec<f32>,
    pub labels: Vec<f32>,
    pub weight: f32,
}

/// One logistic head over the shared features.
#[derive(Clone, Debug, PartialEq)]
struct Head {
    bias: f32,
    dense_w: Vec<f32>,
    /// One weight per hash bucket, already quantised (`q * hashed_scale`).
    hashed_w: Vec<f32>,
    hashed_scale: f32,
}

/// A trained logistic-regression scorer (one or two heads over shared features).
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedScorer {
    hash: HashConfig,
    target: Target,
    dense_mean: Vec<f32>,
    dense_std: Vec<f32>,
    heads: Vec<Head>,
    knn: Option<KnnIndex>,
    boost: Option<Boost>,
    meta: serde_json::Value,
}

/// What the training chose for the boosted trees: their weight in the score and the fewest rows a
/// leaf was allowed (0 without trees, or in weights from before it was recorded).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TreeFit {
    pub blend: f32,
    pub min_leaf: usize,
}

/// Boosted trees over the raw dense features and their weight in the score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Boost {
    blend: f32,
    /// The fewest rows a leaf was allowed (informational; 0 in weights from before it was recorded).
    #[serde(default)]
    min_leaf: usize,
    forest: Forest,
}

#[derive(Serialize, Deserialize)]
struct HeadFile {
    bias: f32,
    dense_w: Vec<f32>,
    /// Hashed weights quantised to i16 (little endian), base64.
    hashed_scale: f32,
    hashed_q16_b64: String,
}

#[derive(Serialize, Deserialize)]
struct WeightsFile {
    format: String,
    version: u32,
    target: Target,
    hash: HashConfig,
    dense_names: Vec<String>,
    dense_mean: Vec<f32>,
    dense_std: Vec<f32>,
    heads: Vec<HeadFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    knn: Option<KnnFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trees: Option<Boost>,
    #[serde(default)]
    meta: serde_json::Value,
}

impl LearnedScorer {
    /// The scorer with the weights embedded in the crate.
    pub fn embedded() -> Result<Self, WeightsError> {
        Self::from_json(EMBEDDED_WEIGHTS)
    }

    pub fn from_json(text: &str) -> Result<Self, WeightsError> {
        let f: WeightsFile = serde_json::from_str(text)?;
        if f.format != FORMAT || f.version != 1 {
            return Err(WeightsError::Format(format!("{} v{}", f.format, f.version)));
        }
        let knn = match &f.knn {
            Some(k) => Some(KnnIndex::from_file(k, f.hash.bits, f.target.heads())?),
            None => None,
        };
        let names = dense_names(knn.as_ref().map_or(0, KnnIndex::n_stacked));
        let d = names.len();
        if f.dense_names
            .iter()
            .map(String::as_str)
            .ne(names.iter().map(String::as_str))
            || f.dense_mean.len() != d
            || f.dense_std.len() != d
        {
            return Err(WeightsError::Invalid("dense features do not match this build".into()));
        }
        if let Some(b) = &f.trees {
            if !(0.0..=1.0).contains(&b.blend) || b.forest.n_features != DENSE_NAMES.len() {
                return Err(WeightsError::Invalid("trees do not match this build".into()));
            }
            b.forest.validate().map_err(WeightsError::Invalid)?;
        }
        if !(1..=24).contains(&f.hash.bits) {
            return Err(WeightsError::Invalid(format!("hash bits {}", f.hash.bits)));
        }
        if f.heads.len() != f.target.heads() {
            return Err(WeightsError::Invalid(format!(
                "{} heads for target {:?}",
                f.heads.len(),
                f.target
            )));
        }
        let dim = 1usize << f.hash.bits;
        let mut heads = Vec::with_capacity(f.heads.len());
        for h in f.heads {
            if h.dense_w.len() != d {
                return Err(WeightsError::Invalid("dense weights do not match this build".into()));
            }
            let bytes = base64_decode(&h.hashed_q16_b64)
                .ok_or_else(|| WeightsError::Invalid("hashed weights are not base64".into()))?;
            if bytes.len() != dim * 2 {
                return Err(WeightsError::Invalid(format!(
                    "{} bytes of hashed weights for {dim} buckets",
                    bytes.len()
                )));
            }
            let hashed_w = bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 * h.hashed_scale)
                .collect();
            heads.push(Head {
                bias: h.bias,
                dense_w: h.dense_w,
                hashed_w,
                hashed_scale: h.hashed_scale,
            });
        }
        Ok(LearnedScorer {
            hash: f.hash,
            target: f.target,
            dense_mean: f.dense_mean,
            dense_std: f.dense_std,
            heads,
            knn,
            boost: f.trees,
            meta: f.meta,
        })
    }

    pub fn to_json(&self) -> Result<String, WeightsError> {
        let heads = self
            .heads
            .iter()
            .map(|h| {
                let mut bytes = Vec::with_capacity(h.hashed_w.len() * 2);
                for &w in &h.hashed_w {
                    bytes.extend_from_slice(&quantise(w, h.hashed_scale).to_le_bytes());
                }
                HeadFile {
                    bias: h.bias,
                    dense_w: h.dense_w.clone(),
                    hashed_scale: h.hashed_scale,
                    hashed_q16_b64: base64_encode(&bytes),
                }
            })
            .collect();
        let f = WeightsFile {
            format: FORMAT.into(),
            version: 1,
            target: self.target,
            hash: self.hash.clone(),
            dense_names: dense_names(self.knn.as_ref().map_or(0, KnnIndex::n_stacked)),
            dense_mean: self.dense_mean.clone(),
            dense_std: self.dense_std.clone(),
            heads,
            knn: self.knn.as_ref().map(KnnIndex::to_file),
            trees: self.boost.clone(),
            meta: self.meta.clone(),
        };
        Ok(serde_json::to_string(&f)?)
    }

    pub fn target(&self) -> Target {
        self.target
    }

    /// Free-form training metadata stored with the weights (data files, config, sizes).
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    pub fn set_meta(&mut self, meta: serde_json::Value) {
        self.meta = meta;
    }

    /// The weight of the boosted trees in the score (0 without trees).
    pub fn tree_blend(&self) -> f32 {
        self.boost.as_ref().map_or(0.0, |b| b.blend)
    }

    /// The trees' weight and leaf size (zeros without trees).
    pub fn tree_fit(&self) -> TreeFit {
        self.boost.as_ref().map_or(TreeFit::default(), |b| TreeFit {
            blend: b.blend,
            min_leaf: b.min_leaf,
        })
    }

    /// The n-gram hashing these weights were trained with.
    pub fn hash_config(&self) -> &HashConfig {
        &self.hash
    }

    /// The logit of each head (before the sigmoid).
    pub fn logits(&self, conv: &Conversation) -> Vec<f32> {
        let text = conv.last_user();
        let stats = TextStats::of(text);
        self.logits_from_features(&hashed_ngrams(text, &self.hash), &dense_features(conv, &stats))
    }

    /// [`LearnedScorer::logits`] from precomputed features: `sparse` hashed with
    /// [`LearnedScorer::hash_config`], `dense` the raw [`dense_features`]. Buckets outside the hash
    /// space are ignored.
    pub fn logits_from_features(&self, sparse: &[(u32, f32)], dense: &[f32]) -> Vec<f32> {
        let knn = self
            .knn
            .as_ref()
            .filter(|k| k.stacked)
            .map(|k| k.features(sparse, None))
            .unwrap_or_default();
        self.logits_with(sparse, dense, &knn)
    }

    /// The heads' logits given the neighbour features to stack (empty when not stacked).
    fn logits_with(&self, sparse: &[(u32, f32)], dense: &[f32], knn: &[f32]) -> Vec<f32> {
        let dense: Vec<f32> = dense
            .iter()
            .chain(knn)
            .zip(self.dense_mean.iter().zip(&self.dense_std))
            .map(|(&x, (&m, &s))| standardise(x, m, s))
            .collect();
        self.heads
            .iter()
            .map(|h| {
                let mut z = h.bias;
                for (w, x) in h.dense_w.iter().zip(&dense) {
                    z += w * x;
                }
                for &(b, v) in sparse {
                    z += h.hashed_w.get(b as usize).copied().unwrap_or(0.0) * v;
                }
                z
            })
            .collect()
    }
}

impl Scorer for LearnedScorer {
    fn name(&self) -> &str {
        "learned"
    }
    /// The mean of the heads' probabilities: for `TwoHeads`, `(1 + P(strong ok) - P(weak ok)) / 2`.
    /// With a neighbour index, blended with the neighbours' mean label (see [`TrainConfig::knn_blend`]).
    /// With boosted trees, blended with the trees' estimate of the gain (see [`TrainConfig::trees`]).
    fn score(&self, conv: &Conversation) -> f32 {
        let text = conv.last_user();
        let stats = TextStats::of(text);
        self.score_from_features(&hashed_ngrams(text, &self.hash), &dense_features(conv, &stats))
    }
}

impl LearnedScorer {
    /// [`Scorer::score`] from precomputed features (as [`LearnedScorer::logits_from_features`]).
    pub fn score_from_features(&self, sparse: &[(u32, f32)], dense: &[f32]) -> f32 {
        let p = self.heads_score(sparse, dense);
        match &self.boost {
            Some(b) if b.blend > 0.0 => {
                let t = b.forest.predict(dense);
                if t.is_finite() {
                    ((1.0 - b.blend) * p + b.blend * t).clamp(0.0, 1.0)
                } else {
                    p
                }
            }
            _ => p,
        }
    }

    /// The heads' score, blended with the neighbours' labels when there is an index.
    fn heads_score(&self, sparse: &[(u32, f32)], dense: &[f32]) -> f32 {
        let Some(knn) = &self.knn else {
            return mean_prob(&self.logits_with(sparse, dense, &[]));
        };
        let f = knn.features(sparse, None);
        let stacked: &[f32] = if knn.stacked { &f } else { &[] };
        let p = mean_prob(&self.logits_with(sparse, dense, stacked));
        let nb = f[..knn.n_heads].iter().sum::<f32>() / knn.n_heads.max(1) as f32;
        (1.0 - knn.blend) * p + knn.blend * nb
    }
}

/// Mean of the heads' probabilities; 0.5 when a logit is not finite.
fn mean_prob(logits: &[f32]) -> f32 {
    if logits.is_empty() || logits.iter().any(|z| !z.is_finite()) {
        return 0.5;
    }
    logits.iter().map(|&z| sigmoid(z)).sum::<f32>() / logits.len() as f32
}

fn quantise(w: f32, scale: f32) -> i16 {
    if scale > 0.0 {
        (w / scale).round().clamp(-32767.0, 32767.0) as i16
    } else {
        0
    }
}

/// Smallest standard deviation used to scale a dense feature (rare features stay bounded).
const STD_FLOOR: f32 = 0.05;
/// Standardised dense features are clipped to this many standard deviations.
const CLIP: f32 = 4.0;

fn standardise(x: f32, mean: f32, std: f32) -> f32 {
    ((x - mean) / std.max(STD_FLOOR)).clamp(-CLIP, CLIP)
}

/// Precomputed features of one example.
#[derive(Clone)]
struct Row {
    sparse: Sparse,
    dense: Vec<f32>,
    labels: Vec<f64>,
    weight: f64,
    /// The gain label `(1 + s - w) / 2` of the unsmoothed outcomes (see [`gain_label`]).
    truth: f32,
}

/// Trains a scorer on `examples`. Deterministic: the same examples and config give the same weights.
pub fn train(examples: &[Example], cfg: &TrainConfig) -> Result<LearnedScorer, TrainError> {
    train_with_features(examples, &[], cfg)
}

/// [`train`] on conversations plus examples given as precomputed features (hashed with `cfg.hash`).
pub fn train_with_features(
    examples: &[Example],
    precomputed: &[FeatureExample],
    cfg: &TrainConfig,
) -> Result<LearnedScorer, TrainError> {
    if examples.is_empty() && precomputed.is_empty() {
        return Err(TrainError::Empty);
    }
    if !(4..=22).contains(&cfg.hash.bits) {
        return Err(TrainError::Config(format!("hash bits {} not in 4..=22", cfg.hash.bits)));
    }
    if cfg.l2.is_nan() || cfg.l2 <= 0.0 {
        return Err(TrainError::Config("l2 must be > 0".into()));
    }
    let dim_h = 1usize << cfg.hash.bits;
    let d = DENSE_NAMES.len();
    let mut rows: Vec<Row> = examples
        .iter()
        .map(|e| {
            let text = e.conv.last_user();
            let stats = TextStats::of(text);
            Row {
                sparse: hashed_ngrams(text, &cfg.hash),
                dense: dense_features(&e.conv, &stats),
                labels: clamped(&e.labels),
                weight: e.weight.max(0.0) as f64,
                truth: gain_label(&clamped(e.unsmoothed.as_ref().unwrap_or(&e.labels)), cfg.target),
            }
        })
        .collect();
    for (i, e) in precomputed.iter().enumerate() {
        if e.dense.len() != d || e.sparse.iter().any(|&(b, _)| b as usize >= dim_h) {
            return Err(TrainError::Config(format!(
                "precomputed example {i} does not fit: {} dense features (expected {d}) or buckets beyond 2^{}",
                e.dense.len(),
                cfg.hash.bits
            )));
        }
        let labels = clamped(&e.labels);
        rows.push(Row {
            sparse: e.sparse.clone(),
            dense: e.dense.clone(),
            truth: gain_label(&labels, cfg.target),
            labels,
            weight: e.weight.max(0.0) as f64,
        });
    }
    let n_heads = cfg.target.heads();
    if rows.iter().any(|r| r.labels.len() != n_heads) {
        return Err(TrainError::Config(format!(
            "examples need {n_heads} labels for {:?}",
            cfg.target
        )));
    }
    let gain_target = matches!(cfg.target, Target::TwoHeads | Target::Gain);
    if cfg.tree_blend.is_some() && !gain_target {
        return Err(TrainError::Config(format!(
            "boosted trees (--tree-blend) need a two_heads or gain target, not {:?}",
            cfg.target
        )));
    }
    if cfg.tree_blend.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
        return Err(TrainError::Config("tree blend must be in [0, 1]".into()));
    }
    if cfg.tree_min_leaf_grid.contains(&0) {
        return Err(TrainError::Config("tree leaf sizes must be at least 1".into()));
    }
    // the other targets have no gain for the trees to fit: they get none
    let boost = if cfg.trees.rounds > 0 && gain_target {
        fit_boost(&rows, cfg)?
    } else {
        None
    };
    let mut model = fit_heads(rows, cfg)?;
    model.boost = boost;
    model.meta = serde_json::json!({ "examples": examples.len() + precomputed.len(), "config": cfg });
    Ok(model)
}

fn clamped(labels: &[f32]) -> Vec<f64> {
    labels.iter().map(|&l| l.clamp(0.0, 1.0) as f64).collect()
}

/// The gain label `(1 + s - w) / 2` of a row's labels, which the trees fit (for a two-head or gain
/// target; the first label otherwise).
fn gain_label(labels: &[f64], target: Target) -> f32 {
    match (target, labels) {
        // labels are `s` and `1 - w`
        (Target::TwoHeads, [s, not_w]) => ((s + not_w) / 2.0) as f32,
        (_, [first, ..]) => *first as f32,
        _ => 0.5,
    }
}

/// Fits the trees on all rows, with their blend weight and leaf size given or picked by inner
/// cross-validation. `None` when the trees learned nothing (too few rows for a leaf, or a constant label).
fn fit_boost(rows: &[Row], cfg: &TrainConfig) -> Result<Option<Boost>, TrainError> {
    // the rows' dense features are still the raw ones: neighbour features are stacked later, on copies
    let x: Vec<&[f32]> = rows.iter().map(|r| r.dense.as_slice()).collect();
    let y: Vec<f32> = rows.iter().map(|r| gain_label(&r.labels, cfg.target)).collect();
    let w: Vec<f32> = rows.iter().map(|r| r.weight as f32).collect();
    let leaf_grid: Vec<usize> = if cfg.tree_min_leaf_grid.is_empty() {
        vec![cfg.trees.min_leaf]
    } else {
        cfg.tree_min_leaf_grid.clone()
    };
    // No split can leave the smallest leaf on both sides, or nothing varies: no trees, and no inner
    // cross-validation to find that out.
    let smallest = leaf_grid.iter().copied().min().unwrap_or(cfg.trees.min_leaf);
    if rows.len() < 2 * smallest || y.iter().all(|&v| v == y[0]) {
        return Ok(None);
    }
    let (blend, min_leaf) = match (cfg.tree_blend, leaf_grid.as_slice()) {
        (Some(a), [m]) => (a, *m),
        // trees with no weight: their leaf size changes nothing
        (Some(a), [m, ..]) if a == 0.0 => (a, *m),
        _ => pick_trees(rows, &x, &y, &w, cfg, &leaf_grid)?,
    };
    let tcfg = TreeConfig {
        min_leaf,
        ..cfg.trees.clone()
    };
    let forest = trees::fit(&x, &y, &w, &tcfg).map_err(TrainError::Config)?;
    forest.validate().map_err(TrainError::Config)?;
    if forest.trees.is_empty() {
        return Ok(None);
    }
    Ok(Some(Boost {
        blend,
        min_leaf,
        forest,
    }))
}

/// The tree weight (from [`BLEND_GRID`], or the fixed one) and leaf size (from `leaf_grid`) whose blend
/// orders best (APGR) the out-of-fold scores of an inner cross-validation on the training rows (heads
/// and trees refitted per fold). Ties go to the smaller weight, then to the earlier leaf size; too few
/// rows give weight 0 (or the fixed one) and the first leaf size.
fn pick_trees(
    rows: &[Row],
    x: &[&[f32]],
    y: &[f32],
    w: &[f32],
    cfg: &TrainConfig,
    leaf_grid: &[usize],
) -> Result<(f32, usize), TrainError> {
    let fixed = cfg.tree_blend.map(|a| [a]);
    let blends: &[f32] = match &fixed {
        Some(a) => a,
        None => &BLEND_GRID,
    };
    // too few rows, or no gain to order by
    let fallback = (
        cfg.tree_blend.unwrap_or(0.0),
        leaf_grid.first().copied().unwrap_or(cfg.trees.min_leaf),
    );
    let n = rows.len();
    if n < 4 * BLEND_FOLDS {
        return Ok(fallback);
    }
    let fold = crate::eval::folds(n, BLEND_FOLDS, BLEND_SEED);
    let mut heads = vec![0.0f32; n];
    let mut forest = vec![vec![0.0f32; n]; leaf_grid.len()];
    for f in 0..BLEND_FOLDS {
        let inside = |i: &usize| fold[*i] != f;
        let train_rows: Vec<Row> = (0..n).filter(inside).map(|i| rows[i].clone()).collect();
        let pick = |v: &[f32]| -> Vec<f32> { (0..n).filter(inside).map(|i| v[i]).collect() };
        let xs: Vec<&[f32]> = (0..n).filter(inside).map(|i| x[i]).collect();
        let (ys, ws) = (pick(y), pick(w));
        let model = fit_heads(train_rows, cfg)?;
        for i in (0..n).filter(|&i| fold[i] == f) {
            heads[i] = model.heads_score(&rows[i].sparse, x[i]);
        }
        for (g, &min_leaf) in leaf_grid.iter().enumerate() {
            let tcfg = TreeConfig {
                min_leaf,
                ..cfg.trees.clone()
            };
            let trees = trees::fit(&xs, &ys, &ws, &tcfg).map_err(TrainError::Config)?;
            for i in (0..n).filter(|&i| fold[i] == f) {
                forest[g][i] = trees.predict(x[i]);
            }
        }
    }
    // Judged on the rows' own outcomes, not the group-smoothed labels. The curve depends only on the
    // strong-minus-weak difference, `2 * gain - 1`. Blends are compared by the area between their
    // curve and random routing, unnormalised (APGR times the quality gap), as APGR itself would
    // prefer the worst order if the weak model were better on these rows. Row weights are not used.
    let outcomes: Vec<Outcome> = rows
        .iter()
        .map(|r| r.truth)
        .map(|g| Outcome {
            strong: 2.0 * g as f64 - 1.0,
            weak: 0.0,
        })
        .collect();
    let mut best = (fallback, f64::NEG_INFINITY);
    for &a in blends {
        for (g, &min_leaf) in leaf_grid.iter().enumerate() {
            let s: Vec<f32> = heads
                .iter()
                .zip(&forest[g])
                .map(|(h, t)| (1.0 - a) * h + a * t)
                .collect();
            let Ok(c) = Curve::from_scores(&s, &outcomes) else {
                return Ok(fallback);
            };
            let area = (c.apgr() - 0.5) * (c.q_strong - c.q_weak);
            if area > best.1 + 1e-12 {
                best = ((a, min_leaf), area);
            }
            if a == 0.0 {
                break; // without the trees their leaf size changes nothing
            }
        }
    }
    Ok(best.0)
}

/// Fits the logistic heads (and the neighbour index) on prepared rows.
fn fit_heads(mut rows: Vec<Row>, cfg: &TrainConfig) -> Result<LearnedScorer, TrainError> {
    let dim_h = 1usize << cfg.hash.bits;
    let d = DENSE_NAMES.len();
    let n_heads = cfg.target.heads();
    // neighbour-outcome features: each training row's neighbours among the other training rows
    let knn = if cfg.knn_k > 0 && rows.len() > 1 {
        let index = KnnIndex::build(&rows, cfg, n_heads);
        if index.stacked {
            for (i, r) in rows.iter_mut().enumerate() {
                r.dense.extend(index.features(&r.sparse, Some(i)));
            }
        }
        Some(index)
    } else {
        None
    };
    let d = d + knn.as_ref().map_or(0, KnnIndex::n_stacked);
    // standardise dense features
    let wsum: f64 = rows.iter().map(|r| r.weight).sum::<f64>().max(1e-12);
    let mut mean = vec![0.0f64; d];
    let mut var = vec![0.0f64; d];
    for r in &rows {
        for (m, &x) in mean.iter_mut().zip(&r.dense) {
            *m += r.weight * x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= wsum);
    for r in &rows {
        for ((v, &x), m) in var.iter_mut().zip(&r.dense).zip(&mean) {
            let x = x as f64 - m;
            *v += r.weight * x * x;
        }
    }
    let std: Vec<f64> = var.iter().map(|v| (v / wsum).sqrt().max(STD_FLOOR as f64)).collect();
    for r in &mut rows {
        for j in 0..d {
            r.dense[j] = if cfg.dense {
                standardise(r.dense[j], mean[j] as f32, std[j] as f32)
            } else {
                0.0
            };
        }
    }
    // parameters: [hashed (dim_h) | dense (d) | bias]
    let n_params = dim_h + d + 1;
    let mut l2 = vec![cfg.l2; n_params];
    let l2_mean = cfg.l2 / wsum;
    l2.iter_mut().for_each(|v| *v = l2_mean);
    for (j, v) in l2[dim_h..dim_h + d].iter_mut().enumerate() {
        let mult = if j < GENERAL_DENSE {
            cfg.dense_l2_mult
        } else if j < NUMERIC_END {
            cfg.numeric_l2_mult
        } else if j < DENSE_NAMES.len() {
            cfg.dense_l2_mult
        } else {
            cfg.knn_l2_mult
        };
        *v = l2_mean * mult;
    }
    l2[n_params - 1] = 0.0;
    let mut heads = Vec::with_capacity(n_heads);
    for head in 0..n_heads {
        let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut loss = 0.0;
            for r in &rows {
                let mut z = w[n_params - 1];
                for &(b, v) in &r.sparse {
                    z += w[b as usize] * v as f64;
                }
                for (j, &x) in r.dense.iter().enumerate() {
                    z += w[dim_h + j] * x as f64;
                }
                // cross-entropy with soft label, numerically stable
                let lse = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                loss += r.weight * (lse - r.labels[head] * z);
                let p = 1.0 / (1.0 + (-z).exp());
                let g = r.weight * (p - r.labels[head]);
                for &(b, v) in &r.sparse {
                    grad[b as usize] += g * v as f64;
                }
                for (j, &x) in r.dense.iter().enumerate() {
                    grad[dim_h + j] += g * x as f64;
                }
                grad[n_params - 1] += g;
            }
            loss /= wsum;
            grad.iter_mut().for_each(|g| *g /= wsum);
            for i in 0..n_params {
                if l2[i] > 0.0 {
                    loss += 0.5 * l2[i] * w[i] * w[i];
                    grad[i] += l2[i] * w[i];
                }
            }
            loss
        };
        let w = lbfgs(n_params, cfg.max_iters, objective);

        let max_abs = w[..dim_h].iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let scale = if max_abs > 0.0 { (max_abs / 32767.0) as f32 } else { 0.0 };
        let hashed_w = w[..dim_h]
            .iter()
            .map(|&x| quantise(x as f32, scale) as f32 * scale)
            .collect();
        heads.push(Head {
            bias: w[n_params - 1] as f32,
            dense_w: w[dim_h..dim_h + d].iter().map(|&x| x as f32).collect(),
            hashed_w,
            hashed_scale: scale,
        });
    }
    Ok(LearnedScorer {
        hash: cfg.hash.clone(),
        target: cfg.target,
        dense_mean: mean.iter().map(|&m| m as f32).collect(),
        dense_std: std.iter().map(|&s| s as f32).collect(),
        heads,
        knn,
        boost: None,
        meta: serde_json::Value::Null,
    })
}

/// [`DENSE_NAMES`] followed by the names of `knn` neighbour-outcome features.
fn dense_names(knn: usize) -> Vec<String> {
    let mut v: Vec<String> = DENSE_NAMES.iter().map(|s| s.to_string()).collect();
    for i in 0..knn {
        v.push(if i + 1 == knn {
            "knn_similarity".to_string()
        } else {
            format!("knn_label_{i}")
        });
    }
    v
}

/// Neighbour outcomes: the training prompts as truncated idf-weighted n-gram vectors, in an inverted
/// index over hash buckets, with their (smoothed) labels. Everything is stored quantised, and training
/// uses the quantised index too, so cross-validation measures what ships.
#[derive(Clone, Debug, PartialEq)]
struct KnnIndex {
    k: usize,
    stacked: bool,
    blend: f32,
    top: usize,
    idf: Vec<f32>,
    idf_scale: f32,
    idf_q: Vec<u8>,
    /// Per document: scale and (bucket, quantised value).
    docs: Vec<(f32, Vec<(u32, i8)>)>,
    /// `n_heads` labels per document, quantised to 1/255.
    labels_q: Vec<u8>,
    n_heads: usize,
    /// Postings per bucket (CSR): document and value.
    start: Vec<u32>,
    post_doc: Vec<u32>,
    post_val: Vec<f32>,
    prior: Vec<f32>,
}

#[derive(Serialize, Deserialize)]
struct KnnFile {
    k: usize,
    #[serde(default)]
    stacked: bool,
    #[serde(default)]
    blend: f32,
    top: usize,
    n_docs: usize,
    idf_scale: f32,
    /// idf per bucket, u8 times `idf_scale`, base64.
    idf_q8_b64: String,
    /// Per document: u8 count, f32 scale (LE), then count x (u24 bucket LE, i8 value), base64.
    docs_b64: String,
    /// `n_docs x heads` labels, u8 / 255, base64.
    labels_q8_b64: String,
}

impl KnnIndex {
    fn n_features(&self) -> usize {
        self.n_heads + 1
    }

    /// Features appended to the dense features of the heads.
    fn n_stacked(&self) -> usize {
        if self.stacked { self.n_features() } else { 0 }
    }

    fn build(rows: &[Row], cfg: &TrainConfig, n_heads: usize) -> KnnIndex {
        let dim = 1usize << cfg.hash.bits;
        let n = rows.len();
        let mut df = vec![0u32; dim];
        for r in rows {
            for &(b, _) in &r.sparse {
                df[b as usize] += 1;
            }
        }
        let idf: Vec<f32> = df
            .iter()
            .map(|&c| (((1 + n) as f32) / (1 + c) as f32).ln() + 1.0)
            .collect();
        let max_idf = idf.iter().fold(0.0f32, |m, &x| m.max(x));
        let idf_scale = if max_idf > 0.0 { max_idf / 255.0 } else { 1.0 };
        let idf_q: Vec<u8> = idf
            .iter()
            .map(|&x| (x / idf_scale).round().clamp(0.0, 255.0) as u8)
            .collect();
        let top = cfg.knn_top.clamp(1, 255);
        let mut index = KnnIndex {
            k: cfg.knn_k,
            stacked: cfg.knn_stack,
            blend: cfg.knn_blend.clamp(0.0, 1.0),
            top,
            idf: idf_q.iter().map(|&q| q as f32 * idf_scale).collect(),
            idf_scale,
            idf_q,
            docs: Vec::with_capacity(n),
            labels_q: Vec::with_capacity(n * n_heads),
            n_heads,
            start: Vec::new(),
            post_doc: Vec::new(),
            post_val: Vec::new(),
            prior: Vec::new(),
        };
        for r in rows {
            let mut v = index.query_vector(&r.sparse);
            v.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
            v.truncate(top);
            let max_abs = v.iter().fold(0.0f32, |m, e| m.max(e.1.abs()));
            let scale = if max_abs > 0.0 { max_abs / 127.0 } else { 0.0 };
            let q = v
                .iter()
                .map(|&(b, x)| {
                    (
                        b,
                        if scale > 0.0 {
                            (x / scale).round().clamp(-127.0, 127.0) as i8
                        } else {
                            0
                        },
                    )
                })
                .collect();
            index.docs.push((scale, q));
            for &l in &r.labels {
                index.labels_q.push((l.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        index.finish(dim);
        index
    }

    /// Builds the postings and the label prior from `docs` and `labels_q`.
    fn finish(&mut self, dim: usize) {
        let mut count = vec![0u32; dim + 1];
        for (_, d) in &self.docs {
            for &(b, _) in d {
                count[b as usize + 1] += 1;
            }
        }
        for i in 0..dim {
            count[i + 1] += count[i];
        }
        let total = count[dim] as usize;
        let mut fill = count.clone();
        self.post_doc = vec![0; total];
        self.post_val = vec![0.0; total];
        for (i, (scale, d)) in self.docs.iter().enumerate() {
            for &(b, q) in d {
                let p = fill[b as usize] as usize;
                self.post_doc[p] = i as u32;
                self.post_val[p] = q as f32 * scale;
                fill[b as usize] += 1;
            }
        }
        self.start = count;
        let n = self.docs.len().max(1) as f32;
        self.prior = (0..self.n_heads)
            .map(|h| {
                self.labels_q
                    .iter()
                    .skip(h)
                    .step_by(self.n_heads.max(1))
                    .map(|&q| q as f32 / 255.0)
                    .sum::<f32>()
                    / n
            })
            .collect();
    }

    /// The idf-weighted, L2-normalised version of a hashed vector.
    fn query_vector(&self, sparse: &[(u32, f32)]) -> Vec<(u32, f32)> {
        let mut v: Vec<(u32, f32)> = sparse
            .iter()
            .filter_map(|&(b, x)| self.idf.get(b as usize).map(|&w| (b, x * w)))
            .collect();
        let norm = v.iter().map(|e| e.1 * e.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|e| e.1 /= norm);
        }
        v
    }

    /// Similarity-weighted mean labels of the `k` nearest stored prompts (weights `sim^2`), then their
    /// mean similarity. `exclude` leaves one stored prompt out (training rows).
    fn features(&self, sparse: &[(u32, f32)], exclude: Option<usize>) -> Vec<f32> {
        let n = self.docs.len();
        let mut sims = vec![0.0f32; n];
        for (b, x) in self.query_vector(sparse) {
            let b = b as usize;
            if b + 1 >= self.start.len() {
                continue;
            }
            for p in self.start[b] as usize..self.start[b + 1] as usize {
                sims[self.post_doc[p] as usize] += x * self.post_val[p];
            }
        }
        let mut cand: Vec<(f32, u32)> = sims
            .iter()
            .enumerate()
            .filter(|&(i, &s)| s > 0.0 && Some(i) != exclude)
            .map(|(i, &s)| (s, i as u32))
            .collect();
        let by_sim = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if cand.len() > self.k && self.k > 0 {
            cand.select_nth_unstable_by(self.k - 1, by_sim);
            cand.truncate(self.k);
        }
        let mut out = vec![0.0f32; self.n_heads + 1];
        let wsum: f32 = cand.iter().map(|c| c.0 * c.0).sum();
        if cand.is_empty() || wsum <= 0.0 {
            out[..self.n_heads].copy_from_slice(&self.prior);
            return out;
        }
        for &(s, i) in &cand {
            let w = s * s / wsum;
            let labels = &self.labels_q[i as usize * self.n_heads..(i as usize + 1) * self.n_heads];
            for (o, &l) in out.iter_mut().zip(labels) {
                *o += w * l as f32 / 255.0;
            }
        }
        out[self.n_heads] = cand.iter().map(|c| c.0).sum::<f32>() / self.k.max(1) as f32;
        out
    }

    fn to_file(&self) -> KnnFile {
        let mut docs = Vec::new();
        for (scale, d) in &self.docs {
            docs.push(d.len() as u8);
            docs.extend_from_slice(&scale.to_le_bytes());
            for &(b, q) in d {
                docs.extend_from_slice(&b.to_le_bytes()[..3]);
                docs.push(q as u8);
            }
        }
        KnnFile {
            k: self.k,
            stacked: self.stacked,
            blend: self.blend,
            top: self.top,
            n_docs: self.docs.len(),
            idf_scale: self.idf_scale,
            idf_q8_b64: base64_encode(&self.idf_q),
            docs_b64: base64_encode(&docs),
            labels_q8_b64: base64_encode(&self.labels_q),
        }
    }

    fn from_file(f: &KnnFile, bits: u32, n_heads: usize) -> Result<KnnIndex, WeightsError> {
        let bad = |m: &str| WeightsError::Invalid(format!("knn index: {m}"));
        let dim = 1usize << bits;
        let idf_q = base64_decode(&f.idf_q8_b64).ok_or_else(|| bad("idf is not base64"))?;
        let labels_q = base64_decode(&f.labels_q8_b64).ok_or_else(|| bad("labels are not base64"))?;
        let raw = base64_decode(&f.docs_b64).ok_or_else(|| bad("documents are not base64"))?;
        if idf_q.len() != dim || labels_q.len() != f.n_docs * n_heads || f.k == 0 {
            return Err(bad("sizes do not match"));
        }
        let mut docs = Vec::with_capacity(f.n_docs);
        let mut p = 0usize;
        while p < raw.len() {
            let count = raw[p] as usize;
            let head = raw.get(p + 1..p + 5).ok_or_else(|| bad("truncated document"))?;
            let scale = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            p += 5;
            let body = raw.get(p..p + 4 * count).ok_or_else(|| bad("truncated document"))?;
            let mut d = Vec::with_capacity(count);
            for e in body.chunks_exact(4) {
                let b = u32::from_le_bytes([e[0], e[1], e[2], 0]);
                if b as usize >= dim {
                    return Err(bad("bucket out of range"));
                }
                d.push((b, e[3] as i8));
            }
            p += 4 * count;
            docs.push((scale, d));
        }
        if docs.len() != f.n_docs {
            return Err(bad("document count does not match"));
        }
        let mut index = KnnIndex {
            k: f.k,
            stacked: f.stacked,
            blend: f.blend.clamp(0.0, 1.0),
            top: f.top,
            idf: idf_q.iter().map(|&q| q as f32 * f.idf_scale).collect(),
            idf_scale: f.idf_scale,
            idf_q,
            docs,
            labels_q,
            n_heads,
            start: Vec::new(),
            post_doc: Vec::new(),
            post_val: Vec::new(),
            prior: Vec::new(),
        };
        index.finish(dim);
        Ok(index)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises a smooth convex function with L-BFGS (memory 10) and a backtracking Armijo line search.
pub(crate) fn lbfgs(n: usize, max_iters: usize, mut f: impl FnMut(&[f64], &mut [f64]) -> f64) -> Vec<f64> {
    const M: usize = 10;
    let mut x = vec![0.0; n];
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    for iter in 0..max_iters {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < 1e-7 {
            break;
        }
        // two-loop recursion: d = -H g
        let mut q = g.clone();
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = if k > 0 {
            dot(&s_hist[k - 1], &y_hist[k - 1]) / dot(&y_hist[k - 1], &y_hist[k - 1])
        } else {
            1.0 / gnorm.max(1.0)
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..k {
            let beta = rho[i] * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alpha[i] - beta) * sj;
            }
        }
        let mut d: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            d = g.iter().map(|v| -v / gnorm.max(1.0)).collect();
            slope = dot(&g, &d);
            s_hist.clear();
            y_hist.clear();
            rho.clear();
        }
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            for i in 0..n {
                x_new[i] = x[i] + t * d[i];
            }
            let f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * t * slope {
                let s: Vec<f64> = (0..n).map(|i| x_new[i] - x[i]).collect();
                let y: Vec<f64> = (0..n).map(|i| g_new[i] - g[i]).collect();
                let sy = dot(&s, &y);
                let rel = (fx - f_new).abs() / fx.abs().max(1e-12);
                std::mem::swap(&mut x, &mut x_new);
                std::mem::swap(&mut g, &mut g_new);
                fx = f_new;
                if sy > 1e-12 {
                    if s_hist.len() == M {
                        s_hist.remove(0);
                        y_hist.remove(0);
                        rho.remove(0);
                    }
                    s_hist.push(s);
                    y_hist.push(y);
                    rho.push(1.0 / sy);
                }
                accepted = true;
                if rel < 1e-9 && iter > 5 {
                    return x;
                }
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    x
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for q in clean.chunks(4) {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut v = 0u32;
        for &c in &q[..4 - pad] {
            v = v << 6 | val(c)?;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64_round_trip() {
        for len in 0..10 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert!(base64_decode("T!Fu").is_none());
    }

    fn toy(n: usize) -> Vec<Example> {
        // prompts mentioning "integral" need the strong model, "capital" ones do not
        (0..n)
            .map(|i| {
                let hard = i % 2 == 0;
                let text = if hard {
                    format!("Compute the integral of x^{i} dx over [0, {}]", i + 1)
                } else {
                    format!("What is the capital of country number {i}?")
                };
                let y = if hard { 1.0 } else { 0.0 };
                Example {
                    conv: Conversation::from_prompt(text),
                    labels: vec![y, y],
                    weight: 1.0,
                    unsmoothed: None,
                }
            })
            .collect()
    }

    fn small_cfg() -> TrainConfig {
        TrainConfig {
            hash: HashConfig {
                bits: 10,
                ..HashConfig::default()
            },
            l2: 0.05,
            max_iters: 60,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn training_separates_a_toy_problem() {
        let model = train(&toy(60), &small_cfg()).unwrap();
        let hard = model.score(&Conversation::from_prompt("Compute the integral of x^7 dx over [0, 3]"));
        let easy = model.score(&Conversation::from_prompt("What is the capital of country number 7?"));
        assert!(hard > 0.8 && easy < 0.2, "{hard} {easy}");
    }

    #[test]
    fn weights_round_trip_exactly() {
        let model = train(&toy(40), &small_cfg()).unwrap();
        let json = model.to_json().unwrap();
        let back = LearnedScorer::from_json(&json).unwrap();
        for ex in toy(10) {
            assert_eq!(model.score(&ex.conv), back.score(&ex.conv));
        }
        assert_eq!(back.to_json().unwrap(), json);
        assert!(LearnedScorer::from_json(&json.replace(FORMAT, "other")).is_err());
        assert!(LearnedScorer::from_json("{}").is_err());
    }

    #[test]
    fn neighbour_index_round_trips_and_scores() {
        for (stack, blend) in [(true, 0.0), (false, 0.5), (true, 0.3)] {
            let cfg = TrainConfig {
                knn_k: 5,
                knn_top: 16,
                knn_stack: stack,
                knn_blend: blend,
                ..small_cfg()
            };
            let model = train(&toy(40), &cfg).unwrap();
            assert!(model.knn.is_some());
            let json = model.to_json().unwrap();
            let back = LearnedScorer::from_json(&json).unwrap();
            for ex in toy(10) {
                assert_eq!(model.score(&ex.conv), back.score(&ex.conv));
            }
            assert_eq!(back.to_json().unwrap(), json);
            let hard = model.score(&Conversation::from_prompt("Compute the integral of x^7 dx over [0, 3]"));
            let easy = model.score(&Conversation::from_prompt("What is the capital of country number 7?"));
            assert!(hard > easy, "{stack} {blend}: {hard} {easy}");
            let empty = model.score(&Conversation::from_prompt(""));
            assert!((0.0..=1.0).contains(&empty));
        }
    }

    /// Prompts of filler words whose label depends on length in a band (20 to 40 words): not monotone,
    /// so the heads cannot rank it, and the hashed n-grams are normalised away from length.
    fn banded(n: usize, seed: u64) -> Vec<Example> {
        const WORDS: [&str; 8] = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"];
        (0..n)
            .map(|i| {
                let len = 5 + (i * 7 + seed as usize) % 50;
                let text: Vec<&str> = (0..len).map(|j| WORDS[(i * 3 + j * 5 + seed as usize) % 8]).collect();
                // the strong model is always right; the weak one fails inside the band
                let y = if (20..40).contains(&len) { 1.0 } else { 0.0 };
                Example {
                    conv: Conversation::from_prompt(text.join(" ")),
                    labels: vec![1.0, y],
                    weight: 1.0,
                    unsmoothed: None,
                }
            })
            .collect()
    }

    fn apgr_of(model: &LearnedScorer, ex: &[Example]) -> f64 {
        let scores: Vec<f32> = ex.iter().map(|e| model.score(&e.conv)).collect();
        let outcomes: Vec<Outcome> = ex
            .iter()
            .map(|e| Outcome {
                strong: e.labels[0] as f64,
                weak: 1.0 - e.labels[1] as f64,
            })
            .collect();
        Curve::from_scores(&scores, &outcomes).unwrap().apgr()
    }

    #[test]
    fn trees_are_blended_in_where_they_rank_better_and_round_trip() {
        let cfg = TrainConfig {
            trees: TreeConfig {
                rounds: 60,
                learning_rate: 0.2,
                min_leaf: 10,
                ..TreeConfig::default()
            },
            tree_min_leaf_grid: Vec::new(),
            ..small_cfg()
        };
        let train_set = banded(400, 0);
        let test_set = banded(200, 3);
        let model = train(&train_set, &cfg).unwrap();
        assert!(model.tree_blend() > 0.0, "blend {}", model.tree_blend());
        let heads_only = train(
            &train_set,
            &TrainConfig {
                trees: no_trees(),
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(heads_only.tree_blend(), 0.0);
        let (with, without) = (apgr_of(&model, &test_set), apgr_of(&heads_only, &test_set));
        assert!(with > without + 0.05, "{with} vs {without}");
        // a fixed blend is taken as given
        let fixed = train(
            &train_set,
            &TrainConfig {
                tree_blend: Some(0.25),
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_eq!(fixed.tree_blend(), 0.25);

        let json = model.to_json().unwrap();
        let back = LearnedScorer::from_json(&json).unwrap();
        for ex in &test_set {
            assert_eq!(model.score(&ex.conv), back.score(&ex.conv));
            let text = ex.conv.last_user();
            let from_features = model.score_from_features(
                &hashed_ngrams(text, model.hash_config()),
                &dense_features(&ex.conv, &TextStats::of(text)),
            );
            assert_eq!(from_features, model.score(&ex.conv));
        }
        assert_eq!(back.to_json().unwrap(), json);
        // a file whose trees read a feature this build does not have is refused
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["trees"]["forest"]["n_features"] = serde_json::json!(DENSE_NAMES.len() + 1);
        assert!(LearnedScorer::from_json(&v.to_string()).is_err());
        v["trees"]["forest"]["n_features"] = serde_json::json!(DENSE_NAMES.len());
        v["trees"]["blend"] = serde_json::json!(1.5);
        assert!(LearnedScorer::from_json(&v.to_string()).is_err());
        // too few rows for a leaf of 40: no trees, and no inner cross-validation to pick their weight
        let strict = TrainConfig {
            trees: TreeConfig {
                min_leaf: 40,
                ..cfg.trees.clone()
            },
            ..cfg.clone()
        };
        assert!(train(&banded(60, 2), &strict).unwrap().boost.is_none());
        // with a grid, the smallest leaf size decides whether trees can be fitted at all
        let grid = |g: Vec<usize>| TrainConfig {
            tree_min_leaf_grid: g,
            ..strict.clone()
        };
        assert!(train(&banded(60, 2), &grid(vec![40, 35])).unwrap().boost.is_none());
        assert!(train(&banded(60, 2), &grid(vec![40, 0])).is_err());
        // a target without a gain gets no trees; asking for a blend with one is an error
        let single = TrainConfig {
            target: Target::WeakWrong,
            ..cfg
        };
        let ex: Vec<Example> = banded(200, 1)
            .into_iter()
            .map(|e| Example {
                labels: vec![e.labels[1]],
                ..e
            })
            .collect();
        assert_eq!(train(&ex, &single).unwrap().tree_blend(), 0.0);
        assert!(
            train(
                &ex,
                &TrainConfig {
                    tree_blend: Some(0.3),
                    ..single
                }
            )
            .is_err()
        );
    }

    /// The inner cross-validation picks the leaf size with the blend weight: a leaf size too large for
    /// any split gives trees that change no ranking, so only the small one can win; a fixed blend of 0
    /// needs no choice at all.
    #[test]
    fn leaf_size_is_chosen_with_the_blend_weight() {
        let base = TrainConfig {
            trees: TreeConfig {
                rounds: 60,
                learning_rate: 0.2,
                ..TreeConfig::default()
            },
            ..small_cfg()
        };
        let train_set = banded(400, 0);
        for grid in [vec![1000, 10], vec![10, 1000]] {
            let model = train(
                &train_set,
                &TrainConfig {
                    tree_min_leaf_grid: grid.clone(),
                    ..base.clone()
                },
            )
            .unwrap();
            assert_eq!(model.tree_fit().min_leaf, 10, "{grid:?}");
            assert!(model.tree_blend() > 0.0, "{grid:?}");
            // the leaf size is recorded in the weights file
            let back = LearnedScorer::from_json(&model.to_json().unwrap()).unwrap();
            assert_eq!(back.tree_fit().min_leaf, 10);
        }
        // a fixed weight with a grid: the leaf size is still chosen
        let fixed = TrainConfig {
            tree_blend: Some(0.5),
            tree_min_leaf_grid: vec![1000, 10],
            ..base.clone()
        };
        assert_eq!(train(&train_set, &fixed).unwrap().tree_fit().min_leaf, 10);
        // weight 0: the first leaf size, no inner cross-validation
        let zero = TrainConfig {
            tree_blend: Some(0.0),
            tree_min_leaf_grid: vec![10, 20],
            ..base.clone()
        };
        let m = train(&train_set, &zero).unwrap();
        assert_eq!((m.tree_blend(), m.tree_fit().min_leaf), (0.0, 10));
        // the default grid, largest first
        assert_eq!(TrainConfig::default().tree_min_leaf_grid, MIN_LEAF_GRID.to_vec());
        assert!(MIN_LEAF_GRID.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn embedded_weights_load_and_are_small() {
        assert!(EMBEDDED_WEIGHTS.len() < 1_000_000);
        let m = LearnedScorer::embedded().unwrap();
        let s = m.score(&Conversation::from_prompt("hello"));
        assert!((0.0..=1.0).contains(&s));
    }

    #[test]
    fn rejects_bad_config() {
        assert!(matches!(train(&[], &TrainConfig::default()), Err(TrainError::Empty)));
        let mut cfg = small_cfg();
        cfg.hash.bits = 30;
        assert!(train(&toy(4), &cfg).is_err());
    }
}
