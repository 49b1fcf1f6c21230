//! Token counting for when an upstream does not report usage.
//!
//! Counts use the o200k_base BPE (embedded in the binary; works offline). It is exact for current
//! OpenAI models and a close estimate for others; callers mark such usage as estimated.

use crate::openai::{ChatRequest, Usage};

/// Tokens in a piece of text. The tokenizer loads once per process (~0.2 s in release).
pub fn count_text(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len() as u64
}

/// Loads the tokenizer now, so the first request does not pay for it.
pub fn warm_up() {
    let _ = count_text("warm up");
}

/// Prompt tokens of a chat request, counted the way OpenAI's chat format adds them up: a few tokens of
/// framing per message plus the role, name and text, and three tokens that prime the reply.
pub fn estimate_prompt_tokens(req: &ChatRequest) -> u64 {
    const PER_MESSAGE: u64 = 3;
    const REPLY_PRIMING: u64 = 3;
    let mut total = REPLY_PRIMING;
    for m in &req.messages {
        total += PER_MESSAGE + count_text(&m.role) + count_text(&m.text());
        if let Some(name) = &m.name {
            total += 1 + count_text(name);
        }
        if let Some(calls) = &m.tool_calls {
            for c in calls {
                total += count_text(&c.to_string());
            }
        }
    }
    if let Some(tools) = &req.tools {
        for t in tools {
            total += count_text(&t.to_string());
        }
    }
    total
}

/// A cheap token estimate (about four bytes per token), for decisions that do not need exact counts.
pub fn approx_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// [`estimate_prompt_tokens`] without the tokenizer: framing plus [`approx_tokens`] of each message.
pub fn approx_prompt_tokens(req: &ChatRequest) -> u64 {
    3 + req
        .messages
        .iter()
        .map(|m| 4 + (m.text_len() as u64).div_ceil(4))
        .sum::<u64>()
}

/// Usage for a request and its completion text, estimated with the tokenizer.
pub fn estimate_usage(req: &ChatRequest, completion_text: &str) -> Usage {
    Usage::new(estimate_prompt_tokens(req), count_text(completion_text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::openai::Message;

    #[test]
    fn counts_are_plausible_and_monotone() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello"), 1);
        let short = count_text("The quick brown fox");
        let long = count_text("The quick brown fox jumps over the lazy dog, twice, slowly.");
        assert!(short >= 4 && long > short);
    }

    #[test]
    fn approximation_is_close_for_english() {
        let text = "The quick brown fox jumps over the lazy dog while the cat watches from the window.";
        let exact = count_text(text) as f64;
        let approx = approx_tokens(text) as f64;
        assert!((approx / exact - 1.0).abs() < 0.5, "{approx} vs {exact}");
    }

    #[test]
    fn prompt_estimate_includes_framing() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::new("system", "Be brief."), Message::new("user", "hello")],
            ..Default::default()
        };
        // 3 priming + 2 * (3 framing + 1 role) + "Be brief." (3) + "hello" (1)
        assert_eq!(estimate_prompt_tokens(&req), 3 + 2 * 4 + 3 + 1);
    }
}
