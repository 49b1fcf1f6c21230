//! The scorer trait and the rule-based scorers: the legacy length rule, a hand-written heuristic, and a
//! seeded pseudo-random baseline.

use crate::conversation::Conversation;
use crate::features::TextStats;

/// Scores a conversation: higher means more need for the strong model. Scores lie in [0, 1].
pub trait Scorer: Send + Sync {
    fn name(&self) -> &str;
    fn score(&self, conv: &Conversation) -> f32;
}

/// The rule of the system OptiRoute replaces: a last user prompt longer than `threshold_chars`
/// characters goes to the strong model (score 1.0), anything else to the weak one (0.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthRule {
    pub threshold_chars: usize,
}

impl Default for LengthRule {
    fn default() -> Self {
        LengthRule { threshold_chars: 60 }
    }
}

impl Scorer for LengthRule {
    fn name(&self) -> &str {
        "length"
    }
    fn score(&self, conv: &Conversation) -> f32 {
        if conv.last_user().chars().count() > self.threshold_chars {
            1.0
        } else {
            0.0
        }
    }
}

/// Hand-written rules over cheap signals: token-ish size of the last user turn and of the whole
/// context, code, math, reasoning and essay markers, conversation depth and requested `max_tokens`.
/// The weights are set by hand (not fitted); the output is a logistic squash of their sum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeuristicScorer {
    /// Added to the logit: positive values send more traffic to the strong model.
    pub bias: f32,
}

impl Default for HeuristicScorer {
    fn default() -> Self {
        HeuristicScorer { bias: 0.0 }
    }
}

pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl HeuristicScorer {
    /// The logit before squashing, exposed for explanations and tests.
    pub fn logit(&self, conv: &Conversation) -> f32 {
        let last = conv.last_user();
        let s = TextStats::of(last);
        let (last_tokens, ctx_tokens) = match conv.tokens {
            Some(t) => (t.last_user as f32, t.context as f32),
            None => {
                let ctx_chars = conv.context_chars();
                (s.approx_tokens() as f32, ctx_chars.div_ceil(4) as f32)
            }
        };
        let depth = conv.count_role(crate::conversation::Role::User) as f32;
        let mut z = -2.2 + self.bias;
        // size: a prompt of ~50 tokens adds ~0.6, ~400 tokens ~1.9
        z += 0.9 * (1.0 + last_tokens / 25.0).ln();
        z += 0.25 * (1.0 + (ctx_tokens - last_tokens).max(0.0) / 200.0).ln();
        // code: fenced blocks or several code markers/symbols
        let code_density = s.code_symbols as f32 / (s.chars.max(1) as f32);
        z += 0.5 * (s.code_markers.min(6) as f32 / 2.0).min(2.0) + 4.0 * code_density.min(0.1);
        // math: symbols, markers, several numbers
        z += 0.35 * (s.math_symbols.min(8) as f32).sqrt()
            + 0.4 * s.math_markers.min(4) as f32
            + 0.15 * s.numbers.min(10) as f32;
        // reasoning and long-form writing
        z += 0.6 * s.reasoning_markers.min(3) as f32 + 0.5 * s.essay_markers.min(3) as f32;
        // depth of the conversation: later turns build on earlier ones
        z += 0.3 * (depth - 1.0).clamp(0.0, 6.0).sqrt();
        // a large requested output suggests long-form work; a tiny one a short answer
        if let Some(m) = conv.max_tokens {
            z += 0.4 * ((m as f32) / 512.0).ln().clamp(-2.0, 2.0);
        }
        z
    }
}

impl Scorer for HeuristicScorer {
    fn name(&self) -> &str {
        "heuristic"
    }
    fn score(&self, conv: &Conversation) -> f32 {
        sigmoid(self.logit(conv))
    }
}

/// A baseline that ignores meaning: a pseudo-random score derived from the prompt text and a seed
/// (deterministic, so repeated runs agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomScorer {
    pub seed: u64,
}

impl Scorer for RandomScorer {
    fn name(&self) -> &str {
        "random"
    }
    fn score(&self, conv: &Conversation) -> f32 {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for m in &conv.messages {
            for b in m.text.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 29;
        ((h >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::TokenCounts;

    fn c(p: &str) -> Conversation {
        Conversation::from_prompt(p)
    }

    #[test]
    fn length_rule_is_strict_greater_than() {
        let r = LengthRule { threshold_chars: 5 };
        assert_eq!(r.score(&c("12345")), 0.0);
        assert_eq!(r.score(&c("123456")), 1.0);
        // counts chars, not bytes
        assert_eq!(r.score(&c("ééééé")), 0.0);
    }

    #[test]
    fn heuristic_is_monotone_in_its_signals() {
        let h = HeuristicScorer::default();
        let short = h.score(&c("hi there"));
        let long = h.score(&c(&"Tell me about the history of the city and its people. ".repeat(8)));
        assert!(long > short, "{long} {short}");
        let base = "Summarise this paragraph about gardens for me";
        let plain = h.score(&c(base));
        assert!(h.score(&c(&format!("{base} step by step and explain why"))) > plain);
        assert!(h.score(&c(&format!("{base} ```fn main() {{ x(); }}```"))) > plain);
        assert!(h.score(&c(&format!("{base}: solve x^2 + 3x = 10"))) > plain);
        assert!(h.score(&c("write an essay")) > h.score(&c("write a haiku")) - 1.0);
        let deep = Conversation::from_pairs([
            ("user", "a"),
            ("assistant", "b"),
            ("user", "c"),
            ("assistant", "d"),
            ("user", base),
        ]);
        assert!(h.score(&deep) > plain);
        assert!(h.score(&c(base).with_max_tokens(Some(4000))) > h.score(&c(base).with_max_tokens(Some(16))));
        // caller-provided token counts take precedence over the estimate
        let big = c(base).with_tokens(Some(TokenCounts {
            last_user: 2000,
            context: 2000,
        }));
        assert!(h.score(&big) > plain);
        for p in ["", "x", &"é".repeat(10_000)] {
            let s = h.score(&c(p));
            assert!((0.0..=1.0).contains(&s));
        }
    }

    #[test]
    fn random_scorer_is_deterministic_and_spread() {
        let r = RandomScorer { seed: 7 };
        let a: Vec<f32> = (0..1000).map(|i| r.score(&c(&format!("prompt {i}")))).collect();
        assert_eq!(a[3], r.score(&c("prompt 3")));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
