//! Training on a gateway's own traffic: the features the gateway logs for `auto` requests, the rows
//! `optiroute router export` writes, and how `optiroute router train` turns them into labelled examples.
//!
//! **What is logged** (opt-in, `[routing] log_features = true`): for each `auto` request, the learned
//! scorer's inputs, never the prompt text: the raw [`dense_features`] and the signed hashed n-gram
//! vector of the last user turn ([`hashed_ngrams`] with the shipped weights' [`HashConfig`]), tagged with
//! [`FEATURE_VERSION`] and that hash configuration. The sparse vector is stored compactly: a
//! little-endian `f32` scale, then per non-zero bucket (ascending) the LEB128 varint of the gap to the
//! previous bucket and the value as an `i16` multiple of the scale; base64. Hashed n-grams are not text,
//! but someone who can guess a prompt can test the guess against them: treat them like the log itself.
//!
//! **Labels** for the two-head model (head 0 = P(strong model correct), head 1 = P(weak model wrong)).
//! A row tells about the tier that served it only:
//! - served by a cheaper tier with feedback `s`: head 1 = `1 - s`;
//! - served by the strongest tier with feedback `s`: head 0 = `s`;
//! - escalated by the cascade (the cheap answer failed its check): head 1 = 1, and head 0 = `s` when
//!   the (strong) answer was rated;
//! - the head the row says nothing about gets the base model's own prediction as a soft label, so
//!   training on traffic does not pull it anywhere.
//!
//! A cache hit replays an answer: it is a row only when rated (a replayed escalation is not exported as
//! another escalation). Rows with neither feedback nor an escalation, without features (`log_features` off),
//! or not served in full (status other than 200) are skipped; rows whose features come from another
//! [`FEATURE_VERSION`] or another hash configuration than the base weights are rejected and counted.

use crate::conversation::Conversation;
use crate::features::{DENSE_NAMES, FEATURE_VERSION, HashConfig, Sparse, TextStats, dense_features, hashed_ngrams};
use crate::learned::{
    EMBEDDED_WEIGHTS, FeatureExample, LearnedScorer, Target, WeightsError, base64_decode, base64_encode,
};
use crate::scorer::sigmoid;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The prefix of the route reason of a request the cascade escalated (see the gateway's engine).
pub const CASCADE_REASON_PREFIX: &str = "cascade:";

/// The n-gram settings of the weights that ship in the binary: the gateway logs features in this space,
/// so `router train` can label them with (and fine-tune) the shipped model. Reads only the weights'
/// `hash` field.
pub fn shipped_hash_config() -> Result<HashConfig, WeightsError> {
    #[derive(Deserialize)]
    struct HashOnly {
        hash: HashConfig,
    }
    Ok(serde_json::from_str::<HashOnly>(EMBEDDED_WEIGHTS)?.hash)
}

/// The scorer inputs logged for one request (no prompt text).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoggedFeatures {
    /// [`FEATURE_VERSION`] of the build that computed them.
    pub v: u32,
    /// The n-gram hashing used for `sparse`.
    pub hash: HashConfig,
    /// Raw (unstandardised) dense features, in [`DENSE_NAMES`] order.
    pub dense: Vec<f32>,
    /// The hashed n-gram vector, encoded (see the module docs).
    pub sparse: String,
}

impl LoggedFeatures {
    /// The features the learned scorer computes for `conv`, hashed with `hash`.
    pub fn compute(conv: &Conversation, hash: &HashConfig) -> LoggedFeatures {
        let text = conv.last_user();
        let stats = TextStats::of(text);
        LoggedFeatures {
            v: FEATURE_VERSION,
            hash: hash.clone(),
            dense: dense_features(conv, &stats),
            sparse: encode_sparse(&hashed_ngrams(text, hash)),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The decoded sparse vector; an error for a malformed encoding or buckets outside the hash space.
    pub fn sparse_vector(&self) -> Result<Sparse, String> {
        let v = decode_sparse(&self.sparse)?;
        if self.hash.bits < 32 && v.last().is_some_and(|&(b, _)| u64::from(b) >= 1u64 << self.hash.bits) {
            return Err(format!("bucket beyond 2^{}", self.hash.bits));
        }
        Ok(v)
    }
}

fn push_varint(out: &mut Vec<u8>, mut n: u32) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut n: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(n).ok();
        }
    }
    None
}

/// Encodes a sorted sparse vector (see the module docs).
pub fn encode_sparse(v: &[(u32, f32)]) -> String {
    let max = v
        .iter()
        .fold(0.0f32, |m, e| if e.1.is_finite() { m.max(e.1.abs()) } else { m });
    let scale = if max > 0.0 { max / 32767.0 } else { 0.0 };
    let mut out = Vec::with_capacity(4 + v.len() * 4);
    out.extend_from_slice(&scale.to_le_bytes());
    let mut prev: Option<u32> = None;
    for &(b, x) in v {
        let gap = match prev {
            None => b,
            Some(p) if b > p => b - p,
            // Not strictly ascending: not a vector `hashed_ngrams` makes; skip rather than corrupt.
            Some(_) => continue,
        };
        let q = if scale > 0.0 && x.is_finite() {
            (x / scale).round().clamp(-32767.0, 32767.0) as i16
        } else {
            0
        };
        push_varint(&mut out, gap);
        out.extend_from_slice(&q.to_le_bytes());
        prev = Some(b);
    }
    base64_encode(&out)
}

/// Decodes [`encode_sparse`]'s output.
pub fn decode_sparse(text: &str) -> Result<Sparse, String> {
    let bytes = base64_decode(text).ok_or("sparse features are not base64")?;
    let head: [u8; 4] = bytes
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or("sparse features are truncated")?;
    let scale = f32::from_le_bytes(head);
    if !scale.is_finite() || scale < 0.0 {
        return Err("sparse features have an invalid scale".into());
    }
    let mut out = Vec::new();
    let mut pos = 4;
    let mut bucket: Option<u32> = None;
    while pos < bytes.len() {
        let gap = read_varint(&bytes, &mut pos).ok_or("sparse features: bad bucket gap")?;
        let b = match bucket {
            None => gap,
            Some(p) if gap > 0 => p.checked_add(gap).ok_or("sparse features: bucket overflow")?,
            Some(_) => return Err("sparse features: buckets not ascending".into()),
        };
        let q = bytes.get(pos..pos + 2).ok_or("sparse features are truncated")?;
        pos += 2;
        out.push((b, f32::from(i16::from_le_bytes([q[0], q[1]])) * scale));
        bucket = Some(b);
    }
    Ok(out)
}

/// User feedback on a request, as exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// In [0, 1]: 1 = the answer was good.
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Unix milliseconds of the last rating.
    #[serde(default)]
    pub at_ms: i64,
}

/// One logged request as `optiroute router export` writes it (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficRow {
    pub request_id: String,
    /// Unix milliseconds when the request finished.
    #[serde(default)]
    pub at_ms: i64,
    /// Virtual key id, `master`, or empty without auth.
    #[serde(default)]
    pub key_id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub deployment: String,
    #[serde(default)]
    pub tier: Option<String>,
    /// Served by the strongest configured tier (the "strong model" of the two-head model).
    #[serde(default)]
    pub strong_tier: bool,
    #[serde(default)]
    pub route_reason: String,
    /// The cheap tier's answer failed the cascade's check and the strongest tier answered instead.
    #[serde(default)]
    pub cascade_escalated: bool,
    /// `hit`, `miss` or `bypass`.
    #[serde(default)]
    pub cache: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub latency_us: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub feedback: Option<Feedback>,
    /// `None`: not logged (feature logging off, not an `auto` request, or a cache hit).
    #[serde(default)]
    pub features: Option<LoggedFeatures>,
}

/// Whether a JSONL file holds exported traffic rows (its first object has `request_id` and
/// `features`) rather than benchmark rows.
pub fn is_traffic_file(path: &Path) -> anyhow::Result<bool> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => return Ok(false),
        };
        return Ok(v.get("request_id").is_some() && v.get("features").is_some());
    }
    Ok(false)
}

/// Parses exported traffic rows; `name` is used in error messages.
pub fn parse_traffic(text: &str, name: &str) -> anyhow::Result<Vec<TrafficRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: TrafficRow =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{name}:{}: not a traffic row: {e}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

pub fn load_traffic(path: &Path) -> anyhow::Result<Vec<TrafficRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    parse_traffic(&text, &path.display().to_string())
}

/// What became of the traffic rows offered to [`examples`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficReport {
    pub rows: usize,
    /// Turned into training examples.
    pub used: usize,
    pub with_feedback: usize,
    pub escalated: usize,
    /// Skipped: no feedback and no escalation.
    pub unlabelled: usize,
    /// Skipped: no features logged.
    pub no_features: usize,
    /// Skipped: status other than 200 (a stream that failed or was abandoned).
    pub not_served: usize,
    /// Rejected: features of another [`FEATURE_VERSION`].
    pub wrong_version: usize,
    /// Rejected: features hashed differently from the base weights.
    pub wrong_hash: usize,
    /// Rejected: malformed features.
    pub invalid: usize,
}

impl fmt::Display for TrafficReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} traffic rows: {} used ({} rated, {} escalated by the cascade); skipped {} without feedback or \
             escalation, {} without logged features, {} not served in full",
            self.rows,
            self.used,
            self.with_feedback,
            self.escalated,
            self.unlabelled,
            self.no_features,
            self.not_served
        )?;
        if self.wrong_version > 0 {
            write!(
                f,
                "; REJECTED {} whose feature version differs from this build's ({FEATURE_VERSION}): \
                 export them again from a gateway of this version",
                self.wrong_version
            )?;
        }
        if self.wrong_hash > 0 {
            write!(
                f,
                "; REJECTED {} hashed with other n-gram settings than the base weights: pass --base with \
                 the weights the gateway ran",
                self.wrong_hash
            )?;
        }
        if self.invalid > 0 {
            write!(f, "; REJECTED {} with malformed features", self.invalid)?;
        }
        Ok(())
    }
}

/// The two heads' labels for a row, given the base model's probabilities `base` for the same
/// features; `None` when the row says nothing (no feedback, no escalation).
pub fn labels(row: &TrafficRow, base: [f32; 2]) -> Option<[f32; 2]> {
    let score = row.feedback.as_ref().map(|f| f.score.clamp(0.0, 1.0) as f32);
    if row.cascade_escalated {
        // Served by the strong tier after the weak answer failed a rule check (wrong: 1), or after the
        // verifier rated it likely wrong (wrong: its risk, an estimate rather than a fact).
        let wrong = crate::cascade::risk_in_reason(&row.route_reason).unwrap_or(1.0);
        return Some([score.unwrap_or(base[0]), wrong]);
    }
    let s = score?;
    Some(if row.strong_tier {
        [s, base[1]]
    } else {
        [base[0], 1.0 - s]
    })
}

/// Training examples from traffic rows, labelled against `base` (whose hash configuration the rows'
/// features must have), each with weight `weight`.
pub fn examples(
    rows: &[TrafficRow],
    base: &LearnedScorer,
    weight: f32,
) -> anyhow::Result<(Vec<FeatureExample>, TrafficReport)> {
    if base.target() != Target::TwoHeads {
        anyhow::bail!(
            "training on traffic needs base weights with two heads (target two_heads), not {:?}",
            base.target()
        );
    }
    let mut rep = TrafficReport {
        rows: rows.len(),
        ..TrafficReport::default()
    };
    let mut out = Vec::new();
    for r in rows {
        let Some(f) = &r.features else {
            rep.no_features += 1;
            continue;
        };
        if f.v != FEATURE_VERSION {
            rep.wrong_version += 1;
            continue;
        }
        if &f.hash != base.hash_config() {
            rep.wrong_hash += 1;
            continue;
        }
        let sparse = match f.sparse_vector() {
            Ok(s) if f.dense.len() == DENSE_NAMES.len() && f.dense.iter().all(|x| x.is_finite()) => s,
            _ => {
                rep.invalid += 1;
                continue;
            }
        };
        if r.status != 200 {
            rep.not_served += 1;
            continue;
        }
        let logits = base.logits_from_features(&sparse, &f.dense);
        let p = |i: usize| logits.get(i).map_or(0.5, |&z| sigmoid(z));
        let Some(l) = labels(r, [p(0), p(1)]) else {
            rep.unlabelled += 1;
            continue;
        };
        rep.used += 1;
        rep.with_feedback += usize::from(r.feedback.is_some());
        rep.escalated += usize::from(r.cascade_escalated);
        out.push(FeatureExample {
            sparse,
            dense: f.dense.clone(),
            labels: l.to_vec(),
            weight,
        });
    }
    Ok((out, rep))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::learned::{Example, TrainConfig, train_with_features};
    use crate::scorer::Scorer;

    fn conv(text: &str) -> Conversation {
        Conversation::from_pairs([("system", "be brief"), ("user", text)]).with_max_tokens(Some(64))
    }

    /// A small two-head model standing in for the shipped weights (independent of their version).
    fn toy_base() -> LearnedScorer {
        let ex: Vec<Example> = (0..40)
            .map(|i| {
                let hard = i % 2 == 0;
                let text = if hard {
                    format!("Prove theorem {i} about prime gaps, step by step")
                } else {
                    format!("Say hello to guest number {i}")
                };
                let l = if hard { vec![0.9, 0.6] } else { vec![0.95, 0.1] };
                Example {
                    conv: conv(&text),
                    labels: l,
                    weight: 1.0,
                    unsmoothed: None,
                }
            })
            .collect();
        let cfg = TrainConfig {
            hash: HashConfig {
                bits: 12,
                ..HashConfig::default()
            },
            max_iters: 30,
            ..TrainConfig::default()
        };
        train_with_features(&ex, &[], &cfg).unwrap()
    }

    #[test]
    fn the_shipped_hash_config_is_readable() {
        assert!((1..=24).contains(&shipped_hash_config().unwrap().bits));
    }

    #[test]
    fn sparse_encoding_round_trips_within_quantisation() {
        let hash = HashConfig::default();
        for text in [
            "",
            "hi",
            "The quick brown fox jumps over the lazy dog 12 times.",
            &"ab ".repeat(3000),
        ] {
            let v = hashed_ngrams(text, &hash);
            let back = decode_sparse(&encode_sparse(&v)).unwrap();
            assert_eq!(back.len(), v.len());
            let max = v.iter().fold(0.0f32, |m, e| m.max(e.1.abs()));
            for (a, b) in v.iter().zip(&back) {
                assert_eq!(a.0, b.0);
                assert!((a.1 - b.1).abs() <= max / 32767.0, "{a:?} {b:?}");
            }
        }
        for bad in ["", "!!!!", "AAAA/w==", "AACAPwGA"] {
            assert!(decode_sparse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logged_features_give_the_scorers_logits_and_hold_no_text() {
        let model = toy_base();
        let c = conv("Prove that the square root of 2 is irrational, step by step.");
        let f = LoggedFeatures::compute(&c, model.hash_config());
        let json = f.to_json();
        assert!(!json.contains("square") && !json.contains("irrational"), "{json}");
        let back: LoggedFeatures = serde_json::from_str(&json).unwrap();
        assert_eq!(back.v, FEATURE_VERSION);
        let from_log = model.logits_from_features(&back.sparse_vector().unwrap(), &back.dense);
        let direct = model.logits(&c);
        for (a, b) in from_log.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-3, "{from_log:?} vs {direct:?}");
        }
    }

    fn row(text: &str, strong: bool, score: Option<f64>, escalated: bool, hash: &HashConfig) -> TrafficRow {
        TrafficRow {
            request_id: "r".into(),
            at_ms: 1,
            key_id: String::new(),
            model: "m".into(),
            deployment: "d".into(),
            tier: Some(if strong { "cloud" } else { "local" }.into()),
            strong_tier: strong,
            route_reason: String::new(),
            cascade_escalated: escalated,
            cache: "miss".into(),
            status: 200,
            latency_us: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_usd: 0.0,
            feedback: score.map(|score| Feedback {
                score,
                comment: None,
                at_ms: 1,
            }),
            features: Some(LoggedFeatures::compute(&conv(text), hash)),
        }
    }

    #[test]
    fn labels_follow_the_serving_tier() {
        let base = [0.7, 0.2];
        let h = HashConfig::default();
        assert_eq!(labels(&row("q", false, Some(0.25), false, &h), base), Some([0.7, 0.75]));
        assert_eq!(labels(&row("q", true, Some(0.9), false, &h), base), Some([0.9, 0.2]));
        assert_eq!(labels(&row("q", true, None, true, &h), base), Some([0.7, 1.0]));
        assert_eq!(labels(&row("q", true, Some(0.4), true, &h), base), Some([0.4, 1.0]));
        assert_eq!(labels(&row("q", false, None, false, &h), base), None);
        // A verifier escalation labels the weak head with the verifier's risk, not with certainty.
        let mut r = row("q", true, None, true, &h);
        r.route_reason = format!(
            "cascade: the local answer failed its check ({}); escalated",
            crate::cascade::likely_wrong_reason(0.62)
        );
        assert_eq!(labels(&r, base), Some([0.7, 0.62]));
    }

    #[test]
    fn rows_are_counted_and_foreign_versions_rejected() {
        let base = toy_base();
        let h = base.hash_config().clone();
        let mut rows = vec![
            row("a", false, Some(0.0), false, &h),
            row("b", true, Some(1.0), false, &h),
            row("c", false, None, true, &h),
            row("d", false, None, false, &h),
        ];
        let mut old = row("e", false, Some(1.0), false, &h);
        old.features.as_mut().unwrap().v = FEATURE_VERSION + 1;
        let mut other_hash = row("f", false, Some(1.0), false, &HashConfig { bits: 10, ..h.clone() });
        other_hash.tier = None;
        let mut failed = row("g", false, Some(1.0), false, &h);
        failed.status = 502;
        let mut unlogged = row("h", false, Some(1.0), false, &h);
        unlogged.features = None;
        rows.extend([old, other_hash, failed, unlogged]);
        let (ex, rep) = examples(&rows, &base, 2.0).unwrap();
        assert_eq!(ex.len(), 3);
        assert!(ex.iter().all(|e| e.weight == 2.0 && e.labels.len() == 2));
        let want = TrafficReport {
            rows: 8,
            used: 3,
            with_feedback: 2,
            escalated: 1,
            unlabelled: 1,
            no_features: 1,
            not_served: 1,
            wrong_version: 1,
            wrong_hash: 1,
            invalid: 0,
        };
        assert_eq!(rep, want);
        let text = rep.to_string();
        assert!(text.contains("REJECTED 1 whose feature version"), "{text}");
        // Round trip through the export format.
        let jsonl: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        assert_eq!(parse_traffic(&jsonl, "t").unwrap(), rows);
        assert!(parse_traffic("{\"x\":1}", "t").unwrap_err().to_string().contains("t:1"));
    }

    #[test]
    fn negative_feedback_on_the_weak_tier_raises_that_kind_of_prompt() {
        let base = toy_base();
        let h = base.hash_config().clone();
        let kind_a = |i: usize| format!("Translate the shipping manifest number {i} into Klingon verse");
        let kind_b = |i: usize| format!("What colour is the banana in picture {i}?");
        let mut rows = Vec::new();
        for i in 0..60 {
            rows.push(row(&kind_a(i), false, Some(0.0), false, &h));
            rows.push(row(&kind_b(i), false, Some(1.0), false, &h));
        }
        let (fx, rep) = examples(&rows, &base, 1.0).unwrap();
        assert_eq!(rep.used, 120);
        // A small anchor set of plain-text examples, labelled by the base model itself.
        let anchors: Vec<Example> = (0..40)
            .map(|i| {
                let c = conv(&format!("Summarise paragraph {i} of the report in one sentence."));
                let l = base.logits(&c).iter().map(|&z| sigmoid(z)).collect();
                Example {
                    conv: c,
                    labels: l,
                    weight: 1.0,
                    unsmoothed: None,
                }
            })
            .collect();
        let cfg = TrainConfig {
            hash: h,
            max_iters: 60,
            ..TrainConfig::default()
        };
        let model = train_with_features(&anchors, &fx, &cfg).unwrap();
        let a = conv(&kind_a(999));
        let b = conv(&kind_b(999));
        let (base_a, base_b) = (base.score(&a), base.score(&b));
        let (new_a, new_b) = (model.score(&a), model.score(&b));
        assert!(new_a > new_b, "a {new_a} b {new_b}");
        assert!(
            new_a - new_b > base_a - base_b,
            "base a {base_a} b {base_b}; new a {new_a} b {new_b}"
        );
    }

    /// The cost of feature logging per request: `cargo test -p optiroute-router --release
    /// traffic::tests::logging_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    #[allow(clippy::disallowed_types)] // a one-off measurement, not time logic under test
    fn logging_cost() {
        let hash = shipped_hash_config().unwrap();
        let base = "A train leaves the station at 3:15 pm travelling at 72 km/h; a second train follows 40 \
                    minutes later at 95 km/h. Explain step by step when and where it catches up. ";
        // Varied text (pseudo-random syllables: few repeated n-grams) is the large case for the log.
        let syl = [
            "ka", "ro", "mi", "tes", "lun", "va", "pre", "dox", "quil", "ne", "sho", "rat",
        ];
        let mut state = 7u64;
        let mut varied = String::new();
        while varied.len() < 2048 {
            for _ in 0..3 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                varied.push_str(syl[(state >> 33) as usize % syl.len()]);
            }
            varied.push(' ');
        }
        for (size, source) in [(200usize, base), (2048, base), (2048, varied.as_str())] {
            let text: String = source.chars().cycle().take(size).collect();
            let n = 2000;
            // On the response path: the copy of the conversation handed to the request log.
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(Conversation::from_pairs([
                    ("system", std::hint::black_box("be brief")),
                    ("user", std::hint::black_box(text.as_str())),
                ]));
            }
            let copy = t.elapsed() / n;
            // Off the response path (the request log's writer, on a blocking thread).
            let c = conv(&text);
            let t = std::time::Instant::now();
            let mut bytes = 0;
            for _ in 0..n {
                bytes = std::hint::black_box(LoggedFeatures::compute(&c, &hash).to_json()).len();
            }
            let per = t.elapsed() / n;
            eprintln!(
                "{size}-char prompt: conversation copy {copy:?} (response path); features {per:?} \
                 (writer), {bytes} bytes logged"
            );
        }
    }
}
