//! OpenAI chat-completions wire types. This is also OptiRoute's canonical form: every provider adapter
//! translates to and from these types, and nothing in the middle of the gateway knows another format.
//!
//! Fields the gateway reads are typed; everything else is kept in `extra` so that unknown request
//! fields reach OpenAI-compatible upstreams unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::open_object::open_object;

/// A JSON object of fields OptiRoute does not interpret but must pass through.
pub type Extra = Map<String, Value>;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The output cap the client asked for, whichever field it used.
    pub fn output_cap(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the request asks for JSON output (`json_object` or `json_schema`).
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            .is_some_and(|t| t != "text")
    }

    pub fn has_tools(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| !t.is_empty())
    }

    pub fn has_images(&self) -> bool {
        self.messages.iter().any(Message::has_image)
    }

    /// Text of the last user message (parts joined), or "" when there is none.
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    pub fn new(role: &str, text: impl Into<String>) -> Self {
        Message {
            role: role.to_owned(),
            content: Some(Content::Text(text.into())),
            ..Default::default()
        }
    }

    /// Text content, with the text parts of multi-part content joined by newlines.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    if let Some(t) = p.as_text() {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                }
                out
            }
        }
    }

    /// Length in bytes of the text content, without allocating.
    pub fn text_len(&self) -> usize {
        match &self.content {
            None => 0,
            Some(Content::Text(t)) => t.len(),
            Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.as_text()).map(str::len).sum(),
        }
    }

    pub fn has_image(&self) -> bool {
        match &self.content {
            Some(Content::Parts(parts)) => parts.iter().any(|p| p.kind() == "image_url"),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of multi-part content: `{"type":"text","text":..}`, `{"type":"image_url","image_url":{..}}`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentPart(pub Map<String, Value>);

impl ContentPart {
    pub fn text(text: &str) -> Self {
        let mut m = Map::new();
        m.insert("type".into(), Value::String("text".into()));
        m.insert("text".into(), Value::String(text.into()));
        ContentPart(m)
    }

    pub fn kind(&self) -> &str {
        self.0.get("type").and_then(Value::as_str).unwrap_or("")
    }

    pub fn as_text(&self) -> Option<&str> {
        if self.kind() == "text" {
            self.0.get("text").and_then(Value::as_str)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (priced lower by some providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
        }
    }

    /// Records how many prompt tokens came from the provider's prompt cache (0 leaves usage unchanged).
    pub fn with_cached(mut self, cached_tokens: u64) -> Self {
        if cached_tokens > 0 {
            self.prompt_tokens_details = Some(PromptTokensDetails { cached_tokens });
        }
        self
    }

    pub fn cached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatChunk {
    pub fn new(id: &str, created: u64, model: &str) -> Self {
        ChatChunk {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices: Vec::new(),
            usage: None,
            extra: Extra::new(),
        }
    }

    /// A chunk carrying one content delta for choice 0.
    pub fn content(id: &str, created: u64, model: &str, text: &str) -> Self {
        let mut c = Self::new(id, created, model);
        c.choices.push(ChunkChoice {
            index: 0,
            delta: Delta {
                content: Some(text.to_owned()),
                ..Default::default()
            },
            finish_reason: None,
            extra: Extra::new(),
        });
        c
    }

    /// Concatenated content of every delta in this chunk.
    pub fn delta_text(&self) -> impl Iterator<Item = &str> {
        self.choices.iter().filter_map(|c| c.delta.content.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Extra,
}

// Single-pass deserializers for the open types above (see `open_object`): known fields typed, the rest
// kept in `extra`.
open_object!(ChatRequest, "a chat completion request object",
required { model: String, messages: Vec<Message> },
optional {
    stream: Option<bool> = None,
    stream_options: Option<StreamOptions> = None,
    max_tokens: Option<u32> = None,
    max_completion_tokens: Option<u32> = None,
    temperature: Option<f64> = None,
    top_p: Option<f64> = None,
    n: Option<u32> = None,
    stop: Option<Stop> = None,
    seed: Option<i64> = None,
    tools: Option<Vec<Value>> = None,
    tool_choice: Option<Value> = None,
    response_format: Option<Value> = None,
});
open_object!(StreamOptions, "a stream_options object",
    required {},
    optional { include_usage: Option<bool> = None });
open_object!(Message, "a message object",
required { role: String },
optional {
    content: Option<Content> = None,
    name: Option<String> = None,
    tool_calls: Option<Vec<Value>> = None,
    tool_call_id: Option<String> = None,
});
open_object!(ChatCompletion, "a chat completion object",
required { id: String, model: String, choices: Vec<Choice> },
optional {
    object: String = completion_object(),
    created: u64 = 0,
    usage: Option<Usage> = None,
});
open_object!(Choice, "a choice object",
    required { message: Message },
    optional { index: u32 = 0, finish_reason: Option<String> = None });
open_object!(ChatChunk, "a chat completion chunk object",
required { id: String, model: String, choices: Vec<ChunkChoice> },
optional {
    object: String = chunk_object(),
    created: u64 = 0,
    usage: Option<Usage> = None,
});
open_object!(ChunkChoice, "a chunk choice object",
    required {},
    optional { index: u32 = 0, delta: Delta = Delta::default(), finish_reason: Option<String> = None });
open_object!(Delta, "a delta object",
required {},
optional {
    role: Option<String> = None,
    content: Option<String> = None,
    tool_calls: Option<Vec<Value>> = None,
});

/// Message content: a string, or an array of parts. Hand-written rather than `#[serde(untagged)]`, which
/// would buffer the value and copy the text once more on every message.
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> serde::de::Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Content, A::Error> {
                Vec::<ContentPart>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Content::Parts)
            }
        }
        d.deserialize_any(ContentVisitor)
    }
}

/// OpenAI-shaped error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// Serializes `value` into a buffer sized for `text_len` bytes of message text (plus an eighth for
/// escapes) and `structure` bytes of everything else, so it is not regrown as it fills (`to_vec`
/// starts at 128 bytes).
pub fn to_json_sized<T: Serialize + ?Sized>(
    value: &T,
    text_len: usize,
    structure: usize,
) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(structure + text_len + text_len / 8);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Best-effort extraction of a human message from any provider's error body.
pub fn upstream_error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let candidates = [
        v.pointer("/error/message"),
        v.pointer("/error"),
        v.pointer("/message"),
        v.pointer("/detail"),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|m| m.as_str().map(str::to_owned))
}

/// Builds a complete response from a sequence of chunks (used to cache streams and to test them).
#[derive(Debug, Default)]
pub struct ChunkAccumulator {
    id: String,
    model: String,
    created: u64,
    role: Option<String>,
    text: String,
    tool_calls: Vec<Value>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    chunks: usize,
}

impl ChunkAccumulator {
    pub fn push(&mut self, chunk: &ChatChunk) {
        if self.chunks == 0 {
            self.id.clone_from(&chunk.id);
            self.model.clone_from(&chunk.model);
            self.created = chunk.created;
        }
        self.chunks += 1;
        for c in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(r) = &c.delta.role {
                self.role = Some(r.clone());
            }
            if let Some(t) = &c.delta.content {
                self.text.push_str(t);
            }
            if let Some(calls) = &c.delta.tool_calls {
                self.tool_calls.extend(calls.iter().cloned());
            }
            if c.finish_reason.is_some() {
                self.finish_reason.clone_from(&c.finish_reason);
            }
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    pub fn has_tool_calls(&self) -> bool {
        !self.tool_calls.is_empty()
    }

    pub fn into_completion(self) -> ChatCompletion {
        let mut message = Message::new(self.role.as_deref().unwrap_or("assistant"), self.text);
        if !self.tool_calls.is_empty() {
            message.tool_calls = Some(self.tool_calls);
        }
        ChatCompletion {
            id: self.id,
            object: completion_object(),
            created: self.created,
            model: self.model,
            choices: vec![Choice {
                index: 0,
                message,
                finish_reason: self.finish_reason,
                extra: Extra::new(),
            }],
            usage: self.usage,
            extra: Extra::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_fields_round_trip() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi","weird":1}],"logit_bias":{"5":1},"user":"u1","stream":true}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        assert!(req.is_stream());
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["logit_bias"]["5"], 1);
        assert_eq!(back["user"], "u1");
        assert_eq!(back["messages"][0]["weird"], 1);
    }

    #[test]
    fn open_objects_keep_serde_semantics() {
        // Required fields, duplicates and wrong types are errors named like the derive names them.
        let err = |body: &str| serde_json::from_str::<ChatRequest>(body).unwrap_err().to_string();
        assert!(err(r#"{"messages":[]}"#).contains("missing field `model`"));
        assert!(err(r#"{"model":"a","model":"b","messages":[]}"#).contains("duplicate field `model`"));
        assert!(err(r#"{"model":"m","messages":[{"content":"x"}]}"#).contains("missing field `role`"));
        assert!(
            err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#)
                .contains("expected a string or an array of content parts")
        );
        assert!(err(r#"{"model":"m","messages":[],"max_tokens":-1}"#).contains("invalid value"));
        assert!(err(r#"[1]"#).contains("expected a chat completion request object"));
        // null means absent for optional fields; escaped keys and text are decoded.
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","stream":null,"messages":[{"role":"user","content":"a\"b\u00e9","x\u0079":[1,{"k":null}]}],"z":1,"a":2}"#,
        )
        .unwrap();
        assert_eq!(req.stream, None);
        assert_eq!(req.messages[0].text(), "a\"bé");
        assert_eq!(req.messages[0].extra["xy"], serde_json::json!([1, {"k": null}]));
        assert_eq!((&req.extra["z"], &req.extra["a"]), (&Value::from(1), &Value::from(2)));
        // A message without content, and a chunk with defaults filled in.
        let req: ChatRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"t"}]}]}"#)
                .unwrap();
        assert_eq!(req.messages[0].content, None);
        let chunk: ChatChunk = serde_json::from_str(r#"{"id":"c","model":"m","choices":[{"delta":{}}]}"#).unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!(chunk.choices[0].index, 0);
        assert_eq!(chunk.choices[0].delta, Delta::default());
        let done: ChatCompletion = serde_json::from_str(
            r#"{"id":"c","model":"m","choices":[{"message":{"role":"assistant","content":"hi"},"logprobs":null}],"system_fingerprint":"fp"}"#,
        )
        .unwrap();
        assert_eq!(done.object, "chat.completion");
        assert_eq!(done.choices[0].extra["logprobs"], Value::Null);
        assert_eq!(done.extra["system_fingerprint"], "fp");
    }

    #[test]
    fn open_objects_round_trip_through_json() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"}],"name":"n"},{"role":"tool","content":"r","tool_call_id":"c1"}],"stream":true,"stream_options":{"include_usage":true,"other":1},"max_tokens":5,"max_completion_tokens":6,"temperature":0.5,"top_p":0.9,"n":1,"stop":["x"],"seed":-3,"tools":[{"type":"function"}],"tool_choice":"auto","response_format":{"type":"json_object"},"user":"u"}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        let again: ChatRequest = serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(req, again);
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::from_str::<Value>(body).unwrap()
        );
    }

    #[test]
    fn multipart_text_and_images() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"text","text":"b"}]}]}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.last_user_text(), "a\nb");
        assert_eq!(req.messages[0].text_len(), 2);
        assert!(req.has_images());
    }

    #[test]
    fn accumulator_rebuilds_completion() {
        let mut acc = ChunkAccumulator::default();
        let mut first = ChatChunk::content("id1", 7, "m", "Hel");
        first.choices[0].delta.role = Some("assistant".into());
        acc.push(&first);
        acc.push(&ChatChunk::content("id1", 7, "m", "lo"));
        let mut last = ChatChunk::new("id1", 7, "m");
        last.usage = Some(Usage::new(3, 2));
        acc.push(&last);
        let c = acc.into_completion();
        assert_eq!(c.choices[0].message.text(), "Hello");
        assert_eq!(c.usage.unwrap().total_tokens, 5);
        assert_eq!(c.id, "id1");
    }

    #[test]
    fn error_message_extraction() {
        assert_eq!(
            upstream_error_message(br#"{"error":{"message":"bad"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(upstream_error_message(br#"{"error":"x"}"#).as_deref(), Some("x"));
        assert_eq!(upstream_error_message(b"not json"), None);
    }
}
