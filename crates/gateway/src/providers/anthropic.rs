//! Anthropic Messages API. Translation lives in `optiroute_protocol::anthropic`; this file is the HTTP.

use http::header::{HeaderName, HeaderValue};
use optiroute_protocol::anthropic::{self as wire, StreamTranslator};
use optiroute_protocol::openai::{ChatCompletion, ChatRequest};

use super::{CallTarget, ChunkStream, Translate, Upstream, translated, unix_now};
use crate::config::ProviderConfig;
use crate::error::{UpstreamError, UpstreamKind};

const DEFAULT_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    up: Upstream,
}

impl Anthropic {
    pub fn new(mut up: Upstream, cfg: &ProviderConfig) -> Result<Self, String> {
        let version = cfg.anthropic_version.as_deref().unwrap_or(DEFAULT_VERSION);
        let v =
            HeaderValue::from_str(version).map_err(|_| format!("provider `{}`: bad anthropic_version", cfg.name))?;
        up.headers.insert(HeaderName::from_static("anthropic-version"), v);
        Ok(Anthropic { up })
    }

    fn body(&self, req: &ChatRequest, target: &CallTarget<'_>, stream: bool) -> Result<Vec<u8>, UpstreamError> {
        let mut v = wire::to_request(req, target.model, target.default_max_tokens)
            .map_err(|e| UpstreamError::new(UpstreamKind::Status(400), &self.up.name, e.to_string()))?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("stream".into(), serde_json::Value::Bool(stream));
        }
        serde_json::to_vec(&v).map_err(|e| UpstreamError::new(UpstreamKind::Protocol, &self.up.name, e.to_string()))
    }

    pub async fn chat(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChatCompletion, UpstreamError> {
        let body = self.up.call("/v1/messages", self.body(req, target, false)?).await?;
        wire::from_response_cut(&body, target.model, wire::local_stops(req))
            .map_err(|e| UpstreamError::new(UpstreamKind::Protocol, &self.up.name, e.to_string()))
    }

    pub async fn chat_stream(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChunkStream, UpstreamError> {
        let events = self
            .up
            .call_stream("/v1/messages", self.body(req, target, true)?)
            .await?;
        let translator = StreamTranslator::new(unix_now(), target.model).with_local_stops(wire::local_stops(req));
        Ok(translated(events, translator, self.up.name.clone()))
    }
}

impl Translate for StreamTranslator {
    fn on_event(
        &mut self,
        ev: &optiroute_protocol::sse::SseEvent,
        out: &mut Vec<optiroute_protocol::openai::ChatChunk>,
    ) -> Result<bool, String> {
        StreamTranslator::on_event(self, ev, out).map_err(|e| e.to_string())
    }
}
