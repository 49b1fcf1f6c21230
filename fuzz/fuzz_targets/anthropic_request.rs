//! Anthropic request translation of arbitrary canonical requests: never panics, is deterministic,
//! rejects only with a client error naming a field, and whatever it produces is a well-formed
//! Messages API body (alternating user/assistant turns, positive max_tokens, no empty content
//! blocks, tool results first in user turns, sampling values in Anthropic's ranges).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use optiroute_fuzz::{chat_request, strict};
use optiroute_protocol::anthropic;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(req) = chat_request(&mut u) else { return };
    let default_max = u.int_in_range(0..=4096u32).unwrap_or(1024);
    let out = anthropic::to_request(&req, "claude-x", default_max);
    assert_eq!(
        out,
        anthropic::to_request(&req, "claude-x", default_max),
        "not deterministic"
    );
    // The generated request, shown in failure messages (for reproducing outside the fuzzer).
    let request = || serde_json::to_string(&req).unwrap_or_default();
    let body = match out {
        Ok(body) => body,
        Err(e) => {
            assert!(e.is_client_error() && e.field().is_some(), "{e:?}");
            return;
        }
    };
    assert_eq!(body["model"], "claude-x");
    let max = body["max_tokens"].as_u64().expect("max_tokens is an integer");
    assert!(max >= 1);
    assert_eq!(max, u64::from(req.output_cap().unwrap_or(default_max)));

    let msgs = body["messages"].as_array().expect("messages is a list");
    assert!(!msgs.is_empty());
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().expect("role is a string");
        assert!(role == "user" || role == "assistant", "{m}");
        if i > 0 {
            assert_ne!(msgs[i - 1]["role"], m["role"], "roles must alternate: {body}");
        }
        let last_assistant = i + 1 == msgs.len() && role == "assistant";
        match &m["content"] {
            // Only a final (prefill) assistant turn may end up empty, after trailing-space trimming.
            Value::String(s) => assert!(
                !s.is_empty() || last_assistant,
                "empty content: {body}\nrequest: {}",
                request()
            ),
            Value::Array(blocks) => {
                assert!(!blocks.is_empty(), "empty block list: {body}");
                let first_other = blocks.iter().position(|b| b["type"] != "tool_result");
                if let Some(k) = first_other {
                    assert!(
                        blocks[k..].iter().all(|b| b["type"] != "tool_result"),
                        "tool_result after other blocks: {body}"
                    );
                }
                for (k, b) in blocks.iter().enumerate() {
                    if b["type"] == "text" {
                        let t = b["text"].as_str().expect("text block has text");
                        // Fixed finding: trimming a final assistant turn once left an empty block.
                        let _ = (last_assistant, k);
                        assert!(!t.is_empty(), "empty text block: {body}\nrequest: {}", request());
                    }
                    if b["type"] == "tool_use" {
                        assert!(role == "assistant" && b["input"].is_object(), "{body}");
                    }
                }
            }
            other => panic!("content is neither a string nor a list: {other}"),
        }
        if last_assistant && strict() {
            let text = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
                _ => String::new(),
            };
            assert_eq!(
                text.trim_end(),
                text,
                "final assistant turn ends in whitespace: {body}\nrequest: {}",
                request()
            );
        }
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        assert!((0.0..=1.0).contains(&t), "{body}");
        assert!(body.get("top_p").is_none(), "both temperature and top_p: {body}");
    }
    if let Some(p) = body.get("top_p").and_then(Value::as_f64) {
        assert!((0.0..1.0).contains(&p), "{body}");
    }
    if let Some(stops) = body.get("stop_sequences") {
        let stops = stops.as_array().expect("stop_sequences is a list");
        assert!(
            stops.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())),
            "{body}"
        );
    }
    assert!(serde_json::from_str::<Value>(&body.to_string()).is_ok());
});
