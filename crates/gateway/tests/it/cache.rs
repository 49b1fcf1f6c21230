//! Response cache, coalescing and the cost ledger, through the HTTP API.

use std::time::Duration;

use futures_util::future::join_all;
use optiroute::config::Config;
use optiroute::mock::Behavior;
use serde_json::{Value, json};

use crate::common::*;

async fn ask(gw: &TestGateway, body: &Value, headers: &[(&str, &str)]) -> (String, Value) {
    let mut rb = client().post(gw.chat_url()).json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cache = r.headers()["x-optiroute-cache"].to_str().unwrap().to_owned();
    (cache, r.json().await.unwrap())
}

/// Readiness of a Redis cache: polls until a repeated request (model `m`) is a hit, or `within` passes.
async fn until_cached(gw: &TestGateway, prompt: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        ask(gw, &chat_body("m", prompt), &[]).await;
        if ask(gw, &chat_body("m", prompt), &[]).await.0 == "hit" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn miss_then_hit_with_exact_counters_and_ledger() {
    let (mock, gw) = openai_setup(|_| {}).await;
    let c = client();
    // 3 distinct requests (misses), then 2 repeats (hits).
    for t in ["one", "two", "three"] {
        assert_eq!(ask(&gw, &chat_body("m", t), &[]).await.0, "miss");
    }
    let (s1, first_hit) = ask(&gw, &chat_body("m", "one"), &[]).await;
    let (s2, _) = ask(&gw, &chat_body("m", "two"), &[]).await;
    assert_eq!((s1.as_str(), s2.as_str()), ("hit", "hit"));
    assert_eq!(mock.handle.hits(), 3, "hits must not reach the upstream");
    assert_eq!(first_hit["optiroute"]["cost_usd"], 0.0);
    assert!(first_hit["optiroute"]["saved_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(first_hit["optiroute"]["saved_by"], "cache");

    let m = gw.metrics().await;
    assert_eq!(metric(&m, r#"llm_cache_events_total{event_type="miss"}"#), 3.0);
    assert_eq!(metric(&m, r#"llm_cache_events_total{event_type="hit"}"#), 2.0);
    // The mock counts words: prompt = 1 word, reply = "mock reply to: X" = 4 pieces.
    // Price: $1 / 1M input, $2 / 1M output -> (1 * 1 + 4 * 2) = 9 micro-dollars per call.
    let cost = metric(&m, r#"llm_total_cost_usd_total{provider="up",model="upstream-model"}"#);
    assert!((cost - 27e-6).abs() < 1e-12, "{cost}");
    let stats: Value = c
        .get(format!("{}/api/stats", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["cache"]["hits"], 2);
    assert_eq!(stats["cache"]["misses"], 3);
    assert_eq!(stats["requests"], 5);
    assert!((stats["cost_usd"].as_f64().unwrap() - 27e-6).abs() < 1e-12, "{stats}");
    assert!(
        (stats["saved_usd"]["cache"].as_f64().unwrap() - 18e-6).abs() < 1e-12,
        "{stats}"
    );
}

#[tokio::test]
async fn cache_control_and_parameters_change_the_outcome() {
    let (mock, gw) = openai_setup(|_| {}).await;
    let body = chat_body("m", "q");
    assert_eq!(ask(&gw, &body, &[]).await.0, "miss");
    assert_eq!(ask(&gw, &body, &[("cache-control", "no-cache")]).await.0, "bypass");
    assert_eq!(mock.handle.hits(), 2);
    let mut other = body.clone();
    other["temperature"] = json!(0.7);
    assert_eq!(ask(&gw, &other, &[("cache-control", "no-store")]).await.0, "miss");
    assert_eq!(ask(&gw, &other, &[]).await.0, "miss", "no-store must not have stored");
    assert_eq!(ask(&gw, &other, &[]).await.0, "hit");
    let mut reordered: Value =
        serde_json::from_str(r#"{"temperature":0.7,"messages":[{"content":"q","role":"user"}],"model":"m"}"#).unwrap();
    assert_eq!(ask(&gw, &reordered, &[]).await.0, "hit", "key order must not matter");
    reordered["seed"] = json!(3);
    assert_eq!(ask(&gw, &reordered, &[]).await.0, "miss");
    assert_eq!(mock.handle.hits(), 5);
}

#[tokio::test]
async fn nondeterministic_policy_and_errors_are_not_cached() {
    let (mock, gw) = openai_setup(|c| {
        c.cache.cache_nondeterministic = false;
        c.resilience.max_attempts = 1;
    })
    .await;
    let mut hot = chat_body("m", "x");
    hot["temperature"] = json!(1.0);
    assert_eq!(ask(&gw, &hot, &[]).await.0, "bypass");
    assert_eq!(ask(&gw, &hot, &[]).await.0, "bypass");
    mock.handle.push(Behavior::status(500));
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("m", "err"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        ask(&gw, &chat_body("m", "err"), &[]).await.0,
        "miss",
        "an error must not be cached"
    );
    assert_eq!(mock.handle.hits(), 4);
}

#[tokio::test]
async fn streamed_answer_is_cached_and_replayed_as_a_stream() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.push(Behavior {
        text: Some("alpha beta gamma delta".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "s");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let collect = |text: String| {
        let data = sse_data(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let mut out = String::new();
        let mut usage = Value::Null;
        let mut n = 0;
        for d in &data[..data.len() - 1] {
            let v: Value = serde_json::from_str(d).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                out.push_str(c);
                n += 1;
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
                assert_eq!(v["choices"], json!([]));
            }
        }
        (out, usage, n)
    };
    let r1 = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r1.headers()["x-optiroute-cache"], "miss");
    let (t1, u1, n1) = collect(r1.text().await.unwrap());
    assert_eq!(t1, "alpha beta gamma delta");
    let st = gw.state.clone();
    // Stored once complete (the store happens as the stream ends).
    assert!(
        eventually(Duration::from_secs(5), || st
            .ledger
            .cache_misses
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
    let r2 = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r2.headers()["x-optiroute-cache"], "hit");
    let (t2, u2, n2) = collect(r2.text().await.unwrap());
    assert_eq!((t2.as_str(), n2), (t1.as_str(), n1), "replay must have the same pieces");
    assert_eq!(u1, u2);
    // A non-streaming request for the same content shares the entry.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("stream");
    plain.as_object_mut().unwrap().remove("stream_options");
    let (status, v) = ask(&gw, &plain, &[]).await;
    assert_eq!(status, "hit");
    assert_eq!(v["choices"][0]["message"]["content"], "alpha beta gamma delta");
    assert_eq!(mock.handle.hits(), 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_upstream_call() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.set_default(Behavior {
        delay_ms: 300,
        ..Default::default()
    });
    let body = chat_body("m", "same question");
    let c = client();
    let futs = (0..50).map(|_| c.post(gw.chat_url()).json(&body).send());
    let results = join_all(futs).await;
    let mut texts = Vec::new();
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        texts.push(v["choices"][0]["message"]["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(mock.handle.hits(), 1);
    assert!(texts.iter().all(|t| t == &texts[0]));
    // One lookup went upstream; the others were answered by it, in flight or from the cache.
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let l = &gw.state.ledger;
    assert_eq!(count(&l.cache_misses), 1);
    assert_eq!(count(&l.coalesced) + count(&l.cache_hits), 49);
    assert!(count(&l.coalesced) > 0, "no follower was coalesced");
    // Streams coalesce too (followers wait for the complete answer and get it replayed).
    let mut sbody = chat_body("m", "same stream");
    sbody["stream"] = json!(true);
    let futs = (0..10).map(|_| c.post(gw.chat_url()).json(&sbody).send());
    for r in join_all(futs).await {
        let text = r.unwrap().text().await.unwrap();
        assert!(text.contains("[DONE]"));
    }
    assert_eq!(mock.handle.hits(), 2);
}

#[tokio::test]
async fn streamed_cost_is_estimated_when_upstream_reports_no_usage() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.push(Behavior {
        usage: false,
        text: Some("one two three four five".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "count me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = gw.chat_text(&body).await;
    let data = sse_data(&text);
    let usage_chunk: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage_chunk["optiroute"]["usage_estimated"], true);
    let cost = usage_chunk["optiroute"]["cost_usd"].as_f64().unwrap();
    let completion = usage_chunk["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion >= 5, "{usage_chunk}");
    assert!(cost > 0.0, "a stream without upstream usage must not be recorded at $0");
    let prompt = usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap();
    let expected = (prompt as f64 * 1.0 + completion as f64 * 2.0) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
}

/// A stream whose client leaves before its body is read at all: the chunks the gateway read while the
/// call could still fail over (the opener and the first text) were generated, so they count.
#[tokio::test]
async fn a_stream_dropped_before_its_body_is_read_counts_its_first_chunk() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.push(Behavior {
        usage: false,
        text: Some("Supercalifragilistic expialidocious words follow here".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "leave early");
    body["stream"] = json!(true);
    let req: optiroute_protocol::openai::ChatRequest = serde_json::from_value(body).unwrap();
    let ctx = optiroute::engine::RequestCtx {
        request_id: "dropped-unread".into(),
        forced_tier: None,
        no_cache: false,
        no_store: false,
        tenant: String::new(),
        key: None,
    };
    let reply = optiroute::engine::stream(&gw.state, req, &ctx).await.unwrap();
    drop(reply);
    let stats = &gw.state.ledger.per_deployment[0];
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
    let out = stats.tokens_out.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        out >= 1,
        "the first chunk's text was not counted ({out} completion tokens)"
    );
}

#[tokio::test]
async fn redis_cache_is_shared_and_survives_redis_dying() {
    let Some(mut redis) = Redis::start() else { return };
    let mock = optiroute::mock::MockServer::start(0).await.unwrap();
    let make = |url: String| {
        let mut cfg = config_with(
            &[(
                "up",
                optiroute::config::ProviderKind::Openai,
                &format!("{}/v1", mock.url()),
            )],
            &[("m", "up", "upstream-model", "cloud")],
        );
        cfg.cache.backend = "redis".into();
        cfg.cache.redis_url = Some(url);
        cfg.cache.redis_timeout_ms = 500;
        cfg
    };
    let a = TestGateway::start(make(redis.url())).await;
    let b = TestGateway::start(make(redis.url())).await;
    // Wait until both replicas connected (the first request before that is a counted miss).
    let (sa, sb) = (a.state.clone(), b.state.clone());
    let connected = |st: &optiroute::state::SharedState| st.cache.backend_name() == "redis";
    assert!(connected(&sa) && connected(&sb));
    let body = chat_body("m", "shared");
    let mut got_hit = false;
    for _ in 0..200 {
        ask(&a, &body, &[]).await;
        if ask(&b, &body, &[]).await.0 == "hit" {
            got_hit = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(got_hit, "replica B never saw replica A's cached answer");

    redis.kill();
    let before = mock.handle.hits();
    for i in 0..5 {
        let (status, _) = ask(&a, &chat_body("m", &format!("while down {i}")), &[]).await;
        assert_ne!(status, "hit");
    }
    assert_eq!(
        mock.handle.hits(),
        before + 5,
        "requests still served while Redis is down"
    );
    let m = a.metrics().await;
    assert!(
        m.contains("llm_cache_errors_total{backend=\"redis\""),
        "cache errors are counted"
    );

    assert!(redis.restart(), "redis restarts");
    assert!(
        until_cached(&a, "after", Duration::from_secs(10)).await,
        "the cache did not recover after Redis came back"
    );
    let _ = Config::test_default();
}

#[tokio::test]
async fn a_follower_whose_leader_outlives_the_deadline_calls_upstream_itself() {
    let (mock, gw) = openai_setup(|c| {
        c.resilience.deadline_ms = 500;
        c.resilience.breaker.consecutive_failures = 1;
    })
    .await;
    // A live stream is bounded by the deadline only until its first byte: this one lasts ~1.2 s.
    mock.handle.set_default(Behavior {
        chunk_delay_ms: 150,
        text: Some("one two three four five six seven eight".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "long story");
    body["stream"] = json!(true);
    let (url, b1) = (gw.chat_url(), body.clone());
    let leader = tokio::spawn(async move {
        let r = client().post(url).json(&b1).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert!(eventually(Duration::from_secs(5), || mock.handle.hits() == 1).await);
    // The follower waits for the leader until its deadline, then makes its own call with time to do it.
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let (leader_status, leader_text) = leader.await.unwrap();
    assert_eq!(leader_status, 200, "{leader_text}");
    assert_eq!(status, 200, "follower: {text}");
    assert_eq!(sse_content(&text), "one two three four five six seven eight");
    assert_eq!(mock.handle.hits(), 2);
    assert_eq!(gw.state.deployments[0].breaker.consecutive_failures(), 0);
}

#[tokio::test]
async fn a_client_leaving_while_its_stream_is_cached_leaves_no_request_in_flight() {
    let Some(redis) = Redis::start() else { return };
    let (mock, gw) = openai_setup(|c| {
        c.cache.backend = "redis".into();
        c.cache.redis_url = Some(redis.url());
        c.cache.redis_timeout_ms = 2_000;
    })
    .await;
    assert!(
        until_cached(&gw, "warm", Duration::from_secs(5)).await,
        "the Redis cache never connected"
    );
    // A slow Redis: writes wait for 3 s, reads go on.
    assert_eq!(redis.query("CLIENT PAUSE 3000 WRITE"), "+OK");
    mock.handle.push(Behavior {
        text: Some("a b c".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "stream me");
    body["stream"] = json!(true);
    let mut r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"finish_reason\":\"stop\"") {
        let c = r
            .chunk()
            .await
            .unwrap()
            .expect("the stream ends after its finish chunk");
        seen.push_str(&String::from_utf8_lossy(&c));
    }
    // The whole answer is out and the gateway's write of it is held by Redis: the client leaves now.
    assert!(
        eventually(Duration::from_secs(5), || redis
            .query("INFO clients")
            .contains("blocked_clients:1"))
        .await
    );
    drop(r);
    let d = &gw.state.deployments[0];
    assert!(
        eventually(Duration::from_secs(10), || d
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0)
        .await,
        "in-flight count leaked"
    );
}

/// Sends `body` as a streamed request; returns the cache status and the raw SSE text.
async fn stream_raw(gw: &TestGateway, body: &Value) -> (String, String) {
    let mut b = body.clone();
    b["stream"] = json!(true);
    let r = client().post(gw.chat_url()).json(&b).send().await.unwrap();
    let cache = r.headers()["x-optiroute-cache"].to_str().unwrap().to_owned();
    (cache, r.text().await.unwrap())
}

/// A gateway whose model `m` is served by [`scripted_upstream`] with `bodies`.
async fn scripted_gateway(bodies: Vec<String>) -> TestGateway {
    let url = scripted_upstream(bodies).await;
    let cfg = config_with(
        &[("up", optiroute::config::ProviderKind::Openai, &url)],
        &[("m", "up", "up-model", "cloud")],
    );
    TestGateway::start(cfg).await
}

/// A loopback OpenAI-compatible upstream that answers each request with the next of `bodies`
/// (`text/event-stream` when the request asked for a stream, else JSON), the last one repeated.
async fn scripted_upstream(bodies: Vec<String>) -> String {
    use std::sync::{Arc, Mutex};
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(bodies)));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::body::Bytes| {
            let queue = queue.clone();
            async move {
                let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let next = {
                    let mut q = queue.lock().unwrap();
                    if q.len() > 1 { q.pop_front() } else { q.front().cloned() }
                }
                .unwrap_or_default();
                let ct = if req["stream"] == true {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                ([(axum::http::header::CONTENT_TYPE, ct)], next)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn sse(chunks: &[Value]) -> String {
    let mut out: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}

fn chunk(choices: Value) -> Value {
    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model", "choices": choices})
}

// An upstream that reports no usage: the completion tokens are estimated from what was generated,
// which is every choice's text and every tool call, not only the text of the first choice (a tool-call
// answer was estimated at 0 completion tokens, and `n = 2` at the first choice's share).
#[tokio::test]
async fn estimated_usage_counts_tool_calls_and_every_choice() {
    let args = r#"{\"city\": \"Paris\", \"unit\": \"celsius\", \"days\": 3}"#;
    let tool_stream = sse(&[
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1",
            "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]),
        ),
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments":
            serde_json::from_str::<String>(&format!("\"{args}\"")).unwrap()}}]}, "finish_reason": null}]),
        ),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
    ]);
    let two_choices = sse(&[
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": "alpha beta gamma"}, "finish_reason": null},
                     {"index": 1, "delta": {"role": "assistant", "content": "delta epsilon zeta eta theta"}, "finish_reason": null}]),
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}, {"index": 1, "delta": {}, "finish_reason": "stop"}]),
        ),
    ]);
    let tool_json = json!({"id": "c2", "object": "chat.completion", "created": 1, "model": "up-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather",
                "arguments": serde_json::from_str::<String>(&format!("\"{args}\"")).unwrap()}}]}}]})
    .to_string();
    let gw = scripted_gateway(vec![tool_stream, two_choices, tool_json]).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let stream_usage = |text: String| {
        let data = sse_data(&text);
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(last["optiroute"]["usage_estimated"], true, "{last}");
        last["usage"]["completion_tokens"].as_u64().unwrap()
    };
    let send = |body: Value| {
        let gw = &gw;
        async move { gw.chat_text(&body).await }
    };

    let mut body = chat_body("m", "weather in Paris?");
    body["tools"] = tools.clone();
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let tool_tokens = stream_usage(send(body.clone()).await);
    // "get_weather" and the arguments: well over 10 tokens with any tokenizer.
    assert!(
        tool_tokens >= 10,
        "a streamed tool call was estimated at {tool_tokens} completion tokens"
    );

    let mut body = chat_body("m", "two answers please");
    body["n"] = json!(2);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let n2_tokens = stream_usage(send(body).await);
    let first_only = optiroute_protocol::usage::count_text("alpha beta gamma");
    let both = first_only + optiroute_protocol::usage::count_text("delta epsilon zeta eta theta");
    assert_eq!(n2_tokens, both, "n = 2: both choices were generated and paid for");

    let mut body = chat_body("m", "weather in Paris, as JSON?");
    body["tools"] = tools;
    let v: Value = serde_json::from_str(&send(body).await).unwrap();
    assert_eq!(v["optiroute"]["usage_estimated"], true, "{v}");
    let json_tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        json_tokens >= 10,
        "a tool call was estimated at {json_tokens} completion tokens"
    );
    assert_eq!(
        json_tokens, tool_tokens,
        "the same call, streamed or not, is estimated the same"
    );
}

// An answer with log probabilities is never served without them: a streamed answer was stored as its
// text alone, so the next identical request (streamed, or not: they share the key) got the answer
// without the `logprobs` it asked for. Such a stream is not stored; a JSON answer that carries them is
// stored whole, served to JSON requests, and replayed to streams with its logprobs beside the text.
#[tokio::test]
async fn answers_with_logprobs_are_never_served_without_them() {
    let lp = |t: &str| json!({"content": [{"token": t, "logprob": -0.25, "bytes": null, "top_logprobs": []}]});
    let stream = sse(&[
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        ),
        chunk(json!([{"index": 0, "delta": {"content": "Paris"}, "logprobs": lp("Paris"), "finish_reason": null}])),
        chunk(json!([{"index": 0, "delta": {"content": "."}, "logprobs": lp("."), "finish_reason": null}])),
        chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])),
    ]);
    let completion = json!({"id": "c2", "object": "chat.completion", "created": 1, "model": "up-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Paris."},
            "logprobs": {"content": [{"token": "Paris", "logprob": -0.25, "bytes": null, "top_logprobs": []},
                                     {"token": ".", "logprob": -0.25, "bytes": null, "top_logprobs": []}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    .to_string();
    // Each request gets the next body; the answer's form follows what the gateway asked for.
    // The upstream is asked three times: two streams (not stored), then the JSON answer (stored).
    let gw = scripted_gateway(vec![stream.clone(), stream, completion]).await;
    let mut body = chat_body("m", "capital of France?");
    body["logprobs"] = json!(true);
    let ask_stream = || async {
        let (cache, text) = stream_raw(&gw, &body).await;
        // Log probabilities of the tokens the stream carried, over all its chunks.
        let tokens = sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["choices"][0]["logprobs"]["content"].as_array().map(Vec::len))
            .sum::<usize>();
        (cache, sse_content(&text), tokens)
    };
    let (cache, text, n) = ask_stream().await;
    assert_eq!((cache.as_str(), text.as_str(), n), ("miss", "Paris.", 2));
    let (cache, text, n) = ask_stream().await;
    assert_eq!(
        (text.as_str(), n),
        ("Paris.", 2),
        "second stream ({cache}) lost its logprobs"
    );
    let (cache, v) = ask(&gw, &body, &[]).await;
    assert!(
        v["choices"][0]["logprobs"]["content"].is_array(),
        "JSON ({cache}) without logprobs: {v}"
    );
    // The JSON answer is kept for JSON requests...
    let (cache, v) = ask(&gw, &body, &[]).await;
    assert_eq!(cache, "hit");
    assert!(v["choices"][0]["logprobs"]["content"].is_array(), "{v}");
    // ... and replayed to a stream with them.
    let (cache, text, n) = ask_stream().await;
    assert_eq!(
        (cache.as_str(), text.as_str(), n),
        ("hit", "Paris.", 2),
        "stream after a JSON answer"
    );
}

// A JSON answer is paid for before it is stored: a client that leaves while the store waits on a slow
// Redis must not take the request's cost out of the ledger's total and the request log.
#[tokio::test]
async fn a_client_leaving_while_its_answer_is_cached_still_has_its_cost_counted() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_mock, gw) = openai_setup(|c| {
        c.cache.backend = "redis".into();
        c.cache.redis_url = Some(redis.url());
        c.cache.redis_timeout_ms = 2_000;
        c.store.database_url = Some(format!("sqlite://{}?mode=rwc", dir.path().join("log.db").display()));
    })
    .await;
    assert!(
        until_cached(&gw, "warm", Duration::from_secs(5)).await,
        "the Redis cache never connected"
    );
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let l = &gw.state.ledger;
    let (requests, cost) = (count(&l.requests), count(&l.cost));
    assert!(cost > 0 && cost == count(&l.per_deployment[0].cost));
    // A slow Redis: writes wait for 3 s.
    assert_eq!(redis.query("CLIENT PAUSE 3000 WRITE"), "+OK");
    let (url, body) = (gw.chat_url(), chat_body("m", "leave early"));
    let req = tokio::spawn(async move { client().post(url).json(&body).send().await });
    assert!(
        eventually(Duration::from_secs(5), || redis
            .query("INFO clients")
            .contains("blocked_clients:1"))
        .await
    );
    // The answer is paid for and its store waits on Redis: the client leaves now.
    req.abort();
    assert!(
        eventually(Duration::from_secs(10), || count(&l.requests) == requests + 1).await,
        "the request was never counted"
    );
    assert_eq!(
        count(&l.cost),
        count(&l.per_deployment[0].cost),
        "the ledger lost its cost"
    );
    assert!(count(&l.cost) > cost);
    let store = gw.state.request_log.store().unwrap().clone();
    assert!(gw.state.request_log.flush(Duration::from_secs(5)).await);
    let rows = optiroute::request_log::recent(&store, 100).await.unwrap();
    assert_eq!(rows.len() as u64, requests + 1, "one request-log row per request");
}

/// A leader whose client leaves hands its flight to one of the requests waiting on it: one more
/// upstream call, not one per waiting request (JSON and streams).
#[tokio::test]
async fn followers_of_a_cancelled_leader_elect_one_new_leader() {
    let (mock, gw) = openai_setup(|_| {}).await;
    let c = client();
    for (round, stream) in [false, true].into_iter().enumerate() {
        // The leader's upstream call never answers; the next one answers after a moment.
        mock.handle.push(Behavior {
            hang: true,
            ..Default::default()
        });
        mock.handle.set_default(Behavior {
            delay_ms: 200,
            ..Default::default()
        });
        let mut body = chat_body("m", &format!("asked by many, round {round}"));
        if stream {
            body["stream"] = json!(true);
        }
        let hits = mock.handle.hits();
        let leader = tokio::spawn(c.post(gw.chat_url()).json(&body).send());
        assert!(eventually(Duration::from_secs(10), || mock.handle.hits() == hits + 1).await);
        let followers = tokio::spawn(join_all((0..10).map(|_| c.post(gw.chat_url()).json(&body).send())));
        // All ten are in their handlers, waiting on the leader.
        assert!(eventually(Duration::from_secs(10), || gw.state.metrics.in_flight.get() == 11).await);
        leader.abort();
        let mut texts = Vec::new();
        for r in followers.await.unwrap() {
            let r = r.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.text().await.unwrap();
            texts.push(match stream {
                true => sse_content(&body),
                false => serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            });
        }
        let want = format!("mock reply to: asked by many, round {round}");
        assert!(texts.iter().all(|t| *t == want), "{texts:?}");
        // The cancelled call and one more: a follower that woke late finds the answer in the cache.
        assert_eq!(mock.handle.hits(), hits + 2, "stream: {stream}");
        assert!(eventually(Duration::from_secs(10), || gw.state.metrics.in_flight.get() == 0).await);
    }
}

// An upstream answer that is not a whole answer is served but not cached: a JSON body with no choice,
// and a stream that ended (with `[DONE]`) before any finish reason, which a proxy cutting it short
// produces. Both were stored and replayed to every identical request for the cache's TTL.
#[tokio::test]
async fn incomplete_upstream_answers_are_not_cached() {
    let empty = json!({"id": "c3", "object": "chat.completion", "created": 1, "model": "up-model",
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}})
    .to_string();
    let cut = sse(&[
        chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "The answer"}, "finish_reason": null}])),
        chunk(json!([{"index": 0, "delta": {"content": " is"}, "finish_reason": null}])),
    ]);
    let whole = sse(&[
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": "The answer is 4."}, "finish_reason": null}]),
        ),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
    ]);
    let gw = scripted_gateway(vec![empty, cut, whole]).await;
    let body = chat_body("m", "2 + 2?");
    let (cache, v) = ask(&gw, &body, &[]).await;
    assert_eq!(
        (cache.as_str(), v["choices"].as_array().map(Vec::len)),
        ("miss", Some(0))
    );
    // Not kept: the next request (a stream) asks upstream, and gets the cut stream.
    let ask_stream = || async {
        let (cache, text) = stream_raw(&gw, &body).await;
        (cache, sse_content(&text))
    };
    assert_eq!(ask_stream().await, ("miss".to_owned(), "The answer is".to_owned()));
    // The cut stream is not replayed: the whole one is fetched, then kept.
    assert_eq!(ask_stream().await, ("miss".to_owned(), "The answer is 4.".to_owned()));
    assert_eq!(ask_stream().await, ("hit".to_owned(), "The answer is 4.".to_owned()));
}

// A stream that breaks off after the upstream reported its usage (as servers that report usage with
// every chunk do) is logged with that usage as exact, not as an estimate.
#[tokio::test]
async fn a_broken_stream_keeps_the_usage_its_upstream_reported() {
    let mut cut = String::new();
    for c in [
        chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": "Half an"}, "finish_reason": null}])),
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up-model", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}),
    ] {
        cut.push_str(&format!("data: {c}\n\n"));
    }
    // No finish reason and no [DONE]: the connection just ends.
    let url = scripted_upstream(vec![cut]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_with(
        &[("up", optiroute::config::ProviderKind::Openai, &url)],
        &[("m", "up", "up-model", "cloud")],
    );
    cfg.store.database_url = Some(format!("sqlite://{}", dir.path().join("log.db").display()));
    let gw = TestGateway::start(cfg).await;
    let store = gw.state.request_log.store().cloned().expect("request log on");
    let mut body = chat_body("m", "tell me half");
    body["stream"] = json!(true);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(text.contains("\"error\""), "{text}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = optiroute::request_log::recent(&store, 10).await.unwrap();
        if let Some(row) = rows.into_iter().find(|r| r.request_id == id) {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no request-log row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.status, 502, "{row:?}");
    assert_eq!((row.prompt_tokens, row.completion_tokens), (11, 3), "{row:?}");
    assert!(
        !row.estimated,
        "usage the upstream reported is logged as estimated: {row:?}"
    );
}
