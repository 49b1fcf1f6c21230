//! Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, TGI's Messages API, Groq, Together.
//! The canonical form is this wire format, so translation is only the model name and stream options;
//! unknown request fields pass through untouched.

use futures_util::StreamExt;
use optiroute_protocol::openai::{ChatChunk, ChatCompletion, ChatRequest, StreamOptions, to_json_sized};

use super::{CallTarget, ChunkStream, Upstream};
use crate::error::{UpstreamError, UpstreamKind};

pub struct OpenAiCompat {
    up: Upstream,
    stream_usage: bool,
}

impl OpenAiCompat {
    pub fn new(up: Upstream, stream_usage: bool) -> Self {
        OpenAiCompat { up, stream_usage }
    }

    fn body(&self, req: &ChatRequest, target: &CallTarget<'_>, stream: bool) -> Result<Vec<u8>, UpstreamError> {
        let mut out = req.clone();
        out.model = target.model.to_owned();
        if stream {
            out.stream = Some(true);
            if self.stream_usage {
                let opts = out.stream_options.get_or_insert_with(StreamOptions::default);
                opts.include_usage = Some(true);
            }
        } else {
            out.stream = None;
            out.stream_options = None;
        }
        let text = req.messages.iter().map(|m| m.text_len()).sum();
        to_json_sized(&out, text, 256)
            .map_err(|e| UpstreamError::new(UpstreamKind::Protocol, &self.up.name, e.to_string()))
    }

    pub async fn chat(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChatCompletion, UpstreamError> {
        let body = self
            .up
            .call("/chat/completions", self.body(req, target, false)?)
            .await?;
        serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::new(
                UpstreamKind::Protocol,
                &self.up.name,
                format!("invalid completion JSON: {e}"),
            )
        })
    }

    pub async fn chat_stream(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChunkStream, UpstreamError> {
        let events = self
            .up
            .call_stream("/chat/completions", self.body(req, target, true)?)
            .await?;
        let name = self.up.name.clone();
        // State: whether [DONE] or a finish_reason was seen, so a stream that just stops is an error.
        let stream = futures_util::stream::unfold(
            (Box::pin(events), false, false, name),
            |(mut events, mut finished, done, name)| async move {
                if done {
                    return None;
                }
                loop {
                    match events.next().await {
                        None => {
                            if finished {
                                return None;
                            }
                            let e = UpstreamError::new(
                                UpstreamKind::Interrupted,
                                &name,
                                "stream ended before it was complete",
                            );
                            return Some((Err(e), (events, finished, true, name)));
                        }
                        Some(Err(e)) => return Some((Err(e), (events, finished, true, name))),
                        Some(Ok(ev)) => {
                            let data = ev.data.trim();
                            if data == "[DONE]" {
                                return None;
                            }
                            if data.is_empty() {
                                continue;
                            }
                            match serde_json::from_str::<ChatChunk>(data) {
                                Ok(chunk) => {
                                    if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
                                        finished = true;
                                    }
                                    return Some((Ok(chunk), (events, finished, false, name)));
                                }
                                Err(_) => {
                                    let msg = optiroute_protocol::openai::upstream_error_message(data.as_bytes())
                                        .unwrap_or_else(|| "invalid chunk in stream".to_owned());
                                    let e = UpstreamError::new(UpstreamKind::Protocol, &name, msg);
                                    return Some((Err(e), (events, finished, true, name)));
                                }
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}
