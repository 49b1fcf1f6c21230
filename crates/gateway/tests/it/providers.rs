//! Provider fidelity: what the gateway sends each provider kind on the wire, and what a client gets
//! back through the real HTTP API (JSON, OpenAI-format SSE, errors), against the scripted mock
//! upstream on loopback.
//!
//! Expected wire payloads are written out by hand from the providers' documented formats (OpenAI chat
//! completions, Anthropic Messages, Hugging Face TGI `/generate`), and compared with what the mock
//! recorded, so a change in translation shows up as a readable JSON diff.

use std::time::Duration;

use optiroute::config::{Config, ModelGroupConfig, ProviderKind, Strategy};
use optiroute::mock::{Behavior, MockServer, Recorded};
use serde_json::{Value, json};

use crate::common::{self, TestGateway};

// ---- harness --------------------------------------------------------------------------------------

/// Upstream model name each kind's deployment `m` is configured with.
fn upstream_model(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "gpt-upstream",
        ProviderKind::Anthropic => "claude-upstream",
        ProviderKind::Huggingface => "tgi-upstream",
        ProviderKind::Simulated => "sim",
    }
}

/// The provider `base_url` for a mock: OpenAI-compatible servers are addressed at `/v1`.
fn base_url(kind: ProviderKind, mock: &MockServer) -> String {
    match kind {
        ProviderKind::Openai => format!("{}/v1", mock.url()),
        _ => mock.url(),
    }
}

/// One provider of `kind` on `mock` and one deployment `m` on it; no response cache, so every
/// request reaches the upstream.
fn single_cfg(kind: ProviderKind, mock: &MockServer) -> Config {
    let mut cfg = common::config_with(
        &[("up", kind, &base_url(kind, mock))],
        &[("m", "up", upstream_model(kind), "cloud")],
    );
    cfg.cache.enabled = false;
    cfg
}

/// Keeps the circuit breaker closed, for tests that map many upstream errors in a row.
fn no_breaker(cfg: &mut Config) {
    cfg.resilience.breaker.consecutive_failures = 1_000;
    cfg.resilience.breaker.min_requests = 1_000;
}

async fn setup(kind: ProviderKind) -> (MockServer, TestGateway) {
    setup_with(kind, |_| {}).await
}

async fn setup_with(kind: ProviderKind, edit: impl FnOnce(&mut Config)) -> (MockServer, TestGateway) {
    let mock = MockServer::start(0).await.unwrap();
    let mut cfg = single_cfg(kind, &mock);
    edit(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    (mock, gw)
}

/// A response read to the end.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn post(url: &str, body: &Value) -> Reply {
    let resp = common::client().post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply { status, headers, text }
}

async fn chat(gw: &TestGateway, body: &Value) -> Reply {
    post(&gw.chat_url(), body).await
}

/// The only request the mock received.
fn only_request(mock: &MockServer) -> Recorded {
    let reqs = mock.handle.requests();
    assert_eq!(reqs.len(), 1, "expected exactly one upstream request: {reqs:#?}");
    reqs.into_iter().next().unwrap()
}

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks that `raw` is exactly OpenAI's SSE framing for a completed stream: every event is one
/// `data: ` line (no `event:` names, comments or ids), the last one is `data: [DONE]`, and every
/// other event is a `chat.completion.chunk` object. Returns the chunks.
fn openai_sse(raw: &str) -> Vec<Value> {
    assert!(
        raw.ends_with("data: [DONE]\n\n"),
        "stream must end with `data: [DONE]`: {raw:?}"
    );
    let events = sse_events(raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        events.iter().filter(|e| *e == "[DONE]").count(),
        1,
        "one [DONE]: {raw:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap_or_else(|err| panic!("bad chunk ({err}): {e}")))
        .collect();
    assert!(!chunks.is_empty(), "no chunks before [DONE]: {raw:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(c["id"].as_str().is_some_and(|s| !s.is_empty()), "chunk id: {c}");
        assert!(c["created"].is_u64(), "chunk created: {c}");
        assert!(c["model"].is_string(), "chunk model: {c}");
        assert!(c["choices"].is_array(), "chunk choices: {c}");
        assert!(c.get("error").is_none(), "error in a completed stream: {c}");
    }
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id), "one id for all chunks: {raw}");
    chunks
}

/// The `data:` payloads of an SSE body, checking each event is a single `data: ` line.
fn sse_events(raw: &str) -> Vec<String> {
    let blocks: Vec<&str> = raw.split("\n\n").filter(|b| !b.is_empty()).collect();
    for b in &blocks {
        assert!(
            b.starts_with("data: ") && !b.contains('\n'),
            "every event must be exactly one `data: ` line, got {b:?}"
        );
    }
    let events = common::sse_data(raw);
    assert_eq!(events.len(), blocks.len());
    events
}

/// Concatenated `delta.content` of every chunk.
fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|ch| ch["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|ch| ch["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

/// Chunks that carry a non-null `usage`.
fn usage_chunks(chunks: &[Value]) -> Vec<&Value> {
    chunks.iter().filter(|c| !c["usage"].is_null()).collect()
}

fn assert_openai_error(body: &Value) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    assert!(e["type"].as_str().is_some_and(|t| !t.is_empty()), "error.type: {body}");
    let obj = e
        .as_object()
        .unwrap_or_else(|| panic!("error must be an object: {body}"));
    for k in ["param", "code"] {
        assert!(obj.contains_key(k), "error.{k} must be present: {body}");
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn only_usage(u: &Value) -> Value {
    json!({"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"], "total_tokens": u["total_tokens"]})
}

// ---- OpenAI-compatible -----------------------------------------------------------------------------

#[tokio::test]
async fn openai_unknown_fields_reach_upstream_and_model_is_replaced() {
    let (mock, gw) = setup(ProviderKind::Openai).await;
    let sent = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there"}
        ],
        "temperature": 0.25,
        "max_tokens": 50,
        "seed": 7,
        "logit_bias": {"50256": -100, "1734": 5},
        "user": "user-42",
        "metadata": {"trace": "abc", "team": "search"},
        "parallel_tool_calls": false,
        "x_vendor_option": {"nested": [1, "two", null, {"deep": true}], "ratio": 0.5}
    });
    let r = chat(&gw, &sent).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The upstream got the client's request untouched except for the model name.
    let up = only_request(&mock);
    assert_eq!(up.path, "/v1/chat/completions");
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-upstream");
    assert_eq!(up.body, expected, "upstream body differs from the client's request");
    assert_eq!(header(&up, "content-type"), Some("application/json"));
    assert!(header(&up, "authorization").is_none(), "no key configured, none sent");

    // The response is OpenAI's chat.completion shape.
    let v = r.json();
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["created"].is_u64(), "{v}");
    assert_eq!(v["model"], "gpt-upstream");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["message"]["content"], "mock reply to: Hello there");
    assert_eq!(choices[0]["finish_reason"], "stop");
    // The mock counts words: 5 words of messages in, 5 word pieces out.
    assert_eq!(v["usage"], usage(5, 5));
    assert_eq!(r.header("x-optiroute-deployment"), Some("m"));
}

#[tokio::test]
async fn openai_stream_is_exact_sse_with_usage_chunk_last() {
    let (mock, gw) = setup(ProviderKind::Openai).await;
    let r = chat(
        &gw,
        &json!({
            "model": "m",
            "messages": [{"role": "user", "content": "stream me please"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "x_vendor_flag": true
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let chunks = openai_sse(&r.text);
    assert_eq!(text_of(&chunks), "mock reply to: stream me please");
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");

    // The last chunk before [DONE] carries usage and no choices; no other chunk has usage.
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(only_usage(&last["usage"]), usage(3, 6), "{last}");
    assert_eq!(usage_chunks(&chunks).len(), 1, "{}", r.text);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "only the usage chunk may have empty choices: {}",
        r.text
    );

    let up = only_request(&mock);
    assert_eq!(up.body["model"], "gpt-upstream");
    assert_eq!(up.body["stream"], true);
    assert_eq!(up.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        up.body["x_vendor_flag"], true,
        "unknown field passed through in streams too"
    );
}

#[tokio::test]
async fn openai_stream_without_include_usage_sends_no_usage_chunk() {
    let (mock, gw) = setup(ProviderKind::Openai).await;
    for (i, opts) in [None, Some(json!({"include_usage": false}))].into_iter().enumerate() {
        let mut body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": format!("no usage please {i}")}],
            "stream": true
        });
        if let Some(o) = &opts {
            body["stream_options"] = o.clone();
        }
        let r = chat(&gw, &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let chunks = openai_sse(&r.text);
        assert_eq!(text_of(&chunks), format!("mock reply to: no usage please {i}"));
        assert!(
            usage_chunks(&chunks).is_empty(),
            "usage leaked to the client: {}",
            r.text
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
            "a choices-less chunk reached a client that did not ask for usage: {}",
            r.text
        );
    }
    // ...although the gateway asked the upstream for usage, for its own accounting.
    let reqs = mock.handle.requests();
    assert_eq!(reqs.len(), 2);
    for up in reqs {
        assert_eq!(up.body["stream"], true);
        assert_eq!(up.body["stream_options"]["include_usage"], true, "{}", up.body);
    }
}

// ---- Anthropic -------------------------------------------------------------------------------------

#[tokio::test]
async fn anthropic_wire_request_matches_messages_api() {
    let (mock, gw) = setup_with(ProviderKind::Anthropic, |cfg| {
        cfg.deployments[0].default_max_tokens = Some(1000);
    })
    .await;
    let r = chat(
        &gw,
        &json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi. What do you need?"},
                {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}
            ],
            "stop": ["END", "\n\nHuman:"],
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "user-7"
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = only_request(&mock);
    assert_eq!(up.path, "/v1/messages");
    let expected = json!({
        "model": "claude-upstream",
        "max_tokens": 1000,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi. What do you need?"},
            {"role": "user", "content": "Name a colour."}
        ],
        "stop_sequences": ["END", "\n\nHuman:"],
        // Anthropic takes temperature or top_p; with both, temperature wins.
        "temperature": 0.5,
        "metadata": {"user_id": "user-7"},
        "stream": false
    });
    assert_eq!(up.body, expected);
    assert_eq!(header(&up, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&up, "content-type"), Some("application/json"));
    assert!(header(&up, "x-api-key").is_none(), "no key configured, none sent");
    assert!(
        header(&up, "authorization").is_none(),
        "Anthropic takes x-api-key, not a bearer token"
    );

    // A streamed request with the client's own max_tokens.
    let r = chat(
        &gw,
        &json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Count to three."}],
            "max_tokens": 50,
            "stop": "4",
            "top_p": 0.8,
            "stream": true
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = mock.handle.requests();
    assert_eq!(reqs.len(), 2);
    let expected = json!({
        "model": "claude-upstream",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Count to three."}],
        "stop_sequences": ["4"],
        "top_p": 0.8,
        "stream": true
    });
    assert_eq!(reqs[1].body, expected);
}

/// Anthropic request of the response tests: 4 words of messages + 2 of system in (the mock's count).
fn anthropic_joke(stream: bool) -> Value {
    let mut v = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me a joke"}
        ]
    });
    if stream {
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

const JOKE: &str = "Because it was there.";

#[tokio::test]
async fn anthropic_json_response_is_openai_shaped() {
    let (mock, gw) = setup(ProviderKind::Anthropic).await;
    mock.handle.push(Behavior {
        text: Some(JOKE.into()),
        ..Default::default()
    });
    let r = chat(&gw, &anthropic_joke(false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["created"].as_u64().is_some_and(|c| c > 0), "{v}");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(1), "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], JOKE);
    assert_eq!(c["finish_reason"], "stop", "end_turn -> stop");
    assert_eq!(
        only_usage(&v["usage"]),
        usage(6, 4),
        "input_tokens/output_tokens -> usage"
    );
    assert_eq!(v["optiroute"]["usage_estimated"], false, "{v}");
    // No Anthropic-only fields leak into the OpenAI shape.
    for k in ["type", "role", "content", "stop_reason", "stop_sequence"] {
        assert!(v.get(k).is_none(), "Anthropic field `{k}` in the response: {v}");
    }
}

#[tokio::test]
async fn anthropic_stream_is_translated_into_openai_chunks() {
    let (mock, gw) = setup(ProviderKind::Anthropic).await;
    mock.handle.push(Behavior {
        text: Some(JOKE.into()),
        ..Default::default()
    });
    let r = chat(&gw, &anthropic_joke(true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    let chunks = openai_sse(&r.text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", r.text);
    assert_eq!(text_of(&chunks), JOKE);
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "usage chunk last: {last}");
    assert_eq!(usage_chunks(&chunks).len(), 1, "{}", r.text);
    let u = &last["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()),
        "{u}"
    );
    let up = only_request(&mock);
    assert_eq!(up.body["stream"], true);
    assert!(
        up.body.get("stream_options").is_none(),
        "OpenAI-only field sent to Anthropic: {}",
        up.body
    );
}

#[tokio::test]

async fn anthropic_stream_usage_is_the_upstreams() {
    let (mock, gw) = setup(ProviderKind::Anthropic).await;
    mock.handle.push(Behavior {
        text: Some(JOKE.into()),
        ..Default::default()
    });
    let r = chat(&gw, &anthropic_joke(true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let chunks = openai_sse(&r.text);
    let last = chunks.last().unwrap();
    // The mock reported input_tokens 6 (message_start) and output_tokens 4 (message_delta): the client
    // must get those, as it does for the same answer without streaming.
    assert_eq!(only_usage(&last["usage"]), usage(6, 4), "{last}");
    assert_eq!(last["optiroute"]["usage_estimated"], false, "{last}");
}

#[tokio::test]
async fn anthropic_whitespace_stop_is_applied_by_the_gateway() {
    // Anthropic answers 400 to `stop_sequences: ["\n"]`; OpenAI clients send it all the time.
    let (mock, gw) = setup(ProviderKind::Anthropic).await;
    for stream in [false, true] {
        mock.handle.push(Behavior {
            text: Some("First line.\nSecond line.".into()),
            ..Default::default()
        });
        let mut req = anthropic_joke(stream);
        req["stop"] = json!(["\n", "END"]);
        let r = chat(&gw, &req).await;
        assert_eq!(r.status, 200, "stream={stream}: {}", r.text);
        let (text, finish, usage_seen) = if stream {
            let chunks = openai_sse(&r.text);
            let last = chunks.last().unwrap().clone();
            (
                text_of(&chunks),
                finish_reasons(&chunks).concat(),
                last["usage"].clone(),
            )
        } else {
            let v = r.json();
            let c = &v["choices"][0];
            let finish = c["finish_reason"].as_str().unwrap_or_default().to_owned();
            (
                c["message"]["content"].as_str().unwrap_or_default().to_owned(),
                finish,
                v["usage"].clone(),
            )
        };
        assert_eq!(
            (text.as_str(), finish.as_str()),
            ("First line.", "stop"),
            "stream={stream}"
        );
        // Billed as the upstream counted: it generated both lines (3 tokens in the mock's count).
        assert_eq!(usage_seen["completion_tokens"], 3, "stream={stream}: {usage_seen}");
        let reqs = mock.handle.requests();
        assert_eq!(
            reqs.last().unwrap().body["stop_sequences"],
            json!(["END"]),
            "stream={stream}"
        );
    }
}

#[tokio::test]
async fn anthropic_base_url_may_end_in_v1() {
    let mock = MockServer::start(0).await.unwrap();
    let cfg = common::config_with(
        &[("up", ProviderKind::Anthropic, &format!("{}/v1/", mock.url()))],
        &[("m", "up", upstream_model(ProviderKind::Anthropic), "cloud")],
    );
    let gw = TestGateway::start(cfg).await;
    let r = chat(&gw, &anthropic_joke(false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(only_request(&mock).path, "/v1/messages");
}

#[tokio::test]
async fn anthropic_429_keeps_retry_after() {
    let (mock, gw) = setup_with(ProviderKind::Anthropic, no_breaker).await;
    mock.handle.set_default(Behavior {
        retry_after_secs: Some(7),
        error_message: Some("Number of request tokens has exceeded your per-minute rate limit".into()),
        ..Behavior::status(429)
    });
    for stream in [false, true] {
        let r = chat(&gw, &anthropic_joke(stream)).await;
        assert_eq!(r.status, 429, "stream={stream}: {}", r.text);
        assert_eq!(r.header("retry-after"), Some("7"), "stream={stream}");
        let v = r.json();
        assert_openai_error(&v);
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("per-minute rate limit"),
            "the upstream's message is kept: {v}"
        );
    }
}

#[tokio::test]
async fn anthropic_overloaded_529_becomes_openai_shaped_5xx() {
    let (mock, gw) = setup_with(ProviderKind::Anthropic, no_breaker).await;
    mock.handle.set_default(Behavior {
        error_message: Some("Overloaded".into()),
        ..Behavior::status(529)
    });
    for stream in [false, true] {
        let r = chat(&gw, &anthropic_joke(stream)).await;
        assert!(
            matches!(r.status, 502 | 503),
            "529 overloaded must become 502/503, got {}: {}",
            r.status,
            r.text
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        let v = r.json();
        assert_openai_error(&v);
        assert!(v["error"]["message"].as_str().unwrap().contains("Overloaded"), "{v}");
        // Nothing of Anthropic's error envelope is passed on as is.
        assert!(v.get("type").is_none(), "{v}");
    }
    assert!(mock.handle.hits() >= 2);
}

// ---- Hugging Face TGI ------------------------------------------------------------------------------

#[tokio::test]
async fn huggingface_wire_request_matches_tgi() {
    let (mock, gw) = setup(ProviderKind::Huggingface).await;
    let r = chat(
        &gw,
        &json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Name a colour."}
            ],
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["END"],
            "seed": 3
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let up = only_request(&mock);
    assert_eq!(up.path, "/generate");
    let expected = json!({
        "inputs": "System: You are terse.\n\nUser: Hello\n\nAssistant: Hi.\n\nUser: Name a colour.\n\nAssistant:",
        "parameters": {
            "max_new_tokens": 64,
            "do_sample": true,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["END", "\nUser:"],
            "seed": 3,
            "details": true,
            "return_full_text": false
        }
    });
    assert_eq!(up.body, expected);
    assert!(header(&up, "authorization").is_none());

    // Streaming goes to /generate_stream; temperature 0 is greedy decoding.
    let r = chat(
        &gw,
        &json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Be exact."}],
            "temperature": 0,
            "stream": true
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reqs = mock.handle.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].path, "/generate_stream");
    let expected = json!({
        "inputs": "User: Be exact.\n\nAssistant:",
        "parameters": {"do_sample": false, "stop": ["\nUser:"], "details": true, "return_full_text": false}
    });
    assert_eq!(reqs[1].body, expected);
}

#[tokio::test]
async fn huggingface_json_and_stream_are_translated() {
    let (mock, gw) = setup(ProviderKind::Huggingface).await;
    let answer = "The sky is blue.";
    mock.handle.set_default(Behavior {
        text: Some(answer.into()),
        ..Default::default()
    });
    let r = chat(&gw, &common::chat_body("m", "What colour is the sky?")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")), "{v}");
    assert_eq!(v["model"], "tgi-upstream");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], answer);
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "eos_token -> stop");
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().is_some_and(|p| p > 0), "{v}");
    assert!(u["completion_tokens"].as_u64().is_some_and(|p| p > 0), "{v}");
    // This mock's TGI reports no prompt length, so the gateway estimates usage, and says so.
    assert_eq!(v["optiroute"]["usage_estimated"], true, "{v}");
    for k in ["generated_text", "details"] {
        assert!(v.get(k).is_none(), "TGI field `{k}` in the response: {v}");
    }

    let mut body = common::chat_body("m", "What colour is the sky, streamed?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let chunks = openai_sse(&r.text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", r.text);
    assert_eq!(text_of(&chunks), answer);
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(
        last["usage"]["completion_tokens"].as_u64().is_some_and(|c| c > 0),
        "{last}"
    );
    assert_eq!(usage_chunks(&chunks).len(), 1);
    assert_eq!(mock.handle.hits(), 2);
}

#[tokio::test]
async fn huggingface_error_bodies_are_mapped() {
    let (mock, gw) = setup_with(ProviderKind::Huggingface, no_breaker).await;
    // (upstream status, TGI message, expected client status, expected error type)
    let cases = [
        (
            422,
            "Input validation error: `inputs` must have less than 1024 tokens",
            422,
            "invalid_request_error",
        ),
        (429, "Model is overloaded", 429, "rate_limit_error"),
        (500, "CUDA out of memory", 502, "upstream_error"),
        (503, "Model is currently loading", 503, "upstream_error"),
    ];
    for (i, (up_status, msg, status, kind)) in cases.into_iter().enumerate() {
        mock.handle.set_default(Behavior {
            error_message: Some(msg.into()),
            ..Behavior::status(up_status)
        });
        for stream in [false, true] {
            let mut body = common::chat_body("m", &format!("error case {i}"));
            body["stream"] = json!(stream);
            let r = chat(&gw, &body).await;
            assert_eq!(r.status, status, "TGI {up_status} (stream={stream}): {}", r.text);
            let v = r.json();
            assert_openai_error(&v);
            assert_eq!(v["error"]["type"], kind, "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(msg),
                "TGI's message is kept: {v}"
            );
            assert!(v.get("error_type").is_none(), "{v}");
        }
    }
}

#[tokio::test]
async fn huggingface_stop_strings_are_not_returned() {
    let (mock, gw) = setup(ProviderKind::Huggingface).await;
    // TGI stops *after* generating a stop string and returns it; OpenAI clients never see it.
    mock.handle.set_default(Behavior {
        text: Some("Paris. END".into()),
        ..Default::default()
    });
    let mut body = common::chat_body("m", "Capital of France?");
    body["stop"] = json!(["END"]);
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Paris. ");

    body["stream"] = json!(true);
    let r = chat(&gw, &body).await;
    let chunks = openai_sse(&r.text);
    assert_eq!(text_of(&chunks), "Paris. ");
    assert_eq!(finish_reasons(&chunks), ["stop"]);
}

// ---- mid-stream failures ---------------------------------------------------------------------------

const FIVE: &str = "one two three four five";

/// A stream cut by the upstream after two content pieces: the client gets those pieces, then one
/// OpenAI-shaped error event, and no [DONE]; the gateway does not retry after the first byte.
async fn midstream_disconnect(kind: ProviderKind) {
    let (mock, gw) = setup(kind).await;
    mock.handle.push(Behavior {
        text: Some(FIVE.into()),
        disconnect_after: Some(2),
        // Paced like a real model, so the pieces before the cut are flushed to the gateway (without
        // pacing the mock's server loses them in the abort and the gateway rightly retries).
        chunk_delay_ms: 20,
        ..Default::default()
    });
    let mut body = common::chat_body("m", "count to five");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = chat(&gw, &body).await;
    assert_eq!(
        r.status, 200,
        "{kind:?}: headers are sent before the failure: {}",
        r.text
    );
    assert!(
        !r.text.contains("[DONE]"),
        "{kind:?}: a broken stream must not end with [DONE]: {}",
        r.text
    );
    let events = sse_events(&r.text);
    let (last, before) = events.split_last().unwrap();
    let err: Value = serde_json::from_str(last).unwrap();
    assert_openai_error(&err);
    assert_eq!(
        err.as_object().map(|o| o.len()),
        Some(1),
        "{kind:?}: only `error`: {err}"
    );
    let chunks: Vec<Value> = before.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{kind:?}: {c}");
    }
    // The mock writes two pieces and then aborts the connection; its HTTP server drops whatever it had
    // not flushed yet (the second piece, when it is written right before the abort), so the client
    // gets the first piece or both, never more and never nothing.
    let text = text_of(&chunks);
    assert!(
        matches!(text.as_str(), "one" | "one two"),
        "{kind:?}: the client gets the pieces sent before the cut, got {text:?}: {}",
        r.text
    );
    assert!(
        finish_reasons(&chunks).is_empty(),
        "{kind:?}: no finish_reason: {}",
        r.text
    );
    assert!(usage_chunks(&chunks).is_empty(), "{kind:?}: {}", r.text);
    assert_eq!(mock.handle.hits(), 1, "{kind:?}: no retry after the first byte");
}

#[tokio::test]
async fn midstream_disconnect_openai() {
    midstream_disconnect(ProviderKind::Openai).await;
}

#[tokio::test]
async fn midstream_disconnect_anthropic() {
    midstream_disconnect(ProviderKind::Anthropic).await;
}

#[tokio::test]
async fn midstream_disconnect_huggingface() {
    midstream_disconnect(ProviderKind::Huggingface).await;
}

/// Two mocks of `kind`; deployments `first` (on mock A) and `second` (on mock B) in model group `g`
/// with the priority strategy.
async fn fallback_setup(kind: ProviderKind) -> (MockServer, MockServer, TestGateway) {
    let a = MockServer::start(0).await.unwrap();
    let b = MockServer::start(0).await.unwrap();
    let mut cfg = common::config_with(
        &[("pa", kind, &base_url(kind, &a)), ("pb", kind, &base_url(kind, &b))],
        &[
            ("first", "pa", upstream_model(kind), "cloud"),
            ("second", "pb", upstream_model(kind), "cloud"),
        ],
    );
    cfg.cache.enabled = false;
    cfg.models.push(ModelGroupConfig {
        name: "g".into(),
        deployments: vec!["first".into(), "second".into()],
        strategy: Strategy::Priority,
        cache_ttl_secs: None,
    });
    let gw = TestGateway::start(cfg).await;
    (a, b, gw)
}

const FROM_B: &str = "the answer from the second deployment";

/// The first deployment fails with `failing` before any chunk; the stream (and a JSON request, if
/// `failing` breaks those too) falls back to the second and the client gets one complete answer, B's,
/// once.
async fn fallback_before_first_chunk(kind: ProviderKind, failing: Behavior, json_fails_too: bool) {
    let (a, b, gw) = fallback_setup(kind).await;
    a.handle.set_default(failing);
    b.handle.set_default(Behavior {
        text: Some(FROM_B.into()),
        ..Default::default()
    });
    let mut body = common::chat_body("g", "who answers?");
    body["stream"] = json!(true);
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{kind:?}: {}", r.text);
    let chunks = openai_sse(&r.text);
    assert_eq!(text_of(&chunks), FROM_B, "{kind:?}: one complete answer: {}", r.text);
    assert_eq!(finish_reasons(&chunks), ["stop"], "{kind:?}");
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"].is_string())
        .count();
    assert_eq!(roles, 1, "{kind:?}: one assistant turn: {}", r.text);
    assert_eq!(r.header("x-optiroute-deployment"), Some("second"), "{kind:?}");
    assert!(a.handle.hits() >= 1, "{kind:?}: the first deployment was tried");
    assert_eq!(b.handle.hits(), 1, "{kind:?}");

    if json_fails_too {
        let r = chat(&gw, &common::chat_body("g", "who answers, in JSON?")).await;
        assert_eq!(r.status, 200, "{kind:?}: {}", r.text);
        assert_eq!(r.json()["choices"][0]["message"]["content"], FROM_B, "{kind:?}");
        assert_eq!(r.header("x-optiroute-deployment"), Some("second"), "{kind:?}");
        assert_eq!(b.handle.hits(), 2, "{kind:?}");
    }
}

fn unavailable() -> Behavior {
    Behavior {
        error_message: Some("backend down".into()),
        ..Behavior::status(503)
    }
}

#[tokio::test]
async fn fallback_before_first_chunk_openai() {
    fallback_before_first_chunk(ProviderKind::Openai, unavailable(), true).await;
}

#[tokio::test]
async fn fallback_before_first_chunk_anthropic() {
    fallback_before_first_chunk(ProviderKind::Anthropic, unavailable(), true).await;
}

#[tokio::test]
async fn fallback_before_first_chunk_huggingface() {
    fallback_before_first_chunk(ProviderKind::Huggingface, unavailable(), true).await;
}

/// An upstream that accepts the stream and then breaks off before any content.
fn cut_before_content() -> Behavior {
    Behavior {
        disconnect_after: Some(0),
        ..Default::default()
    }
}

#[tokio::test]
async fn fallback_when_stream_breaks_before_content_huggingface() {
    fallback_before_first_chunk(ProviderKind::Huggingface, cut_before_content(), false).await;
}

#[tokio::test]
async fn fallback_when_stream_breaks_before_content_openai() {
    fallback_before_first_chunk(ProviderKind::Openai, cut_before_content(), false).await;
}

#[tokio::test]
async fn fallback_when_stream_breaks_before_content_anthropic() {
    fallback_before_first_chunk(ProviderKind::Anthropic, cut_before_content(), false).await;
}

// ---- provider keys (real binary: an env var can only be set for a child process) ------------------

/// The `optiroute` binary serving `config` with `env` set; stdout and stderr are collected.
struct BinaryGateway {
    child: tokio::process::Child,
    url: String,
    out: tokio::task::JoinHandle<String>,
    err: tokio::task::JoinHandle<String>,
}

impl BinaryGateway {
    async fn serve(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> BinaryGateway {
        use tokio::io::AsyncBufReadExt;
        let path = dir.join("optiroute.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_optiroute"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let out = tokio::spawn(async move {
            let mut all = String::new();
            let mut tx = Some(tx);
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(url) = l.strip_prefix("OPTIROUTE_LISTENING ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
                all.push_str(&l);
                all.push('\n');
            }
            all
        });
        let mut errs = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let err = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(l)) = errs.next_line().await {
                all.push_str(&l);
                all.push('\n');
            }
            all
        });
        let url = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!("gateway did not start; stderr:\n{}", err.await.unwrap_or_default());
            }
        };
        BinaryGateway { child, url, out, err }
    }

    /// Stops the process (SIGTERM through `kill`, then SIGKILL if it lingers); returns stdout + stderr.
    async fn stop(mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let out = self.out.await.unwrap_or_default();
        let err = self.err.await.unwrap_or_default();
        format!("{out}{err}")
    }
}

#[tokio::test]
async fn anthropic_api_key_from_env_is_sent_and_never_echoed() {
    let mock = MockServer::start(0).await.unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let key = format!("sk-ant-it-{nanos:x}-{}", std::process::id());
    let var = "OPTIROUTE_IT_PROVIDERS_ANTHROPIC_KEY";
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[cache]
enabled = false

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{}"
api_key_env = "{var}"

[[deployments]]
name = "m"
provider = "claude"
model = "claude-upstream"
tier = "cloud"
"#,
        mock.url()
    );
    let gw = BinaryGateway::serve(dir.path(), &config, &[(var, &key)]).await;
    let chat_url = format!("{}/v1/chat/completions", gw.url);
    let mut seen: Vec<String> = Vec::new();

    let r = post(&chat_url, &anthropic_joke(false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    seen.push(format!("{:?}\n{}", r.headers, r.text));
    let r = post(&chat_url, &anthropic_joke(true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    openai_sse(&r.text);
    seen.push(format!("{:?}\n{}", r.headers, r.text));
    // An upstream that rejects the key: the client learns it failed, not what the key was.
    mock.handle.set_default(Behavior {
        error_message: Some("invalid x-api-key".into()),
        ..Behavior::status(401)
    });
    for stream in [false, true] {
        let r = post(&chat_url, &anthropic_joke(stream)).await;
        assert_eq!(
            r.status, 502,
            "upstream auth failure is the gateway's problem: {}",
            r.text
        );
        assert_openai_error(&r.json());
        seen.push(format!("{:?}\n{}", r.headers, r.text));
    }
    for path in [
        "/v1/models",
        "/health",
        "/ready",
        "/metrics",
        "/api/stats",
        "/admin/breakers",
    ] {
        let resp = common::client().get(format!("{}{path}", gw.url)).send().await.unwrap();
        let headers = format!("{:?}", resp.headers());
        seen.push(format!("{path}\n{headers}\n{}", resp.text().await.unwrap()));
    }

    // Every upstream request carried the key in x-api-key (the mock records its length only), with
    // the API version, and never as a bearer token.
    let reqs = mock.handle.requests();
    assert_eq!(reqs.len(), 2 + 2, "2 served + 2 rejected (a 401 is not retried)");
    for up in &reqs {
        let expected_len = format!("<{} bytes>", key.len());
        assert_eq!(header(up, "x-api-key"), Some(expected_len.as_str()), "{up:?}");
        assert_eq!(header(up, "anthropic-version"), Some("2023-06-01"));
        assert!(header(up, "authorization").is_none(), "{up:?}");
    }

    let logs = gw.stop().await;
    assert!(logs.contains("OPTIROUTE_LISTENING"), "logs were captured: {logs}");
    for s in &seen {
        assert!(!s.contains(&key), "provider key in a response:\n{s}");
    }
    assert!(!logs.contains(&key), "provider key in the logs:\n{logs}");

    // check-config shows the variable's name, never its value.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_optiroute"))
        .arg("check-config")
        .arg("--config")
        .arg(dir.path().join("optiroute.toml"))
        .current_dir(dir.path())
        .env(var, &key)
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains(var), "{printed}");
    assert!(
        !printed.contains(&key),
        "provider key printed by check-config:\n{printed}"
    );
}

// ---- total_ms bounds the whole call -----------------------------------------------------------

/// A loopback upstream that answers each connection after `headers_after` with 200 and the start of
/// a body, then trickles a byte every 100 ms for as long as the client stays (never finishing).
async fn trickling_upstream(headers_after: Duration, content_type: &'static str, first: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head; the body does not matter.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(headers_after).await;
                // No length and no chunking: the body runs until the connection closes.
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n{first}");
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let tick = if content_type == "text/event-stream" {
                    ": ping\n\n"
                } else {
                    " "
                };
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if sock.write_all(tick.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

// Headers come well within first_byte_ms, then the body never completes: the call ends at total_ms
// counted from the request (it used to get total_ms more after the headers). Streaming keeps its
// idle timeout between chunks (the trickle never trips it) and is bounded by the same total.
// Paused clock: the times are exact.
#[tokio::test(start_paused = true)]
async fn total_ms_bounds_header_wait_and_body_together() {
    use futures_util::StreamExt;
    use optiroute::error::UpstreamKind;
    use optiroute::providers::{CallTarget, Provider};

    let total = Duration::from_millis(1_000);
    let headers_after = Duration::from_millis(600);
    let target = CallTarget {
        model: "m",
        default_max_tokens: 16,
    };
    let req: optiroute_protocol::openai::ChatRequest = serde_json::from_value(common::chat_body("m", "x")).unwrap();
    for stream in [false, true] {
        let (content_type, first) = if stream {
            ("text/event-stream", ": open\n\n")
        } else {
            ("application/json", "{\"id\": \"x\",")
        };
        let url = trickling_upstream(headers_after, content_type, first).await;
        let mut cfg =
            optiroute::config::ProviderConfig::new("up", ProviderKind::Openai, Some(format!("{url}/v1")), None);
        cfg.timeouts.first_byte_ms = 60_000;
        cfg.timeouts.idle_ms = 500;
        cfg.timeouts.total_ms = total.as_millis() as u64;
        let provider = Provider::build(&cfg).unwrap();

        let start = tokio::time::Instant::now();
        let err = if stream {
            let mut chunks = provider.chat_stream(&req, &target).await.unwrap();
            loop {
                match chunks.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e,
                    None => panic!("the stream ended without an error"),
                }
            }
        } else {
            provider.chat(&req, &target).await.unwrap_err()
        };
        let took = start.elapsed();
        assert_eq!(err.kind, UpstreamKind::Timeout, "stream={stream}: {err:?}");
        assert!(
            took >= total && took < total + Duration::from_millis(100),
            "stream={stream}: cut after {took:?}, total_ms is {total:?}: {err:?}"
        );
    }
}

// ---- .env -----------------------------------------------------------------------------------------

/// Runs `optiroute check-config` in `dir` (which holds the `.env` under test) with no provider
/// variables of its own; returns success and stdout + stderr.
async fn check_config_in(dir: &std::path::Path) -> (bool, String) {
    optiroute_in(dir, &["check-config"]).await
}

/// Runs the binary with `args` in `dir`, without the provider variables of this environment.
async fn optiroute_in(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_optiroute"));
    cmd.args(args).current_dir(dir);
    for var in [
        "OPTIROUTE_CONFIG",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OLLAMA_HOST",
        "OPTIROUTE_LOCAL_URL",
        "HF_TOKEN",
        "HF_TGI_URL",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().await.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

// A malformed line used to end dotenv parsing silently: the keys after it were dropped and the gateway
// started in demo mode. Now start-up stops, naming the file and line but never the line's text.
#[tokio::test]
async fn a_malformed_dotenv_line_stops_start_up_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "sk-dotenv-secret-31337 pasted without a name";
    std::fs::write(
        dir.path().join(".env"),
        format!("OPENAI_API_KEY=sk-openai-test\n{bad}\nANTHROPIC_API_KEY=sk-ant-test\n"),
    )
    .unwrap();
    let (ok, printed) = check_config_in(dir.path()).await;
    assert!(!ok, "started despite a broken .env:\n{printed}");
    assert!(printed.contains(".env") && printed.contains("line 2"), "{printed}");
    assert!(
        !printed.contains("sk-dotenv-secret-31337") && !printed.contains("sk-openai-test"),
        "{printed}"
    );
    // Help and version still answer.
    let (ok, printed) = optiroute_in(dir.path(), &["--version"]).await;
    assert!(ok && printed.starts_with("optiroute"), "{printed}");

    // Fixed, every key loads (the one after the repaired line too) and demo mode is off.
    std::fs::write(
        dir.path().join(".env"),
        "OPENAI_API_KEY=sk-openai-test\n# a comment\nANTHROPIC_API_KEY=sk-ant-test\n",
    )
    .unwrap();
    let (ok, printed) = check_config_in(dir.path()).await;
    assert!(ok, "{printed}");
    assert!(!printed.contains("demo mode"), "{printed}");
    assert!(
        printed.contains("gpt-4o-mini") && printed.contains("claude-3-5-haiku"),
        "{printed}"
    );

    // No .env at all is fine.
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    let (ok, printed) = check_config_in(dir.path()).await;
    assert!(ok && printed.contains("demo mode"), "{printed}");
}
