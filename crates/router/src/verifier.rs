//! The cascade's verifier: how likely a cheap model's answer to a math-style prompt is wrong.
//!
//! The rule checks of [`crate::cascade::check`] catch answers that are plainly broken (cut off, no
//! final number, wrong calculator arithmetic). Most wrong answers pass them. The verifier reads the
//! answer next to its prompt (the final number's shape, whether it merely repeats a given quantity,
//! how many of the prompt's quantities the working uses, its length, second thoughts, ...) and a small
//! logistic model turns that into `risk = P(answer wrong)`. The gateway escalates when the risk reaches
//! `[routing] cascade_max_risk`; offline, ranking answers by risk gives the cascade a whole
//! quality-versus-strong-calls curve instead of one point.
//!
//! Weights are a small JSON file (`weights/verifier.json`, from `router train-verifier`) compiled into
//! the binary. Scoring is a few microseconds of string scanning; nothing is loaded at run time.

use crate::cascade::{self, CheckOptions};
use crate::data::Row;
use crate::learned::{TrainError, WeightsError, lbfgs};
use serde::{Deserialize, Serialize};

/// The verifier trained on the development GSM8K answers (`router train-verifier`).
pub const EMBEDDED_VERIFIER: &str = include_str!("../weights/verifier.json");
const FORMAT: &str = "optiroute-verifier";

/// Names of the answer features, in order. Changing them changes the weights format.
pub const FEATURE_NAMES: [&str; 16] = [
    "empty",
    "truncated",
    "no_final_answer",
    "bad_arithmetic",
    "refusal",
    "final_not_integer",
    "final_negative",
    "final_repeats_prompt_number",
    "ln_final_magnitude",
    "ln_answer_chars",
    "ln_lines",
    "prompt_numbers_used",
    "ln_answer_numbers",
    "ln_second_thoughts",
    "ln_prompt_chars",
    "ln_prompt_numbers",
];
const N: usize = FEATURE_NAMES.len();

/// Words of doubt, correction or approximation in the working.
const SECOND_THOUGHTS: &[&str] = &[
    "assum",
    "approximately",
    "round",
    "however",
    "but ",
    "wait",
    "actually",
    "not possible",
    "cannot",
    "impossible",
    "instead",
    "mistake",
    "incorrect",
    "let's",
    "re-",
    "recalculate",
];

/// The numbers written in a text (`1,250`, `3.5`; a sign is not part of a number).
pub fn numbers(t: &str) -> Vec<f64> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut digits = String::new();
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b',') {
            if b[i] != b',' {
                digits.push(b[i] as char);
            }
            i += 1;
        }
        if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            digits.push('.');
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                digits.push(b[i] as char);
                i += 1;
            }
        }
        if let Ok(x) = digits.parse::<f64>() {
            out.push(x);
        }
    }
    out
}

fn ln1p(x: usize) -> f32 {
    (x as f32).ln_1p()
}

fn flag(b: bool) -> f32 {
    if b { 1.0 } else { 0.0 }
}

/// The raw (unstandardised) features of `answer` to `prompt`.
pub fn answer_features(prompt: &str, answer: &str, opts: CheckOptions) -> [f32; N] {
    let a = answer.trim();
    let lower = a.to_lowercase();
    let final_answer = cascade::final_number(a);
    let mut prompt_numbers = numbers(prompt);
    prompt_numbers.sort_by(f64::total_cmp);
    prompt_numbers.dedup();
    let mut answer_numbers = numbers(a);
    answer_numbers.sort_by(f64::total_cmp);
    answer_numbers.dedup();
    let contains = |set: &[f64], x: f64| set.binary_search_by(|v| v.total_cmp(&x)).is_ok();
    let used = prompt_numbers.iter().filter(|&&x| contains(&answer_numbers, x)).count();
    let second_thoughts: usize = SECOND_THOUGHTS.iter().map(|w| lower.matches(w).count()).sum();
    [
        flag(a.is_empty()),
        flag(opts.hit_length_limit || cascade::looks_truncated(a)),
        flag(final_answer.is_none()),
        flag(cascade::has_bad_arithmetic(a)),
        flag(cascade::is_refusal(a)),
        flag(final_answer.is_some_and(|x| (x - x.round()).abs() > 1e-9)),
        flag(final_answer.is_some_and(|x| x < 0.0)),
        flag(final_answer.is_some_and(|x| contains(&prompt_numbers, x.abs()))),
        final_answer.map_or(0.0, |x| (x.abs() as f32).ln_1p()),
        ln1p(a.chars().count()),
        ln1p(a.matches('\n').count()),
        if prompt_numbers.is_empty() {
            0.0
        } else {
            used as f32 / prompt_numbers.len() as f32
        },
        ln1p(answer_numbers.len()),
        ln1p(second_thoughts),
        ln1p(prompt.chars().count()),
        ln1p(prompt_numbers.len()),
    ]
}

/// A logistic model over standardised answer features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verifier {
    format: String,
    version: u32,
    features: Vec<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
    weights: Vec<f32>,
    bias: f32,
    #[serde(default)]
    meta: serde_json::Value,
}

impl Verifier {
    /// The verifier built into the crate.
    pub fn embedded() -> Result<Self, WeightsError> {
        Self::from_json(EMBEDDED_VERIFIER)
    }

    pub fn from_json(text: &str) -> Result<Self, WeightsError> {
        let v: Verifier = serde_json::from_str(text)?;
        if v.format != FORMAT || v.version != 1 {
            return Err(WeightsError::Format(format!("{} v{}", v.format, v.version)));
        }
        if v.features.iter().map(String::as_str).ne(FEATURE_NAMES)
            || v.mean.len() != N
            || v.std.len() != N
            || v.weights.len() != N
        {
            return Err(WeightsError::Invalid(
                "verifier features do not match this build".into(),
            ));
        }
        if v.std.iter().chain(&v.mean).chain(&v.weights).any(|x| !x.is_finite())
            || !v.bias.is_finite()
            || v.std.iter().any(|&s| s <= 0.0)
        {
            return Err(WeightsError::Invalid("verifier weights are not finite".into()));
        }
        Ok(v)
    }

    pub fn to_json(&self) -> Result<String, WeightsError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    pub fn set_meta(&mut self, meta: serde_json::Value) {
        self.meta = meta;
    }

    /// P(the answer is wrong), from raw features.
    pub fn risk_of(&self, raw: &[f32; N]) -> f32 {
        let z = self.bias
            + raw
                .iter()
                .zip(&self.mean)
                .zip(&self.std)
                .zip(&self.weights)
                .map(|(((x, m), s), w)| w * standardise(*x, *m, *s))
                .sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }

    /// P(`answer` to `prompt` is wrong).
    pub fn risk(&self, prompt: &str, answer: &str, opts: CheckOptions) -> f32 {
        self.risk_of(&answer_features(prompt, answer, opts))
    }
}

fn standardise(x: f32, mean: f32, std: f32) -> f32 {
    ((x - mean) / std).clamp(-6.0, 6.0)
}

/// One training answer: its raw features and how wrong it was (1 = wrong, 0 = right; judge scores
/// in between).
#[derive(Clone, Debug)]
pub struct VerifierExample {
    pub features: [f32; N],
    pub wrong: f32,
}

/// How wrong a row's cheap answer was (1 = wrong, 0 = right), from its outcomes.
fn wrong_of(r: &Row) -> Option<f32> {
    r.outcome.map(|o| (1.0 - o.weak).clamp(0.0, 1.0) as f32)
}

/// Training examples from rows that carry the cheap model's answer and outcomes.
pub fn examples(rows: &[Row], opts: CheckOptions) -> Vec<VerifierExample> {
    rows.iter()
        .filter_map(|r| {
            Some(VerifierExample {
                features: answer_features(r.conv.last_user(), r.weak_response.as_deref()?, opts),
                wrong: wrong_of(r)?,
            })
        })
        .collect()
}

/// Fits the verifier: cross-entropy plus `l2 / 2 * |w|^2` on standardised features (bias free).
pub fn train(examples: &[VerifierExample], l2: f64) -> Result<Verifier, TrainError> {
    if examples.len() < 10 {
        return Err(TrainError::Config(format!(
            "the verifier needs at least 10 rows with a cheap answer (`weak_response`), got {}",
            examples.len()
        )));
    }
    let n = examples.len() as f64;
    let mut mean = [0f64; N];
    let mut var = [0f64; N];
    for e in examples {
        for (m, &x) in mean.iter_mut().zip(&e.features) {
            *m += x as f64 / n;
        }
    }
    for e in examples {
        for ((v, &x), m) in var.iter_mut().zip(&e.features).zip(&mean) {
            *v += (x as f64 - m).powi(2) / n;
        }
    }
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let std: Vec<f32> = var
        .iter()
        .map(|&v| if v > 1e-12 { v.sqrt() as f32 } else { 1.0 })
        .collect();
    let xs: Vec<[f64; N]> = examples
        .iter()
        .map(|e| std::array::from_fn(|j| standardise(e.features[j], mean[j], std[j]) as f64))
        .collect();
    let objective = |w: &[f64], g: &mut [f64]| -> f64 {
        g.iter_mut().for_each(|v| *v = 0.0);
        let mut loss = 0.0;
        for (x, e) in xs.iter().zip(examples) {
            let z = w[N] + x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
            let y = e.wrong as f64;
            // softplus(z) - y z, computed stably
            loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
            let d = 1.0 / (1.0 + (-z).exp()) - y;
            for j in 0..N {
                g[j] += d * x[j];
            }
            g[N] += d;
        }
        for j in 0..N {
            loss += 0.5 * l2 * w[j] * w[j];
            g[j] += l2 * w[j];
        }
        loss
    };
    let w = lbfgs(N + 1, 500, objective);
    Ok(Verifier {
        format: FORMAT.into(),
        version: 1,
        features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        mean,
        std,
        weights: w[..N].iter().map(|&v| v as f32).collect(),
        bias: w[N] as f32,
        meta: serde_json::Value::Null,
    })
}

/// A row's cheap answer as the cascade sees it.
struct Rated {
    features: [f32; N],
    failed_check: bool,
}

/// `None` for a row without a cheap answer.
fn rate(r: &Row, opts: CheckOptions) -> Option<Rated> {
    let a = r.weak_response.as_deref()?;
    Some(Rated {
        features: answer_features(r.conv.last_user(), a, opts),
        failed_check: cascade::check(a, opts).is_some(),
    })
}

/// The cascade's ranking score: answers that fail a rule check come first (`1 + risk`), the rest by
/// risk; a row without an answer counts as failed (2).
fn rank(v: &Verifier, rated: Option<&Rated>) -> f32 {
    match rated {
        None => 2.0,
        Some(a) if a.failed_check => 1.0 + v.risk_of(&a.features),
        Some(a) => v.risk_of(&a.features),
    }
}

/// The cascade's ranking score for each row (see [`rank`]).
pub fn cascade_scores(v: &Verifier, rows: &[Row], opts: CheckOptions) -> Vec<f32> {
    rows.iter().map(|r| rank(v, rate(r, opts).as_ref())).collect()
}

/// Out-of-fold cascade scores: each fold is scored by a verifier trained on the other folds. Each
/// answer is rated once.
pub fn cross_val_cascade_scores(
    rows: &[Row],
    fold_of: &[usize],
    k: usize,
    l2: f64,
    opts: CheckOptions,
) -> Result<Vec<f32>, TrainError> {
    let rated: Vec<Option<Rated>> = rows.iter().map(|r| rate(r, opts)).collect();
    let mut out = vec![0f32; rows.len()];
    for f in 0..k {
        let train_set: Vec<VerifierExample> = (0..rows.len())
            .filter(|&i| fold_of[i] != f)
            .filter_map(|i| {
                Some(VerifierExample {
                    features: rated[i].as_ref()?.features,
                    wrong: wrong_of(&rows[i])?,
                })
            })
            .collect();
        let v = train(&train_set, l2)?;
        for i in (0..rows.len()).filter(|&i| fold_of[i] == f) {
            out[i] = rank(&v, rated[i].as_ref());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::conversation::Conversation;
    use crate::metrics::Outcome;

    const MATH: CheckOptions = CheckOptions::MATH;
    const PEARS: &str = "Ann has 5 pears and eats 2. How many pears are left for her?";

    fn idx(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    #[test]
    fn numbers_are_read_as_written() {
        assert_eq!(
            numbers("It costs $1,250.50 for 3 items (2.5 kg each), -7 and 8."),
            vec![1250.5, 3.0, 2.5, 7.0, 8.0]
        );
        assert_eq!(numbers("no digits here"), Vec::<f64>::new());
        assert_eq!(numbers("version 1.2.3"), vec![1.2, 3.0]);
    }

    #[test]
    fn features_of_a_worked_answer() {
        let f = answer_features(
            PEARS,
            "Ann has 5 / 2 = <<5/2=2.5>>2.5 pears. Wait, actually...\n#### 2.5",
            MATH,
        );
        assert_eq!(f[idx("final_not_integer")], 1.0);
        assert_eq!(f[idx("final_repeats_prompt_number")], 0.0);
        assert_eq!(f[idx("prompt_numbers_used")], 1.0);
        assert_eq!(f[idx("ln_second_thoughts")], 3f32.ln());
        assert_eq!(f[idx("truncated")], 0.0);
        let f = answer_features(PEARS, "She still has 5 pears. The answer is 5", MATH);
        assert_eq!(f[idx("final_repeats_prompt_number")], 1.0);
        assert_eq!(f[idx("prompt_numbers_used")], 0.5);
        let f = answer_features(PEARS, "5 - 2 = <<5-2", MATH);
        assert_eq!((f[idx("truncated")], f[idx("no_final_answer")]), (1.0, 1.0));
        let cut = CheckOptions {
            hit_length_limit: true,
            ..MATH
        };
        assert_eq!(answer_features(PEARS, "#### 3", cut)[idx("truncated")], 1.0);
    }

    fn planted(n: usize) -> Vec<VerifierExample> {
        // Wrong exactly when the final answer is not a whole number, except every tenth example.
        (0..n)
            .map(|i| {
                let frac = i % 2 == 0;
                let answer = if frac {
                    format!("{i} / 4 = {}\n#### {}", i as f64 / 4.0 + 0.25, i as f64 / 4.0 + 0.25)
                } else {
                    format!("{i} + 1 = {}\n#### {}", i + 1, i + 1)
                };
                let wrong = frac != (i % 10 == 9);
                VerifierExample {
                    features: answer_features(&format!("Take {i} and work it out."), &answer, MATH),
                    wrong: if wrong { 1.0 } else { 0.0 },
                }
            })
            .collect()
    }

    #[test]
    fn training_finds_a_planted_signal_and_round_trips() {
        let v = train(&planted(400), 1.0).unwrap();
        let frac = v.risk("Take 7 and work it out.", "7 / 2 = 3.5\n#### 3.5", MATH);
        let whole = v.risk("Take 7 and work it out.", "7 + 1 = 8\n#### 8", MATH);
        assert!(frac > 0.8 && whole < 0.2, "{frac} {whole}");
        let back = Verifier::from_json(&v.to_json().unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(train(&planted(5), 1.0).is_err());
    }

    #[test]
    fn bad_verifier_files_are_refused() {
        let v = train(&planted(100), 1.0).unwrap();
        let mut j: serde_json::Value = serde_json::from_str(&v.to_json().unwrap()).unwrap();
        j["features"][0] = "something_else".into();
        assert!(Verifier::from_json(&j.to_string()).is_err());
        let mut j: serde_json::Value = serde_json::from_str(&v.to_json().unwrap()).unwrap();
        j["std"][0] = 0.0.into();
        assert!(Verifier::from_json(&j.to_string()).is_err());
        let mut j: serde_json::Value = serde_json::from_str(&v.to_json().unwrap()).unwrap();
        j["format"] = "optiroute-weights".into();
        assert!(Verifier::from_json(&j.to_string()).is_err());
        let mut j: serde_json::Value = serde_json::from_str(&v.to_json().unwrap()).unwrap();
        j["bias"] = 1e39.into(); // beyond f32: infinite
        assert!(Verifier::from_json(&j.to_string()).is_err());
        assert!(Verifier::from_json("{").is_err());
    }

    #[test]
    fn the_shipped_verifier_separates_right_from_wrong_working() {
        let v = Verifier::embedded().unwrap();
        assert_eq!(v.meta()["trained_on"][0], "gsm8k.dev.jsonl");
        let right = v.risk(PEARS, "Ann has 5 - 2 = <<5-2=3>>3 pears left.\n#### 3", MATH);
        let ignores_the_prompt = v.risk(PEARS, "He has 3 + 4 = 7 apples, so the answer is 7.", MATH);
        let fraction = v.risk(PEARS, "Ann has 5 / 2 = <<5/2=2.5>>2.5 pears left.\n#### 2.5", MATH);
        assert!(right < 0.5, "{right}");
        assert!(ignores_the_prompt > 2.0 * right, "{ignores_the_prompt} vs {right}");
        assert!(fraction > 0.5, "{fraction}");
        // Free-form working (no calculator annotations, no `####`) is judged on its content, not on
        // looking like the GSM8K format the verifier was trained on.
        let free = v.risk(
            PEARS,
            "Ann starts with 5 pears and eats 2, so 5 - 2 = 3 are left. The answer is 3.",
            MATH,
        );
        assert!(free < 0.3, "{free}");
    }

    fn row(answer: Option<&str>, weak: f64) -> Row {
        Row {
            benchmark: "gsm8k".into(),
            prompt: PEARS.into(),
            conv: Conversation::from_prompt(PEARS),
            outcome: Some(Outcome { strong: 1.0, weak }),
            weak_response: answer.map(str::to_string),
            group: None,
        }
    }

    #[test]
    fn cascade_scores_put_failed_checks_first() {
        let v = Verifier::embedded().unwrap();
        let rows = [
            row(Some("5 - 2 = <<5-2=3>>3\n#### 3"), 1.0),
            row(Some("5 - 2 = <<5-2=4>>4\n#### 4"), 0.0),
            row(None, 0.0),
        ];
        let s = cascade_scores(&v, &rows, MATH);
        assert!(s[0] < 1.0 && (1.0..2.0).contains(&s[1]) && s[2] == 2.0, "{s:?}");
        // Out of fold: each row is scored by a verifier that never saw it.
        let many: Vec<Row> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    row(Some("5 - 2 = <<5-2=3>>3\n#### 3"), 1.0)
                } else {
                    row(Some("5 / 2 = <<5/2=2.5>>2.5\n#### 2.5"), 0.0)
                }
            })
            .collect();
        let folds: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let oof = cross_val_cascade_scores(&many, &folds, 4, 1.0, MATH).unwrap();
        assert!(oof.iter().step_by(2).all(|&s| s < 0.5) && oof.iter().skip(1).step_by(2).all(|&s| s > 0.5));
    }
}
