//! Hugging Face Text Generation Inference native API (`POST /generate`, `POST /generate_stream`),
//! which the Hugging Face Inference API also speaks for text-generation models.
//!
//! Wire facts this module relies on (TGI's and huggingface.js's published schemas):
//! - a request is `{"inputs": "<prompt>", "parameters": {...}}`; the chat transcript has to be
//!   rendered into one prompt string, which is what [`ChatTemplate`] does;
//! - `temperature` must be strictly positive and `top_p` strictly between 0 and 1; greedy decoding
//!   is `do_sample: false`; `stop` lists stop strings (TGI caps their number, 4 by default) and a
//!   matched stop string is *included* in the generated text;
//! - `/generate` answers `{"generated_text", "details": {"finish_reason", "generated_tokens",
//!   "seed", "prefill", "tokens"}}`; the serverless Inference API wraps it in a list
//!   `[{"generated_text": ...}]`; `finish_reason` is `length`, `eos_token` or `stop_sequence`;
//! - `/generate_stream` sends one SSE `data:` event per token,
//!   `{"index", "token": {"id", "text", "logprob", "special"}, "generated_text": null, "details": null}`,
//!   and the last event also carries `generated_text` and `details` (with `input_length` in
//!   current versions); special tokens are not part of the text;
//! - errors are `{"error": "...", "error_type": "..."}`, as a body or as a stream event.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::openai::{ChatChunk, ChatCompletion, ChatRequest, Choice, Content, Extra, Message, Usage};
use crate::sse::SseEvent;
use crate::translate::{StopCutter, TranslateError, finish_chunk, get_str, get_u64, role_chunk, stop_list, usage};

/// TGI's default `--max-stop-sequences`: the template's own stop strings are only added while
/// the total stays within it.
pub const MAX_STOP_SEQUENCES: usize = 4;

/// How a chat transcript becomes a single prompt string for a text-generation model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplate {
    /// A generic transcript: `System: ...`, `User: ...`, `Assistant: ...` paragraphs, ending with
    /// `Assistant:`. Works passably with any model; stops at a new `User:` line.
    #[default]
    Plain,
    /// ChatML (`<|im_start|>role\n...<|im_end|>`), used by Qwen, many Mistral/Llama fine-tunes,
    /// SmolLM, ... Stops at `<|im_end|>`.
    #[serde(alias = "chat_ml", alias = "chat-ml")]
    ChatML,
}

impl ChatTemplate {
    pub fn name(self) -> &'static str {
        match self {
            ChatTemplate::Plain => "plain",
            ChatTemplate::ChatML => "chatml",
        }
    }

    /// Stop strings that end the assistant's turn in this template.
    pub fn stop_sequences(self) -> &'static [&'static str] {
        match self {
            ChatTemplate::Plain => &["\nUser:"],
            ChatTemplate::ChatML => &["<|im_end|>"],
        }
    }

    /// Renders `messages` and appends the cue for the assistant's next turn.
    fn render(self, turns: &[(&str, String)]) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::Plain => {
                for (role, text) in turns {
                    let label = match *role {
                        "system" => "System",
                        "user" => "User",
                        "assistant" => "Assistant",
                        _ => "Tool",
                    };
                    out.push_str(label);
                    out.push_str(": ");
                    out.push_str(text);
                    out.push_str("\n\n");
                }
                out.push_str("Assistant:");
            }
            ChatTemplate::ChatML => {
                for (role, text) in turns {
                    out.push_str("<|im_start|>");
                    out.push_str(role);
                    out.push('\n');
                    out.push_str(text);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
            }
        }
        out
    }
}

impl fmt::Display for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown chat template `{0}` (expected `plain` or `chatml`)")]
pub struct UnknownTemplate(pub String);

impl FromStr for ChatTemplate {
    type Err = UnknownTemplate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect();
        match norm.as_str() {
            "plain" => Ok(ChatTemplate::Plain),
            "chatml" => Ok(ChatTemplate::ChatML),
            _ => Err(UnknownTemplate(s.to_owned())),
        }
    }
}

/// Renders the prompt `to_request` sends (exposed for token estimates and tests).
pub fn render_prompt(req: &ChatRequest, template: ChatTemplate) -> Result<String, TranslateError> {
    let mut turns: Vec<(&str, String)> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role"),
                    format!("`{other}` messages"),
                ));
            }
        };
        if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(TranslateError::unsupported(
                format!("messages[{i}].tool_calls"),
                "tool calling is not available on the text-generation API",
            ));
        }
        if let Some(Content::Parts(parts)) = &m.content {
            for (j, p) in parts.iter().enumerate() {
                if p.kind() != "text" {
                    return Err(TranslateError::unsupported(
                        format!("messages[{i}].content[{j}]"),
                        format!("`{}` parts (the text-generation API takes text only)", p.kind()),
                    ));
                }
            }
        }
        turns.push((role, m.text()));
    }
    if turns.is_empty() {
        return Err(TranslateError::invalid("messages", "at least one message is required"));
    }
    Ok(template.render(&turns))
}

/// The `stop` list `to_request` sends: the client's stop strings first, then the template's
/// own while TGI's limit allows.
pub fn stop_sequences(req: &ChatRequest, template: ChatTemplate) -> Vec<String> {
    let mut stops = stop_list(req.stop.as_ref());
    for s in template.stop_sequences() {
        if stops.len() >= MAX_STOP_SEQUENCES {
            break;
        }
        if !stops.iter().any(|x| x == s) {
            stops.push((*s).to_owned());
        }
    }
    stops
}

/// Builds the TGI `/generate` (or `/generate_stream`) request body for `req`.
pub fn to_request(req: &ChatRequest, template: ChatTemplate) -> Result<Value, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported(
            "n",
            "the text-generation API returns one sequence per request",
        ));
    }
    if req.has_tools() {
        return Err(TranslateError::unsupported(
            "tools",
            "tool calling is not available on the text-generation API",
        ));
    }
    if req.extra.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::unsupported(
            "logprobs",
            "log probabilities are not translated for the text-generation API",
        ));
    }
    let prompt = render_prompt(req, template)?;

    let mut p = Map::new();
    if let Some(max) = req.output_cap() {
        if max == 0 {
            return Err(TranslateError::invalid(
                if req.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                },
                "must be at least 1",
            ));
        }
        p.insert("max_new_tokens".into(), Value::from(max));
    }
    // OpenAI samples unless told otherwise; temperature 0 (or top_p 0) means greedy.
    let greedy = req.temperature.is_some_and(|t| t <= 0.0) || req.top_p.is_some_and(|t| t <= 0.0);
    p.insert("do_sample".into(), Value::from(!greedy));
    if !greedy {
        if let Some(t) = req.temperature {
            p.insert("temperature".into(), Value::from(t));
        }
        if let Some(tp) = req.top_p.filter(|tp| *tp < 1.0) {
            p.insert("top_p".into(), Value::from(tp));
        }
    }
    if let Some(k) = req.extra.get("top_k").and_then(Value::as_u64).filter(|k| *k > 0) {
        p.insert("top_k".into(), Value::from(k));
    }
    let stops = stop_sequences(req, template);
    if !stops.is_empty() {
        p.insert("stop".into(), Value::from(stops));
    }
    if let Some(seed) = req.seed {
        let Ok(seed) = u64::try_from(seed) else {
            return Err(TranslateError::invalid("seed", "must not be negative"));
        };
        p.insert("seed".into(), Value::from(seed));
    }
    if let Some(grammar) = grammar(req)? {
        p.insert("grammar".into(), grammar);
    }
    p.insert("details".into(), Value::from(true));
    p.insert("return_full_text".into(), Value::from(false));

    Ok(json!({"inputs": prompt, "parameters": Value::Object(p)}))
}

/// `response_format` as a TGI `grammar` (`{"type":"json","value":<schema>}`).
fn grammar(req: &ChatRequest) -> Result<Option<Value>, TranslateError> {
    let Some(format) = &req.response_format else {
        return Ok(None);
    };
    match get_str(format, "type") {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json", "value": {"type": "object"}}))),
        Some("json_schema") => match format.pointer("/json_schema/schema") {
            Some(schema @ Value::Object(_)) => Ok(Some(json!({"type": "json", "value": schema}))),
            _ => Err(TranslateError::invalid(
                "response_format.json_schema.schema",
                "missing JSON Schema object",
            )),
        },
        Some(other) => Err(TranslateError::unsupported(
            "response_format.type",
            format!("`{other}`"),
        )),
    }
}

/// OpenAI `finish_reason` for a TGI `finish_reason`.
pub fn finish_reason(tgi: &str) -> &'static str {
    match tgi {
        "length" => "length",
        // eos_token, stop_sequence
        _ => "stop",
    }
}

/// Token counts a TGI response reported. TGI reports the generated count in `details`;
/// the prompt count only in streams (`input_length`) or with `decoder_input_details`
/// (`prefill`), so either may be missing and the caller must estimate it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl TokenCounts {
    /// Usage when both counts are known.
    pub fn usage(&self) -> Option<Usage> {
        Some(usage(self.prompt_tokens?, self.completion_tokens?))
    }

    pub fn is_complete(&self) -> bool {
        self.prompt_tokens.is_some() && self.completion_tokens.is_some()
    }

    fn from_details(details: &Value) -> Self {
        let prefill = details
            .get("prefill")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .map(|p| p.len() as u64);
        TokenCounts {
            prompt_tokens: get_u64(details, "input_length").or(prefill),
            completion_tokens: get_u64(details, "generated_tokens"),
        }
    }
}

/// A parsed `/generate` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub text: String,
    /// TGI's own finish reason, if `details` were returned.
    pub tgi_finish_reason: Option<String>,
    pub counts: TokenCounts,
}

impl Generation {
    /// OpenAI finish reason (`stop` when TGI did not say).
    pub fn finish_reason(&self) -> &'static str {
        self.tgi_finish_reason.as_deref().map_or("stop", finish_reason)
    }

    /// Cuts the text at the first stop string, as OpenAI clients expect (TGI keeps it).
    pub fn strip_stop_sequences(&mut self, stops: &[String]) {
        StopCutter::new(stops.to_vec()).cut(&mut self.text);
    }

    pub fn into_completion(self, requested_model: &str, id: &str, created: u64) -> ChatCompletion {
        let finish = self.finish_reason().to_owned();
        ChatCompletion {
            id: id.to_owned(),
            object: "chat.completion".to_owned(),
            created,
            model: requested_model.to_owned(),
            choices: vec![Choice {
                index: 0,
                message: Message::new("assistant", self.text),
                finish_reason: Some(finish),
                extra: Extra::new(),
            }],
            usage: self.counts.usage(),
            extra: Extra::new(),
        }
    }
}

fn tgi_error(v: &Value) -> Option<TranslateError> {
    let message = match v.get("error")? {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => get_str(other, "message").map_or_else(|| other.to_string(), str::to_owned),
    };
    Some(TranslateError::Upstream {
        error_type: get_str(v, "error_type").unwrap_or("error").to_owned(),
        message,
    })
}

/// Parses a `/generate` body in either the object or the list form.
pub fn parse_response(body: &[u8]) -> Result<Generation, TranslateError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::decode(format!("text-generation response is not JSON: {e}")))?;
    if let Some(err) = tgi_error(&v) {
        return Err(err);
    }
    let item = match &v {
        Value::Array(items) => items
            .first()
            .ok_or_else(|| TranslateError::decode("text-generation response is an empty list"))?,
        other => other,
    };
    if let Some(err) = tgi_error(item) {
        return Err(err);
    }
    let Some(text) = get_str(item, "generated_text") else {
        return Err(TranslateError::decode(
            "text-generation response has no `generated_text`",
        ));
    };
    let details = item.get("details").filter(|d| d.is_object());
    Ok(Generation {
        text: text.to_owned(),
        tgi_finish_reason: details.and_then(|d| get_str(d, "finish_reason")).map(str::to_owned),
        counts: details.map(TokenCounts::from_details).unwrap_or_default(),
    })
}

/// Translates a `/generate` body into a chat completion. `usage` is set only when TGI reported
/// both counts; use [`parse_response`] to get partial counts. The text is returned as TGI sent
/// it; prefer [`from_response_with_stops`] so that matched stop strings are cut off.
pub fn from_response(
    body: &[u8],
    requested_model: &str,
    id: &str,
    created: u64,
) -> Result<ChatCompletion, TranslateError> {
    Ok(parse_response(body)?.into_completion(requested_model, id, created))
}

/// [`from_response`] that also cuts the text at the first of `stops` (pass
/// [`stop_sequences`] of the request) and returns the token counts TGI reported.
pub fn from_response_with_stops(
    body: &[u8],
    requested_model: &str,
    id: &str,
    created: u64,
    stops: &[String],
) -> Result<(ChatCompletion, TokenCounts), TranslateError> {
    let mut g = parse_response(body)?;
    g.strip_stop_sequences(stops);
    let counts = g.counts;
    Ok((g.into_completion(requested_model, id, created), counts))
}

/// Turns `/generate_stream` events into OpenAI chunks.
///
/// With [`StreamTranslator::with_stop_sequences`] the translator holds back text that may be the
/// start of a stop string and never emits a matched one (TGI would stream it).
#[derive(Debug)]
pub struct StreamTranslator {
    id: String,
    created: u64,
    model: String,
    stops: StopCutter,
    started: bool,
    finished: bool,
    counts: TokenCounts,
    tokens_seen: u64,
}

impl StreamTranslator {
    pub fn new(id: &str, created: u64, requested_model: &str) -> Self {
        StreamTranslator {
            id: id.to_owned(),
            created,
            model: requested_model.to_owned(),
            stops: StopCutter::default(),
            started: false,
            finished: false,
            counts: TokenCounts::default(),
            tokens_seen: 0,
        }
    }

    /// Stop strings to cut the text at (pass [`stop_sequences`] of the request).
    pub fn with_stop_sequences(mut self, stops: Vec<String>) -> Self {
        self.stops = StopCutter::new(stops);
        self
    }

    /// Usage once TGI reported both counts (final event of a current TGI).
    pub fn usage(&self) -> Option<Usage> {
        self.counts.usage()
    }

    /// Whatever counts are known; before the final event, `completion_tokens` is the number of
    /// token events seen so far.
    pub fn token_counts(&self) -> TokenCounts {
        let mut c = self.counts;
        if c.completion_tokens.is_none() && self.tokens_seen > 0 {
            c.completion_tokens = Some(self.tokens_seen);
        }
        c
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Translates one event, appending chunks to `out`. Returns `true` after the final event
    /// (the one with `details`/`generated_text`, or a `[DONE]` sentinel).
    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<ChatChunk>) -> Result<bool, TranslateError> {
        if self.finished {
            return Ok(true);
        }
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(false);
        }
        if data == "[DONE]" {
            self.finish(None, out);
            return Ok(true);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| TranslateError::decode(format!("text-generation stream event is not JSON: {e}")))?;
        if let Some(err) = tgi_error(&v) {
            return Err(err);
        }
        if !self.started {
            self.started = true;
            out.push(role_chunk(&self.id, self.created, &self.model));
        }
        if let Some(token) = v.get("token").filter(|t| t.is_object()) {
            self.tokens_seen = self.tokens_seen.saturating_add(1);
            let special = token.get("special").and_then(Value::as_bool).unwrap_or(false);
            if !special {
                self.push_text(get_str(token, "text").unwrap_or(""), out);
            }
        }
        let details = v.get("details").filter(|d| d.is_object());
        let is_final = details.is_some() || v.get("generated_text").is_some_and(Value::is_string);
        if is_final {
            if let Some(d) = details {
                self.counts = TokenCounts::from_details(d);
            }
            let reason = details.and_then(|d| get_str(d, "finish_reason"));
            self.finish(reason, out);
            return Ok(true);
        }
        Ok(false)
    }

    fn push_text(&mut self, text: &str, out: &mut Vec<ChatChunk>) {
        let emit = self.stops.push(text);
        if !emit.is_empty() {
            out.push(ChatChunk::content(&self.id, self.created, &self.model, &emit));
        }
    }

    fn flush(&mut self, out: &mut Vec<ChatChunk>) {
        let chunk = self.stops.flush();
        if !chunk.is_empty() {
            out.push(ChatChunk::content(&self.id, self.created, &self.model, &chunk));
        }
    }

    fn finish(&mut self, tgi_reason: Option<&str>, out: &mut Vec<ChatChunk>) {
        if !self.started {
            self.started = true;
            out.push(role_chunk(&self.id, self.created, &self.model));
        }
        self.flush(out);
        let reason = if self.stops.is_stopped() {
            "stop"
        } else {
            tgi_reason.map_or("stop", finish_reason)
        };
        out.push(finish_chunk(&self.id, self.created, &self.model, reason));
        // Like OpenAI with `include_usage`: the counts TGI reported travel in a closing chunk with no
        // choices (the consumer of the chunks never sees this translator).
        if let Some(u) = self.counts.usage() {
            let mut c = ChatChunk::new(&self.id, self.created, &self.model);
            c.usage = Some(u);
            out.push(c);
        }
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::openai::ChunkAccumulator;
    use crate::sse::SseDecoder;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    fn events(text: &str) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(text.as_bytes(), &mut out).unwrap();
        d.finish(&mut out);
        out
    }

    fn run_stream(t: &mut StreamTranslator, text: &str) -> (Value, Result<bool, TranslateError>) {
        let mut chunks = Vec::new();
        let mut result = Ok(false);
        for ev in events(text) {
            result = t.on_event(&ev, &mut chunks);
            if !matches!(result, Ok(false)) {
                break;
            }
        }
        (serde_json::to_value(&chunks).unwrap(), result)
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "tgi", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    // ---- requests -------------------------------------------------------------------------

    #[test]
    fn plain_template_request() {
        let got = to_request(
            &req(json!({
                "model": "tgi",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "What is Deep Learning?"},
                    {"role": "assistant", "content": "A kind of ML."},
                    {"role": "user", "content": [{"type": "text", "text": "More?"}, {"type": "text", "text": "Briefly."}]}
                ],
                "max_tokens": 20,
                "temperature": 0.7,
                "top_p": 0.95,
                "seed": 42,
                "stop": "###"
            })),
            ChatTemplate::Plain,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "inputs": "System: You are terse.\n\nUser: What is Deep Learning?\n\nAssistant: A kind of ML.\n\nUser: More?\nBriefly.\n\nAssistant:",
                "parameters": {
                    "max_new_tokens": 20,
                    "do_sample": true,
                    "temperature": 0.7,
                    "top_p": 0.95,
                    "seed": 42,
                    "stop": ["###", "\nUser:"],
                    "details": true,
                    "return_full_text": false
                }
            })
        );
    }

    #[test]
    fn chatml_template_and_greedy_decoding() {
        let got = to_request(
            &req(json!({
                "model": "tgi",
                "messages": [
                    {"role": "developer", "content": "Be kind."},
                    {"role": "user", "content": "Hi"}
                ],
                "temperature": 0,
                "top_p": 1.0
            })),
            ChatTemplate::ChatML,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "inputs": "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                "parameters": {
                    "do_sample": false,
                    "stop": ["<|im_end|>"],
                    "details": true,
                    "return_full_text": false
                }
            })
        );
    }

    #[test]
    fn sampling_parameter_edges() {
        let params = |v: Value| to_request(&req(v), ChatTemplate::Plain).unwrap()["parameters"].clone();
        let user = json!([{"role": "user", "content": "x"}]);
        // Defaults sample like OpenAI does.
        let p = params(json!({"model": "m", "messages": user}));
        assert_eq!(p["do_sample"], true);
        assert!(p.get("temperature").is_none() && p.get("top_p").is_none() && p.get("max_new_tokens").is_none());
        // top_p >= 1 is omitted, top_p 0 is greedy.
        let p = params(json!({"model": "m", "messages": user, "top_p": 1, "temperature": 1.3}));
        assert!(p.get("top_p").is_none());
        assert_eq!(p["temperature"], 1.3);
        let p = params(json!({"model": "m", "messages": user, "top_p": 0.0, "temperature": 0.5}));
        assert_eq!(p["do_sample"], false);
        assert!(p.get("temperature").is_none());
        // max_completion_tokens wins over max_tokens; top_k passes through.
        let p =
            params(json!({"model": "m", "messages": user, "max_tokens": 5, "max_completion_tokens": 9, "top_k": 40}));
        assert_eq!(p["max_new_tokens"], 9);
        assert_eq!(p["top_k"], 40);
        // Client stops come first; template stops only while TGI's limit of 4 allows.
        let p = params(json!({"model": "m", "messages": user, "stop": ["a", "b", "c", "d"]}));
        assert_eq!(p["stop"], json!(["a", "b", "c", "d"]));
        let p = params(json!({"model": "m", "messages": user, "stop": ["a", "\nUser:"]}));
        assert_eq!(p["stop"], json!(["a", "\nUser:"]));
        // JSON output becomes a grammar.
        let p = params(
            json!({"model": "m", "messages": user, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
        );
        assert_eq!(
            p["grammar"],
            json!({"type": "json", "value": {"type": "object", "properties": {"a": {"type": "integer"}}}})
        );
        let p = params(json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}}));
        assert_eq!(p["grammar"], json!({"type": "json", "value": {"type": "object"}}));
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let field = |v: Value| {
            let e = to_request(&req(v), ChatTemplate::ChatML).unwrap_err();
            assert!(e.is_client_error());
            e.field().unwrap().to_owned()
        };
        let user = json!([{"role": "user", "content": "x"}]);
        assert_eq!(field(json!({"model": "m", "messages": user, "n": 3})), "n");
        assert_eq!(field(json!({"model": "m", "messages": user, "seed": -1})), "seed");
        assert_eq!(
            field(json!({"model": "m", "messages": user, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(
            field(json!({"model": "m", "messages": user, "logprobs": true})),
            "logprobs"
        );
        assert_eq!(
            field(json!({"model": "m", "messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]})),
            "tools"
        );
        assert_eq!(field(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(
            field(json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})),
            "messages[0].content[1]"
        );
        assert_eq!(
            field(json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]})),
            "messages[0].tool_calls"
        );
        assert_eq!(
            field(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            field(
                json!({"model": "m", "messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
            ),
            "response_format.json_schema.schema"
        );
    }

    #[test]
    fn template_names() {
        assert_eq!("plain".parse::<ChatTemplate>(), Ok(ChatTemplate::Plain));
        assert_eq!("ChatML".parse::<ChatTemplate>(), Ok(ChatTemplate::ChatML));
        assert_eq!("chat_ml".parse::<ChatTemplate>(), Ok(ChatTemplate::ChatML));
        assert!("llama".parse::<ChatTemplate>().is_err());
        assert_eq!(serde_json::to_value(ChatTemplate::ChatML).unwrap(), json!("chatml"));
        assert_eq!(
            serde_json::from_value::<ChatTemplate>(json!("chat-ml")).unwrap(),
            ChatTemplate::ChatML
        );
        assert_eq!(
            serde_json::from_value::<ChatTemplate>(json!("plain")).unwrap(),
            ChatTemplate::Plain
        );
        assert_eq!(ChatTemplate::default().to_string(), "plain");
        for t in [ChatTemplate::Plain, ChatTemplate::ChatML] {
            assert_eq!(t.to_string().parse::<ChatTemplate>(), Ok(t));
        }
    }

    // ---- responses ------------------------------------------------------------------------

    #[test]
    fn documented_object_response_with_details() {
        // TGI's documented /generate answer (decoder_input_details gives the prefill list).
        let body = br#"{
            "generated_text": "test",
            "details": {
                "finish_reason": "length",
                "generated_tokens": 1,
                "seed": 42,
                "prefill": [{"id": 0, "logprob": null, "text": "test"}, {"id": 1, "logprob": -1.5, "text": "x"}],
                "tokens": [{"id": 0, "logprob": -0.34, "special": false, "text": "test"}]
            }
        }"#;
        let got = from_response(body, "tgi", "chatcmpl-1", 1_700_000_000).unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "tgi",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "test"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
            })
        );
    }

    #[test]
    fn list_form_without_details() {
        // The Inference API's list-shaped answer.
        let body = br#"[{"generated_text": " Rayleigh scattering"}]"#;
        let g = parse_response(body).unwrap();
        assert_eq!(g.text, " Rayleigh scattering");
        assert_eq!(g.counts, TokenCounts::default());
        let got = from_response(body, "hf", "id", 1).unwrap();
        assert_eq!(got.choices[0].message.text(), " Rayleigh scattering");
        assert_eq!(got.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(got.usage, None);
    }

    #[test]
    fn partial_usage_is_reported_as_partial() {
        let body = br#"{"generated_text":"hi","details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null,"prefill":[],"tokens":[]}}"#;
        let (completion, counts) = from_response_with_stops(body, "m", "i", 0, &[]).unwrap();
        assert_eq!(completion.usage, None);
        assert_eq!(
            counts,
            TokenCounts {
                prompt_tokens: None,
                completion_tokens: Some(3)
            }
        );
        assert!(!counts.is_complete());
        let body = br#"{"generated_text":"hi","details":{"finish_reason":"eos_token","generated_tokens":3,"input_length":11}}"#;
        let (completion, counts) = from_response_with_stops(body, "m", "i", 0, &[]).unwrap();
        assert_eq!(completion.usage, Some(Usage::new(11, 3)));
        assert!(counts.is_complete());
    }

    #[test]
    fn every_finish_reason() {
        for (tgi, openai) in [("length", "length"), ("eos_token", "stop"), ("stop_sequence", "stop")] {
            let body = json!({"generated_text": "x", "details": {"finish_reason": tgi, "generated_tokens": 1}});
            let got = from_response(body.to_string().as_bytes(), "m", "i", 0).unwrap();
            assert_eq!(got.choices[0].finish_reason.as_deref(), Some(openai), "{tgi}");
        }
    }

    #[test]
    fn stop_strings_are_cut_from_the_text() {
        // TGI keeps the matched stop string (and may overshoot it inside a token).
        let body = br#"[{"generated_text":" Paris.\nUser: and Rome?","details":{"finish_reason":"stop_sequence","generated_tokens":6}}]"#;
        let stops = stop_sequences(
            &req(json!({"model": "m", "messages": [], "stop": "Rome"})),
            ChatTemplate::Plain,
        );
        assert_eq!(stops, vec!["Rome", "\nUser:"]);
        let (got, _) = from_response_with_stops(body, "m", "i", 0, &stops).unwrap();
        assert_eq!(got.choices[0].message.text(), " Paris.");
        assert_eq!(got.choices[0].finish_reason.as_deref(), Some("stop"));
        // Without stops the text is untouched.
        let got = from_response(body, "m", "i", 0).unwrap();
        assert_eq!(got.choices[0].message.text(), " Paris.\nUser: and Rome?");
    }

    #[test]
    fn error_and_garbage_bodies() {
        let body = br#"{"error":"Input validation error: `inputs` must have less than 1024 tokens","error_type":"validation"}"#;
        assert_eq!(
            parse_response(body).unwrap_err(),
            TranslateError::Upstream {
                error_type: "validation".into(),
                message: "Input validation error: `inputs` must have less than 1024 tokens".into()
            }
        );
        // The serverless API's model-loading answer has no error_type.
        let body = br#"{"error":"Model gpt2 is currently loading","estimated_time":20.0}"#;
        assert!(
            matches!(parse_response(body), Err(TranslateError::Upstream { error_type, .. }) if error_type == "error")
        );
        assert!(matches!(parse_response(b"[]"), Err(TranslateError::Decode(_))));
        assert!(matches!(parse_response(b"{}"), Err(TranslateError::Decode(_))));
        assert!(matches!(parse_response(b"nope"), Err(TranslateError::Decode(_))));
        assert!(matches!(
            parse_response(br#"[{"generated_text": 5}]"#),
            Err(TranslateError::Decode(_))
        ));
    }

    // ---- streaming ------------------------------------------------------------------------

    const STREAM: &str = "data:{\"index\":1,\"token\":{\"id\":1014,\"text\":\" Deep\",\"logprob\":-0.5,\"special\":false},\"generated_text\":null,\"details\":null}\n\n\
data:{\"index\":2,\"token\":{\"id\":6509,\"text\":\" learning\",\"logprob\":-0.1,\"special\":false},\"generated_text\":null,\"details\":null}\n\n\
data:{\"index\":3,\"token\":{\"id\":338,\"text\":\" is\",\"logprob\":-0.2,\"special\":false},\"generated_text\":null,\"details\":null}\n\n\
data:{\"index\":4,\"token\":{\"id\":2,\"text\":\"</s>\",\"logprob\":-0.01,\"special\":true},\"generated_text\":\" Deep learning is\",\"details\":{\"finish_reason\":\"eos_token\",\"generated_tokens\":4,\"seed\":null,\"input_length\":12}}\n\n";

    #[test]
    fn documented_token_stream_gives_exact_chunks() {
        let mut t = StreamTranslator::new("chatcmpl-1", 1_700_000_000, "tgi");
        let (chunks, result) = run_stream(&mut t, STREAM);
        assert_eq!(result, Ok(true));
        assert_eq!(
            chunks,
            json!([
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": " Deep"}), Value::Null),
                chunk(json!({"content": " learning"}), Value::Null),
                chunk(json!({"content": " is"}), Value::Null),
                chunk(json!({}), json!("stop")),
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                       "model": "tgi", "choices": [],
                       "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}}),
            ])
        );
        assert_eq!(t.usage(), Some(Usage::new(12, 4)));
        assert!(t.is_finished());
    }

    #[test]
    fn stream_split_at_every_byte_gives_the_same_chunks() {
        let mut t = StreamTranslator::new("chatcmpl-1", 1_700_000_000, "tgi");
        let (expected, _) = run_stream(&mut t, STREAM);
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let mut d = SseDecoder::default();
            let mut t = StreamTranslator::new("chatcmpl-1", 1_700_000_000, "tgi");
            let (mut evs, mut chunks) = (Vec::new(), Vec::new());
            d.feed(&bytes[..cut], &mut evs).unwrap();
            d.feed(&bytes[cut..], &mut evs).unwrap();
            d.finish(&mut evs);
            for ev in &evs {
                t.on_event(ev, &mut chunks).unwrap();
            }
            assert_eq!(serde_json::to_value(&chunks).unwrap(), expected, "cut at {cut}");
        }
    }

    #[test]
    fn stream_and_response_agree() {
        let mut t = StreamTranslator::new("id", 3, "tgi");
        let mut chunks = Vec::new();
        for ev in events(STREAM) {
            t.on_event(&ev, &mut chunks).unwrap();
        }
        let mut acc = ChunkAccumulator::default();
        chunks.iter().for_each(|c| acc.push(c));
        let streamed = acc.into_completion();
        let whole = from_response(
            br#"{"generated_text":" Deep learning is","details":{"finish_reason":"eos_token","generated_tokens":4,"input_length":12}}"#,
            "tgi",
            "id",
            3,
        )
        .unwrap();
        assert_eq!(streamed.choices, whole.choices);
        assert_eq!(t.usage(), whole.usage);
        // The gateway sees only the chunks (the translator moves into the stream): TGI's reported
        // counts travel in a closing usage chunk, as Anthropic's do.
        assert_eq!(streamed.usage, whole.usage);
    }

    fn token_event(text: &str, last: Option<(&str, &str)>) -> String {
        let (generated, details) = match last {
            Some((all, reason)) => (
                json!(all),
                json!({"finish_reason": reason, "generated_tokens": 9, "seed": 1}),
            ),
            None => (Value::Null, Value::Null),
        };
        let ev = json!({"index": 0, "token": {"id": 5, "text": text, "logprob": -1.0, "special": false},
                        "generated_text": generated, "details": details});
        format!("data: {ev}\n\n")
    }

    #[test]
    fn stop_string_split_across_tokens_is_never_emitted() {
        let stops = stop_sequences(&req(json!({"model": "m", "messages": []})), ChatTemplate::Plain);
        let mut t = StreamTranslator::new("chatcmpl-1", 1_700_000_000, "tgi").with_stop_sequences(stops);
        let text = [
            token_event(" Yes", None),
            token_event(".\n", None),
            token_event("Us", None),
            token_event("er:", Some((" Yes.\nUser:", "stop_sequence"))),
        ]
        .concat();
        let (chunks, result) = run_stream(&mut t, &text);
        assert_eq!(result, Ok(true));
        assert_eq!(
            chunks,
            json!([
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": " Yes"}), Value::Null),
                chunk(json!({"content": "."}), Value::Null),
                chunk(json!({}), json!("stop")),
            ])
        );
        // Only generated_tokens known: usage is partial.
        assert_eq!(t.usage(), None);
        assert_eq!(
            t.token_counts(),
            TokenCounts {
                prompt_tokens: None,
                completion_tokens: Some(9)
            }
        );
    }

    #[test]
    fn held_back_text_that_is_not_a_stop_is_released() {
        let mut t = StreamTranslator::new("chatcmpl-1", 1_700_000_000, "tgi")
            .with_stop_sequences(vec!["\nUser:".into(), "".into()]);
        let text = [
            token_event("a\n", None),
            token_event("Use", None),
            token_event("ful", Some(("a\nUseful", "length"))),
        ]
        .concat();
        let (chunks, _) = run_stream(&mut t, &text);
        let mut acc = ChunkAccumulator::default();
        for c in chunks.as_array().unwrap() {
            acc.push(&serde_json::from_value(c.clone()).unwrap());
        }
        assert_eq!(acc.text(), "a\nUseful");
        assert_eq!(acc.finish_reason(), Some("length"));
        // A stream that just ends while text is held back still delivers it.
        let mut t = StreamTranslator::new("c", 1, "m").with_stop_sequences(vec!["STOP".into()]);
        let (chunks, result) = run_stream(
            &mut t,
            &[token_event("x ST", None), "data: [DONE]\n\n".to_owned()].concat(),
        );
        assert_eq!(result, Ok(true));
        let texts: Vec<&str> = chunks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(texts.concat(), "x ST");
    }

    #[test]
    fn held_back_text_respects_char_boundaries() {
        let mut c = StopCutter::new(vec!["éé!".to_owned()]);
        assert_eq!(c.push("abcé"), "abc");
        assert_eq!(c.push("é"), "");
        assert_eq!(c.push("x"), "ééx");
        assert_eq!(c.push(""), "");
    }

    #[test]
    fn an_earlier_possible_stop_outranks_a_later_complete_one() {
        // Found by fuzzing: "?" is complete in "qqqqq?", but "qqqqq??" may still start earlier.
        let stops = || vec!["qqqqq??".to_owned(), "?".to_owned()];
        let mut c = StopCutter::new(stops());
        let sent = [c.push("Kqqqqq"), c.push("?"), c.push("??")].concat();
        assert_eq!((sent.as_str(), c.is_stopped()), ("K", true));
        // The longer one never completes: the answer is cut at the "?" when the next text comes...
        let mut c = StopCutter::new(stops());
        let sent = [c.push("Kqqqqq"), c.push("?"), c.push("x")].concat();
        assert_eq!((sent.as_str(), c.is_stopped()), ("Kqqqqq", true));
        // ...or when the text ends.
        let mut c = StopCutter::new(stops());
        let sent = [c.push("Kqqqqq").into_owned(), c.push("?").into_owned(), c.flush()].concat();
        assert_eq!((sent.as_str(), c.is_stopped()), ("Kqqqqq", true));
    }

    #[test]
    fn error_event_in_stream() {
        let mut t = StreamTranslator::new("c", 1, "m");
        let text = format!(
            "{}data:{{\"error\":\"Request failed during generation: Server error: CUDA out of memory\",\"error_type\":\"generation\"}}\n\n",
            token_event("a", None)
        );
        let (chunks, result) = run_stream(&mut t, &text);
        assert_eq!(
            result,
            Err(TranslateError::Upstream {
                error_type: "generation".into(),
                message: "Request failed during generation: Server error: CUDA out of memory".into()
            })
        );
        assert_eq!(chunks.as_array().unwrap().len(), 2);
    }

    #[test]
    fn odd_stream_inputs() {
        let mut t = StreamTranslator::new("c", 1, "m");
        let mut out = Vec::new();
        assert_eq!(
            t.on_event(
                &SseEvent {
                    event: None,
                    data: "".into()
                },
                &mut out
            ),
            Ok(false)
        );
        assert!(matches!(
            t.on_event(
                &SseEvent {
                    event: None,
                    data: "{oops".into()
                },
                &mut out
            ),
            Err(TranslateError::Decode(_))
        ));
        // An event with neither token nor details only starts the stream.
        assert_eq!(
            t.on_event(
                &SseEvent {
                    event: None,
                    data: "{\"index\":0}".into()
                },
                &mut out
            ),
            Ok(false)
        );
        assert_eq!(out.len(), 1);
        // A final event without details (details=false) still finishes with `stop`.
        let last = SseEvent {
            event: None,
            data: "{\"token\":{\"id\":1,\"text\":\"!\",\"special\":false},\"generated_text\":\"!\",\"details\":null}"
                .into(),
        };
        assert_eq!(t.on_event(&last, &mut out), Ok(true));
        assert_eq!(out.last().unwrap().choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            t.token_counts(),
            TokenCounts {
                prompt_tokens: None,
                completion_tokens: Some(1)
            }
        );
        // Nothing after the end.
        let n = out.len();
        assert_eq!(t.on_event(&last, &mut out), Ok(true));
        assert_eq!(out.len(), n);
        // [DONE] on a fresh stream gives a role chunk and a finish chunk.
        let mut t = StreamTranslator::new("c", 1, "m");
        let mut out = Vec::new();
        assert_eq!(
            t.on_event(
                &SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
                &mut out
            ),
            Ok(true)
        );
        assert_eq!(out.len(), 2);
    }
}
