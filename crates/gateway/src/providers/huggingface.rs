//! Hugging Face Text Generation Inference (and the Inference API's text-generation task), native API:
//! `/generate` and `/generate_stream`. Translation lives in `optiroute_protocol::huggingface`.

use optiroute_protocol::huggingface::{self as wire, ChatTemplate, StreamTranslator};
use optiroute_protocol::openai::{ChatCompletion, ChatRequest};

use super::{CallTarget, ChunkStream, Translate, Upstream, completion_id, translated, unix_now};
use crate::config::ProviderConfig;
use crate::error::{UpstreamError, UpstreamKind};

pub struct HuggingFace {
    up: Upstream,
    template: ChatTemplate,
}

impl HuggingFace {
    pub fn new(up: Upstream, cfg: &ProviderConfig) -> Result<Self, String> {
        let template = match cfg.chat_template.as_deref() {
            None => ChatTemplate::default(),
            Some(t) => t
                .parse()
                .map_err(|_| format!("provider `{}`: unknown chat_template `{t}`", cfg.name))?,
        };
        Ok(HuggingFace { up, template })
    }

    fn body(&self, req: &ChatRequest) -> Result<Vec<u8>, UpstreamError> {
        let v = wire::to_request(req, self.template)
            .map_err(|e| UpstreamError::new(UpstreamKind::Status(400), &self.up.name, e.to_string()))?;
        serde_json::to_vec(&v).map_err(|e| UpstreamError::new(UpstreamKind::Protocol, &self.up.name, e.to_string()))
    }

    pub async fn chat(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChatCompletion, UpstreamError> {
        let body = self.up.call("/generate", self.body(req)?).await?;
        // Usage stays unset unless TGI reported both counts; the engine then estimates it (and says so).
        let stops = wire::stop_sequences(req, self.template);
        wire::from_response_with_stops(&body, target.model, &completion_id(), unix_now(), &stops)
            .map(|(completion, _counts)| completion)
            .map_err(|e| UpstreamError::new(UpstreamKind::Protocol, &self.up.name, e.to_string()))
    }

    pub async fn chat_stream(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChunkStream, UpstreamError> {
        let events = self.up.call_stream("/generate_stream", self.body(req)?).await?;
        let translator = StreamTranslator::new(&completion_id(), unix_now(), target.model)
            .with_stop_sequences(wire::stop_sequences(req, self.template));
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
