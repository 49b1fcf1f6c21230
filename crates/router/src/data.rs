//! Loading evaluation/training rows from JSON Lines.
//!
//! Each line needs a `prompt` (or `messages`: `[{"role", "content"}]`, content a string, `null` or an
//! array of content parts, as in a chat request) and an outcome for both models:
//! `strong_correct`/`weak_correct` (booleans or numbers in [0, 1]) or `strong_score`/`weak_score`
//! (judge scores on a 1-10 scale, divided by 10). Optional: `benchmark`, `max_tokens`, `weak_response`.

use crate::conversation::{Conversation, Message, Role};
use crate::metrics::Outcome;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: String, line: usize, msg: String },
}

/// One prompt with the two models' outcomes.
#[derive(Clone, Debug)]
pub struct Row {
    pub benchmark: String,
    /// The prompt as written on the line (for `router score` output).
    pub prompt: String,
    pub conv: Conversation,
    /// `None` for lines without outcomes (allowed only by [`parse_rows`] with `need_outcome = false`).
    pub outcome: Option<Outcome>,
    pub weak_response: Option<String>,
    /// A grouping label known for training rows only (`subject` or `category`), used to denoise
    /// labels by group smoothing; never an input of the scorer.
    pub group: Option<String>,
}

fn outcome_value(v: &Value, scale: f64) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64().map(|x| x / scale),
        _ => None,
    }
}

fn parse_outcome(obj: &serde_json::Map<String, Value>) -> Option<Outcome> {
    if let (Some(s), Some(w)) = (obj.get("strong_correct"), obj.get("weak_correct")) {
        let scale = |v: &Value| -> f64 { if v.as_f64().is_some_and(|x| x > 1.0) { 10.0 } else { 1.0 } };
        let k = scale(s).max(scale(w));
        return Some(Outcome {
            strong: outcome_value(s, k)?,
            weak: outcome_value(w, k)?,
        });
    }
    if let (Some(s), Some(w)) = (obj.get("strong_score"), obj.get("weak_score")) {
        return Some(Outcome {
            strong: outcome_value(s, 10.0)?,
            weak: outcome_value(w, 10.0)?,
        });
    }
    None
}

/// A message's text, read as the gateway reads a chat request (`optiroute_protocol::openai::Message::text`):
/// a string as is; absent or `null` as empty; an array of content parts as its text parts
/// (`{"type": "text", "text": ...}`) joined by newlines, other parts (images, ...) skipped. Anything
/// else is an error, as the gateway rejects it too.
fn content_text(content: Option<&Value>) -> Result<String, &'static str> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                let p = p.as_object().ok_or("a content part is not an object")?;
                if p.get("type").and_then(Value::as_str) == Some("text")
                    && let Some(t) = p.get("text").and_then(Value::as_str)
                {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(t);
                }
            }
            Ok(out)
        }
        Some(_) => Err("not a string, an array of content parts or null"),
    }
}

/// Parses JSONL text. `name` is used in error messages.
pub fn parse_rows(text: &str, name: &str, need_outcome: bool) -> Result<Vec<Row>, DataError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| DataError::Line {
            path: name.to_string(),
            line: i + 1,
            msg,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| err("not a JSON object".into()))?;
        let mut conv = if let Some(Value::Array(msgs)) = obj.get("messages") {
            let messages = msgs
                .iter()
                .enumerate()
                .map(|(k, m)| {
                    Ok(Message {
                        role: Role::parse(m.get("role").and_then(Value::as_str).unwrap_or("user")),
                        text: content_text(m.get("content"))
                            .map_err(|what| err(format!("messages[{k}].content: {what}")))?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Conversation {
                messages,
                ..Conversation::default()
            }
        } else {
            let p = obj
                .get("prompt")
                .and_then(Value::as_str)
                .ok_or_else(|| err("missing \"prompt\" (string) or \"messages\"".into()))?;
            Conversation::from_prompt(p)
        };
        conv.max_tokens = obj
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map(|m| m.min(u32::MAX as u64) as u32);
        let prompt = obj
            .get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| conv.last_user().to_string());
        let outcome = parse_outcome(obj);
        if need_outcome && outcome.is_none() {
            return Err(err(
                "missing outcomes: need strong_correct/weak_correct or strong_score/weak_score".into(),
            ));
        }
        rows.push(Row {
            benchmark: obj.get("benchmark").and_then(Value::as_str).unwrap_or(name).to_string(),
            prompt,
            conv,
            outcome,
            weak_response: obj.get("weak_response").and_then(Value::as_str).map(str::to_string),
            group: obj
                .get("subject")
                .or_else(|| obj.get("category"))
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    Ok(rows)
}

pub fn load_rows(path: &Path, need_outcome: bool) -> Result<Vec<Row>, DataError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: name.clone(),
        source,
    })?;
    parse_rows(&text, &name, need_outcome)
}

/// The outcomes of rows that have them (callers load with `need_outcome = true`).
pub fn outcomes(rows: &[Row]) -> Vec<Outcome> {
    rows.iter()
        .map(|r| r.outcome.unwrap_or(Outcome { strong: 0.0, weak: 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_booleans_scores_and_messages() {
        let text = r#"{"benchmark":"mmlu","prompt":"Q1","strong_correct":true,"weak_correct":false}
{"prompt":"Q2","strong_score":9.0,"weak_score":6.5}

{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"Q3"}],"max_tokens":50,"strong_correct":1,"weak_correct":0.5}"#;
        let rows = parse_rows(text, "t", true).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].outcome, Some(Outcome { strong: 1.0, weak: 0.0 }));
        assert_eq!(
            rows[1].outcome,
            Some(Outcome {
                strong: 0.9,
                weak: 0.65
            })
        );
        assert_eq!(rows[1].benchmark, "t");
        assert_eq!(rows[2].prompt, "Q3");
        assert_eq!(rows[2].conv.messages.len(), 2);
        assert_eq!(rows[2].conv.max_tokens, Some(50));
        assert_eq!(rows[2].outcome, Some(Outcome { strong: 1.0, weak: 0.5 }));
    }

    #[test]
    fn null_content_is_empty_and_content_parts_are_their_text() {
        let text = r#"{"messages":[{"role":"system","content":null},{"role":"user","content":[{"type":"text","text":"What is 2+2?"},{"type":"image_url","image_url":{"url":"https://x/y.png"}},{"type":"text","text":"Answer briefly."}]}],"strong_correct":true,"weak_correct":true}
{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":[{"type":"text","text":"and now?"}]}]}"#;
        let rows = parse_rows(text, "t", false).unwrap();
        let texts = |r: &Row| r.conv.messages.iter().map(|m| m.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&rows[0]), ["", "What is 2+2?\nAnswer briefly."]);
        assert_eq!(rows[0].prompt, "What is 2+2?\nAnswer briefly.");
        assert_eq!(texts(&rows[1]), ["Hi", "", "and now?"]);
        assert_eq!(rows[1].prompt, "and now?");
        // Content the gateway would reject is an error with its line, not JSON text to score.
        let err = parse_rows(r#"{"messages":[{"role":"user","content":{"a":1}}]}"#, "f", false).unwrap_err();
        assert!(
            err.to_string().contains("f:1") && err.to_string().contains("messages[0]"),
            "{err}"
        );
        let err = parse_rows(r#"{"messages":[{"role":"user","content":["hi"]}]}"#, "f", false).unwrap_err();
        assert!(err.to_string().contains("not an object"), "{err}");
    }

    #[test]
    fn reports_line_numbers() {
        let err = parse_rows("{\"prompt\":\"a\"}\n{\"x\":1}", "f", false).unwrap_err();
        assert!(err.to_string().contains("f:2"), "{err}");
        let err = parse_rows("{\"prompt\":\"a\"}", "f", true).unwrap_err();
        assert!(err.to_string().contains("missing outcomes"), "{err}");
        assert!(
            parse_rows("{\"prompt\":\"a\"}", "f", false).unwrap()[0]
                .outcome
                .is_none()
        );
    }
}
