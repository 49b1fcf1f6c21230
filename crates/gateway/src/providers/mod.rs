//! Provider adapters: canonical request -> wire request -> upstream HTTP -> wire response -> canonical.
//!
//! One enum instead of trait objects: the set of kinds is closed, dispatch is a match, and no
//! future is boxed on the way in.

pub mod anthropic;
pub mod huggingface;
pub mod openai_compat;
pub mod simulated;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use optiroute_protocol::openai::{ChatChunk, ChatCompletion, ChatRequest};
use optiroute_protocol::sse::{SseDecoder, SseEvent};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ProviderConfig, ProviderKind, TimeoutConfig};
use crate::error::{UpstreamError, UpstreamKind, parse_retry_after};

/// Chunks of a streamed completion, already in canonical form.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, UpstreamError>> + Send>>;

/// What a deployment adds to a provider when it calls it.
#[derive(Debug, Clone)]
pub struct CallTarget<'a> {
    /// Model name sent upstream.
    pub model: &'a str,
    /// Anthropic's required `max_tokens` when the client gives none.
    pub default_max_tokens: u32,
}

pub enum Provider {
    OpenAi(openai_compat::OpenAiCompat),
    Anthropic(anthropic::Anthropic),
    HuggingFace(huggingface::HuggingFace),
    Simulated(simulated::Simulated),
}

impl Provider {
    pub fn build(cfg: &ProviderConfig) -> Result<Provider, String> {
        Ok(match cfg.kind {
            ProviderKind::Openai => Provider::OpenAi(openai_compat::OpenAiCompat::new(
                Upstream::new(cfg, Auth::Bearer)?,
                cfg.stream_usage,
            )),
            ProviderKind::Anthropic => {
                Provider::Anthropic(anthropic::Anthropic::new(Upstream::new(cfg, Auth::XApiKey)?, cfg)?)
            }
            ProviderKind::Huggingface => {
                Provider::HuggingFace(huggingface::HuggingFace::new(Upstream::new(cfg, Auth::Bearer)?, cfg)?)
            }
            ProviderKind::Simulated => Provider::Simulated(simulated::Simulated::new(&cfg.name, cfg.simulated.clone())),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Provider::OpenAi(_) => "openai",
            Provider::Anthropic(_) => "anthropic",
            Provider::HuggingFace(_) => "huggingface",
            Provider::Simulated(_) => "simulated",
        }
    }

    pub async fn chat(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChatCompletion, UpstreamError> {
        match self {
            Provider::OpenAi(p) => p.chat(req, target).await,
            Provider::Anthropic(p) => p.chat(req, target).await,
            Provider::HuggingFace(p) => p.chat(req, target).await,
            Provider::Simulated(p) => p.chat(req, target).await,
        }
    }

    /// Starts a stream. `Ok` means the upstream accepted the request; failures after that arrive as
    /// stream items.
    pub async fn chat_stream(&self, req: &ChatRequest, target: &CallTarget<'_>) -> Result<ChunkStream, UpstreamError> {
        match self {
            Provider::OpenAi(p) => p.chat_stream(req, target).await,
            Provider::Anthropic(p) => p.chat_stream(req, target).await,
            Provider::HuggingFace(p) => p.chat_stream(req, target).await,
            Provider::Simulated(p) => p.chat_stream(req, target).await,
        }
    }
}

/// The HTTP side shared by every remote provider: a pooled client, base URL, auth headers, timeouts.
pub struct Upstream {
    pub name: String,
    pub client: reqwest::Client,
    pub base_url: String,
    /// `base_url` joined with each endpoint path a provider calls, parsed once: URL parsing was a
    /// measurable share of the per-request CPU.
    urls: Vec<(&'static str, reqwest::Url)>,
    pub headers: HeaderMap,
    pub timeouts: TimeoutConfig,
}

/// Every path a provider POSTs to (OpenAI-compatible, Anthropic, TGI).
const ENDPOINT_PATHS: [&str; 4] = ["/chat/completions", "/v1/messages", "/generate", "/generate_stream"];

/// How a provider expects its API key.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// `Authorization: Bearer KEY` (OpenAI, Hugging Face).
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
}

impl Upstream {
    fn new(cfg: &ProviderConfig, auth: Auth) -> Result<Upstream, String> {
        let base_url = cfg
            .base_url
            .clone()
            .ok_or_else(|| format!("provider `{}` needs base_url", cfg.name))?
            .trim_end_matches('/')
            .to_owned();
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let value = match v.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| {
                    format!(
                        "provider `{}`: header `{k}` reads env var `{var}`, which is not set",
                        cfg.name
                    )
                })?,
                None => v.clone(),
            };
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("provider `{}`: invalid header name `{k}`", cfg.name))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("provider `{}`: invalid value for header `{k}`", cfg.name))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeouts.connect())
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            // Our retry module decides about retries, and a POST to an LLM API is never redirected.
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .user_agent(concat!("optiroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("provider `{}`: cannot build HTTP client: {e}", cfg.name))?;
        let mut urls = Vec::with_capacity(ENDPOINT_PATHS.len());
        for path in ENDPOINT_PATHS {
            let url = reqwest::Url::parse(&format!("{base_url}{path}"))
                .map_err(|e| format!("provider `{}`: invalid base_url: {e}", cfg.name))?;
            urls.push((path, url));
        }
        let mut up = Upstream {
            name: cfg.name.clone(),
            client,
            base_url,
            urls,
            headers,
            timeouts: cfg.timeouts.clone(),
        };
        if let Some(key) = Self::api_key(cfg)? {
            match auth {
                Auth::Bearer => up.insert_secret(reqwest::header::AUTHORIZATION, &format!("Bearer {key}"))?,
                Auth::XApiKey => up.insert_secret(HeaderName::from_static("x-api-key"), &key)?,
            }
        }
        Ok(up)
    }

    /// The API key named by `api_key_env`, read once at start.
    fn api_key(cfg: &ProviderConfig) -> Result<Option<String>, String> {
        match &cfg.api_key_env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
                _ => Err(format!(
                    "provider `{}`: environment variable `{var}` is not set",
                    cfg.name
                )),
            },
        }
    }

    fn insert_secret(&mut self, name: HeaderName, value: &str) -> Result<(), String> {
        let mut v = HeaderValue::from_str(value)
            .map_err(|_| format!("provider `{}`: API key is not a valid header value", self.name))?;
        v.set_sensitive(true);
        self.headers.insert(name, v);
        Ok(())
    }

    /// POSTs JSON and returns the response once headers arrived with a success status. Error statuses
    /// become `UpstreamError` with the upstream's message and Retry-After.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<reqwest::Response, UpstreamError> {
        let url = match self.urls.iter().find(|(p, _)| *p == path) {
            Some((_, url)) => url.clone(),
            None => reqwest::Url::parse(&format!("{}{}", self.base_url, path))
                .map_err(|e| UpstreamError::new(UpstreamKind::Connect, &self.name, format!("invalid URL: {e}")))?,
        };
        let send = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let resp = match tokio::time::timeout(self.timeouts.first_byte(), send).await {
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamKind::Timeout,
                    &self.name,
                    format!("no response within {} ms", self.timeouts.first_byte_ms),
                ));
            }
            Ok(Err(e)) => return Err(self.transport_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = tokio::time::timeout(self.timeouts.idle(), resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = optiroute_protocol::openai::upstream_error_message(&body)
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let mut err = UpstreamError::new(
            UpstreamKind::Status(status.as_u16()),
            &self.name,
            truncate(&message, 500),
        );
        err.retry_after = retry_after;
        Err(err)
    }

    /// Reads a whole (non-streaming) body within the total timeout.
    pub async fn read_body(&self, resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout(self.timeouts.total(), resp.bytes()).await {
            Err(_) => Err(UpstreamError::new(
                UpstreamKind::Timeout,
                &self.name,
                "response body timed out",
            )),
            Ok(Err(e)) => Err(self.transport_error(&e)),
            Ok(Ok(b)) => Ok(b),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> UpstreamError {
        // reqwest's Display may include the URL; base URLs are operator config, but keep messages short
        // and never include query strings or credentials.
        let kind = if e.is_timeout() {
            UpstreamKind::Timeout
        } else if e.is_connect() {
            UpstreamKind::Connect
        } else {
            UpstreamKind::Interrupted
        };
        let what = match kind {
            UpstreamKind::Timeout => "timed out",
            UpstreamKind::Connect => "connection failed",
            _ => "transport error",
        };
        UpstreamError::new(kind, &self.name, what)
    }

    /// Turns a streaming HTTP response into SSE events, enforcing the idle and total timeouts.
    pub fn sse_events(
        &self,
        resp: reqwest::Response,
    ) -> impl Stream<Item = Result<SseEvent, UpstreamError>> + Send + 'static {
        let name = self.name.clone();
        let idle = self.timeouts.idle();
        let deadline = tokio::time::Instant::now() + self.timeouts.total();
        let body = resp.bytes_stream();
        futures_util::stream::unfold(
            (
                Box::pin(body),
                SseDecoder::default(),
                std::collections::VecDeque::new(),
                false,
                name,
            ),
            move |(mut body, mut dec, mut queue, mut ended, name)| async move {
                loop {
                    if let Some(ev) = queue.pop_front() {
                        return Some((Ok(ev), (body, dec, queue, ended, name)));
                    }
                    if ended {
                        return None;
                    }
                    let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    let mut out = Vec::new();
                    match tokio::time::timeout(wait, body.next()).await {
                        Err(_) => {
                            ended = true;
                            let e = UpstreamError::new(
                                UpstreamKind::Timeout,
                                &name,
                                "stream stalled or exceeded its total time",
                            );
                            return Some((Err(e), (body, dec, queue, ended, name)));
                        }
                        Ok(None) => {
                            ended = true;
                            dec.finish(&mut out);
                        }
                        Ok(Some(Err(_))) => {
                            ended = true;
                            let e = UpstreamError::new(UpstreamKind::Interrupted, &name, "stream broke off");
                            return Some((Err(e), (body, dec, queue, ended, name)));
                        }
                        Ok(Some(Ok(bytes))) => {
                            if let Err(e) = dec.feed(&bytes, &mut out) {
                                ended = true;
                                let e = UpstreamError::new(UpstreamKind::Protocol, &name, e.to_string());
                                return Some((Err(e), (body, dec, queue, ended, name)));
                            }
                        }
                    }
                    queue.extend(out);
                }
            },
        )
    }
}

/// A provider's stateful translation of its stream events into canonical chunks.
pub trait Translate: Send + 'static {
    /// Appends the chunks `ev` produces; `Ok(true)` once the stream is complete.
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<ChatChunk>) -> Result<bool, String>;
}

/// Runs a translator over an SSE event stream. A stream that ends before the translator saw its end
/// is an `Interrupted` error, so a cut connection is never mistaken for a complete answer.
pub fn translated<T: Translate>(
    events: impl Stream<Item = Result<SseEvent, UpstreamError>> + Send + 'static,
    translator: T,
    name: String,
) -> ChunkStream {
    struct St<E, T> {
        events: std::pin::Pin<Box<E>>,
        tr: T,
        queue: std::collections::VecDeque<ChatChunk>,
        done: bool,
        pending_err: Option<UpstreamError>,
        name: String,
    }
    let st = St {
        pending_err: None,
        events: Box::pin(events),
        tr: translator,
        queue: std::collections::VecDeque::new(),
        done: false,
        name,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(c) = st.queue.pop_front() {
                return Some((Ok(c), st));
            }
            if let Some(e) = st.pending_err.take() {
                return Some((Err(e), st));
            }
            if st.done {
                return None;
            }
            let err = match st.events.next().await {
                None => UpstreamError::new(
                    UpstreamKind::Interrupted,
                    &st.name,
                    "stream ended before it was complete",
                ),
                Some(Err(e)) => e,
                Some(Ok(ev)) => {
                    let mut out = Vec::new();
                    match st.tr.on_event(&ev, &mut out) {
                        Ok(finished) => {
                            st.done = finished;
                            st.queue.extend(out);
                            continue;
                        }
                        Err(msg) => {
                            st.queue.extend(out);
                            UpstreamError::new(UpstreamKind::Interrupted, &st.name, msg)
                        }
                    }
                }
            };
            // Chunks produced before the failure are delivered first, then the error.
            st.done = true;
            st.pending_err = Some(err);
        }
    }))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh completion id like OpenAI's.
pub fn completion_id() -> String {
    format!("chatcmpl-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>())
}
