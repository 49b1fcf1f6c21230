//! The OpenAI-compatible surface: errors, limits, timeouts, client disconnects, shutdown.

use std::time::Duration;

use optiroute::mock::Behavior;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn health_ready_models_and_generate() {
    let gw = TestGateway::start(optiroute::config::Config::test_default()).await;
    let c = client();
    let h: Value = c
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(c.get(format!("{}/ready", gw.url)).send().await.unwrap().status(), 200);
    let m: Value = c
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "local", "cloud"]);
    let r = c
        .post(format!("{}/generate", gw.url))
        .json(&json!({"prompt": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let g: Value = r.json().await.unwrap();
    for k in ["response", "provider", "model", "cached", "cost_usd", "latency_ms"] {
        assert!(g.get(k).is_some(), "missing {k}: {g}");
    }
    assert_eq!(g["cached"], false);
    assert!(g["response"].as_str().unwrap().starts_with("[simulated"));
    let again: Value = c
        .post(format!("{}/generate", gw.url))
        .json(&json!({"prompt": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["cached"], true);
    assert_eq!(again["cost_usd"], 0.0);
    assert_eq!(again["response"], g["response"]);
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
    assert!(v["error"]["type"].is_string(), "not OpenAI-shaped: {v}");
    (status, v)
}

#[tokio::test]
async fn bad_input_gets_openai_errors_with_the_right_status() {
    let mut cfg = optiroute::config::Config::test_default();
    cfg.server.body_limit_bytes = 64 * 1024;
    let gw = TestGateway::start(cfg).await;
    let c = client();
    let post = |body: Vec<u8>| {
        c.post(gw.chat_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (s, v) = error_of(post(b"{oops".to_vec()).await.unwrap()).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = error_of(post(br#"{"model":"auto"}"#.to_vec()).await.unwrap()).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("messages")));
    let (s, v) = error_of(
        post(br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("model_not_found")));
    let big = format!(
        r#"{{"model":"auto","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(100 * 1024)
    );
    let (s, v) = error_of(post(big.into_bytes()).await.unwrap()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("request_too_large")));
    let (s, _) = error_of(post(vec![0xff, 0xfe, 0x00]).await.unwrap()).await;
    assert_eq!(s, 400);
    let (s, _) = error_of(c.get(format!("{}/v1/nothing", gw.url)).send().await.unwrap()).await;
    assert_eq!(s, 404);
    // The gateway is still healthy after all that.
    assert_eq!(c.get(format!("{}/health", gw.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_wrong_method_on_a_known_route_gets_an_openai_405_with_allow() {
    let gw = TestGateway::start(optiroute::config::Config::test_default()).await;
    let c = client();
    for (req, allow) in [
        (c.get(gw.chat_url()), "POST"),
        (c.delete(format!("{}/v1/models", gw.url)), "GET,HEAD"),
        (c.put(format!("{}/v1/feedback", gw.url)), "POST"),
    ] {
        let r = req.send().await.unwrap();
        let allowed = r.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allowed.as_deref(), Some(allow));
        let (s, v) = error_of(r).await;
        assert_eq!(s, 405, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    }
}

#[tokio::test]
async fn an_undecodable_path_parameter_gets_an_openai_400() {
    let gw = TestGateway::start(optiroute::config::Config::test_default()).await;
    let c = client();
    for path in ["/v1/models/%FF", "/admin/keys/%FF", "/%FF"] {
        let r = c.get(format!("{}{path}", gw.url)).send().await.unwrap();
        let (s, v) = error_of(r).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
        assert_eq!(v["error"]["code"], "invalid_path", "{path}: {v}");
    }
    // A parameter that decodes is served as before.
    let r = c.get(format!("{}/v1/models/%6Cocal", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn http_duration_is_measured_until_the_response_headers() {
    let (mock, gw) = openai_setup(|_| {}).await;
    // A stream that sends one chunk and then nothing: it has started but not ended.
    mock.handle.push(Behavior {
        text: Some("one two three".into()),
        stall_after: Some(1),
        ..Default::default()
    });
    let mut body = chat_body("m", "x");
    body["stream"] = json!(true);
    let mut r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    // The open stream is already counted: the duration ends at the response headers.
    let m = gw.metrics().await;
    let series = r#"{method="POST",endpoint="/v1/chat/completions",status="200"}"#;
    assert!(
        m.contains(&format!("http_request_duration_seconds_count{series} 1")),
        "{m}"
    );
    // And that is what its HELP text says.
    let help = m
        .lines()
        .find(|l| l.starts_with("# HELP http_request_duration_seconds "))
        .unwrap();
    assert!(help.contains("until its response headers are ready"), "{help}");
    assert!(!help.contains("until the last byte"), "{help}");
    drop(r);
}

#[tokio::test]
async fn upstream_errors_map_faithfully() {
    let (mock, gw) = openai_setup(|c| {
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 100;
    })
    .await;
    let c = client();
    let send = |text: &'static str| c.post(gw.chat_url()).json(&chat_body("m", text)).send();

    let mut b = Behavior::status(429);
    b.retry_after_secs = Some(7);
    mock.handle.push(b);
    let r = send("a").await.unwrap();
    assert_eq!(r.headers().get("retry-after").unwrap(), "7");
    let (s, _) = error_of(r).await;
    assert_eq!(s, 429);

    let mut b = Behavior::status(500);
    b.error_message = Some("the GPU caught fire".into());
    mock.handle.push(b);
    let (s, v) = error_of(send("b").await.unwrap()).await;
    assert_eq!(s, 502);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("the GPU caught fire"),
        "{v}"
    );

    mock.handle.push(Behavior::status(503));
    assert_eq!(error_of(send("c").await.unwrap()).await.0, 503);
    mock.handle.push(Behavior::status(400));
    assert_eq!(error_of(send("d").await.unwrap()).await.0, 400);
}

#[tokio::test]
async fn upstream_timeout_is_a_504() {
    let (mock, gw) = openai_setup(|c| {
        c.resilience.max_attempts = 1;
        c.providers[0].timeouts.first_byte_ms = 200;
    })
    .await;
    mock.handle.push(Behavior {
        hang: true,
        ..Default::default()
    });
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("m", "x"))
        .send()
        .await
        .unwrap();
    let (s, v) = error_of(r).await;
    assert_eq!(s, 504, "{v}");
}

#[tokio::test]
async fn stream_idle_timeout_ends_the_stream_with_an_error() {
    let (mock, gw) = openai_setup(|c| {
        c.providers[0].timeouts.idle_ms = 200;
        c.resilience.max_attempts = 1;
    })
    .await;
    // Output stalls after the first word: the client has it, then gets an error event.
    mock.handle.push(Behavior {
        stall_after: Some(1),
        ..Default::default()
    });
    let mut body = chat_body("m", "one two three");
    body["stream"] = json!(true);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains(r#""content":"mock""#), "{text}");
    let data = sse_data(&text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].as_str().unwrap().contains("stalled"), "{text}");
    assert!(!text.contains("[DONE]"));

    // Stalled before any output: nothing was sent yet, so it is an ordinary upstream timeout.
    mock.handle.push(Behavior {
        stall_after: Some(0),
        ..Default::default()
    });
    body["messages"][0]["content"] = json!("again");
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (mock, gw) = openai_setup(|_| {}).await;
    mock.handle.push(Behavior {
        chunk_delay_ms: 50,
        text: Some("a b c d e f g h i j k l m n o p".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "x");
    body["stream"] = json!(true);
    let mut r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap();
    assert!(first.is_some());
    drop(r);
    let handle = mock.handle.clone();
    assert!(
        eventually(Duration::from_secs(10), || handle.cancelled() == 1).await,
        "upstream stream was not cancelled"
    );
    // A client disconnect is not an upstream fault: the breaker stays closed.
    assert_eq!(gw.state.deployments[0].breaker.consecutive_failures(), 0);
    let st = gw.state.clone();
    assert!(
        eventually(Duration::from_secs(5), || st.deployments[0]
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0)
        .await
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let (mock, mut gw) = openai_setup(|_| {}).await;
    mock.handle.push(Behavior {
        chunk_delay_ms: 20,
        text: Some("one two three four five six".into()),
        ..Default::default()
    });
    let mut body = chat_body("m", "x");
    body["stream"] = json!(true);
    let mut r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    gw.signal_shutdown();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("[DONE]"), "stream was cut by shutdown: {rest}");
    let task = gw.task.take().unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(res.is_ok());
    // New connections are refused after shutdown.
    assert!(client().get(format!("{}/health", gw.url)).send().await.is_err());
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let gw = TestGateway::start(optiroute::config::Config::test_default()).await;
    let c = client();
    let r = c
        .get(format!("{}/health", gw.url))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = c.get(format!("{}/health", gw.url)).send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
}
