//! Hugging Face TGI response translation. Byte 0 picks the mode:
//! - even: the rest is a `/generate` body for `parse_response` / `from_response_with_stops`;
//! - odd: the rest drives a generator of stop strings and `/generate_stream` events fed to
//!   `StreamTranslator::with_stop_sequences`.
//!
//! Checked, besides no panic: body errors are never blamed on the client, and a returned text
//! contains no stop string; in a stream, the text sent to the client is always a prefix of
//! "all non-special token texts, cut at the first stop string", equals it once the stream is
//! finished, never contains a stop string, starts with one role chunk and ends with one finish chunk.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use optiroute_fuzz::{text, tgi_event};
use optiroute_protocol::huggingface::{self, StreamTranslator};
use optiroute_protocol::openai::ChatChunk;
use optiroute_protocol::sse::SseEvent;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let mut u = Unstructured::new(rest);
    let nstops = u.int_in_range(0..=3usize).unwrap_or(0);
    let mut stops = Vec::new();
    for _ in 0..nstops {
        stops.push(text(&mut u).unwrap_or_default());
    }
    if mode % 2 == 0 {
        check_body(u.take_rest(), &stops);
    } else {
        check_stream(&mut u, stops);
    }
});

/// `text` cut at the earliest occurrence of any non-empty stop string.
fn cut(text: &str, stops: &[String]) -> String {
    let pos = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..pos].to_owned()
}

fn no_stop_inside(text: &str, stops: &[String]) {
    for s in stops.iter().filter(|s| !s.is_empty()) {
        assert!(!text.contains(s.as_str()), "{text:?} contains stop {s:?}");
    }
}

fn check_body(body: &[u8], stops: &[String]) {
    let _ = huggingface::from_response(body, "m", "id", 0);
    match huggingface::from_response_with_stops(body, "m", "id", 0, stops) {
        Ok((c, counts)) => {
            let g = huggingface::parse_response(body).expect("parsed once already");
            let text = c.choices[0].message.text();
            assert_eq!(text, cut(&g.text, stops));
            no_stop_inside(&text, stops);
            assert_eq!(c.usage, counts.usage());
            if let Some(u) = c.usage {
                assert_eq!(u.total_tokens, u.prompt_tokens.saturating_add(u.completion_tokens));
            }
        }
        Err(e) => assert!(!e.is_client_error(), "{e:?}"),
    }
}

/// The client-visible text a TGI stream event carries (what the translator should pass on).
fn token_text(ev: &SseEvent) -> String {
    let Ok(v) = serde_json::from_str::<Value>(ev.data.trim()) else {
        return String::new();
    };
    let Some(token) = v.get("token").filter(|t| t.is_object()) else {
        return String::new();
    };
    if token.get("special").and_then(Value::as_bool).unwrap_or(false) {
        return String::new();
    }
    token.get("text").and_then(Value::as_str).unwrap_or("").to_owned()
}

fn check_stream(u: &mut Unstructured<'_>, stops: Vec<String>) {
    let mut t = StreamTranslator::new("id", 0, "m").with_stop_sequences(stops.clone());
    let mut out: Vec<ChatChunk> = Vec::new();
    let mut full = String::new();
    let mut done = false;
    while !u.is_empty() && !done {
        let Ok(ev) = tgi_event(u) else { break };
        match t.on_event(&ev, &mut out) {
            Ok(finished) => {
                full.push_str(&token_text(&ev));
                done = finished;
            }
            Err(e) => {
                assert!(!e.is_client_error(), "{e:?}");
                break;
            }
        }
        let sent: String = out.iter().flat_map(|c| c.delta_text()).collect();
        no_stop_inside(&sent, &stops);
        let expected = cut(&full, &stops);
        assert!(
            expected.starts_with(&sent),
            "sent {sent:?} is not a prefix of {expected:?}"
        );
    }
    assert_eq!(t.is_finished(), done);
    if done {
        let before = out.len();
        let again = t.on_event(
            &SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
            &mut out,
        );
        assert_eq!((again, out.len()), (Ok(true), before), "output after the final event");
        let sent: String = out.iter().flat_map(|c| c.delta_text()).collect();
        assert_eq!(sent, cut(&full, &stops), "finished stream lost text");
    }
    // A finished stream may close with one usage chunk that has no choices (OpenAI's
    // `include_usage` shape); it carries exactly the counts the translator reports.
    let mut chunks = &out[..];
    if let Some((last, rest)) = out.split_last() {
        if last.choices.is_empty() {
            assert!(done, "usage chunk before the end: {out:?}");
            assert_eq!(last.usage, t.usage(), "usage chunk disagrees with usage()");
            assert!(last.usage.is_some(), "empty chunk without usage");
            chunks = rest;
        }
    }
    let finishes = chunks.iter().filter(|c| c.choices[0].finish_reason.is_some()).count();
    assert_eq!(finishes, usize::from(done), "{out:?}");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.choices.len(), 1);
        assert_eq!(
            c.choices[0].delta.role.is_some(),
            i == 0,
            "role chunk must come first, once"
        );
    }
    if let Some(u) = t.usage() {
        assert_eq!(u.total_tokens, u.prompt_tokens.saturating_add(u.completion_tokens));
    }
}
