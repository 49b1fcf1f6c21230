//! What the provider translators ([`crate::anthropic`], [`crate::huggingface`]) share: the error type
//! and small helpers for building canonical (OpenAI-shaped) chunks and reading OpenAI request parts.

use serde_json::{Map, Value, json};

use crate::openai::{ChatChunk, ChunkChoice, Delta, Extra, Usage};

/// Why a request or response could not be translated.
///
/// `Unsupported` and `Invalid` are the client's problem (answer 400 naming `field`); `Decode` means
/// the upstream sent something we cannot read (502); `Upstream` is an error the upstream itself
/// reported, in-band (a JSON error body or an error event inside a stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The request uses something this provider cannot express.
    #[error("`{field}` is not supported by this provider: {reason}")]
    Unsupported { field: String, reason: String },
    /// The request is malformed in a way the provider translation detects.
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    /// The upstream's response is not in the documented shape.
    #[error("unreadable upstream response: {0}")]
    Decode(String),
    /// The upstream reported an error (`error_type` is the upstream's own classification,
    /// e.g. Anthropic's `overloaded_error` or TGI's `validation`).
    #[error("upstream error ({error_type}): {message}")]
    Upstream { error_type: String, message: String },
}

impl TranslateError {
    pub fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TranslateError::Unsupported {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TranslateError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn decode(reason: impl Into<String>) -> Self {
        TranslateError::Decode(reason.into())
    }

    /// The request field at fault, for the `param` of an OpenAI-shaped 400 error.
    pub fn field(&self) -> Option<&str> {
        match self {
            TranslateError::Unsupported { field, .. } | TranslateError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// True when the client's request is at fault (retrying elsewhere with the same request
    /// only helps if the other provider supports the feature).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            TranslateError::Unsupported { .. } | TranslateError::Invalid { .. }
        )
    }

    /// True for in-band upstream errors that say "try again later / elsewhere"
    /// (overload, rate limit, internal error), as opposed to a rejected request.
    pub fn is_retryable_upstream(&self) -> bool {
        match self {
            TranslateError::Upstream { error_type, .. } => {
                let t = error_type.to_ascii_lowercase();
                t.contains("overload") || t.contains("rate_limit") || t == "api_error"
            }
            _ => false,
        }
    }
}

/// `data:<media type>[;params];base64,<data>` split into (media type, base64 payload).
/// Returns `None` for anything that is not a base64 data URL.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mut params = meta.split(';');
    let media_type = params.next()?.trim();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return None;
    }
    Some((media_type, data))
}

/// The `stop` of a request as a list, without empty strings (no provider accepts those).
pub fn stop_list(stop: Option<&crate::openai::Stop>) -> Vec<String> {
    stop.map(|s| s.to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
}

/// Cuts generated text at the first of a set of stop strings, for upstreams that do not (or may
/// not be asked to) stop there themselves. Streamed text is held back while its tail may still turn
/// out to be the start of a stop string; the matched stop string itself is never emitted.
#[derive(Debug, Clone, Default)]
pub struct StopCutter {
    stops: Vec<String>,
    /// Text taken in but not yet released (a possible stop-string prefix).
    pending: String,
    stopped: bool,
}

impl StopCutter {
    pub fn new(stops: Vec<String>) -> Self {
        StopCutter {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was met: all text after it is dropped.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Takes in a piece of streamed text and returns what can be released now (possibly empty).
    /// Without stop strings the text passes through as is, with no copy.
    pub fn push<'a>(&mut self, text: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        if self.stopped {
            return Cow::Borrowed("");
        }
        if self.stops.is_empty() {
            return Cow::Borrowed(text);
        }
        self.pending.push_str(text);
        match earliest_stop(&self.pending, &self.stops) {
            Some((pos, true)) => {
                self.pending.truncate(pos);
                self.stopped = true;
                Cow::Owned(std::mem::take(&mut self.pending))
            }
            Some((pos, false)) => {
                let rest = self.pending.split_off(pos);
                Cow::Owned(std::mem::replace(&mut self.pending, rest))
            }
            None => Cow::Owned(std::mem::take(&mut self.pending)),
        }
    }

    /// Releases the held-back text (at the end of the text, or before output that is not text), cut
    /// at a stop string it holds in full: one held behind a longer stop string's possible start.
    pub fn flush(&mut self) -> String {
        if let Some(pos) = first_stop(&self.pending, &self.stops) {
            self.pending.truncate(pos);
            self.stopped = true;
        }
        std::mem::take(&mut self.pending)
    }

    /// Cuts a whole text at the first stop string; `true` if one was found.
    pub fn cut(&self, text: &mut String) -> bool {
        match first_stop(text, &self.stops) {
            Some(pos) => {
                text.truncate(pos);
                true
            }
            None => false,
        }
    }
}

/// Byte offset of the earliest occurrence of any of `stops` in `text`.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// The earliest position of `text` where a stop string starts: `(pos, true)` if one is there in full,
/// `(pos, false)` if the text from `pos` on is only the start of one (it may complete with more text,
/// so nothing from `pos` may be released yet). An earlier possible match outranks a later complete
/// one: with stops `"a??"` and `"?"`, the text `"xa?"` releases `"x"` and holds `"a?"`, since the
/// answer is cut at `"a??"` if the next text is a `?`, else at the `?`.
fn earliest_stop(text: &str, stops: &[String]) -> Option<(usize, bool)> {
    for (pos, _) in text.char_indices() {
        let rest = &text[pos..];
        let mut partial = false;
        for s in stops {
            if rest.starts_with(s.as_str()) {
                return Some((pos, true));
            }
            partial |= s.starts_with(rest);
        }
        if partial {
            return Some((pos, false));
        }
    }
    None
}

/// Seconds since the Unix epoch, for `created` fields (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI `tool_calls` entry of a complete message.
pub fn tool_call(id: &str, name: &str, arguments: &str) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    })
}

/// A chunk with one choice-0 delta and an optional finish reason.
pub fn delta_chunk(id: &str, created: u64, model: &str, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
    let mut c = ChatChunk::new(id, created, model);
    c.choices.push(ChunkChoice {
        index: 0,
        delta,
        finish_reason: finish_reason.map(str::to_owned),
        extra: Extra::new(),
    });
    c
}

/// The first chunk of an OpenAI stream: `{"role":"assistant","content":""}`.
pub fn role_chunk(id: &str, created: u64, model: &str) -> ChatChunk {
    let delta = Delta {
        role: Some("assistant".to_owned()),
        content: Some(String::new()),
        ..Default::default()
    };
    delta_chunk(id, created, model, delta, None)
}

/// The closing chunk of an OpenAI stream: an empty delta with the finish reason.
pub fn finish_chunk(id: &str, created: u64, model: &str, finish_reason: &str) -> ChatChunk {
    delta_chunk(id, created, model, Delta::default(), Some(finish_reason))
}

/// A chunk carrying one streamed tool-call fragment, shaped as OpenAI streams them: the first
/// fragment of a call has `id`, `type` and `function.name` (and empty `arguments`), later ones only
/// `index` and `function.arguments`.
pub fn tool_call_chunk(
    id: &str,
    created: u64,
    model: &str,
    index: u32,
    call: Option<(&str, &str)>,
    arguments: &str,
) -> ChatChunk {
    let mut entry = Map::new();
    entry.insert("index".into(), Value::from(index));
    let mut function = Map::new();
    if let Some((call_id, name)) = call {
        entry.insert("id".into(), Value::from(call_id));
        entry.insert("type".into(), Value::from("function"));
        function.insert("name".into(), Value::from(name));
    }
    function.insert("arguments".into(), Value::from(arguments));
    entry.insert("function".into(), Value::Object(function));
    let delta = Delta {
        tool_calls: Some(vec![Value::Object(entry)]),
        ..Default::default()
    };
    delta_chunk(id, created, model, delta, None)
}

/// `Usage` with a saturating total (upstream counts are untrusted; `Usage::new` would overflow
/// on absurd values).
pub fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage::new(prompt_tokens, completion_tokens)
}

/// Non-negative integer at `v[key]`, if any.
pub(crate) fn get_u64(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// String at `v[key]`, if any.
pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::openai::Stop;

    #[test]
    fn data_urls() {
        assert_eq!(
            parse_data_url("data:image/png;base64,iVBOR"),
            Some(("image/png", "iVBOR"))
        );
        assert_eq!(
            parse_data_url("data:image/jpeg;charset=x;base64,AAA="),
            Some(("image/jpeg", "AAA="))
        );
        assert_eq!(parse_data_url("data:text/plain,hello"), None);
        assert_eq!(parse_data_url("https://example.com/a.png"), None);
        assert_eq!(parse_data_url("data:image/png;base64"), None);
    }

    #[test]
    fn stops_drop_empty_strings() {
        assert_eq!(stop_list(None), Vec::<String>::new());
        assert_eq!(stop_list(Some(&Stop::One("x".into()))), vec!["x"]);
        assert_eq!(stop_list(Some(&Stop::Many(vec!["".into(), "END".into()]))), vec!["END"]);
    }

    #[test]
    fn tool_call_chunk_shapes() {
        let first = tool_call_chunk("c", 1, "m", 0, Some(("call_1", "f")), "");
        assert_eq!(
            serde_json::to_value(&first.choices[0].delta).unwrap(),
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": ""}}]})
        );
        let more = tool_call_chunk("c", 1, "m", 2, None, "{\"a\"");
        assert_eq!(
            serde_json::to_value(&more.choices[0].delta).unwrap(),
            json!({"tool_calls": [{"index": 2, "function": {"arguments": "{\"a\""}}]})
        );
    }

    #[test]
    fn error_classification() {
        let e = TranslateError::unsupported("n", "only one choice");
        assert_eq!(e.field(), Some("n"));
        assert!(e.is_client_error());
        assert_eq!(e.to_string(), "`n` is not supported by this provider: only one choice");
        let up = TranslateError::Upstream {
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        };
        assert!(up.is_retryable_upstream());
        assert!(!up.is_client_error());
        assert_eq!(up.field(), None);
        let bad = TranslateError::Upstream {
            error_type: "invalid_request_error".into(),
            message: "x".into(),
        };
        assert!(!bad.is_retryable_upstream());
    }
}

/// Random requests and random upstream bytes must never panic a translator.
#[cfg(test)]
mod fuzz {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::openai::{ChatRequest, Content, ContentPart, Message, Stop};
    use crate::sse::SseEvent;
    use crate::{anthropic, huggingface};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("  ".to_owned()),
            "[a-z \\n]{0,12}",
            "\\PC{0,8}",
            Just("<|im_end|>\nUser:".to_owned()),
        ]
    }

    fn part() -> impl Strategy<Value = ContentPart> {
        prop_oneof![
            text().prop_map(|t| ContentPart::text(&t)),
            prop_oneof![
                Just("data:image/png;base64,iVBORw0KGgo="),
                Just("data:image/svg+xml;base64,PHN2Zz4="),
                Just("data:image/png,raw"),
                Just("https://example.com/cat.jpg"),
                Just("file:///etc/passwd"),
                Just(""),
            ]
            .prop_map(|u| { serde_json::from_value(json!({"type": "image_url", "image_url": {"url": u}})).unwrap() }),
            prop_oneof![
                Just(json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}})),
                Just(json!({"type": "input_audio"})),
                Just(json!({"type": "text"})),
                Just(json!({"type": "refusal", "refusal": "no"})),
                Just(json!({})),
                Just(json!({"type": "image_url", "image_url": 5})),
            ]
            .prop_map(|v| serde_json::from_value(v).unwrap()),
        ]
    }

    fn content() -> impl Strategy<Value = Option<Content>> {
        prop_oneof![
            Just(None),
            text().prop_map(|t| Some(Content::Text(t))),
            prop::collection::vec(part(), 0..4).prop_map(|p| Some(Content::Parts(p))),
        ]
    }

    fn tool_call() -> impl Strategy<Value = Value> {
        (
            prop::option::of("[a-z0-9_]{1,6}"),
            prop::option::of("[a-z]{1,6}"),
            prop_oneof![
                Just(json!("{}")),
                Just(json!("")),
                Just(json!("{\"a\":[1,2]}")),
                Just(json!("[1]")),
                Just(json!("{broken")),
                Just(json!({"already": "object"})),
                Just(Value::Null),
            ],
            prop_oneof![Just("function"), Just("custom")],
        )
            .prop_map(
                |(id, name, args, kind)| json!({"id": id, "type": kind, "function": {"name": name, "arguments": args}}),
            )
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            prop_oneof![
                Just("system"),
                Just("developer"),
                Just("user"),
                Just("assistant"),
                Just("tool"),
                Just("function"),
                Just("alien"),
            ],
            content(),
            prop::option::of(prop::collection::vec(tool_call(), 0..3)),
            prop::option::of("[a-z0-9]{0,4}"),
        )
            .prop_map(|(role, content, tool_calls, tool_call_id)| Message {
                role: role.to_owned(),
                content,
                tool_calls,
                tool_call_id,
                ..Default::default()
            })
    }

    fn number() -> impl Strategy<Value = Option<f64>> {
        prop::option::of(prop_oneof![
            -5.0..5.0f64,
            Just(0.0),
            Just(1.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
        ])
    }

    prop_compose! {
        fn request()(
            messages in prop::collection::vec(message(), 0..7),
            stream in prop::option::of(any::<bool>()),
            max_tokens in prop::option::of(0u32..5000),
            max_completion_tokens in prop::option::of(0u32..5000),
            temperature in number(),
            top_p in number(),
            n in prop::option::of(0u32..4),
            stop in prop::option::of(prop_oneof![
                text().prop_map(Stop::One),
                prop::collection::vec(text(), 0..6).prop_map(Stop::Many),
            ]),
            seed in prop::option::of(any::<i64>()),
            tools in prop::option::of(prop::collection::vec(prop_oneof![
                Just(json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})),
                Just(json!({"type": "function", "function": {"name": "g", "parameters": 3}})),
                Just(json!({"type": "function", "function": {}})),
                Just(json!({"type": "web_search"})),
                Just(json!(null)),
            ], 0..3)),
            tool_choice in prop::option::of(prop_oneof![
                Just(json!("auto")), Just(json!("none")), Just(json!("required")), Just(json!("weird")),
                Just(json!({"type": "function", "function": {"name": "f"}})), Just(json!({"type": "function"})),
                Just(json!(7)),
            ]),
            response_format in prop::option::of(prop_oneof![
                Just(json!({"type": "text"})), Just(json!({"type": "json_object"})),
                Just(json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})),
                Just(json!({"type": "json_schema"})), Just(json!({"type": 1})),
            ]),
            user in prop::option::of(prop_oneof![Just(json!("u")), Just(json!(3)), Just(json!(""))]),
            parallel in prop::option::of(prop_oneof![Just(json!(false)), Just(json!(true)), Just(json!("no"))]),
            top_k in prop::option::of(prop_oneof![Just(json!(0)), Just(json!(40)), Just(json!(-1)), Just(json!("x"))]),
        ) -> ChatRequest {
            let mut r = ChatRequest {
                model: "m".into(),
                messages, stream, max_tokens, max_completion_tokens, temperature, top_p, n, stop, seed,
                tools, tool_choice, response_format,
                ..Default::default()
            };
            if let Some(u) = user { r.extra.insert("user".into(), u); }
            if let Some(p) = parallel { r.extra.insert("parallel_tool_calls".into(), p); }
            if let Some(k) = top_k { r.extra.insert("top_k".into(), k); }
            r
        }
    }

    fn event_data() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            Just("[DONE]".to_owned()),
            Just("{\"type\":\"message_start\",\"message\":{\"id\":5,\"usage\":{\"input_tokens\":-1}}}".to_owned()),
            Just("{\"type\":\"content_block_start\",\"index\":99999999999,\"content_block\":{\"type\":\"tool_use\",\"input\":[1]}}".to_owned()),
            Just("{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":null}}".to_owned()),
            Just("{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":7},\"usage\":{\"output_tokens\":18446744073709551615,\"input_tokens\":18446744073709551615,\"cache_read_input_tokens\":18446744073709551615}}".to_owned()),
            Just("{\"type\":\"error\",\"error\":null}".to_owned()),
            Just("{\"token\":{\"text\":\"\\nUs\",\"special\":false}}".to_owned()),
            Just("{\"token\":{\"text\":5},\"details\":{\"finish_reason\":1,\"generated_tokens\":\"x\"}}".to_owned()),
            Just("{\"error\":{\"nested\":true}}".to_owned()),
            Just("{\"generated_text\":\"done\",\"details\":{\"input_length\":1,\"generated_tokens\":2}}".to_owned()),
            Just("[{\"generated_text\":\"x\"}]".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn request_translators_never_panic(r in request()) {
            let a = anthropic::to_request(&r, "claude", 1024);
            if let Ok(v) = &a {
                // Whatever is produced alternates roles and carries a positive max_tokens.
                let msgs = v["messages"].as_array().unwrap();
                prop_assert!(!msgs.is_empty());
                for w in msgs.windows(2) {
                    prop_assert_ne!(&w[0]["role"], &w[1]["role"]);
                }
                prop_assert!(v["max_tokens"].as_u64().unwrap() > 0);
                if let Some(t) = v.get("temperature").and_then(Value::as_f64) {
                    prop_assert!((0.0..=1.0).contains(&t));
                }
            } else if let Err(e) = &a {
                prop_assert!(e.field().is_some());
            }
            for template in [huggingface::ChatTemplate::Plain, huggingface::ChatTemplate::ChatML] {
                match huggingface::to_request(&r, template) {
                    Ok(v) => {
                        prop_assert!(v["inputs"].is_string());
                        let p = &v["parameters"];
                        prop_assert!(p["stop"].as_array().map_or(0, Vec::len) <= huggingface::MAX_STOP_SEQUENCES.max(
                            r.stop.as_ref().map_or(0, |s| s.to_vec().len())));
                        if let Some(t) = p.get("temperature").and_then(Value::as_f64) {
                            prop_assert!(t > 0.0);
                        }
                        if let Some(tp) = p.get("top_p").and_then(Value::as_f64) {
                            prop_assert!(tp > 0.0 && tp < 1.0);
                        }
                    }
                    Err(e) => prop_assert!(e.field().is_some()),
                }
            }
        }

        #[test]
        fn response_parsers_never_panic(body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            event_data().prop_map(String::into_bytes),
        ]) {
            let _ = anthropic::from_response(&body, "m");
            let _ = huggingface::from_response(&body, "m", "id", 0);
            let _ = huggingface::from_response_with_stops(&body, "m", "id", 0, &["x".into()]);
        }

        #[test]
        fn stream_translators_never_panic(
            evs in prop::collection::vec((prop::option::of(prop_oneof![
                Just("message_start".to_owned()), Just("error".to_owned()), "[a-z_]{0,8}"]), event_data()), 0..12),
            stops in prop::collection::vec(text(), 0..3),
        ) {
            let mut a = anthropic::StreamTranslator::new(0, "m");
            let mut h = huggingface::StreamTranslator::new("id", 0, "m").with_stop_sequences(stops.clone());
            let mut out = Vec::new();
            for (event, data) in evs {
                let ev = SseEvent { event, data };
                let _ = a.on_event(&ev, &mut out);
                let _ = h.on_event(&ev, &mut out);
            }
            let _ = (a.usage(), h.usage(), h.token_counts());
            // A matched stop string never reaches the client.
            let hs: String = out.iter().filter(|c| c.id == "id").flat_map(|c| c.delta_text()).collect();
            for s in stops.iter().filter(|s| !s.is_empty()) {
                prop_assert!(!hs.contains(s.as_str()), "{hs:?} contains {s:?}");
            }
        }
    }
}
