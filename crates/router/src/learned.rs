//! The learned scorer: cheap dense features plus hashed word/char n-grams into an L2-regularised
//! logistic regression, trained with L-BFGS by [`train`]. Weights serialise to a small JSON file; the
//! default weights ship inside the crate (`weights/default.json`).

use crate::conversation::Conversation;
use crate::features::{DENSE_NAMES, HashConfig, Sparse, TextStats, dense_features, hashed_ngrams};
use crate::scorer::{Scorer, sigmoid};
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
    pub max_iters: usize,
    pub target: Target,
    /// Use the dense (count/signal) features.
    pub dense: bool,
    /// Group smoothing in [0, 1]: a training row's label becomes `(1 - a) * own + a * mean of its
    /// group` (rows with a `subject`/`category`). Denoises per-prompt 0/1 outcomes; inference is unchanged.
    #[serde(default)]
    pub group_smooth: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hash: HashConfig::default(),
            l2: 2.5,
            dense_l2_mult: 100.0,
            max_iters: 150,
            target: Target::TwoHeads,
            dense: true,
            group_smooth: 0.5,
        }
    }
}

/// One training example: a conversation and one soft label in [0, 1] per head
/// (see [`Target::labels`]).
#[derive(Clone, Debug)]
pub struct Example {
    pub conv: Conversation,
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
    meta: serde_json::Value,
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
        let d = DENSE_NAMES.len();
        if f.dense_names.iter().map(String::as_str).ne(DENSE_NAMES.iter().copied())
            || f.dense_mean.len() != d
            || f.dense_std.len() != d
        {
            return Err(WeightsError::Invalid("dense features do not match this build".into()));
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
            dense_names: DENSE_NAMES.iter().map(|s| s.to_string()).collect(),
            dense_mean: self.dense_mean.clone(),
            dense_std: self.dense_std.clone(),
            heads,
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

    /// The logit of each head (before the sigmoid).
    pub fn logits(&self, conv: &Conversation) -> Vec<f32> {
        let text = conv.last_user();
        let stats = TextStats::of(text);
        let dense: Vec<f32> = dense_features(conv, &stats)
            .iter()
            .zip(self.dense_mean.iter().zip(&self.dense_std))
            .map(|(&x, (&m, &s))| standardise(x, m, s))
            .collect();
        let sparse = hashed_ngrams(text, &self.hash);
        self.heads
            .iter()
            .map(|h| {
                let mut z = h.bias;
                for (w, x) in h.dense_w.iter().zip(&dense) {
                    z += w * x;
                }
                for &(b, v) in &sparse {
                    z += h.hashed_w[b as usize] * v;
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
    fn score(&self, conv: &Conversation) -> f32 {
        let logits = self.logits(conv);
        if logits.is_empty() || logits.iter().any(|z| !z.is_finite()) {
            return 0.5;
        }
        logits.iter().map(|&z| sigmoid(z)).sum::<f32>() / logits.len() as f32
    }
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
struct Row {
    sparse: Sparse,
    dense: Vec<f32>,
    labels: Vec<f64>,
    weight: f64,
}

/// Trains a scorer on `examples`. Deterministic: the same examples and config give the same weights.
pub fn train(examples: &[Example], cfg: &TrainConfig) -> Result<LearnedScorer, TrainError> {
    if examples.is_empty() {
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
                labels: e.labels.iter().map(|&l| l.clamp(0.0, 1.0) as f64).collect(),
                weight: e.weight.max(0.0) as f64,
            }
        })
        .collect();
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
    for v in &mut l2[dim_h..dim_h + d] {
        *v = l2_mean * cfg.dense_l2_mult;
    }
    l2[n_params - 1] = 0.0;
    let n_heads = cfg.target.heads();
    if rows.iter().any(|r| r.labels.len() != n_heads) {
        return Err(TrainError::Config(format!(
            "examples need {n_heads} labels for {:?}",
            cfg.target
        )));
    }
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
        meta: serde_json::json!({ "examples": examples.len(), "config": cfg }),
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises a smooth convex function with L-BFGS (memory 10) and a backtracking Armijo line search.
fn lbfgs(n: usize, max_iters: usize, mut f: impl FnMut(&[f64], &mut [f64]) -> f64) -> Vec<f64> {
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

fn base64_encode(bytes: &[u8]) -> String {
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

fn base64_decode(text: &str) -> Option<Vec<u8>> {
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
