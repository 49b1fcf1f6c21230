//! A scripted mock upstream that speaks the providers' documented wire formats: OpenAI chat
//! completions (`/v1/chat/completions`), Anthropic Messages (`/v1/messages`) and Hugging Face TGI
//! (`/generate`, `/generate_stream`). Used by `optiroute mock`, demos, benchmarks and the tests.
//!
//! Behaviour comes from a queue of scripted [`Behavior`]s (one per request; the default when the queue
//! is empty), set in-process through [`MockHandle`] or over HTTP with `POST /_mock/script`. Every
//! request body is recorded (`GET /_mock/requests`) so tests can check exactly what the gateway sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the mock does with one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// HTTP status; anything but 200 returns the provider's error shape.
    pub status: u16,
    /// Delay before the response headers.
    pub delay_ms: u64,
    /// Delay between stream chunks.
    pub chunk_delay_ms: u64,
    /// Reply text; default: "mock reply to: <last user text>".
    pub text: Option<String>,
    /// Close the connection after this many content chunks (mid-stream disconnect).
    pub disconnect_after: Option<usize>,
    /// Stop sending (but keep the connection open) after this many content chunks.
    pub stall_after: Option<usize>,
    pub retry_after_secs: Option<u64>,
    pub error_message: Option<String>,
    /// Report usage (JSON body, and streams when asked).
    pub usage: bool,
    /// Never answer (until the client gives up).
    pub hang: bool,
    /// OpenAI JSON answers: call this function (arguments `{}`) instead of answering with text.
    pub tool_call: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            delay_ms: 0,
            chunk_delay_ms: 0,
            text: None,
            disconnect_after: None,
            stall_after: None,
            retry_after_secs: None,
            error_message: None,
            usage: true,
            hang: false,
            tool_call: None,
        }
    }
}

impl Behavior {
    pub fn status(status: u16) -> Self {
        Behavior {
            status,
            ..Default::default()
        }
    }
}

/// A request the mock received.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub path: String,
    pub body: Value,
    /// Header names received (values withheld except a few safe ones).
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicU64,
    /// Streams the client dropped before the mock finished writing them.
    cancelled: AtomicU64,
}

/// Control over a running mock.
#[derive(Clone, Default)]
pub struct MockHandle(Arc<Inner>);

impl MockHandle {
    pub fn push(&self, b: Behavior) {
        if let Ok(mut s) = self.0.script.lock() {
            s.push_back(b);
        }
    }
    pub fn set_default(&self, b: Behavior) {
        if let Ok(mut d) = self.0.default.lock() {
            *d = b;
        }
    }
    pub fn hits(&self) -> u64 {
        self.0.hits.load(Ordering::SeqCst)
    }
    pub fn cancelled(&self) -> u64 {
        self.0.cancelled.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.0.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
    fn next(&self) -> Behavior {
        let scripted = self.0.script.lock().ok().and_then(|mut s| s.pop_front());
        scripted.unwrap_or_else(|| self.0.default.lock().map(|d| d.clone()).unwrap_or_default())
    }
}

pub struct MockServer {
    pub addr: SocketAddr,
    pub handle: MockHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MockServer {
    /// Starts a mock on 127.0.0.1 at `port` (0 = any free port).
    pub async fn start(port: u16) -> std::io::Result<MockServer> {
        let handle = MockHandle::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(handle.clone());
        // Without TCP_NODELAY a keep-alive client stalls ~40 ms per request on delayed ACKs.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(MockServer {
            addr,
            handle,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs until the process is stopped (for `optiroute mock`).
    pub async fn wait(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn router(handle: MockHandle) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .route("/generate", post(tgi))
        .route("/generate_stream", post(tgi_stream))
        .route("/_mock/script", post(script))
        .route("/_mock/requests", get(requests))
        .route("/health", get(|| async { "ok" }))
        .with_state(handle)
}

async fn script(State(h): State<MockHandle>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<Behavior>>(&body) {
        Ok(list) => {
            for b in list {
                h.push(b);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn requests(State(h): State<MockHandle>) -> Response {
    axum::Json(json!({"hits": h.hits(), "requests": h.requests()})).into_response()
}

/// Records the request and returns its behaviour and parsed body.
async fn begin(h: &MockHandle, path: &str, headers: &HeaderMap, body: &Bytes) -> (Behavior, Value) {
    h.0.hits.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let safe = ["content-type", "anthropic-version", "x-custom"];
    let hdrs = headers
        .iter()
        .map(|(k, v)| {
            let name = k.as_str().to_owned();
            let value = if safe.contains(&name.as_str()) {
                v.to_str().unwrap_or("").to_owned()
            } else {
                format!("<{} bytes>", v.len())
            };
            (name, value)
        })
        .collect();
    if let Ok(mut r) = h.0.requests.lock() {
        // Bounded, so a long benchmark against the mock does not grow without limit.
        if r.len() >= 10_000 {
            r.drain(..5_000);
        }
        r.push(Recorded {
            path: path.to_owned(),
            body: body.clone(),
            headers: hdrs,
        });
    }
    let b = h.next();
    if b.hang {
        std::future::pending::<()>().await;
    }
    if b.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.delay_ms)).await;
    }
    (b, body)
}

fn last_user_text(messages: &Value) -> String {
    let Some(list) = messages.as_array() else {
        return String::new();
    };
    let Some(m) = list.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(words).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| *k != "role" && *k != "type")
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

fn reply_text(b: &Behavior, prompt: &str) -> String {
    b.text.clone().unwrap_or_else(|| format!("mock reply to: {prompt}"))
}

/// Word-sized pieces that concatenate back to the text.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn error_response(status: u16, body: Value, retry_after: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if let Some(s) = retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// An SSE body from pre-rendered events, paced, optionally cut off; counts client cancellations.
fn sse_body(h: &MockHandle, events: Vec<String>, b: &Behavior, content_events: Vec<bool>) -> Response {
    let delay = Duration::from_millis(b.chunk_delay_ms);
    let cut = b.disconnect_after;
    let stall = b.stall_after;
    let inner = h.0.clone();
    struct Cancel(Arc<Inner>, bool);
    impl Drop for Cancel {
        fn drop(&mut self) {
            if !self.1 {
                self.0.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let total = events.len();
    let stream = futures_util::stream::unfold(
        (
            events.into_iter().zip(content_events).enumerate(),
            0usize,
            Cancel(inner, false),
        ),
        move |(mut it, mut content_sent, mut guard)| async move {
            let (i, (ev, is_content)) = it.next()?;
            if is_content {
                // Pace first, so what was sent before a scripted cut has reached the client.
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if stall.is_some_and(|c| content_sent >= c) {
                    std::future::pending::<()>().await;
                }
                if cut.is_some_and(|c| content_sent >= c) {
                    guard.1 = true;
                    return Some((
                        Err(std::io::Error::other("scripted disconnect")),
                        (it, content_sent, guard),
                    ));
                }
                content_sent += 1;
            }
            if i + 1 == total {
                guard.1 = true;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(ev)), (it, content_sent, guard)))
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}

async fn openai(State(h): State<MockHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, req) = begin(&h, "/v1/chat/completions", &headers, &body).await;
    if b.status != 200 {
        let msg = b
            .error_message
            .clone()
            .unwrap_or_else(|| format!("mock error {}", b.status));
        let kind = if b.status == 429 {
            "rate_limit_error"
        } else if b.status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        return error_response(
            b.status,
            json!({"error": {"message": msg, "type": kind, "param": null, "code": null}}),
            b.retry_after_secs,
        );
    }
    let model = req["model"].as_str().unwrap_or("mock").to_owned();
    let text = reply_text(&b, &last_user_text(&req["messages"]));
    let prompt_tokens = words(&req["messages"]);
    let parts = pieces(&text);
    let completion_tokens = parts.len() as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = "chatcmpl-mock";
    if req["stream"] != true {
        let mut v = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        });
        if let Some(name) = &b.tool_call {
            v["choices"][0]["message"] = json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_mock", "type": "function", "function": {"name": name, "arguments": "{}"}}]});
            v["choices"][0]["finish_reason"] = json!("tool_calls");
        }
        if b.usage {
            v["usage"] = usage;
        }
        return axum::Json(v).into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let mut content = vec![false];
    for p in &parts {
        events.push(chunk(json!({"content": p}), Value::Null));
        content.push(true);
    }
    events.push(chunk(json!({}), json!("stop")));
    content.push(false);
    if b.usage && req["stream_options"]["include_usage"] == true {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage})
        ));
        content.push(false);
    }
    events.push("data: [DONE]\n\n".to_owned());
    content.push(false);
    sse_body(&h, events, &b, content)
}

async fn anthropic(State(h): State<MockHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, req) = begin(&h, "/v1/messages", &headers, &body).await;
    if b.status != 200 {
        let msg = b
            .error_message
            .clone()
            .unwrap_or_else(|| format!("mock error {}", b.status));
        let kind = match b.status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        return error_response(
            b.status,
            json!({"type": "error", "error": {"type": kind, "message": msg}}),
            b.retry_after_secs,
        );
    }
    // The Messages API refuses whitespace-only stop sequences.
    let blank_stop = req["stop_sequences"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s.as_str().is_some_and(|s| s.trim().is_empty())));
    if blank_stop {
        let msg = "stop_sequences: each stop sequence must contain non-whitespace";
        return error_response(
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}}),
            None,
        );
    }
    let model = req["model"].as_str().unwrap_or("mock").to_owned();
    let text = reply_text(&b, &last_user_text(&req["messages"]));
    let input_tokens = words(&req["messages"]) + words(&req["system"]);
    let parts = pieces(&text);
    let output_tokens = parts.len() as u64;
    if req["stream"] != true {
        return axum::Json(json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    let mut content = vec![false, false, false];
    for p in &parts {
        events.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
        content.push(true);
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    content.extend([false, false, false]);
    sse_body(&h, events, &b, content)
}

fn tgi_error(b: &Behavior) -> Response {
    let msg = b
        .error_message
        .clone()
        .unwrap_or_else(|| format!("mock error {}", b.status));
    let kind = if b.status == 429 {
        "overloaded"
    } else if b.status == 422 {
        "validation"
    } else {
        "generation"
    };
    error_response(b.status, json!({"error": msg, "error_type": kind}), b.retry_after_secs)
}

async fn tgi(State(h): State<MockHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, req) = begin(&h, "/generate", &headers, &body).await;
    if b.status != 200 {
        return tgi_error(&b);
    }
    let text = reply_text(
        &b,
        req["inputs"]
            .as_str()
            .unwrap_or("")
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("Assistant"))
            .unwrap_or(""),
    );
    let n = pieces(&text).len();
    axum::Json(json!({"generated_text": text, "details": {"finish_reason": "eos_token", "generated_tokens": n, "seed": null, "prefill": [], "tokens": []}}))
        .into_response()
}

async fn tgi_stream(State(h): State<MockHandle>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, req) = begin(&h, "/generate_stream", &headers, &body).await;
    if b.status != 200 {
        return tgi_error(&b);
    }
    let text = reply_text(
        &b,
        req["inputs"]
            .as_str()
            .unwrap_or("")
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("Assistant"))
            .unwrap_or(""),
    );
    let parts = pieces(&text);
    let n = parts.len();
    let mut events = Vec::new();
    let mut content = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == n;
        let data = json!({
            "index": i + 1,
            "token": {"id": 100 + i, "text": p, "logprob": -0.25, "special": false},
            "generated_text": if last { Value::String(text.clone()) } else { Value::Null },
            "details": if last { json!({"finish_reason": "eos_token", "generated_tokens": n, "seed": null}) } else { Value::Null },
        });
        events.push(format!("data:{data}\n\n"));
        content.push(true);
    }
    sse_body(&h, events, &b, content)
}
