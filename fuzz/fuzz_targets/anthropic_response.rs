//! Anthropic response translation. Byte 0 picks the mode:
//! - even: the rest is a complete Messages API body for `from_response_at`;
//! - odd: the rest drives a generator of stream events (`message_start`, `content_block_*`,
//!   `message_delta`, `error`, junk, ...) fed to `StreamTranslator`.
//!
//! Checked: no panic; body errors are never blamed on the client; a completion has one assistant
//! choice, a known finish reason, consistent usage and tool-call arguments that are JSON; a
//! stream starts with exactly one role chunk, emits nothing after `message_stop` but the closing
//! usage chunk (no choices), and numbers tool calls 0, 1, 2, ... with the id and name on each
//! call's first fragment; with a local stop string, the text sent never contains it.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use optiroute_fuzz::anthropic_event;
use optiroute_protocol::anthropic::{self, StreamTranslator};
use optiroute_protocol::openai::{ChatChunk, Usage};
use serde_json::Value;

const FINISH: &[&str] = &["stop", "length", "tool_calls", "content_filter"];

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        check_body(rest);
    } else {
        check_stream(rest);
    }
});

fn check_usage(u: Option<Usage>) {
    if let Some(u) = u {
        assert_eq!(
            u.total_tokens,
            u.prompt_tokens.saturating_add(u.completion_tokens),
            "{u:?}"
        );
    }
}

fn check_body(body: &[u8]) {
    match anthropic::from_response_at(body, "m", 0) {
        Ok(c) => {
            assert_eq!(c.model, "m");
            assert_eq!(c.choices.len(), 1);
            let choice = &c.choices[0];
            assert_eq!(choice.message.role, "assistant");
            if let Some(r) = &choice.finish_reason {
                assert!(FINISH.contains(&r.as_str()), "{r}");
            }
            for call in choice.message.tool_calls.iter().flatten() {
                let args = call["function"]["arguments"].as_str().expect("arguments is a string");
                assert!(serde_json::from_str::<Value>(args).is_ok(), "{call}");
            }
            check_usage(c.usage);
        }
        Err(e) => assert!(!e.is_client_error(), "{e:?}"),
    }
}

fn check_stream(data: &[u8]) {
    let mut u = Unstructured::new(data);
    // Sometimes with a stop string the gateway applies itself (Anthropic refuses blank ones).
    let local_stop = u.arbitrary::<bool>().unwrap_or(false);
    let mut t = StreamTranslator::new(0, "m");
    if local_stop {
        t = t.with_local_stops(vec!["\n".into()]);
    }
    let mut out: Vec<ChatChunk> = Vec::new();
    let mut done = false;
    while !u.is_empty() {
        let Ok(ev) = anthropic_event(&mut u) else { break };
        let before = out.len();
        match t.on_event(&ev, &mut out) {
            Ok(true) => {
                if done {
                    assert_eq!(out.len(), before, "output after message_stop");
                }
                done = true;
            }
            Ok(false) => assert!(!done, "stream reopened after message_stop"),
            Err(e) => {
                assert!(!e.is_client_error(), "{e:?}");
                assert_eq!(out.len(), before, "an error event also produced chunks");
                break;
            }
        }
        check_usage(t.usage());
    }
    assert_eq!(t.is_finished(), done);
    if local_stop {
        let sent: String = out.iter().flat_map(|c| c.delta_text()).collect();
        assert!(!sent.contains('\n'), "local stop string sent: {sent:?}");
    }

    let mut next_call = 0u64;
    let mut seen_choice = false;
    for (i, c) in out.iter().enumerate() {
        assert_eq!((c.model.as_str(), c.created), ("m", 0), "{c:?}");
        if c.choices.is_empty() {
            // The usage chunk that closes the stream (OpenAI's `include_usage` shape): last, and
            // only with usage.
            assert!(done && i + 1 == out.len() && c.usage.is_some(), "{out:?}");
            assert_eq!(c.usage, t.usage());
            continue;
        }
        assert_eq!(c.choices.len(), 1, "{c:?}");
        let choice = &c.choices[0];
        assert_eq!(choice.index, 0);
        assert_eq!(
            choice.delta.role.is_some(),
            !seen_choice,
            "role chunk must come first, once: {out:?}"
        );
        seen_choice = true;
        if let Some(r) = &choice.finish_reason {
            assert!(FINISH.contains(&r.as_str()), "{r}");
        }
        for call in choice.delta.tool_calls.iter().flatten() {
            let index = call["index"].as_u64().expect("tool call index");
            assert!(index <= next_call, "tool call {index} before {next_call}: {out:?}");
            if index == next_call {
                assert!(call["id"].is_string() && call["function"]["name"].is_string(), "{call}");
                next_call += 1;
            }
            assert!(call["function"]["arguments"].is_string(), "{call}");
        }
    }
}
