//! Shared helpers of the fuzz targets: structure-aware generators (canonical chat requests, provider
//! stream events) built from libFuzzer's bytes with `arbitrary::Unstructured`, and an SSE feeder
//! that cuts its input at given offsets.
//!
//! Generators choose from small vocabularies of the values the translators branch on (roles, part
//! types, URL schemes, event types, ...) mixed with arbitrary strings and numbers, so that libFuzzer
//! reaches the interesting branches without having to invent JSON first.

use arbitrary::{Result, Unstructured};
use optiroute_protocol::openai::{ChatRequest, Content, ContentPart, Message, Stop, StreamOptions};
use optiroute_protocol::sse::{SseDecoder, SseEvent};
use serde_json::{Map, Value, json};

/// Whether checks of reported-but-unfixed bugs are on (`OPTIROUTE_FUZZ_STRICT=1`). Off by default
/// so that the smoke run stays green until the lead fixes them; see fuzz/README.md.
pub fn strict() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("OPTIROUTE_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// Decodes `bytes` fed in the pieces delimited by `cuts` (offsets, clamped to the input, any order),
/// then calls `finish`. Repeated offsets feed empty pieces, as an empty network read would.
pub fn decode_split(bytes: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
    cuts.sort_unstable();
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        let piece = &bytes[start..c];
        // The default limit (8 MiB) is far above any fuzz input, so this never fails.
        let fed = d.feed(piece, &mut out);
        assert!(fed.is_ok(), "feed failed on a small input: {fed:?}");
        start = c;
    }
    d.finish(&mut out);
    out
}

/// Encodes events the way a well-behaved server would: `event:` if named, one `data:` line per
/// line of the data, then a blank line.
pub fn encode_events(events: &[SseEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        if let Some(name) = &ev.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
        }
        for line in ev.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Picks one of `items`.
pub fn pick<'a, T: ?Sized>(u: &mut Unstructured<'_>, items: &[&'a T]) -> Result<&'a T> {
    Ok(*u.choose(items)?)
}

/// A short string: usually from a vocabulary of values with meaning to some translator, sometimes
/// arbitrary.
pub fn text(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => String::new(),
        1 => pick(
            u,
            &[
                " ",
                "hi",
                "\n",
                "  trailing  ",
                "<|im_end|>",
                "\nUser:",
                "User:",
                "END",
                "{\"a\":1}",
                "é",
                "\u{1F600}",
            ],
        )?
        .to_owned(),
        _ => {
            let s: &str = u.arbitrary()?;
            s.chars().take(24).collect()
        }
    })
}

fn small_json(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => Value::Null,
        1 => Value::from(u.arbitrary::<bool>()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(u.arbitrary::<u64>()?),
        4 => Value::from(text(u)?),
        5 => json!({}),
        6 => json!([1, "x"]),
        _ => Value::from(u.arbitrary::<f64>()?),
    })
}

fn image_url(u: &mut Unstructured<'_>) -> Result<Value> {
    let url = match u.int_in_range(0..=2u8)? {
        0 => text(u)?,
        _ => pick(
            u,
            &[
                "data:image/png;base64,iVBORw0KGgo=",
                "data:IMAGE/JPEG;charset=x;base64,AAA=",
                "data:image/svg+xml;base64,PHN2Zz4=",
                "data:image/png,raw",
                "data:;base64,",
                "data:",
                "https://example.com/cat.jpg",
                "HTTP://EXAMPLE.COM/x",
                "http",
                "file:///etc/passwd",
                "",
            ],
        )?
        .to_owned(),
    };
    Ok(match u.int_in_range(0..=3u8)? {
        0 => Value::from(url),
        1 => small_json(u)?,
        _ => json!({ "url": url }),
    })
}

fn part(u: &mut Unstructured<'_>) -> Result<ContentPart> {
    let mut m = Map::new();
    let kind = pick(
        u,
        &[
            "text",
            "text",
            "image_url",
            "file",
            "refusal",
            "input_audio",
            "",
            "other",
        ],
    )?;
    if !kind.is_empty() || u.arbitrary()? {
        m.insert("type".into(), Value::from(kind));
    }
    match kind {
        "text" => {
            if u.ratio(7, 8)? {
                m.insert("text".into(), Value::from(text(u)?));
            } else {
                m.insert("text".into(), small_json(u)?);
            }
        }
        "image_url" => {
            m.insert("image_url".into(), image_url(u)?);
        }
        "file" => {
            let data = pick(
                u,
                &[
                    "data:application/pdf;base64,JVBE",
                    "data:APPLICATION/PDF;base64,",
                    "data:text/plain;base64,eA==",
                    "x",
                ],
            )?;
            m.insert("file".into(), json!({ "file_data": data }));
        }
        "refusal" => {
            m.insert("refusal".into(), Value::from(text(u)?));
        }
        _ => {}
    }
    if u.ratio(1, 8)? {
        m.insert("cache_control".into(), json!({"type": "ephemeral"}));
    }
    Ok(ContentPart(m))
}

fn content(u: &mut Unstructured<'_>) -> Result<Option<Content>> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => None,
        1 => {
            let n = u.int_in_range(0..=4usize)?;
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                parts.push(part(u)?);
            }
            Some(Content::Parts(parts))
        }
        _ => Some(Content::Text(text(u)?)),
    })
}

fn tool_call(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut call = Map::new();
    if u.ratio(7, 8)? {
        call.insert("id".into(), Value::from(text(u)?));
    }
    if u.ratio(1, 4)? {
        call.insert("type".into(), Value::from(pick(u, &["function", "custom", ""])?));
    }
    let mut function = Map::new();
    if u.ratio(7, 8)? {
        function.insert("name".into(), Value::from(pick(u, &["f", "get_weather", ""])?));
    }
    let args = match u.int_in_range(0..=7u8)? {
        0 => Value::Null,
        1 => Value::from(""),
        2 => Value::from("{broken"),
        3 => Value::from("[1]"),
        4 => json!({"already": "object"}),
        5 => Value::from(text(u)?),
        _ => Value::from("{\"city\":\"Paris\"}"),
    };
    if u.ratio(7, 8)? {
        function.insert("arguments".into(), args);
    }
    call.insert("function".into(), Value::Object(function));
    Ok(Value::Object(call))
}

fn message(u: &mut Unstructured<'_>) -> Result<Message> {
    let role = if u.ratio(1, 16)? {
        text(u)?
    } else {
        pick(
            u,
            &[
                "system",
                "developer",
                "user",
                "user",
                "assistant",
                "assistant",
                "tool",
                "function",
            ],
        )?
        .to_owned()
    };
    let mut m = Message {
        role,
        content: content(u)?,
        ..Default::default()
    };
    if u.ratio(1, 4)? {
        let n = u.int_in_range(0..=2usize)?;
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            calls.push(tool_call(u)?);
        }
        m.tool_calls = Some(calls);
    }
    if u.ratio(1, 3)? {
        m.tool_call_id = Some(text(u)?);
    }
    if u.ratio(1, 8)? {
        m.name = Some(text(u)?);
    }
    Ok(m)
}

fn number(u: &mut Unstructured<'_>) -> Result<Option<f64>> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => None,
        1 => Some(0.0),
        2 => Some(1.0),
        3 => Some(u.arbitrary()?),
        _ => Some(f64::from(u.int_in_range(-100..=300i32)?) / 100.0),
    })
}

fn tool(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => json!({"type": "web_search"}),
        1 => json!({"type": "function", "function": {}}),
        2 => json!({"type": "function", "function": {"name": "g", "parameters": 3}}),
        3 => Value::Null,
        4 => json!({"function": {"name": text(u)?, "description": text(u)?, "parameters": null},
                    "cache_control": {"type": "ephemeral"}}),
        _ => json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
    })
}

/// An arbitrary canonical request, biased towards what the translators look at.
pub fn chat_request(u: &mut Unstructured<'_>) -> Result<ChatRequest> {
    let n = u.int_in_range(0..=6usize)?;
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        messages.push(message(u)?);
    }
    let mut r = ChatRequest {
        model: text(u)?,
        messages,
        ..Default::default()
    };
    if u.arbitrary()? {
        r.stream = Some(u.arbitrary()?);
    }
    if u.ratio(1, 4)? {
        r.stream_options = Some(StreamOptions {
            include_usage: u.arbitrary()?,
            ..Default::default()
        });
    }
    if u.arbitrary()? {
        r.max_tokens = Some(u.int_in_range(0..=5000)?);
    }
    if u.ratio(1, 4)? {
        r.max_completion_tokens = Some(u.arbitrary()?);
    }
    r.temperature = number(u)?;
    r.top_p = number(u)?;
    if u.ratio(1, 4)? {
        r.n = Some(u.int_in_range(0..=3)?);
    }
    r.stop = match u.int_in_range(0..=3u8)? {
        0 => Some(Stop::One(text(u)?)),
        1 => {
            let k = u.int_in_range(0..=6usize)?;
            let mut v = Vec::with_capacity(k);
            for _ in 0..k {
                v.push(text(u)?);
            }
            Some(Stop::Many(v))
        }
        _ => None,
    };
    if u.ratio(1, 4)? {
        r.seed = Some(u.arbitrary()?);
    }
    if u.ratio(1, 3)? {
        let k = u.int_in_range(0..=3usize)?;
        let mut tools = Vec::with_capacity(k);
        for _ in 0..k {
            tools.push(tool(u)?);
        }
        r.tools = Some(tools);
    }
    if u.ratio(1, 3)? {
        r.tool_choice = Some(match u.int_in_range(0..=5u8)? {
            0 => Value::from(pick(u, &["auto", "none", "required", "weird"])?),
            1 => json!({"type": "function", "function": {"name": "f"}}),
            2 => json!({"type": "function"}),
            3 => json!({"type": "other", "function": {"name": "f"}}),
            _ => small_json(u)?,
        });
    }
    if u.ratio(1, 4)? {
        r.response_format = Some(match u.int_in_range(0..=5u8)? {
            0 => json!({"type": "text"}),
            1 => json!({"type": "json_object"}),
            2 => json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
            3 => json!({"type": "json_schema"}),
            4 => json!({"type": 1}),
            _ => small_json(u)?,
        });
    }
    for key in [
        "user",
        "parallel_tool_calls",
        "top_k",
        "logprobs",
        "modalities",
        "audio",
        "safety_identifier",
    ] {
        if u.ratio(1, 6)? {
            let v = match key {
                "modalities" => json!(["text", "audio"]),
                "top_k" if u.arbitrary()? => Value::from(u.int_in_range(0..=100u64)?),
                _ => small_json(u)?,
            };
            r.extra.insert(key.into(), v);
        }
    }
    Ok(r)
}

/// A usage object with small, missing, negative or huge counts.
fn usage_json(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut m = Map::new();
    for key in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        match u.int_in_range(0..=4u8)? {
            0 => {}
            1 => {
                m.insert(key.into(), Value::from(u64::MAX));
            }
            2 => {
                m.insert(key.into(), small_json(u)?);
            }
            _ => {
                m.insert(key.into(), Value::from(u.int_in_range(0..=5000u64)?));
            }
        }
    }
    Ok(Value::Object(m))
}

/// One Anthropic stream event (name and JSON data), or occasionally junk.
pub fn anthropic_event(u: &mut Unstructured<'_>) -> Result<SseEvent> {
    let kind = pick(
        u,
        &[
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
            "unknown_future",
        ],
    )?;
    let index = if u.ratio(7, 8)? {
        Value::from(u.int_in_range(0..=3u64)?)
    } else {
        small_json(u)?
    };
    let data = match kind {
        "message_start" => json!({"type": kind, "message": {
            "id": if u.ratio(7, 8)? { Value::from(text(u)?) } else { small_json(u)? },
            "type": "message", "role": "assistant", "content": [], "model": "claude",
            "usage": usage_json(u)?,
        }}),
        "content_block_start" => {
            let block = match u.int_in_range(0..=3u8)? {
                0 => json!({"type": "text", "text": text(u)?}),
                1 => json!({"type": "tool_use", "id": text(u)?, "name": text(u)?, "input": {}}),
                2 => json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": small_json(u)?}}),
                _ => json!({"type": pick(u, &["thinking", "server_tool_use", ""])?}),
            };
            json!({"type": kind, "index": index, "content_block": block})
        }
        "content_block_delta" => {
            let delta = match u.int_in_range(0..=3u8)? {
                0 => json!({"type": "input_json_delta", "partial_json": text(u)?}),
                1 => {
                    json!({"type": pick(u, &["thinking_delta", "signature_delta", "citations_delta"])?, "x": text(u)?})
                }
                2 => json!({"type": "text_delta", "text": small_json(u)?}),
                _ => json!({"type": "text_delta", "text": text(u)?}),
            };
            json!({"type": kind, "index": index, "delta": delta})
        }
        "message_delta" => {
            let reason = pick(
                u,
                &[
                    "end_turn",
                    "max_tokens",
                    "tool_use",
                    "stop_sequence",
                    "refusal",
                    "pause_turn",
                    "x",
                ],
            )?;
            json!({"type": kind, "delta": {"stop_reason": reason}, "usage": usage_json(u)?})
        }
        "error" => json!({"type": "error", "error": {"type": pick(u, &["overloaded_error", "api_error", "x"])?,
                                                       "message": text(u)?}}),
        _ => json!({"type": kind}),
    };
    let mut data = data.to_string();
    match u.int_in_range(0..=15u8)? {
        0 => data = text(u)?,
        1 => {
            let mut half = data.len() / 2;
            while !data.is_char_boundary(half) {
                half -= 1;
            }
            data.truncate(half);
        }
        _ => {}
    }
    // Anthropic names every event; sometimes drop or change the name to test the `type` fallback.
    let event = match u.int_in_range(0..=7u8)? {
        0 => None,
        1 => Some(text(u)?),
        _ => Some(kind.to_owned()),
    };
    Ok(SseEvent { event, data })
}

/// One TGI `/generate_stream` event, or occasionally an error, `[DONE]` or junk.
pub fn tgi_event(u: &mut Unstructured<'_>) -> Result<SseEvent> {
    let data = match u.int_in_range(0..=15u8)? {
        0 => "[DONE]".to_owned(),
        1 => {
            json!({"error": text(u)?, "error_type": pick(u, &["validation", "overloaded", "generation"])?}).to_string()
        }
        2 => text(u)?,
        3 | 4 => {
            let details = json!({
                "finish_reason": pick(u, &["length", "eos_token", "stop_sequence", ""])?,
                "generated_tokens": small_json(u)?,
                "input_length": if u.arbitrary()? { Value::from(u.int_in_range(0..=100u64)?) } else { small_json(u)? },
            });
            json!({"index": 9, "token": {"id": 2, "text": text(u)?, "special": u.arbitrary::<bool>()?},
                   "generated_text": text(u)?, "details": details})
            .to_string()
        }
        5 => json!({"token": {"text": small_json(u)?}, "generated_text": small_json(u)?}).to_string(),
        _ => json!({"index": 1, "token": {"id": 1, "text": text(u)?, "logprob": -0.5, "special": u.ratio(1, 8)?},
                    "generated_text": null, "details": null})
        .to_string(),
    };
    Ok(SseEvent { event: None, data })
}
