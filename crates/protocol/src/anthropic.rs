//! Anthropic Messages API (`POST /v1/messages`): translation from the canonical OpenAI request,
//! back from Anthropic's response, and of Anthropic's streaming events into OpenAI chunks.
//!
//! Wire facts this module relies on (Anthropic's public API reference):
//! - the system prompt is a top-level `system` field, not a message; `messages` alternate
//!   `user`/`assistant`, each with a string or a list of content blocks;
//! - `max_tokens` is required; `temperature` is 0..1; stop strings are `stop_sequences`, and a
//!   whitespace-only one is rejected with 400 (those are applied here instead: [`local_stops`]);
//! - images are `{"type":"image","source":{"type":"base64","media_type","data"}}` or a `url` source;
//! - tool calls are `tool_use` blocks `{id, name, input}` in assistant turns, answered by
//!   `tool_result` blocks `{tool_use_id, content}` in the next user turn;
//! - tools are `{name, description, input_schema}`; `tool_choice` is `auto`/`any`/`tool`/`none`;
//! - responses carry `content` blocks, `stop_reason` and `usage` (`input_tokens`, `output_tokens`,
//!   and the prompt-cache counts `cache_creation_input_tokens`, `cache_read_input_tokens`);
//! - a stream is `message_start`, then per block `content_block_start` / `content_block_delta`
//!   (`text_delta`, `input_json_delta`, ...) / `content_block_stop`, then `message_delta`
//!   (`stop_reason`, cumulative `usage`) and `message_stop`; `ping` may appear anywhere and
//!   `error` events report failures mid-stream.

use serde_json::{Map, Value, json};

use crate::openai::{ChatChunk, ChatCompletion, ChatRequest, Choice, Content, ContentPart, Extra, Message, Usage};
use crate::sse::SseEvent;
use crate::translate::{
    StopCutter, TranslateError, finish_chunk, get_str, get_u64, parse_data_url, role_chunk, stop_list, tool_call,
    tool_call_chunk, unix_now, usage,
};

/// The `anthropic-version` header value the translation targets.
pub const API_VERSION: &str = "2023-06-01";

/// Image media types Anthropic accepts in base64 sources.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// Builds the Messages API request body for `req`, addressed to `upstream_model`.
///
/// OpenAI fields with no Anthropic counterpart that only tune sampling (`frequency_penalty`,
/// `presence_penalty`, `logit_bias`, `seed`, ...) and unknown extra fields are dropped; fields whose
/// loss would change what the client gets back (`n` > 1, JSON `response_format`, `logprobs`, audio)
/// are rejected.
///
/// `default_max_tokens` is used when the client did not set `max_completion_tokens`/`max_tokens`
/// (Anthropic requires the field).
pub fn to_request(req: &ChatRequest, upstream_model: &str, default_max_tokens: u32) -> Result<Value, TranslateError> {
    check_unsupported(req)?;

    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => {
                system.extend(system_blocks(i, m)?);
            }
            "user" => {
                let blocks = user_blocks(i, m.content.as_ref())?;
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let blocks = assistant_blocks(i, m)?;
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let block = tool_result_block(i, m)?;
                push_turn(&mut turns, "user", vec![block]);
            }
            "function" => {
                return Err(TranslateError::unsupported(
                    format!("messages[{i}].role"),
                    "legacy `function` messages; use `tool` messages",
                ));
            }
            other => {
                return Err(TranslateError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{other}`"),
                ));
            }
        }
    }
    // Anthropic rejects a final (prefilled) assistant turn that ends in whitespace, and empty or
    // whitespace-only text blocks anywhere (those are dropped as each message is read): trim the
    // trailing text, drop blocks that become empty, and the turn if nothing is left.
    if let Some(last) = turns.last_mut()
        && last.role == "assistant"
    {
        while let Some(Value::Object(b)) = last.blocks.last_mut()
            && b.get("type").and_then(Value::as_str) == Some("text")
            && let Some(Value::String(t)) = b.get_mut("text")
        {
            let trimmed = t.trim_end().len();
            t.truncate(trimmed);
            if !t.is_empty() {
                break;
            }
            last.blocks.pop();
        }
        if last.blocks.is_empty() {
            turns.pop();
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::invalid(
            "messages",
            "at least one user or assistant message with content is required",
        ));
    }

    let max_tokens = req.output_cap().unwrap_or(default_max_tokens);
    if max_tokens == 0 {
        return Err(TranslateError::invalid(
            if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            "must be at least 1",
        ));
    }

    let mut body = Map::new();
    body.insert("model".into(), Value::from(upstream_model));
    body.insert("max_tokens".into(), Value::from(max_tokens));
    body.insert(
        "messages".into(),
        Value::Array(turns.into_iter().map(Turn::into_json).collect()),
    );
    if !system.is_empty() {
        body.insert("system".into(), system_value(system));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), Value::from(t.clamp(0.0, 1.0)));
    }
    // Anthropic asks for one of temperature/top_p, and recent models reject both: top_p is sent
    // only when it restricts anything (< 1) and no temperature was given.
    if let Some(p) = req.top_p.filter(|p| *p < 1.0 && req.temperature.is_none()) {
        body.insert("top_p".into(), Value::from(p.max(0.0)));
    }
    if let Some(k) = req.extra.get("top_k").and_then(Value::as_u64) {
        body.insert("top_k".into(), Value::from(k));
    }
    let stops: Vec<String> = stop_list(req.stop.as_ref())
        .into_iter()
        .filter(|s| !is_blank(s))
        .collect();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), Value::from(stops));
    }
    if let Some(s) = req.stream {
        body.insert("stream".into(), Value::from(s));
    }
    let user = req
        .extra
        .get("user")
        .or_else(|| req.extra.get("safety_identifier"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if let Some(u) = user {
        body.insert("metadata".into(), json!({ "user_id": u }));
    }
    if req.has_tools() {
        let tools = req.tools.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            out.push(tool_definition(i, t)?);
        }
        body.insert("tools".into(), Value::Array(out));
        let parallel = req.extra.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(choice) = tool_choice(req.tool_choice.as_ref(), parallel)? {
            body.insert("tool_choice".into(), choice);
        }
    } else if let Some(choice) = &req.tool_choice {
        let asks_for_tool = match choice {
            Value::String(s) => s == "required",
            Value::Object(_) => true,
            _ => false,
        };
        if asks_for_tool {
            return Err(TranslateError::invalid(
                "tool_choice",
                "a tool is required but `tools` is empty",
            ));
        }
    }
    Ok(Value::Object(body))
}

fn check_unsupported(req: &ChatRequest) -> Result<(), TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::unsupported(
            "n",
            "Anthropic returns one choice per request",
        ));
    }
    if req.wants_json() {
        return Err(TranslateError::unsupported(
            "response_format",
            "JSON output modes are not translated for Anthropic",
        ));
    }
    if req.extra.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(TranslateError::unsupported(
            "logprobs",
            "Anthropic does not return log probabilities",
        ));
    }
    let wants_audio = req
        .extra
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("audio")));
    if wants_audio || req.extra.get("audio").is_some_and(|a| !a.is_null()) {
        return Err(TranslateError::unsupported(
            "modalities",
            "audio output is not available",
        ));
    }
    Ok(())
}

/// One Anthropic message being assembled; consecutive same-role messages are merged into one.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

impl Turn {
    fn into_json(mut self) -> Value {
        if self.role == "user" {
            // Tool results must come before anything else in a user turn.
            let (mut results, rest): (Vec<Value>, Vec<Value>) = self
                .blocks
                .into_iter()
                .partition(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
            results.extend(rest);
            self.blocks = results;
        }
        // A lone plain text block is sent as a string, like the documented examples.
        let content = match self.blocks.as_slice() {
            [Value::Object(b)] if b.len() == 2 && b.get("type") == Some(&json!("text")) => {
                b.get("text").cloned().unwrap_or_else(|| Value::String(String::new()))
            }
            _ => Value::Array(self.blocks),
        };
        json!({ "role": self.role, "content": content })
    }
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// Copies a `cache_control` marker from an OpenAI content part, if the client set one.
fn with_cache_control(mut block: Value, part: &ContentPart) -> Value {
    if let (Some(cc), Value::Object(b)) = (part.0.get("cache_control"), &mut block) {
        b.insert("cache_control".into(), cc.clone());
    }
    block
}

/// Text blocks of a system/developer message (empty texts dropped, `cache_control` kept).
fn system_blocks(i: usize, m: &Message) -> Result<Vec<Value>, TranslateError> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.trim().is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_block(t)]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p.as_text() {
                    Some(t) if t.trim().is_empty() => {}
                    Some(t) => out.push(with_cache_control(text_block(t), p)),
                    None => {
                        return Err(TranslateError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!("`{}` parts in a system message", p.kind()),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `system` as one string, or as a list of text blocks when a block carries `cache_control`
/// (prompt caching needs the block form).
fn system_value(blocks: Vec<Value>) -> Value {
    if blocks.iter().any(|b| b.get("cache_control").is_some()) {
        return Value::Array(blocks);
    }
    let texts: Vec<&str> = blocks.iter().filter_map(|b| get_str(b, "text")).collect();
    Value::from(texts.join("\n\n"))
}

fn user_blocks(i: usize, content: Option<&Content>) -> Result<Vec<Value>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(Content::Text(t)) if t.trim().is_empty() => Ok(Vec::new()),
        Some(Content::Text(t)) => Ok(vec![text_block(t)]),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let field = format!("messages[{i}].content[{j}]");
                let block = match p.kind() {
                    "text" => match p.as_text() {
                        Some(t) if t.trim().is_empty() => continue,
                        Some(t) => text_block(t),
                        None => return Err(TranslateError::invalid(field, "text part without `text`")),
                    },
                    "image_url" => image_block(&field, p)?,
                    "file" => file_block(&field, p)?,
                    other => {
                        return Err(TranslateError::unsupported(field, format!("`{other}` content parts")));
                    }
                };
                out.push(with_cache_control(block, p));
            }
            Ok(out)
        }
    }
}

fn image_block(field: &str, part: &ContentPart) -> Result<Value, TranslateError> {
    let url = match part.0.get("image_url") {
        Some(Value::String(u)) => u.as_str(),
        Some(obj) => get_str(obj, "url").unwrap_or(""),
        None => "",
    };
    if url.is_empty() {
        return Err(TranslateError::invalid(
            format!("{field}.image_url.url"),
            "missing image URL",
        ));
    }
    if url.starts_with("data:") {
        let Some((media_type, data)) = parse_data_url(url) else {
            return Err(TranslateError::invalid(
                format!("{field}.image_url.url"),
                "data URLs must be base64-encoded",
            ));
        };
        let media_type = media_type.to_ascii_lowercase();
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
            return Err(TranslateError::unsupported(
                format!("{field}.image_url.url"),
                format!("image type `{media_type}` (Anthropic takes jpeg, png, gif, webp)"),
            ));
        }
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(TranslateError::invalid(
        format!("{field}.image_url.url"),
        "expected an http(s) or base64 data URL",
    ))
}

/// OpenAI `file` parts carrying inline PDF data become Anthropic `document` blocks.
fn file_block(field: &str, part: &ContentPart) -> Result<Value, TranslateError> {
    let data_url = part.0.get("file").and_then(|f| get_str(f, "file_data")).unwrap_or("");
    match parse_data_url(data_url) {
        Some((media_type, data)) if media_type.eq_ignore_ascii_case("application/pdf") => Ok(json!({
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": data},
        })),
        _ => Err(TranslateError::unsupported(
            format!("{field}.file"),
            "only inline base64 PDF files (`file_data`) are translated",
        )),
    }
}

fn assistant_blocks(i: usize, m: &Message) -> Result<Vec<Value>, TranslateError> {
    let mut out = Vec::new();
    match &m.content {
        None => {}
        Some(Content::Text(t)) if t.trim().is_empty() => {}
        Some(Content::Text(t)) => out.push(text_block(t)),
        Some(Content::Parts(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let text = match p.kind() {
                    "text" => p.as_text(),
                    "refusal" => p.0.get("refusal").and_then(Value::as_str),
                    other => {
                        return Err(TranslateError::unsupported(
                            format!("messages[{i}].content[{j}]"),
                            format!("`{other}` parts in an assistant message"),
                        ));
                    }
                };
                if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
                    out.push(with_cache_control(text_block(t), p));
                }
            }
        }
    }
    for (j, call) in m.tool_calls.iter().flatten().enumerate() {
        out.push(tool_use_block(i, j, call)?);
    }
    Ok(out)
}

fn tool_use_block(i: usize, j: usize, call: &Value) -> Result<Value, TranslateError> {
    let field = format!("messages[{i}].tool_calls[{j}]");
    let kind = get_str(call, "type").unwrap_or("function");
    if kind != "function" {
        return Err(TranslateError::unsupported(
            format!("{field}.type"),
            format!("`{kind}` tool calls"),
        ));
    }
    let Some(id) = get_str(call, "id") else {
        return Err(TranslateError::invalid(format!("{field}.id"), "missing"));
    };
    let function = call.get("function").unwrap_or(&Value::Null);
    let Some(name) = get_str(function, "name") else {
        return Err(TranslateError::invalid(format!("{field}.function.name"), "missing"));
    };
    let input = match function.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
            TranslateError::invalid(format!("{field}.function.arguments"), format!("not valid JSON: {e}"))
        })?,
        Some(other) => other.clone(),
    };
    if !input.is_object() {
        return Err(TranslateError::invalid(
            format!("{field}.function.arguments"),
            "must encode a JSON object",
        ));
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn tool_result_block(i: usize, m: &Message) -> Result<Value, TranslateError> {
    let Some(id) = m.tool_call_id.as_deref() else {
        return Err(TranslateError::invalid(
            format!("messages[{i}].tool_call_id"),
            "`tool` messages need the id of the call they answer",
        ));
    };
    let mut block = Map::new();
    block.insert("type".into(), Value::from("tool_result"));
    block.insert("tool_use_id".into(), Value::from(id));
    match &m.content {
        Some(Content::Parts(_)) => {
            let blocks = user_blocks(i, m.content.as_ref())?;
            if !blocks.is_empty() {
                block.insert("content".into(), Value::Array(blocks));
            }
        }
        Some(Content::Text(t)) if !t.trim().is_empty() => {
            block.insert("content".into(), Value::from(t.as_str()));
        }
        _ => {}
    }
    Ok(Value::Object(block))
}

fn tool_definition(i: usize, tool: &Value) -> Result<Value, TranslateError> {
    let kind = get_str(tool, "type").unwrap_or("function");
    if kind != "function" {
        return Err(TranslateError::unsupported(
            format!("tools[{i}].type"),
            format!("`{kind}` tools"),
        ));
    }
    let function = tool.get("function").unwrap_or(&Value::Null);
    let Some(name) = get_str(function, "name").filter(|n| !n.is_empty()) else {
        return Err(TranslateError::invalid(format!("tools[{i}].function.name"), "missing"));
    };
    let mut out = Map::new();
    out.insert("name".into(), Value::from(name));
    if let Some(d) = get_str(function, "description") {
        out.insert("description".into(), Value::from(d));
    }
    let schema = match function.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(_) => {
            return Err(TranslateError::invalid(
                format!("tools[{i}].function.parameters"),
                "must be a JSON Schema object",
            ));
        }
    };
    out.insert("input_schema".into(), schema);
    if let Some(cc) = tool.get("cache_control") {
        out.insert("cache_control".into(), cc.clone());
    }
    Ok(Value::Object(out))
}

fn tool_choice(choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Value>, TranslateError> {
    let mut out = match choice {
        None | Some(Value::Null) => {
            if parallel == Some(false) {
                json!({"type": "auto"})
            } else {
                return Ok(None);
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => return Ok(Some(json!({"type": "none"}))),
            "required" => json!({"type": "any"}),
            other => {
                return Err(TranslateError::invalid(
                    "tool_choice",
                    format!("unknown value `{other}`"),
                ));
            }
        },
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .get("function")
                .and_then(|f| get_str(f, "name"))
                .filter(|_| get_str(obj, "type").unwrap_or("function") == "function");
            match name {
                Some(n) => json!({"type": "tool", "name": n}),
                None => {
                    return Err(TranslateError::invalid(
                        "tool_choice",
                        "expected {\"type\":\"function\",\"function\":{\"name\":...}}",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid("tool_choice", "expected a string or an object"));
        }
    };
    if parallel == Some(false)
        && let Value::Object(o) = &mut out
    {
        o.insert("disable_parallel_tool_use".into(), Value::from(true));
    }
    Ok(Some(out))
}

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything newer.
        _ => "stop",
    }
}

/// Prompt tokens of an Anthropic `usage` object: fresh input plus cache writes and reads
/// (together they are what the prompt cost, each at its own price).
fn prompt_tokens(usage: &Value) -> Option<u64> {
    let input = get_u64(usage, "input_tokens")?;
    Some(
        input
            .saturating_add(get_u64(usage, "cache_creation_input_tokens").unwrap_or(0))
            .saturating_add(get_u64(usage, "cache_read_input_tokens").unwrap_or(0)),
    )
}

fn upstream_error(v: &Value) -> TranslateError {
    let err = v.get("error").unwrap_or(&Value::Null);
    TranslateError::Upstream {
        error_type: get_str(err, "type").unwrap_or("error").to_owned(),
        message: get_str(err, "message")
            .unwrap_or("upstream reported an error")
            .to_owned(),
    }
}

/// Translates a complete Messages API response into a chat completion for `requested_model`.
pub fn from_response(body: &[u8], requested_model: &str) -> Result<ChatCompletion, TranslateError> {
    from_response_at(body, requested_model, unix_now())
}

fn is_blank(stop: &str) -> bool {
    stop.trim().is_empty()
}

/// The request's stop strings Anthropic refuses (whitespace-only ones, such as `"\n"`): they are
/// left out of `stop_sequences` and the gateway cuts the answer at them itself
/// ([`from_response_cut`], [`StreamTranslator::with_local_stops`]). The upstream then generates
/// (and bills) past the stop; the client sees what an OpenAI model would have returned.
pub fn local_stops(req: &ChatRequest) -> Vec<String> {
    stop_list(req.stop.as_ref())
        .into_iter()
        .filter(|s| is_blank(s))
        .collect()
}

/// [`from_response`] that also cuts the text at the first of `stops` (pass [`local_stops`]): a
/// cut answer finishes with `stop`, and tool calls the model made after that point are dropped.
pub fn from_response_cut(
    body: &[u8],
    requested_model: &str,
    stops: Vec<String>,
) -> Result<ChatCompletion, TranslateError> {
    let mut c = from_response(body, requested_model)?;
    let cutter = StopCutter::new(stops);
    if let Some(choice) = c.choices.first_mut() {
        let cut = match &mut choice.message.content {
            Some(Content::Text(t)) => cutter.cut(t),
            _ => false,
        };
        if cut {
            choice.message.tool_calls = None;
            choice.finish_reason = Some("stop".to_owned());
        }
    }
    Ok(c)
}

/// [`from_response`] with an explicit `created` timestamp (Anthropic responses carry none).
pub fn from_response_at(body: &[u8], requested_model: &str, created: u64) -> Result<ChatCompletion, TranslateError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::decode(format!("Anthropic response is not JSON: {e}")))?;
    if get_str(&v, "type") == Some("error") {
        return Err(upstream_error(&v));
    }
    let Some(blocks) = v.get("content").and_then(Value::as_array) else {
        return Err(TranslateError::decode("Anthropic response has no `content` list"));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match get_str(b, "type") {
            Some("text") => text.push_str(get_str(b, "text").unwrap_or("")),
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(tool_call(
                    get_str(b, "id").unwrap_or(""),
                    get_str(b, "name").unwrap_or(""),
                    &input.to_string(),
                ));
            }
            // thinking, redacted_thinking, server tool blocks: not part of OpenAI's message.
            _ => {}
        }
    }
    let mut message = Message {
        role: "assistant".to_owned(),
        content: Some(Content::Text(text)),
        ..Default::default()
    };
    if !calls.is_empty() {
        if matches!(&message.content, Some(Content::Text(t)) if t.is_empty()) {
            message.content = None;
        }
        message.tool_calls = Some(calls);
    }
    let counts = v.get("usage").and_then(|u| {
        Some(
            usage(prompt_tokens(u)?, get_u64(u, "output_tokens").unwrap_or(0))
                .with_cached(get_u64(u, "cache_read_input_tokens").unwrap_or(0)),
        )
    });
    Ok(ChatCompletion {
        id: get_str(&v, "id").unwrap_or("").to_owned(),
        object: "chat.completion".to_owned(),
        created,
        model: requested_model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: get_str(&v, "stop_reason").map(|r| finish_reason(r).to_owned()),
            extra: Extra::new(),
        }],
        usage: counts,
        extra: Extra::new(),
    })
}

/// Turns Anthropic stream events into OpenAI chunks, one event at a time.
#[derive(Debug)]
pub struct StreamTranslator {
    id: String,
    created: u64,
    model: String,
    started: bool,
    finished: bool,
    /// Fresh prompt tokens (`input_tokens`); the prompt total adds the two cache counts below.
    input_tokens: Option<u64>,
    /// Prompt tokens written to Anthropic's prompt cache (`cache_creation_input_tokens`).
    cache_write_tokens: u64,
    /// Prompt tokens read from Anthropic's prompt cache (`cache_read_input_tokens`).
    cached_tokens: u64,
    completion_tokens: u64,
    /// (Anthropic content-block index, OpenAI tool-call index) of the tool_use blocks seen.
    tool_blocks: Vec<(u64, u32)>,
    /// Stop strings applied here ([`local_stops`]); everything after a match is dropped.
    stops: StopCutter,
}

impl StreamTranslator {
    pub fn new(created: u64, requested_model: &str) -> Self {
        StreamTranslator {
            id: String::new(),
            created,
            model: requested_model.to_owned(),
            started: false,
            finished: false,
            input_tokens: None,
            cache_write_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            tool_blocks: Vec::new(),
            stops: StopCutter::default(),
        }
    }

    /// Stop strings the gateway applies itself (pass [`local_stops`] of the request).
    pub fn with_local_stops(mut self, stops: Vec<String>) -> Self {
        self.stops = StopCutter::new(stops);
        self
    }

    fn push_text(&mut self, text: &str, out: &mut Vec<ChatChunk>) {
        let emit = self.stops.push(text);
        if !emit.is_empty() {
            out.push(ChatChunk::content(&self.id, self.created, &self.model, &emit));
        }
    }

    /// Releases held-back text before output that is not text (a tool call, the finish).
    fn flush_text(&mut self, out: &mut Vec<ChatChunk>) {
        let held = self.stops.flush();
        if !held.is_empty() {
            out.push(ChatChunk::content(&self.id, self.created, &self.model, &held));
        }
    }

    /// Usage so far: known once `message_start` arrived; output tokens are final after
    /// `message_delta`.
    pub fn usage(&self) -> Option<Usage> {
        self.input_tokens.map(|i| {
            let p = i
                .saturating_add(self.cache_write_tokens)
                .saturating_add(self.cached_tokens);
            usage(p, self.completion_tokens).with_cached(self.cached_tokens)
        })
    }

    /// Takes in a `usage` object of `message_start` or `message_delta`. Every count in it is
    /// cumulative and any may be missing or null, which leaves the count known so far.
    fn absorb_usage(&mut self, u: &Value) {
        if let Some(i) = get_u64(u, "input_tokens") {
            self.input_tokens = Some(i);
        }
        if let Some(w) = get_u64(u, "cache_creation_input_tokens") {
            self.cache_write_tokens = w;
        }
        if let Some(r) = get_u64(u, "cache_read_input_tokens") {
            self.cached_tokens = r;
        }
        if let Some(o) = get_u64(u, "output_tokens") {
            self.completion_tokens = o;
        }
    }

    /// The upstream message id (empty before `message_start`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Translates one event, appending chunks to `out`. Returns `true` once the stream is
    /// complete (`message_stop`); events after that are ignored.
    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<ChatChunk>) -> Result<bool, TranslateError> {
        if self.finished {
            return Ok(true);
        }
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(false);
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                return Err(TranslateError::decode(format!(
                    "Anthropic stream event `{}` is not JSON: {e}",
                    ev.event.as_deref().unwrap_or("message")
                )));
            }
        };
        let kind = get_str(&v, "type").or(ev.event.as_deref()).unwrap_or("");
        match kind {
            "message_start" => {
                let msg = v.get("message").unwrap_or(&Value::Null);
                if let Some(id) = get_str(msg, "id") {
                    id.clone_into(&mut self.id);
                }
                if let Some(u) = msg.get("usage") {
                    self.absorb_usage(u);
                }
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                let index = get_u64(&v, "index").unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match get_str(block, "type") {
                    Some("text") => self.push_text(get_str(block, "text").unwrap_or(""), out),
                    // A model that met a local stop string would not have called the tool.
                    Some("tool_use") if self.stops.is_stopped() => {}
                    Some("tool_use") => {
                        self.flush_text(out);
                        let call = u32::try_from(self.tool_blocks.len()).unwrap_or(u32::MAX);
                        self.tool_blocks.push((index, call));
                        out.push(tool_call_chunk(
                            &self.id,
                            self.created,
                            &self.model,
                            call,
                            Some((get_str(block, "id").unwrap_or(""), get_str(block, "name").unwrap_or(""))),
                            "",
                        ));
                        // A start block may already carry a complete input.
                        if let Some(input) = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            out.push(tool_call_chunk(
                                &self.id,
                                self.created,
                                &self.model,
                                call,
                                None,
                                &input.to_string(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                self.start(out);
                let index = get_u64(&v, "index").unwrap_or(0);
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match get_str(delta, "type") {
                    Some("text_delta") => self.push_text(get_str(delta, "text").unwrap_or(""), out),
                    Some("input_json_delta") => {
                        let part = get_str(delta, "partial_json").unwrap_or("");
                        let call = self.tool_blocks.iter().find(|(b, _)| *b == index).map(|(_, c)| *c);
                        if let (false, Some(call)) = (part.is_empty(), call) {
                            out.push(tool_call_chunk(&self.id, self.created, &self.model, call, None, part));
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: nothing in OpenAI's shape.
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(out);
                if let Some(u) = v.get("usage") {
                    self.absorb_usage(u);
                }
                if let Some(reason) = v.get("delta").and_then(|d| get_str(d, "stop_reason")) {
                    self.flush_text(out);
                    let reason = if self.stops.is_stopped() {
                        "stop"
                    } else {
                        finish_reason(reason)
                    };
                    out.push(finish_chunk(&self.id, self.created, &self.model, reason));
                }
            }
            "message_stop" => {
                self.finished = true;
                self.flush_text(out);
                // Like OpenAI with `include_usage`: a closing chunk with no choices and the usage.
                if let Some(u) = self.usage() {
                    let mut c = ChatChunk::new(&self.id, self.created, &self.model);
                    c.usage = Some(u);
                    out.push(c);
                }
                return Ok(true);
            }
            "error" => return Err(upstream_error(&v)),
            // ping, content_block_stop and event types added later.
            _ => {}
        }
        Ok(false)
    }

    fn start(&mut self, out: &mut Vec<ChatChunk>) {
        if !self.started {
            self.started = true;
            out.push(role_chunk(&self.id, self.created, &self.model));
        }
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

    fn translate(v: Value) -> Result<Value, TranslateError> {
        to_request(&req(v), "claude-sonnet-4-5", 1024)
    }

    fn events(text: &str) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(text.as_bytes(), &mut out).unwrap();
        d.finish(&mut out);
        out
    }

    /// Runs a whole stream; returns the chunks as JSON, whether it finished, and the translator.
    fn run_stream(text: &str) -> (Value, Result<bool, TranslateError>, StreamTranslator) {
        let mut t = StreamTranslator::new(1_700_000_000, "claude");
        let mut chunks = Vec::new();
        let mut result = Ok(false);
        for ev in events(text) {
            result = t.on_event(&ev, &mut chunks);
            if !matches!(result, Ok(false)) {
                break;
            }
        }
        (serde_json::to_value(&chunks).unwrap(), result, t)
    }

    // ---- requests -------------------------------------------------------------------------

    #[test]
    fn documented_basic_request() {
        // The Messages API's first example: one user turn, max_tokens 1024.
        let got = translate(json!({
            "model": "claude",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello, world"}]
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": "Hello, world"}]
            })
        );
    }

    #[test]
    fn system_sampling_stop_stream_user() {
        let got = to_request(
            &req(json!({
                "model": "claude",
                "messages": [
                    {"role": "system", "content": "You are a pirate."},
                    {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
                    {"role": "user", "content": "Hi"},
                    {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
                    {"role": "assistant", "content": "Arr, a pirate.  "}
                ],
                "temperature": 1.7,
                "top_p": 0.9,
                "stop": ["\n\nHuman:", ""],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_completion_tokens": 50,
                "max_tokens": 9,
                "user": "user-42",
                "presence_penalty": 0.5,
                "seed": 7
            })),
            "claude-haiku",
            4096,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-haiku",
                "max_tokens": 50,
                "system": "You are a pirate.\n\nAnswer briefly.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "Hi"},
                        {"type": "text", "text": "Who are you?"}
                    ]},
                    // Final assistant turn is a prefill: trailing whitespace removed.
                    {"role": "assistant", "content": "Arr, a pirate."}
                ],
                "temperature": 1.0,
                "stop_sequences": ["\n\nHuman:"],
                "stream": true,
                "metadata": {"user_id": "user-42"}
            })
        );
    }

    #[test]
    fn whitespace_only_prefill_is_dropped_or_rejected() {
        let req =
            |msgs: Value| -> ChatRequest { serde_json::from_value(json!({"model": "m", "messages": msgs})).unwrap() };
        // Trailing whitespace-only blocks of a final assistant turn are dropped, not sent empty.
        let v = to_request(
            &req(json!([{"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": " "}]}])),
            "c",
            10,
        )
        .unwrap();
        assert_eq!(v["messages"][1]["content"], json!("a"));
        // Nothing left to send: a clear error naming the field, not an empty request.
        let e = to_request(&req(json!([{"role": "assistant", "content": "  "}])), "c", 10).unwrap_err();
        assert_eq!(e.field(), Some("messages"));
    }

    #[test]
    fn whitespace_only_text_blocks_are_not_sent() {
        // Anthropic answers 400 "text content blocks must contain non-whitespace text" for a
        // whitespace-only text block anywhere in `messages`, not only in a final prefill.
        let got = translate(json!({"model": "m", "messages": [
            {"role": "user", "content": "What's the weather?"},
            {"role": "assistant", "content": "\n\n", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
            {"role": "user", "content": [{"type": "text", "text": " "}, {"type": "text", "text": "thanks"}]}
        ]}))
        .unwrap();
        let texts: Vec<String> = got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| match &m["content"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(bs) => bs
                    .iter()
                    .filter_map(|b| get_str(b, "text").map(str::to_owned))
                    .collect(),
                _ => vec![],
            })
            .collect();
        assert!(texts.iter().all(|t| !t.trim().is_empty()), "{texts:?}");
    }

    #[test]
    fn system_with_cache_control_stays_in_block_form() {
        let got = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": [
                    {"type": "text", "text": "Long shared instructions", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": ""}
                ]},
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}
            ]
        }))
        .unwrap();
        assert_eq!(
            got["system"],
            json!([
                {"type": "text", "text": "Long shared instructions", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}
            ])
        );
        let err = translate(json!({"model": "m", "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "user", "content": "x"}]}))
        .unwrap_err();
        assert_eq!(err.field(), Some("messages[0].content[0]"));
    }

    #[test]
    fn default_max_tokens_and_temperature_floor() {
        let got = to_request(
            &req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": -0.5})),
            "u",
            333,
        )
        .unwrap();
        assert_eq!(got["max_tokens"], 333);
        assert_eq!(got["temperature"], 0.0);
        assert!(got.get("stream").is_none());
        assert!(got.get("system").is_none());
        let only_top_p = |p: f64| {
            translate(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": p})).unwrap()
        };
        assert_eq!(only_top_p(0.8)["top_p"], 0.8);
        assert!(only_top_p(1.0).get("top_p").is_none());
        assert!(got.get("top_p").is_none());
    }

    #[test]
    fn images_base64_and_url() {
        let got = translate(json!({
            "model": "claude",
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg", "detail": "high"}},
                {"type": "text", "text": "What is in these images?", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": ""}
            ]}]
        }))
        .unwrap();
        assert_eq!(
            got["messages"],
            json!([{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}},
                {"type": "text", "text": "What is in these images?", "cache_control": {"type": "ephemeral"}}
            ]}])
        );
    }

    #[test]
    fn pdf_file_part_becomes_document() {
        let got = translate(json!({
            "model": "claude",
            "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                {"type": "text", "text": "Summarise"}
            ]}]
        }))
        .unwrap();
        assert_eq!(
            got["messages"][0]["content"][0],
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}})
        );
    }

    #[test]
    fn tools_and_tool_round_trip_conversation() {
        // The documented get_weather tool and a full call/result exchange.
        let got = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco and Paris?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_01A", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\": \"San Francisco, CA\"}"}},
                    {"id": "toolu_01B", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
                {"role": "tool", "tool_call_id": "toolu_01B", "content": [{"type": "text", "text": "20 degrees"}]},
                {"role": "user", "content": "Thanks! Which is warmer?"}
            ],
            "tools": [{
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
                        "required": ["location"]
                    }
                }
            }, {"type": "function", "function": {"name": "no_params"}}],
            "tool_choice": "auto"
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [
                    {"role": "user", "content": "What's the weather like in San Francisco and Paris?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "San Francisco, CA"}},
                        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"location": "Paris"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                        {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "20 degrees"}]},
                        {"type": "text", "text": "Thanks! Which is warmer?"}
                    ]}
                ],
                "tools": [{
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "input_schema": {
                        "type": "object",
                        "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
                        "required": ["location"]
                    }
                }, {"name": "no_params", "input_schema": {"type": "object", "properties": {}}}],
                "tool_choice": {"type": "auto"}
            })
        );
    }

    #[test]
    fn tool_results_go_first_in_a_user_turn() {
        let got = translate(json!({
            "model": "claude",
            "messages": [
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
                {"role": "user", "content": "context first"},
                {"role": "tool", "tool_call_id": "t1", "content": ""}
            ]
        }))
        .unwrap();
        assert_eq!(
            got["messages"],
            json!([
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1"},
                    {"type": "text", "text": "context first"}
                ]}
            ])
        );
    }

    #[test]
    fn tool_choice_variants() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let cases = [
            (json!("auto"), Value::Null, json!({"type": "auto"})),
            (json!("none"), Value::Null, json!({"type": "none"})),
            (json!("required"), Value::Null, json!({"type": "any"})),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                Value::Null,
                json!({"type": "tool", "name": "f"}),
            ),
            (
                json!("required"),
                json!(false),
                json!({"type": "any", "disable_parallel_tool_use": true}),
            ),
            (
                Value::Null,
                json!(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
        ];
        for (choice, parallel, expected) in cases {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools});
            if !choice.is_null() {
                body["tool_choice"] = choice.clone();
            }
            if !parallel.is_null() {
                body["parallel_tool_calls"] = parallel.clone();
            }
            let got = translate(body).unwrap();
            assert_eq!(got["tool_choice"], expected, "{choice} {parallel}");
        }
        let none =
            translate(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools})).unwrap();
        assert!(none.get("tool_choice").is_none());
    }

    fn err_field(v: Value) -> String {
        let e = translate(v).unwrap_err();
        assert!(e.is_client_error(), "{e}");
        e.field().unwrap().to_owned()
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let user = json!([{"role": "user", "content": "x"}]);
        assert_eq!(err_field(json!({"model": "m", "messages": user, "n": 2})), "n");
        assert_eq!(
            err_field(json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}})),
            "response_format"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": user, "logprobs": true})),
            "logprobs"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": user, "max_tokens": 0})),
            "max_tokens"
        );
        assert_eq!(err_field(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "system", "content": "only system"}]})),
            "messages"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
            "messages[0].tool_call_id"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]})),
            "messages[0].tool_calls[0].function.arguments"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]})),
            "messages[0].tool_calls[0].function.arguments"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]})),
            "messages[0].content[1].image_url.url"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]})),
            "messages[0].content[0].image_url.url"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]})),
            "messages[0].content[0]"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": user, "tools": [{"type": "custom", "custom": {"name": "x"}}]})),
            "tools[0].type"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": user, "tool_choice": "required"})),
            "tool_choice"
        );
        assert_eq!(
            err_field(json!({"model": "m", "messages": user,
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"})),
            "tool_choice"
        );
    }

    // ---- responses ------------------------------------------------------------------------

    #[test]
    fn documented_text_response() {
        let body = br#"{
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "Hi! My name is Claude."}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 2095, "output_tokens": 503}
        }"#;
        let got = from_response_at(body, "claude", 1_700_000_000).unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            json!({
                "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "claude",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi! My name is Claude."},
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}
            })
        );
        assert!(from_response(body, "claude").unwrap().created > 1_600_000_000);
    }

    #[test]
    fn documented_tool_use_response() {
        let body = br#"{
            "id": "msg_01Aq9w938a90dw8q",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "stop_reason": "tool_use",
            "content": [
                {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"location": "San Francisco, CA", "unit": "celsius"}}
            ],
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100,
                      "cache_read_input_tokens": 1000, "output_tokens": 40}
        }"#;
        let got = from_response_at(body, "claude", 5).unwrap();
        let msg = &got.choices[0].message;
        assert_eq!(msg.text(), "I'll check the current weather in San Francisco for you.");
        assert_eq!(got.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        let calls = msg.tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"location": "San Francisco, CA", "unit": "celsius"}));
        assert_eq!(got.usage, Some(Usage::new(1110, 40).with_cached(1000)));
    }

    #[test]
    fn tool_only_response_has_null_content() {
        let body = br#"{"id":"m","type":"message","role":"assistant","content":[
            {"type":"thinking","thinking":"hmm","signature":"s"},
            {"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use",
            "usage":{"input_tokens":1,"output_tokens":2}}"#;
        let got = from_response_at(body, "c", 0).unwrap();
        let v = serde_json::to_value(&got.choices[0].message).unwrap();
        assert_eq!(v["content"], Value::Null);
        assert_eq!(v["tool_calls"][0]["function"]["arguments"], "{}");
    }

    #[test]
    fn every_stop_reason() {
        for (anthropic, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("pause_turn", "stop"),
            ("refusal", "content_filter"),
            ("model_context_window_exceeded", "length"),
        ] {
            let body = json!({"id": "m", "type": "message", "content": [{"type": "text", "text": "x"}],
                              "stop_reason": anthropic, "usage": {"input_tokens": 1, "output_tokens": 1}});
            let got = from_response_at(body.to_string().as_bytes(), "c", 0).unwrap();
            assert_eq!(got.choices[0].finish_reason.as_deref(), Some(openai), "{anthropic}");
        }
        let body = br#"{"id":"m","type":"message","content":[],"stop_reason":null}"#;
        let got = from_response_at(body, "c", 0).unwrap();
        assert_eq!(got.choices[0].finish_reason, None);
        assert_eq!(got.usage, None);
    }

    #[test]
    fn error_and_garbage_bodies() {
        let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            from_response(body, "c").unwrap_err(),
            TranslateError::Upstream {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );
        assert!(matches!(from_response(b"<html>", "c"), Err(TranslateError::Decode(_))));
        assert!(matches!(
            from_response(b"{\"id\":1}", "c"),
            Err(TranslateError::Decode(_))
        ));
        assert!(matches!(from_response(b"[]", "c"), Err(TranslateError::Decode(_))));
    }

    #[test]
    fn request_and_response_round_trip() {
        // OpenAI assistant message -> Anthropic blocks -> (as a response) -> the same OpenAI message.
        let original = json!({"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"rust\",\"n\":3}"}}]});
        let wire = translate(json!({"model": "m", "messages": [{"role": "user", "content": "go"}, original]})).unwrap();
        let response = json!({"id": "msg_1", "type": "message", "role": "assistant",
            "content": wire["messages"][1]["content"], "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4}});
        let back = from_response_at(response.to_string().as_bytes(), "m", 0).unwrap();
        let msg = &back.choices[0].message;
        assert_eq!(msg.text(), "Calling.");
        let call = &msg.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["name"], "lookup");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"q": "rust", "n": 3}));
    }

    // ---- streaming ------------------------------------------------------------------------

    const BASIC_STREAM: &str = "event: message_start\n\
data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-opus-4-6\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}\n\
\n\
event: content_block_start\n\
data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"!\"}}\n\
\n\
event: content_block_stop\n\
data: {\"type\": \"content_block_stop\", \"index\": 0}\n\
\n\
event: message_delta\n\
data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}\n\
\n\
event: message_stop\n\
data: {\"type\": \"message_stop\"}\n\
\n";

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "claude",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    }

    #[test]
    fn documented_basic_stream_gives_exact_chunks() {
        let (chunks, result, t) = run_stream(BASIC_STREAM);
        assert_eq!(result, Ok(true));
        assert_eq!(
            chunks,
            json!([
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hello"}), Value::Null),
                chunk(json!({"content": "!"}), Value::Null),
                chunk(json!({}), json!("stop")),
                json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk",
                       "created": 1_700_000_000, "model": "claude", "choices": [],
                       "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}}),
            ])
        );
        assert_eq!(t.usage(), Some(Usage::new(25, 15)));
        assert_eq!(t.id(), "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        assert!(t.is_finished());
    }

    #[test]
    fn stream_split_at_every_byte_gives_the_same_chunks() {
        let (expected, _, _) = run_stream(BASIC_STREAM);
        let bytes = BASIC_STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let mut d = SseDecoder::default();
            let mut t = StreamTranslator::new(1_700_000_000, "claude");
            let mut evs = Vec::new();
            let mut chunks = Vec::new();
            d.feed(&bytes[..cut], &mut evs).unwrap();
            d.feed(&bytes[cut..], &mut evs).unwrap();
            d.finish(&mut evs);
            let mut done = false;
            for ev in &evs {
                done = t.on_event(ev, &mut chunks).unwrap();
            }
            assert!(done, "cut at {cut}");
            assert_eq!(serde_json::to_value(&chunks).unwrap(), expected, "cut at {cut}");
        }
    }

    const TOOL_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-6\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_read_input_tokens\":8,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let me check.\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"get_time\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn documented_tool_stream_gives_openai_tool_call_deltas() {
        let (chunks, result, t) = run_stream(TOOL_STREAM);
        assert_eq!(result, Ok(true));
        let c = |delta: Value, finish: Value| {
            json!({"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk",
                   "created": 1_700_000_000, "model": "claude",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        assert_eq!(
            chunks,
            json!([
                c(json!({"role": "assistant", "content": ""}), Value::Null),
                c(json!({"content": "Okay, let me check."}), Value::Null),
                c(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}),
                    Value::Null
                ),
                c(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
                    Value::Null
                ),
                c(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]}),
                    Value::Null
                ),
                c(
                    json!({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function",
                                         "function": {"name": "get_time", "arguments": ""}}]}),
                    Value::Null
                ),
                c(
                    json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                    Value::Null
                ),
                c(json!({}), json!("tool_calls")),
                json!({"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "object": "chat.completion.chunk",
                       "created": 1_700_000_000, "model": "claude", "choices": [],
                       "usage": {"prompt_tokens": 480, "completion_tokens": 89, "total_tokens": 569,
                                 "prompt_tokens_details": {"cached_tokens": 8}}}),
            ])
        );
        assert_eq!(t.usage(), Some(Usage::new(480, 89).with_cached(8)));
    }

    #[test]
    fn stream_and_response_agree() {
        // The same message, streamed and whole, gives the same completion.
        let mut t = StreamTranslator::new(9, "claude");
        let mut chunks = Vec::new();
        for ev in events(BASIC_STREAM) {
            t.on_event(&ev, &mut chunks).unwrap();
        }
        let mut acc = ChunkAccumulator::default();
        chunks.iter().for_each(|c| acc.push(c));
        let streamed = acc.into_completion();
        let whole = from_response_at(
            br#"{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant",
                "content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":25,"output_tokens":15}}"#,
            "claude",
            9,
        )
        .unwrap();
        assert_eq!(streamed.choices, whole.choices);
        assert_eq!(streamed.id, whole.id);
        assert_eq!(t.usage(), whole.usage);
    }

    #[test]
    fn error_event_mid_stream() {
        let text = format!(
            "{}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n",
            &BASIC_STREAM[..BASIC_STREAM.find("event: content_block_stop").unwrap()]
        );
        let (chunks, result, _) = run_stream(&text);
        assert_eq!(
            result,
            Err(TranslateError::Upstream {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into()
            })
        );
        assert_eq!(chunks.as_array().unwrap().len(), 3);
    }

    #[test]
    fn odd_inputs() {
        let mut t = StreamTranslator::new(1, "c");
        let mut out = Vec::new();
        // Unknown events and comments are ignored, blank data too.
        let unknown = SseEvent {
            event: Some("future_event".into()),
            data: "{\"type\":\"future_event\"}".into(),
        };
        assert_eq!(t.on_event(&unknown, &mut out), Ok(false));
        assert_eq!(
            t.on_event(
                &SseEvent {
                    event: None,
                    data: " ".into()
                },
                &mut out
            ),
            Ok(false)
        );
        assert!(out.is_empty());
        // Type taken from the event name when the data lacks it.
        let start = SseEvent {
            event: Some("message_start".into()),
            data: "{\"message\":{\"id\":\"m1\",\"usage\":{\"input_tokens\":3}}}".into(),
        };
        assert_eq!(t.on_event(&start, &mut out), Ok(false));
        // A delta for a block that was never started as a tool is dropped, not a panic.
        let stray = SseEvent { event: None, data: "{\"type\":\"content_block_delta\",\"index\":7,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}".into() };
        assert_eq!(t.on_event(&stray, &mut out), Ok(false));
        // Thinking deltas produce nothing.
        let thinking = SseEvent { event: None, data: "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hm\"}}".into() };
        assert_eq!(t.on_event(&thinking, &mut out), Ok(false));
        assert_eq!(out.len(), 1);
        assert_eq!(t.usage(), Some(Usage::new(3, 0)));
        // Garbage is a decode error.
        let bad = SseEvent {
            event: Some("content_block_delta".into()),
            data: "{not json".into(),
        };
        assert!(matches!(t.on_event(&bad, &mut out), Err(TranslateError::Decode(_))));
        // After message_stop, everything is ignored.
        let stop = SseEvent {
            event: None,
            data: "{\"type\":\"message_stop\"}".into(),
        };
        assert_eq!(t.on_event(&stop, &mut out), Ok(true));
        assert_eq!(t.on_event(&bad, &mut out), Ok(true));
    }

    #[test]
    fn content_before_message_start_still_gets_a_role_chunk() {
        let mut t = StreamTranslator::new(1, "c");
        let mut out = Vec::new();
        let ev = SseEvent {
            event: None,
            data: "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}"
                .into(),
        };
        t.on_event(&ev, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].choices[0].delta.role.as_deref(), Some("assistant"));
        assert_eq!(out[1].choices[0].delta.content.as_deref(), Some("x"));
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn message_delta_cache_counts_are_cumulative_too() {
        // message_delta's usage fields are all cumulative and each may be null: a newer
        // cache_read_input_tokens replaces the one from message_start, a null one keeps it.
        let (_, _, t) = run_stream(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":9,\"cache_read_input_tokens\":300,\"output_tokens\":7}}\n\n",
        );
        assert_eq!(t.usage(), Some(Usage::new(309, 7).with_cached(300)));
        let (_, _, t) = run_stream(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":null,\"cache_read_input_tokens\":null,\"output_tokens\":7}}\n\n",
        );
        assert_eq!(t.usage(), Some(Usage::new(105, 7).with_cached(100)));
    }

    #[test]
    fn message_delta_with_full_usage_updates_prompt_tokens() {
        let (_, _, t) = run_stream(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":10,\"output_tokens\":7}}\n\n",
        );
        assert_eq!(t.usage(), Some(Usage::new(15, 7)));
    }

    // ---- stop strings Anthropic refuses ---------------------------------------------------

    /// A stream whose text arrives as `deltas`, then a tool call if the stop reason is `tool_use`.
    fn text_stream(deltas: &[&str], stop_reason: &str) -> String {
        let mut s = String::from(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        );
        for d in deltas {
            let ev = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}});
            s.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
        }
        if stop_reason == "tool_use" {
            let start = json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}}});
            let delta = json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"a\":1}"}});
            s.push_str(&format!(
                "event: content_block_start\ndata: {start}\n\nevent: content_block_delta\ndata: {delta}\n\n"
            ));
        }
        let end =
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 40}});
        s.push_str(&format!(
            "event: message_delta\ndata: {end}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        ));
        s
    }

    fn run_with_stops(text: &str, stops: &[&str]) -> (String, Vec<Option<String>>, usize, StreamTranslator) {
        let mut t =
            StreamTranslator::new(1, "claude").with_local_stops(stops.iter().map(|s| (*s).to_owned()).collect());
        let mut chunks = Vec::new();
        for ev in events(text) {
            t.on_event(&ev, &mut chunks).unwrap();
        }
        let content = chunks.iter().flat_map(|c| c.delta_text()).collect();
        let finishes = chunks
            .iter()
            .flat_map(|c| c.choices.iter().map(|ch| ch.finish_reason.clone()))
            .filter(Option::is_some)
            .collect();
        let calls = chunks
            .iter()
            .flat_map(|c| c.choices.iter())
            .filter(|ch| ch.delta.tool_calls.is_some())
            .count();
        (content, finishes, calls, t)
    }

    #[test]
    fn whitespace_only_stops_are_not_sent_but_kept_for_the_gateway() {
        let r = req(
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}],
                           "stop": ["\n", "END", " \t", ""]}),
        );
        let body = to_request(&r, "claude-sonnet-4-5", 1024).unwrap();
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(local_stops(&r), vec!["\n".to_owned(), " \t".to_owned()]);
        let only_blank = req(json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "stop": "\n"}));
        let body = to_request(&only_blank, "claude-sonnet-4-5", 1024).unwrap();
        assert!(body.get("stop_sequences").is_none(), "{body}");
    }

    #[test]
    fn whole_response_is_cut_at_a_local_stop() {
        let body = br#"{"id":"m","type":"message","role":"assistant",
            "content":[{"type":"text","text":"first line\nsecond line"},
                       {"type":"tool_use","id":"t1","name":"f","input":{}}],
            "stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":40}}"#;
        let cut = from_response_cut(body, "claude", vec!["\n".into()]).unwrap();
        let choice = &cut.choices[0];
        assert_eq!(choice.message.content, Some(Content::Text("first line".into())));
        assert_eq!(choice.message.tool_calls, None);
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        // The upstream billed all 40 tokens: the ledger must see them.
        assert_eq!(cut.usage, Some(Usage::new(5, 40)));
        // No match: the answer is untouched.
        let kept = from_response_cut(body, "claude", vec!["\n\n".into()]).unwrap();
        assert_eq!(kept.choices, from_response(body, "claude").unwrap().choices);
    }

    #[test]
    fn stream_is_cut_at_a_local_stop_split_across_deltas() {
        let (text, finishes, calls, t) =
            run_with_stops(&text_stream(&["one\n", "\ntwo", " three"], "max_tokens"), &["\n\n"]);
        assert_eq!(text, "one");
        assert_eq!(finishes, vec![Some("stop".to_owned())]);
        assert_eq!(calls, 0);
        assert_eq!(t.usage(), Some(Usage::new(5, 40)));
    }

    #[test]
    fn held_back_text_is_released_when_no_stop_follows() {
        // "one\n" may begin "\n\n": held, then released by the next delta or by the end.
        let (text, finishes, _, _) = run_with_stops(&text_stream(&["one\n", "two\n"], "max_tokens"), &["\n\n"]);
        assert_eq!(text, "one\ntwo\n");
        assert_eq!(finishes, vec![Some("length".to_owned())]);
    }

    #[test]
    fn tool_call_after_a_local_stop_is_dropped_and_before_one_is_kept() {
        let (text, finishes, calls, _) = run_with_stops(&text_stream(&["calling\nnow"], "tool_use"), &["\n"]);
        assert_eq!((text.as_str(), calls), ("calling", 0));
        assert_eq!(finishes, vec![Some("stop".to_owned())]);
        let (text, finishes, calls, _) = run_with_stops(&text_stream(&["calling now"], "tool_use"), &["\n"]);
        assert_eq!((text.as_str(), calls), ("calling now", 2));
        assert_eq!(finishes, vec![Some("tool_calls".to_owned())]);
    }
}
