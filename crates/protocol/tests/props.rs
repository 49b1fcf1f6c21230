//! Property tests for the protocol crate's invariants that example tests only sample:
//! SSE encoding and decoding agree for any data and any network split, a stream accumulator
//! rebuilds exactly the text of its deltas, and cost arithmetic is additive up to rounding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use optiroute_protocol::openai::{ChatChunk, ChunkAccumulator, ChunkChoice, Delta, Extra, Usage};
use optiroute_protocol::pricing::{Nanos, Price};
use optiroute_protocol::sse::{self, SseDecoder, SseEvent};
use proptest::prelude::*;

/// Decodes `bytes` fed in the pieces that `cuts` (byte offsets, any order, clamped) delimit.
/// Repeated offsets make empty pieces unless `skip_empty` is set.
fn decode_split(bytes: &[u8], cuts: &[usize], skip_empty: bool) -> Vec<SseEvent> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    cuts.sort_unstable();
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        let piece = &bytes[start..c];
        if !(skip_empty && piece.is_empty()) {
            d.feed(piece, &mut out).unwrap();
        }
        start = c;
    }
    d.finish(&mut out);
    out
}

/// A single data line: anything printable (including `:`, leading spaces and non-ASCII) but no
/// line break, which `encode_data` documents as the caller's duty.
fn data_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,40}",
        " [ a-z:]{0,10}",
        Just(String::new()),
        Just("[DONE]".to_owned()),
        Just(r#"{"a":"b: c","d":[1,2]}"#.to_owned()),
    ]
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,16}", "[^\r\n]{1,12}"]
}

/// An event as `encode_data` (no name) or `encode_event` (named) writes it.
fn encoded_event() -> impl Strategy<Value = SseEvent> {
    (prop::option::of(event_name()), data_line()).prop_map(|(event, data)| SseEvent { event, data })
}

fn encode(ev: &SseEvent) -> Vec<u8> {
    match &ev.event {
        Some(name) => sse::encode_event(name, ev.data.as_bytes()).to_vec(),
        None => sse::encode_data(ev.data.as_bytes()).to_vec(),
    }
}

/// One streamed chunk: a few choices, each with an optional content delta and index 0..3.
fn chunk() -> impl Strategy<Value = ChatChunk> {
    let choice = (0u32..3, prop::option::of("\\PC{0,12}"), prop::option::of("[a-z_]{1,8}"));
    (
        prop::collection::vec(choice, 0..4),
        prop::option::of((0u64..1000, 0u64..1000)),
    )
        .prop_map(|(choices, usage)| {
            let mut c = ChatChunk::new("chatcmpl-p", 1, "m");
            for (index, content, finish) in choices {
                c.choices.push(ChunkChoice {
                    index,
                    delta: Delta {
                        content,
                        ..Default::default()
                    },
                    finish_reason: finish,
                    extra: Extra::new(),
                });
            }
            c.usage = usage.map(|(p, o)| Usage::new(p, o));
            c
        })
}

/// The text a client sees for choice 0: every content delta of index 0, in order.
fn choice0_text(chunks: &[ChatChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| c.choices.iter().filter(|ch| ch.index == 0))
        .filter_map(|ch| ch.delta.content.as_deref())
        .collect()
}

/// A price with per-token parts only up to $10,000 per million tokens (so no sum saturates).
fn price() -> impl Strategy<Value = Price> {
    (
        0u64..10_000_000_000,
        0u64..10_000_000_000,
        prop::option::of(0u64..10_000_000_000),
        0u64..1_000_000_000,
    )
        .prop_map(|(input, output, cached, per_request)| Price {
            input_micros_per_mtok: input,
            output_micros_per_mtok: output,
            cached_input_micros_per_mtok: cached,
            per_request: Nanos(per_request),
        })
}

/// (usage, cached prompt tokens <= prompt tokens) with counts up to a billion tokens.
fn usage_part() -> impl Strategy<Value = (Usage, u64)> {
    (0u64..1_000_000_000, 0u64..1_000_000_000, 0.0f64..=1.0).prop_map(|(p, o, frac)| {
        let cached = ((p as f64) * frac) as u64;
        (Usage::new(p, o), cached.min(p))
    })
}

/// Token-proportional cost: `cost` without the flat per-request part.
fn token_cost(price: &Price, usage: &Usage, cached: u64) -> u64 {
    price.cost(usage, cached).0 - price.per_request.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of encoded events decodes to exactly those events, however the bytes are cut
    /// (with and without empty pieces where cut offsets repeat).
    #[test]
    fn sse_encode_decode_round_trip(
        events in prop::collection::vec(encoded_event(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        done in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        for ev in &events {
            bytes.extend_from_slice(&encode(ev));
        }
        let mut expected = events.clone();
        if done {
            bytes.extend_from_slice(sse::DONE);
            expected.push(SseEvent { event: None, data: "[DONE]".to_owned() });
        }
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        prop_assert_eq!(decode_split(&bytes, &[], true), expected.clone());
        prop_assert_eq!(decode_split(&bytes, &cuts, true), expected.clone());
        prop_assert_eq!(decode_split(&bytes, &cuts, false), expected);
    }

    /// Line endings may be LF, CRLF or CR (each line its own), and splitting never changes the result,
    /// even between the CR and LF of a CRLF pair.
    #[test]
    fn sse_line_endings_and_splits(
        lines in prop::collection::vec(prop_oneof![
            data_line().prop_map(|d| format!("data: {d}")),
            event_name().prop_map(|e| format!("event: {e}")),
            "[^\r\n]{0,8}".prop_map(|c| format!(":{c}")),
            Just(String::new()),
            Just("data".to_owned()),
            Just("id: 7".to_owned()),
        ], 0..12),
        endings in prop::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut bytes = Vec::new();
        for (i, (line, end)) in lines.iter().zip(endings.iter().cycle()).enumerate() {
            bytes.extend_from_slice(line.as_bytes());
            // A bare CR followed by an empty LF-terminated line would read as one CRLF: not the
            // same text, so end such a line with CRLF.
            let next_empty = lines.get(i + 1).is_some_and(String::is_empty);
            let end = if *end == "\r" && next_empty { "\r\n" } else { end };
            bytes.extend_from_slice(end.as_bytes());
        }
        let whole = decode_split(&bytes, &[], true);
        // Same text with LF endings only: the line ending style never matters.
        let mut lf = Vec::new();
        for line in &lines {
            lf.extend_from_slice(line.as_bytes());
            lf.push(b'\n');
        }
        prop_assert_eq!(&decode_split(&lf, &[], true), &whole);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        prop_assert_eq!(decode_split(&bytes, &cuts, true), whole);
    }

    /// Arbitrary bytes (invalid UTF-8, stray CRs) decode the same in one piece and in many.
    #[test]
    fn sse_arbitrary_bytes_split_invariant(
        bytes in prop::collection::vec(prop_oneof![
            Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), Just(b'd'), Just(b'a'), Just(b't'),
            any::<u8>(),
        ], 0..80),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        let whole = decode_split(&bytes, &[], true);
        prop_assert_eq!(decode_split(&bytes, &cuts, true), whole.clone());
        prop_assert_eq!(decode_split(&bytes, &cuts, false), whole);
    }

    /// The accumulated text is the concatenation of choice 0's content deltas, also after the chunks
    /// travelled as SSE (JSON, encoded, split anywhere, decoded, parsed back).
    #[test]
    fn accumulator_text_is_concatenated_deltas(
        chunks in prop::collection::vec(chunk(), 0..10),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let expected = choice0_text(&chunks);
        let mut acc = ChunkAccumulator::default();
        for c in &chunks {
            acc.push(c);
        }
        prop_assert_eq!(acc.text(), expected.as_str());
        let last_usage = chunks.iter().rev().find_map(|c| c.usage);
        prop_assert_eq!(acc.usage(), last_usage);

        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(&sse::encode_data(&serde_json::to_vec(c).unwrap()));
        }
        wire.extend_from_slice(sse::DONE);
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        let mut replayed = ChunkAccumulator::default();
        let mut n = 0;
        for ev in decode_split(&wire, &cuts, true) {
            if ev.data == "[DONE]" {
                break;
            }
            let c: ChatChunk = serde_json::from_str(&ev.data).unwrap();
            replayed.push(&c);
            n += 1;
        }
        prop_assert_eq!(n, chunks.len());
        prop_assert_eq!(replayed.text(), expected.as_str());
        let completion = replayed.into_completion();
        prop_assert_eq!(completion.choices[0].message.text(), expected);
    }

    /// Costing two usages separately and summing differs from costing their sum by at most
    /// one nano-dollar (each call rounds once, to the nearest nano), plus one flat fee per call.
    #[test]
    fn cost_is_additive(p in price(), a in usage_part(), b in usage_part()) {
        let ((ua, ca), (ub, cb)) = (a, b);
        let sum = Usage::new(ua.prompt_tokens + ub.prompt_tokens, ua.completion_tokens + ub.completion_tokens);
        let whole = p.cost(&sum, ca + cb);
        let parts = p.cost(&ua, ca) + p.cost(&ub, cb);
        // The flat per-request price is paid once per call.
        prop_assert_eq!(
            p.cost(&Usage::default(), 0),
            p.per_request
        );
        let (whole_t, parts_t) = (whole.0 - p.per_request.0, parts.0 - 2 * p.per_request.0);
        prop_assert!(whole_t.abs_diff(parts_t) <= 1, "whole {whole_t} parts {parts_t}");
        prop_assert_eq!(token_cost(&p, &sum, ca + cb), whole_t);
    }

    /// Same for many parts: n calls are within n nano-dollars of one call on the total.
    #[test]
    fn cost_is_additive_over_many_calls(p in price(), parts in prop::collection::vec(usage_part(), 1..20)) {
        let mut total = Usage::default();
        let mut cached_total = 0;
        let mut summed = 0u64;
        for (u, c) in &parts {
            total = Usage::new(total.prompt_tokens + u.prompt_tokens, total.completion_tokens + u.completion_tokens);
            cached_total += c;
            summed += token_cost(&p, u, *c);
        }
        let whole = token_cost(&p, &total, cached_total);
        prop_assert!(whole.abs_diff(summed) <= parts.len() as u64, "whole {whole} summed {summed}");
    }

    /// Cost never decreases when tokens are added, and cached prompt tokens never cost more
    /// than uncached ones when the cached price is the lower one.
    #[test]
    fn cost_is_monotone(p in price(), (u, c) in usage_part(), extra_in in 0u64..1000, extra_out in 0u64..1000) {
        let more = Usage::new(u.prompt_tokens + extra_in, u.completion_tokens + extra_out);
        prop_assert!(p.cost(&more, c) >= p.cost(&u, c));
        if p.cached_input_micros_per_mtok.unwrap_or(p.input_micros_per_mtok) <= p.input_micros_per_mtok {
            prop_assert!(p.cost(&u, c) <= p.cost(&u, 0));
        }
    }

    /// Nanos: addition saturates instead of wrapping; dollars survive a round trip through f64 for
    /// amounts up to a million dollars; Display prints the exact amount.
    #[test]
    fn nanos_arithmetic_and_display(a in any::<u64>(), b in any::<u64>(), small in 0u64..1_000_000_000_000_000) {
        prop_assert_eq!((Nanos(a) + Nanos(b)).0, a.saturating_add(b));
        prop_assert_eq!(Nanos(a) + Nanos(b), Nanos(b) + Nanos(a));
        let mut acc = Nanos(a);
        acc += Nanos(b);
        prop_assert_eq!(acc, Nanos(a) + Nanos(b));
        prop_assert_eq!(Nanos(a).saturating_sub(Nanos(b)).0, a.saturating_sub(b));

        prop_assert_eq!(Nanos::from_usd(Nanos(small).as_usd()), Nanos(small));

        let shown = Nanos(a).to_string();
        let (whole, frac) = shown.split_once('.').unwrap();
        prop_assert!(frac.len() >= 2 && frac.len() <= 9);
        let frac_nanos: u64 = format!("{frac:0<9}").parse().unwrap();
        let back = u128::from(whole.parse::<u64>().unwrap()) * 1_000_000_000 + u128::from(frac_nanos);
        prop_assert_eq!(back, u128::from(a));
    }
}

/// An empty read between the CR and the LF of a CRLF pair must not turn the LF into a blank line
/// (which would dispatch the event early and split it in two). Found by the property below.
#[test]
fn empty_feed_between_cr_and_lf() {
    let bytes = b"data: a\r\ndata: b\n\n";
    let whole = decode_split(bytes, &[], false);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!(decode_split(bytes, &[8, 8], false), whole);
}

/// Found by `fuzz/` (`anthropic_request` with OPTIROUTE_FUZZ_STRICT=1): trimming the trailing
/// whitespace of a final assistant turn trims only its last text block, which can leave an empty
/// text block (and the turn still ending in whitespace), both rejected by Anthropic with a 400.
///
/// Ignored: fails today; reported to the lead rather than fixed here.
#[test]
fn anthropic_final_assistant_turn_has_no_empty_block() {
    use optiroute_protocol::anthropic;
    use optiroute_protocol::openai::{ChatRequest, Message};
    let req = ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::new("user", "hi"),
            Message::new("assistant", "a"),
            Message::new("assistant", " "),
        ],
        ..Default::default()
    };
    let body = anthropic::to_request(&req, "claude", 16).unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    let texts: Vec<&str> = match &last["content"] {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect(),
        other => panic!("unexpected content {other}"),
    };
    assert!(texts.iter().all(|t| !t.is_empty()), "empty text block in {last}");
    let joined: String = texts.concat();
    assert_eq!(
        joined.trim_end(),
        joined,
        "final assistant turn ends in whitespace: {last}"
    );
}
