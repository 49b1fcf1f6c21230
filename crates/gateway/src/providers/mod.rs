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
use http::header::{HeaderMap, HeaderName, HeaderValue};
use optiroute_protocol::openai::{ChatChunk, ChatCompletion, ChatRequest};
use optiroute_protocol::sse::{SseDecoder, SseEvent};

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
                // Anthropic's base URL is the host (the SDKs append `/v1/messages`), but OpenAI-style
                // configs carry `/v1`: take both rather than call `/v1/v1/messages`.
                let mut up_cfg = cfg.clone();
                up_cfg.base_url = cfg.base_url.as_deref().map(|u| {
                    let u = u.trim_end_matches('/');
                    u.strip_suffix("/v1").unwrap_or(u).to_owned()
                });
                Provider::Anthropic(anthropic::Anthropic::new(Upstream::new(&up_cfg, Auth::XApiKey)?, cfg)?)
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

/// The upstream HTTP client: hyper's pooled client over TCP, with rustls for `https://` base URLs.
///
/// Not reqwest: its redirect policy and request plumbing re-parse the URL on every call, which was
/// about a sixth of the gateway's instructions per proxied request. Retries, redirects and timeouts
/// are ours anyway (`resilience::retry`, the timeouts below), so hyper's client is all we need.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

/// How a provider's requests leave the gateway.
enum Transport {
    /// Straight to the upstream: hyper's pooled client (boxed: it is large, and built once).
    Direct(Box<HttpClient>),
    /// Through the egress proxy that `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name for this base URL
    /// (`NO_PROXY` honoured): reqwest, which speaks CONNECT tunnels and absolute-form requests.
    Proxied(reqwest::Client),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A response body from either transport.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        Direct { #[pin] body: hyper::body::Incoming },
        Proxied { #[pin] body: reqwest::Body },
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamBodyProj::Direct { body } => body.poll_frame(cx).map_err(Into::into),
            UpstreamBodyProj::Proxied { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct { body } => body.is_end_stream(),
            UpstreamBody::Proxied { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Direct { body } => body.size_hint(),
            UpstreamBody::Proxied { body } => body.size_hint(),
        }
    }
}

/// A response whose status and headers have arrived; the body streams.
pub type UpstreamResponse = http::Response<UpstreamBody>;

/// How long an idle pooled upstream connection is kept, and how many per host (both transports).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Largest success body read whole (a non-streaming completion); larger is a protocol error.
const MAX_BODY: usize = 64 << 20;
/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 1 << 20;

/// The HTTP side shared by every remote provider: a pooled client, base URL, auth headers, timeouts.
pub struct Upstream {
    pub name: String,
    transport: Transport,
    pub base_url: String,
    /// `base_url` joined with each endpoint path a provider calls, parsed once: URL parsing was a
    /// measurable share of the per-request CPU.
    urls: Vec<(&'static str, http::Uri)>,
    /// Sent with every request: content type, user agent, auth and configured headers.
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

/// The transport for `base`: through the environment's egress proxy if it names one for this URL,
/// else direct.
fn transport(cfg: &ProviderConfig, base: &http::Uri) -> Result<Transport, String> {
    if hyper_util::client::proxy::matcher::Matcher::from_env()
        .intercept(base)
        .is_none()
    {
        return http_client(cfg).map(|c| Transport::Direct(Box::new(c)));
    }
    tracing::info!(provider = %cfg.name, "upstream calls go through the proxy named in the environment");
    reqwest::Client::builder()
        .connect_timeout(cfg.timeouts.connect())
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        // Our retry module decides about retries, and a POST to an LLM API is never redirected.
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
        .map(Transport::Proxied)
        .map_err(|e| format!("provider `{}`: cannot build the proxied HTTP client: {e}", cfg.name))
}

fn http_client(cfg: &ProviderConfig) -> Result<HttpClient, String> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use rustls_platform_verifier::BuilderVerifierExt;

    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(cfg.timeouts.connect()));
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map(|b| b.with_no_client_auth())
            .map_err(|e| format!("provider `{}`: cannot set up TLS: {e}", cfg.name))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
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
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("optiroute/", env!("CARGO_PKG_VERSION"))),
        );
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
        let mut urls = Vec::with_capacity(ENDPOINT_PATHS.len());
        for path in ENDPOINT_PATHS {
            urls.push((
                path,
                parse_url(&base_url, path).map_err(|e| format!("provider `{}`: {e}", cfg.name))?,
            ));
        }
        let base = urls
            .first()
            .map(|(_, u)| u.clone())
            .ok_or_else(|| format!("provider `{}`: no endpoint", cfg.name))?;
        let mut up = Upstream {
            name: cfg.name.clone(),
            transport: transport(cfg, &base)?,
            base_url,
            urls,
            headers,
            timeouts: cfg.timeouts.clone(),
        };
        if let Some(key) = Self::api_key(cfg)? {
            match auth {
                Auth::Bearer => up.insert_secret(http::header::AUTHORIZATION, &format!("Bearer {key}"))?,
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

    /// POSTs JSON and reads the whole (non-streaming) answer. One `total_ms`, counted from now,
    /// bounds the header wait and the body together.
    pub async fn call(&self, path: &str, body: Vec<u8>) -> Result<Bytes, UpstreamError> {
        let deadline = self.deadline();
        let resp = self.post(path, body, deadline).await?;
        self.read_body(resp, deadline).await
    }

    /// POSTs JSON and returns the answer's SSE events, under the idle timeout and one `total_ms`
    /// counted from now (not from the response headers).
    pub async fn call_stream(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<impl Stream<Item = Result<SseEvent, UpstreamError>> + Send + 'static, UpstreamError> {
        let deadline = self.deadline();
        let resp = self.post(path, body, deadline).await?;
        Ok(self.sse_events(resp, deadline))
    }

    /// The end of a call's `total_ms`, counted from now.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeouts.total()
    }

    /// POSTs JSON and returns the response once headers arrived with a success status, within
    /// `first_byte_ms` and before `deadline`. Error statuses become `UpstreamError` with the upstream's
    /// message and Retry-After.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = match self.urls.iter().find(|(p, _)| *p == path) {
            Some((_, uri)) => uri.clone(),
            None => {
                parse_url(&self.base_url, path).map_err(|e| UpstreamError::new(UpstreamKind::Connect, &self.name, e))?
            }
        };
        let send = async {
            match &self.transport {
                Transport::Direct(client) => {
                    let mut req = http::Request::new(http_body_util::Full::new(Bytes::from(body)));
                    *req.method_mut() = http::Method::POST;
                    *req.uri_mut() = uri;
                    *req.headers_mut() = self.headers.clone();
                    match client.request(req).await {
                        Ok(r) => Ok(r.map(|body| UpstreamBody::Direct { body })),
                        Err(e) => Err(self.transport_error(caused_by_timeout(&e), e.is_connect())),
                    }
                }
                Transport::Proxied(client) => {
                    let url = reqwest::Url::parse(&uri.to_string())
                        .map_err(|e| UpstreamError::new(UpstreamKind::Connect, &self.name, e.to_string()))?;
                    let sent = client.post(url).headers(self.headers.clone()).body(body).send().await;
                    match sent {
                        Ok(r) => Ok(http::Response::from(r).map(|body| UpstreamBody::Proxied { body })),
                        Err(e) => Err(self.transport_error(e.is_timeout(), e.is_connect())),
                    }
                }
            }
        };
        let first_byte = tokio::time::Instant::now() + self.timeouts.first_byte();
        let resp = match tokio::time::timeout_at(first_byte.min(deadline), send).await {
            Err(_) if deadline < first_byte => return Err(self.total_timeout()),
            Err(_) => {
                return Err(UpstreamError::new(
                    UpstreamKind::Timeout,
                    &self.name,
                    format!("no response within {} ms", self.timeouts.first_byte_ms),
                ));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let until = (tokio::time::Instant::now() + self.timeouts.idle()).min(deadline);
        let body = tokio::time::timeout_at(until, collect(resp, MAX_ERROR_BODY))
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

    /// Reads a whole (non-streaming) body before `deadline`.
    async fn read_body(&self, resp: UpstreamResponse, deadline: tokio::time::Instant) -> Result<Bytes, UpstreamError> {
        match tokio::time::timeout_at(deadline, collect(resp, MAX_BODY)).await {
            Err(_) => Err(self.total_timeout()),
            Ok(Err(BodyError::TooLarge)) => Err(UpstreamError::new(
                UpstreamKind::Protocol,
                &self.name,
                format!("response body larger than {} MiB", MAX_BODY >> 20),
            )),
            Ok(Err(BodyError::Broken)) => Err(UpstreamError::new(
                UpstreamKind::Interrupted,
                &self.name,
                "response body broke off",
            )),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// A call that outlived its `total_ms`.
    fn total_timeout(&self) -> UpstreamError {
        UpstreamError::new(
            UpstreamKind::Timeout,
            &self.name,
            format!("no complete response within total_ms ({} ms)", self.timeouts.total_ms),
        )
    }

    /// A call that got no response, as each transport classifies its error.
    fn transport_error(&self, timed_out: bool, connect: bool) -> UpstreamError {
        // Messages stay short and never include the URL (its query string or credentials).
        let (kind, what) = if timed_out {
            (UpstreamKind::Timeout, "timed out")
        } else if connect {
            (UpstreamKind::Connect, "connection failed")
        } else {
            (UpstreamKind::Interrupted, "transport error")
        };
        UpstreamError::new(kind, &self.name, what)
    }

    /// Turns a streaming HTTP response into SSE events, enforcing the idle timeout (longest gap
    /// between two chunks) and `deadline`.
    fn sse_events(
        &self,
        resp: UpstreamResponse,
        deadline: tokio::time::Instant,
    ) -> impl Stream<Item = Result<SseEvent, UpstreamError>> + Send + 'static {
        let name = self.name.clone();
        let idle = self.timeouts.idle();
        let body = http_body_util::BodyExt::into_data_stream(resp.into_body());
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

fn parse_url(base_url: &str, path: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = format!("{base_url}{path}")
        .parse()
        .map_err(|e| format!("invalid base_url: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!(
            "invalid base_url `{base_url}`: needs http:// or https:// and a host"
        )),
    }
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads a body whole, up to `limit` bytes.
async fn collect(resp: UpstreamResponse, limit: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(resp.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}

/// Whether an error's cause chain holds an I/O timeout (the connect timeout).
fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoint_urls_need_a_scheme_we_speak_and_a_host() {
        let u = parse_url("http://127.0.0.1:8000/v1", "/chat/completions").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!(
            parse_url("https://api.openai.com/v1", "/chat/completions")
                .unwrap()
                .host(),
            Some("api.openai.com")
        );
        for bad in ["ftp://h/v1", "127.0.0.1:8000", "/v1", "http://"] {
            assert!(parse_url(bad, "/chat/completions").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_timed_out_cause_anywhere_in_the_chain_is_a_timeout() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connect")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Wrap(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        let refused = Wrap(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "r"));
        assert!(caused_by_timeout(&timed_out));
        assert!(!caused_by_timeout(&refused));
    }
}
