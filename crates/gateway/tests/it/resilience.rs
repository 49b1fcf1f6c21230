//! Routing, retries, fallbacks and circuit breakers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use optiroute::config::{Config, ModelGroupConfig, ProviderKind, Strategy};
use optiroute::error::{UpstreamError, UpstreamKind};
use optiroute::mock::{Behavior, MockServer};
use optiroute::resilience::breaker::State;
use optiroute::resilience::retry;
use optiroute::state::AppState;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::*;

/// Two mocks, deployments `a` and `b`, and a priority group `ab`.
async fn two_upstreams(edit: impl FnOnce(&mut Config)) -> (MockServer, MockServer, TestGateway) {
    let m1 = MockServer::start(0).await.unwrap();
    let m2 = MockServer::start(0).await.unwrap();
    let mut cfg = config_with(
        &[
            ("p1", ProviderKind::Openai, &format!("{}/v1", m1.url())),
            ("p2", ProviderKind::Openai, &format!("{}/v1", m2.url())),
        ],
        &[("a", "p1", "model-a", "local"), ("b", "p2", "model-b", "cloud")],
    );
    cfg.models.push(ModelGroupConfig {
        name: "ab".into(),
        deployments: vec!["a".into(), "b".into()],
        strategy: Strategy::Priority,
        cache_ttl_secs: None,
    });
    cfg.cache.enabled = false;
    edit(&mut cfg);
    let gw = TestGateway::start(cfg).await;
    (m1, m2, gw)
}

#[tokio::test]
async fn fallback_serves_when_the_primary_fails_or_times_out() {
    let (m1, m2, gw) = two_upstreams(|c| {
        c.resilience.max_attempts = 2;
        c.resilience.breaker.consecutive_failures = 10;
        c.providers[0].timeouts.first_byte_ms = 300;
    })
    .await;
    m1.handle.push(Behavior::status(500));
    m1.handle.push(Behavior::status(500));
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("ab", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-optiroute-deployment"], "b");
    assert!(
        r.headers()["x-optiroute-route-reason"]
            .to_str()
            .unwrap()
            .starts_with("fallback")
    );
    assert_eq!(
        (m1.handle.hits(), m2.handle.hits()),
        (2, 1),
        "two attempts on a, then b"
    );

    // A hanging primary: its first-byte timeout hands over to b.
    m1.handle.push(Behavior {
        hang: true,
        ..Default::default()
    });
    m1.handle.push(Behavior {
        hang: true,
        ..Default::default()
    });
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("ab", "y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-optiroute-deployment"], "b");
    let m = gw.metrics().await;
    assert!(m.contains(r#"llm_fallbacks_total{from="a",to="b"} 2"#), "{m}");
    assert!(m.contains(r#"llm_retries_total{deployment="a"} 2"#), "{m}");
}

#[tokio::test]
async fn a_client_error_is_not_retried_or_failed_over() {
    let (m1, m2, gw) = two_upstreams(|_| {}).await;
    m1.handle.push(Behavior::status(400));
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("ab", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 0));
    assert_eq!(gw.state.deployments[0].breaker.consecutive_failures(), 0);
}

#[tokio::test]
async fn breaker_opens_after_exactly_n_failures_and_then_sends_nothing() {
    let (m1, _m2, gw) = two_upstreams(|c| {
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 3;
    })
    .await;
    m1.handle.set_default(Behavior::status(503));
    for i in 0..3 {
        let r = client()
            .post(gw.chat_url())
            .json(&chat_body("a", &format!("{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
    }
    assert_eq!(m1.handle.hits(), 3);
    assert_eq!(gw.state.deployments[0].breaker.state(), State::Open);
    for i in 0..5 {
        let r = client()
            .post(gw.chat_url())
            .json(&chat_body("a", &format!("open {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("circuit open"), "{v}");
    }
    assert_eq!(
        m1.handle.hits(),
        3,
        "no request may reach an upstream whose breaker is open"
    );
    // The group still answers through b; the admin view and the gauge show the state.
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("ab", "still up"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = client()
        .get(format!("{}/admin/breakers", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["breakers"][0]["state"], "open");
    assert_eq!(b["breakers"][1]["state"], "closed");
    let m = gw.metrics().await;
    assert!(m.contains(r#"llm_circuit_breaker_state{deployment="a"} 2"#), "{m}");
    assert!(m.contains(r#"llm_circuit_breaker_transitions_total{deployment="a",to="open"} 1"#));
}

#[tokio::test]
async fn the_breaker_gauge_shows_half_open_once_the_cooldown_passed_without_traffic() {
    let (m1, _m2, gw) = two_upstreams(|c| {
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 1;
        c.resilience.breaker.cooldown_secs = 1;
    })
    .await;
    m1.handle.set_default(Behavior::status(503));
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("a", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let gauge = |n| format!(r#"llm_circuit_breaker_state{{deployment="a"}} {n}"#);
    let st = gw.state.clone();
    let m = gw.metrics().await;
    // (Open still after the scrape, so open during it; a slow machine may be past the cooldown.)
    if st.deployments[0].breaker.state() == State::Open {
        assert!(m.contains(&gauge(2)), "{m}");
    }
    // No request comes; the cooldown passes.
    assert!(
        eventually(Duration::from_secs(10), || st.deployments[0].breaker.state()
            == State::HalfOpen)
        .await
    );
    let m = gw.metrics().await;
    assert!(m.contains(&gauge(1)), "{m}");
    assert_eq!(m1.handle.hits(), 1);
}

#[tokio::test]
async fn stream_failing_before_first_byte_falls_back_after_first_byte_does_not() {
    let (m1, m2, gw) = two_upstreams(|c| c.resilience.max_attempts = 1).await;
    let mut body = chat_body("ab", "s");
    body["stream"] = json!(true);
    m1.handle.push(Behavior::status(502));
    m2.handle.push(Behavior {
        text: Some("from b".into()),
        ..Default::default()
    });
    let text = gw.chat_text(&body).await;
    assert_eq!(sse_content(&text), "from b");
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Broken after two content chunks: the client gets those, then an error; nothing is repeated.
    // Paced, so the first chunks are on the wire before the connection breaks.
    m1.handle.push(Behavior {
        text: Some("one two three four".into()),
        disconnect_after: Some(2),
        chunk_delay_ms: 20,
        ..Default::default()
    });
    let before_b = m2.handle.hits();
    let text = gw.chat_text(&body).await;
    let data = sse_data(&text);
    assert_eq!(sse_content(&text), "one two");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(m2.handle.hits(), before_b, "no fallback after the first byte");
}

#[tokio::test]
async fn all_candidates_failing_names_what_was_tried() {
    let (m1, m2, gw) = two_upstreams(|c| c.resilience.max_attempts = 1).await;
    m1.handle.push(Behavior::status(500));
    m2.handle.push(Behavior::status(503));
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("ab", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("a (") && msg.contains("b ("), "{msg}");
    assert_eq!(v["error"]["code"], "all_deployments_failed");
}

// --- Time logic on a paused clock (no network: the upstream call is a closure) ---

async fn paused_state(edit: impl FnOnce(&mut Config)) -> optiroute::state::SharedState {
    let mut cfg = Config::test_default();
    cfg.models.push(ModelGroupConfig {
        name: "both".into(),
        deployments: vec!["local".into(), "cloud".into()],
        strategy: Strategy::Priority,
        cache_ttl_secs: None,
    });
    edit(&mut cfg);
    AppState::new(cfg).await.unwrap()
}

fn plan(st: &AppState, model: &str) -> optiroute::routing::Plan {
    let req = serde_json::from_value(chat_body(model, "x")).unwrap();
    st.router.plan(st, &req, None, "").unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_honour_retry_after_and_backoff() {
    let st = paused_state(|c| {
        c.resilience.max_attempts = 3;
        c.resilience.backoff_base_ms = 100;
        c.resilience.backoff_max_ms = 5_000;
    })
    .await;
    let p = plan(&st, "local");
    let calls = Arc::new(AtomicU32::new(0));
    let start = Instant::now();
    let c2 = calls.clone();
    let served = retry::run(&st, &p, Instant::now() + Duration::from_secs(60), move |_| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                let mut e = UpstreamError::new(UpstreamKind::Status(429), "sim", "slow down");
                e.retry_after = Some(Duration::from_secs(2));
                Err(e)
            } else {
                Ok(n)
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(served.value, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_100),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_cap_falls_back_instead_of_waiting() {
    let st = paused_state(|c| {
        c.resilience.max_attempts = 3;
        c.resilience.backoff_max_ms = 1_000;
    })
    .await;
    let p = plan(&st, "both");
    let start = Instant::now();
    let served = retry::run(&st, &p, Instant::now() + Duration::from_secs(60), |d| {
        let first = d.name == "local";
        async move {
            if first {
                let mut e = UpstreamError::new(UpstreamKind::Status(429), "sim", "quota");
                e.retry_after = Some(Duration::from_secs(30));
                Err(e)
            } else {
                Ok("cloud answered")
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(served.value, "cloud answered");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_all_attempts() {
    let st = paused_state(|c| c.resilience.max_attempts = 5).await;
    let p = plan(&st, "both");
    let start = Instant::now();
    let err = retry::run(&st, &p, Instant::now() + Duration::from_secs(3), |_| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, UpstreamError>(())
    })
    .await
    .err()
    .unwrap();
    assert_eq!(err.status.as_u16(), 504);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn breaker_half_opens_after_cooldown_and_closes_on_a_good_probe() {
    let st = paused_state(|c| {
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 3;
        c.resilience.breaker.cooldown_secs = 30;
    })
    .await;
    let p = plan(&st, "local");
    let fail = || async { Err::<(), _>(UpstreamError::new(UpstreamKind::Status(500), "sim", "boom")) };
    let deadline = || Instant::now() + Duration::from_secs(60);
    for _ in 0..3 {
        assert!(retry::run(&st, &p, deadline(), |_| fail()).await.is_err());
    }
    let calls = Arc::new(AtomicU32::new(0));
    let counting = |calls: Arc<AtomicU32>| {
        move |_: &optiroute::state::Deployment| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, UpstreamError>(()) }
        }
    };
    let e = retry::run(&st, &p, deadline(), counting(calls.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(e.status.as_u16(), 503);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "open: nothing reaches the upstream");
    tokio::time::advance(Duration::from_secs(34)).await;
    let served = retry::run(&st, &p, deadline(), counting(calls.clone())).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one probe after the cooldown");
    let d = &st.deployments[served.dep];
    st.on_transition(d, d.breaker.success(served.permit));
    assert_eq!(d.breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_abandoned_by_its_client_frees_the_half_open_slot() {
    let st = paused_state(|c| {
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 1;
        c.resilience.breaker.cooldown_secs = 30;
        c.resilience.breaker.half_open_probes = 1;
    })
    .await;
    let p = plan(&st, "local");
    let deadline = || Instant::now() + Duration::from_secs(60);
    let fail = || async { Err::<(), _>(UpstreamError::new(UpstreamKind::Status(500), "sim", "boom")) };
    assert!(retry::run(&st, &p, deadline(), |_| fail()).await.is_err());
    tokio::time::advance(Duration::from_secs(34)).await;
    // The half-open probe hangs and its client gives up: the request's future is dropped mid-call.
    let hang = retry::run(&st, &p, deadline(), |_| {
        std::future::pending::<Result<(), UpstreamError>>()
    });
    assert!(tokio::time::timeout(Duration::from_secs(1), hang).await.is_err());
    // The slot is free again: the next request is the probe, and it closes the breaker.
    let served = retry::run(&st, &p, deadline(), |_| async { Ok::<_, UpstreamError>(()) })
        .await
        .expect("a new probe is admitted");
    let d = &st.deployments[served.dep];
    st.on_transition(d, d.breaker.success(served.permit));
    assert_eq!(d.breaker.state(), State::Closed);
}

#[tokio::test]
async fn an_absurd_retry_after_from_upstream_is_answered_not_a_panic() {
    use axum::response::IntoResponse;
    // `Retry-After: 1e30` is a number, but beyond what a Duration holds.
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1e30"), ("content-type", "application/json")],
                r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":null}}"#,
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = config_with(
        &[("up", ProviderKind::Openai, &up)],
        &[("m", "up", "upstream-model", "cloud")],
    );
    let gw = TestGateway::start(cfg).await;
    let r = client().post(gw.chat_url()).json(&chat_body("m", "x")).send().await;
    let r = r.expect("the gateway answered");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

// --- Cost-aware routing ---

async fn route(gw: &TestGateway, body: Value, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut rb = client().post(gw.chat_url()).json(&body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let tier = r
        .headers()
        .get("x-optiroute-tier")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let reason = r
        .headers()
        .get("x-optiroute-route-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, tier, reason)
}

/// The threshold a route reason states ("... threshold 0.523 ...").
fn stated_threshold(reason: &str) -> f32 {
    let rest = &reason[reason.find("threshold ").unwrap() + "threshold ".len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// `usd_per_quality_point`: the threshold follows the strong call's extra cost for each request (prompt
/// and expected output at the deployments' prices), and the decision follows the threshold.
#[tokio::test]
async fn a_cost_weight_sets_each_requests_threshold_from_its_extra_cost() {
    let start = |usd_per_point: f64| async move {
        let mut cfg = Config::test_default();
        cfg.routing.strategy = "learned".into();
        cfg.routing.sticky = false;
        cfg.routing.usd_per_quality_point = Some(usd_per_point);
        cfg.deployments[0].input_usd_per_mtok = Some(0.0);
        cfg.deployments[0].output_usd_per_mtok = Some(0.0);
        cfg.deployments[1].input_usd_per_mtok = Some(10.0);
        cfg.deployments[1].output_usd_per_mtok = Some(30.0);
        cfg.validate("test").unwrap();
        TestGateway::start(cfg).await
    };
    let ask = |max_tokens: u32| {
        let mut b = chat_body("auto", "Prove that the square root of 2 is irrational, step by step.");
        b["max_tokens"] = json!(max_tokens);
        b
    };
    // Quality worth a fortune: any expected gain pays, threshold = 0.5 (gain 0).
    let gw = start(1e9).await;
    let (_, _, reason) = route(&gw, ask(100), &[]).await;
    assert_eq!(stated_threshold(&reason), 0.5, "{reason}");
    assert!(reason.contains("per quality point"), "{reason}");
    // Worth a millionth of a cent: nothing pays, threshold 1, everything stays local.
    let gw = start(1e-9).await;
    let (_, tier, reason) = route(&gw, ask(100), &[]).await;
    assert_eq!((tier.as_str(), stated_threshold(&reason)), ("local", 1.0), "{reason}");
    // In between: a longer expected answer costs more on the cloud, so it needs a higher score.
    let gw = start(0.05).await;
    let (_, short_tier, short) = route(&gw, ask(10), &[]).await;
    let (_, long_tier, long) = route(&gw, ask(1000), &[]).await;
    // 1,000 output tokens at $30/M = $0.03 extra: gain 0.6 needed, threshold 0.8 (plus the prompt).
    assert!(stated_threshold(&short) < 0.52, "{short}");
    assert!((0.8..0.82).contains(&stated_threshold(&long)), "{long}");
    for (tier, reason) in [(short_tier, short), (long_tier, long)] {
        let score: f32 = reason[reason.find("complexity ").unwrap() + 11..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let expected = if score >= stated_threshold(&reason) {
            "cloud"
        } else {
            "local"
        };
        assert_eq!(tier, expected, "{reason}");
    }
}

#[test]
fn a_cost_weight_needs_the_learned_scorer_and_no_share() {
    let mut cfg = Config::test_default();
    cfg.routing.usd_per_quality_point = Some(0.1);
    let err = cfg.validate("test").unwrap_err().to_string();
    assert!(err.contains("learned"), "{err}");
    cfg.routing.strategy = "learned".into();
    cfg.routing.strong_share = Some(0.3);
    let err = cfg.validate("test").unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
    cfg.routing.strong_share = None;
    cfg.routing.usd_per_quality_point = Some(-1.0);
    assert!(cfg.validate("test").is_err());
}

#[tokio::test]
async fn auto_routes_easy_to_local_hard_and_constrained_to_cloud() {
    let gw = TestGateway::start(Config::test_default()).await;
    let (s, tier, _) = route(&gw, chat_body("auto", "What is the capital of France?"), &[]).await;
    assert_eq!((s, tier.as_str()), (200, "local"));
    let hard = "Prove step by step that there are infinitely many primes, then write a Rust function that \
                returns the n-th prime with an efficient sieve, and analyse its time complexity rigorously.";
    let (_, tier, reason) = route(&gw, chat_body("auto", hard), &[]).await;
    assert_eq!(tier, "cloud", "{reason}");
    // Tools: the demo's local tier has none, so a tool request goes to cloud whatever its score.
    let mut tools = chat_body("auto", "hi");
    tools["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let (_, tier, reason) = route(&gw, tools, &[]).await;
    assert_eq!(tier, "cloud");
    assert!(reason.contains("needs_tools"), "{reason}");
    // Context window: 8k for local.
    let long = "word ".repeat(9_000);
    let (_, tier, reason) = route(&gw, chat_body("auto", &long), &[]).await;
    assert_eq!(tier, "cloud");
    assert!(
        reason.contains("context_window") || reason.contains("complexity"),
        "{reason}"
    );
    // Forced tier.
    let (_, tier, reason) = route(&gw, chat_body("auto", hard), &[("x-optiroute-tier", "local")]).await;
    assert_eq!(tier, "local");
    assert!(reason.contains("forced"));
    let (s, _, _) = route(&gw, chat_body("auto", "x"), &[("x-optiroute-tier", "gpu-farm")]).await;
    assert_eq!(s, 400);
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"llm_routing_decisions_total{tier="local",reason="score_low"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"llm_routing_decisions_total{tier="cloud",reason="needs_tools"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn length_strategy_reproduces_the_original_rule_and_bias_shifts_the_threshold() {
    let mut cfg = Config::test_default();
    cfg.routing.strategy = "length".into();
    let gw = TestGateway::start(cfg).await;
    let (_, tier, reason) = route(&gw, chat_body("auto", &"a".repeat(60)), &[]).await;
    assert_eq!(tier, "local", "{reason}");
    let (_, tier, _) = route(&gw, chat_body("auto", &"a".repeat(61)), &[]).await;
    assert_eq!(tier, "cloud");

    let mut cfg = Config::test_default();
    cfg.routing.bias.insert("auto".into(), 1.0);
    let biased = TestGateway::start(cfg).await;
    let (_, tier, _) = route(&biased, chat_body("auto", "hi"), &[]).await;
    assert_eq!(tier, "cloud", "a bias of +1 sends everything to the strong tier");
}

#[tokio::test]
async fn cloud_outage_degrades_to_local() {
    let mut cfg = Config::test_default();
    cfg.providers[1].simulated.failure_rate = 1.0;
    cfg.resilience.max_attempts = 1;
    cfg.cache.enabled = false;
    let gw = TestGateway::start(cfg).await;
    let hard = "Prove step by step that there are infinitely many primes and write code to check it.";
    for _ in 0..5 {
        // Even a request that prefers the strong tier is answered by the local one.
        let (s, tier, reason) = route(&gw, chat_body("auto", hard), &[("x-optiroute-tier", "cloud")]).await;
        assert_eq!((s, tier.as_str()), (200, "local"), "{reason}");
        assert!(reason.starts_with("fallback"), "{reason}");
    }
    assert_eq!(gw.state.deployments[1].breaker.state(), State::Open);
}

/// An `auto` answer from a tier that stood in for a failing one is served but not cached: once the
/// routed tier is back, it answers the prompt (JSON and streams alike).
#[tokio::test]
async fn a_stand_in_tiers_answer_is_not_cached() {
    let (m1, m2, gw) = two_upstreams(|c| {
        c.cache.enabled = true;
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 10;
    })
    .await;
    for stream in [false, true] {
        let mut body = chat_body("auto", if stream { "a streamed question" } else { "a question" });
        body["stream"] = json!(stream);
        let ask = || async {
            let r = client()
                .post(gw.chat_url())
                .header("x-optiroute-tier", "cloud")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let h = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
            (h("x-optiroute-deployment"), h("x-optiroute-cache"))
        };
        m2.handle.push(Behavior::status(500));
        assert_eq!(
            ask().await,
            ("a".into(), "miss".into()),
            "stream {stream}: the cloud fails, local stands in"
        );
        assert_eq!(
            ask().await,
            ("b".into(), "miss".into()),
            "stream {stream}: the cloud is back"
        );
        assert_eq!(
            ask().await,
            ("b".into(), "hit".into()),
            "stream {stream}: its answer is cached"
        );
    }
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (2, 4));
}

/// A cascade that could not escalate serves the cheap answer, but does not cache it.
#[tokio::test]
async fn a_cheap_answer_kept_because_escalation_failed_is_not_cached() {
    let (m1, m2, gw) = cascade_gateway(|c| {
        c.cache.enabled = true;
        c.resilience.max_attempts = 1;
        c.resilience.breaker.consecutive_failures = 10;
    })
    .await;
    m2.handle.push(Behavior::status(500));
    let (dep, _, answer) = ask_pears(&gw, &m1, WRONG_WORKING).await;
    assert_eq!((dep.as_str(), answer.as_str()), ("a", WRONG_WORKING));
    m2.handle.push(Behavior {
        text: Some("5 - 2 = 3. The answer is 3.".into()),
        ..Default::default()
    });
    let (dep, reason, answer) = ask_pears(&gw, &m1, WRONG_WORKING).await;
    assert_eq!(
        (dep.as_str(), answer.as_str()),
        ("b", "5 - 2 = 3. The answer is 3."),
        "{reason}"
    );
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (2, 2));
}

// --- Calibration, stickiness, cascade ---

#[tokio::test]
async fn calibration_holds_the_strong_share_on_live_traffic() {
    let mut cfg = Config::test_default();
    cfg.routing.strong_share = Some(0.25);
    cfg.routing.calibration_window = 200;
    cfg.routing.sticky = false;
    cfg.cache.enabled = false;
    let gw = TestGateway::start(cfg).await;
    // Prompts of many lengths and a few reasoning cues, so scores spread out (as real traffic does).
    const WORDS: &[&str] = &[
        "explain",
        "the",
        "trade-offs",
        "of",
        "caching",
        "in",
        "a",
        "gateway",
        "with",
        "code",
    ];
    let prompts: Vec<String> = (0..240usize)
        .map(|i| {
            let n = 1 + (i * 37) % 120;
            let mut p: Vec<&str> = (0..n).map(|k| WORDS[(k + i) % WORDS.len()]).collect();
            if i % 5 == 0 {
                p.push("step by step");
            }
            p.join(" ")
        })
        .collect();
    let mut strong = 0;
    for (i, p) in prompts.iter().enumerate() {
        let (s, tier, _) = route(&gw, chat_body("auto", p), &[]).await;
        assert_eq!(s, 200);
        // Count only after the calibration window filled.
        if i >= 40 && tier == "cloud" {
            strong += 1;
        }
    }
    let share = f64::from(strong) / 200.0;
    assert!((0.18..=0.32).contains(&share), "strong share {share}");
}

/// Templated traffic scores the same for every request: the calibrated threshold sits on that score,
/// and only the target share of the tied requests may go to the strong tier (all of them did).
#[tokio::test]
async fn calibration_splits_tied_scores_at_the_strong_share() {
    let mut cfg = Config::test_default();
    cfg.routing.strong_share = Some(0.3);
    cfg.routing.calibration_window = 100;
    cfg.routing.sticky = false;
    cfg.cache.enabled = false;
    let gw = TestGateway::start(cfg).await;
    let mut strong = 0;
    let mut scores = std::collections::BTreeSet::new();
    let mut tie_reasons = 0;
    for i in 0..300 {
        let prompt = format!("Summarise support ticket {i:04} for the weekly report.");
        let (s, tier, reason) = route(&gw, chat_body("auto", &prompt), &[]).await;
        assert_eq!(s, 200, "{reason}");
        let rest = &reason[reason.find("complexity ").unwrap() + "complexity ".len()..];
        scores.insert(rest.split_whitespace().next().unwrap().to_owned());
        if i >= 100 {
            strong += usize::from(tier == "cloud");
            tie_reasons += usize::from(reason.contains("a tie: 30.0% of tied requests"));
        }
    }
    assert_eq!(scores.len(), 1, "the prompts should all score the same: {scores:?}");
    let share = strong as f64 / 200.0;
    assert!((0.2..=0.4).contains(&share), "strong share {share}");
    assert_eq!(tie_reasons, 200);
    // The same request is decided the same way again.
    let prompt = "Summarise support ticket 0150 for the weekly report.";
    let first = route(&gw, chat_body("auto", prompt), &[]).await.1;
    for _ in 0..5 {
        assert_eq!(route(&gw, chat_body("auto", prompt), &[]).await.1, first);
    }
}

#[tokio::test]
async fn a_short_follow_up_to_a_strong_answer_stays_strong() {
    let mut cfg = Config::test_default();
    cfg.cache.enabled = false;
    let gw = TestGateway::start(cfg).await;
    let hard = "Prove step by step that there are infinitely many primes, then write a Rust function that \
                returns the n-th prime with an efficient sieve, and analyse its time complexity rigorously.";
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("auto", hard))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-optiroute-tier"], "cloud");
    let v: Value = r.json().await.unwrap();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    let follow = json!({"model": "auto", "messages": [
        {"role": "user", "content": hard},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "thanks, and why?"}
    ]});
    let (_, tier, reason) = route(&gw, follow.clone(), &[]).await;
    assert_eq!(tier, "cloud", "{reason}");
    assert!(reason.contains("follow-up"), "{reason}");
    // The same short turn after an answer that did not come from the strong tier goes local.
    let mut other = follow;
    other["messages"][1]["content"] = json!("some other answer");
    let (_, tier, _) = route(&gw, other, &[]).await;
    assert_eq!(tier, "local");
}

#[tokio::test]
async fn cascade_escalates_a_failed_cheap_answer() {
    let (m1, m2, gw) = two_upstreams(|c| {
        c.routing.cascade = true;
        c.routing.sticky = false;
    })
    .await;
    // Cheap answer to a math question without a final number: escalated to b.
    let body = cascade_scenario(&m1, &m2);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "b");
    let reason = r.headers()["x-optiroute-route-reason"].to_str().unwrap().to_owned();
    assert!(
        reason.starts_with("cascade") && reason.contains("no_final_answer"),
        "{reason}"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("llm_cascade_escalations_total{reason=\"no_final_answer\"} 1\n"),
        "{m}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "3 + 4 = 7. The answer is 7.");
    // Cost covers both calls; no saving is claimed.
    assert_eq!(v["optiroute"]["saved_usd"], 0.0);
    assert!(v["optiroute"]["cost_usd"].as_f64().unwrap() > 0.0);
    // A good cheap answer is kept.
    m1.handle.push(Behavior {
        text: Some("Ann has 5 - 2 = <<5-2=3>>3 pears left.\n#### 3".into()),
        ..Default::default()
    });
    let body = chat_body("auto", PEARS);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "a");
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (2, 1));
}

const PEARS: &str = "Ann has 5 pears and eats 2. How many pears are left for her?";
/// Passes every rule check (a final number, no broken arithmetic) but divides where it should
/// subtract: half a pear.
const WRONG_WORKING: &str = "Ann has 5 / 2 = 2.5 pears left. The answer is 2.5.";

/// Gateway and two upstreams in cascade mode (no stickiness), with `edit` applied to the config.
async fn cascade_gateway(edit: impl FnOnce(&mut Config)) -> (MockServer, MockServer, TestGateway) {
    two_upstreams(|c| {
        c.routing.cascade = true;
        c.routing.sticky = false;
        edit(c);
    })
    .await
}

/// Asks PEARS with the cheap upstream answering `cheap_answer`; returns the serving deployment, the
/// route reason and the answer the client got.
async fn ask_pears(gw: &TestGateway, cheap: &MockServer, cheap_answer: &str) -> (String, String, String) {
    cheap.handle.push(Behavior {
        text: Some(cheap_answer.into()),
        ..Default::default()
    });
    let r = client()
        .post(gw.chat_url())
        .json(&chat_body("auto", PEARS))
        .send()
        .await
        .unwrap();
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
    let (dep, reason) = (header("x-optiroute-deployment"), header("x-optiroute-route-reason"));
    let v: Value = r.json().await.unwrap();
    (
        dep,
        reason,
        v["choices"][0]["message"]["content"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn cascade_escalates_an_answer_the_verifier_rates_likely_wrong() {
    let (m1, m2, gw) = cascade_gateway(|_| {}).await;
    m2.handle.push(Behavior {
        text: Some("5 - 2 = 3. The answer is 3.".into()),
        ..Default::default()
    });
    let (dep, reason, answer) = ask_pears(&gw, &m1, WRONG_WORKING).await;
    assert_eq!(dep, "b");
    assert!(reason.contains("likely_wrong, risk 0."), "{reason}");
    assert_eq!(answer, "5 - 2 = 3. The answer is 3.");
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 1));
    let m = gw.metrics().await;
    assert!(
        m.contains("llm_cascade_escalations_total{reason=\"likely_wrong\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("llm_cascade_escalations_total{reason=\"no_final_answer\"} 0\n"),
        "{m}"
    );
}

/// A `[routing] cascade_verifier` file replaces the built-in verifier.
#[tokio::test]
async fn a_cascade_verifier_file_replaces_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    // A verifier that distrusts every answer escalates even a clean one.
    let shipped = optiroute_router::verifier::Verifier::embedded().unwrap();
    let mut v: Value = serde_json::from_str(&shipped.to_json().unwrap()).unwrap();
    v["bias"] = 30.0.into();
    let path = dir.path().join("suspicious.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let (m1, m2, gw) = cascade_gateway(|c| c.routing.cascade_verifier = Some(path.display().to_string())).await;
    let (dep, reason, _) = ask_pears(&gw, &m1, "Ann has 5 - 2 = <<5-2=3>>3 pears left.\n#### 3").await;
    assert_eq!(dep, "b");
    assert!(reason.contains("likely_wrong, risk 1.00"), "{reason}");
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 1));
}

/// Streams: the cheap answer is generated in full and checked, then the answer served is replayed as
/// a stream, with its cost in the headers and the usage chunk.
#[tokio::test]
async fn cascade_checks_streamed_requests_and_replays_the_answer() {
    let (m1, m2, gw) = cascade_gateway(|_| {}).await;
    let mut body = cascade_scenario(&m1, &m2);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-optiroute-deployment"], "b");
    let reason = r.headers()["x-optiroute-route-reason"].to_str().unwrap().to_owned();
    assert!(reason.contains("no_final_answer"), "{reason}");
    let cost: f64 = r.headers()["x-optiroute-cost-usd"].to_str().unwrap().parse().unwrap();
    let text = r.text().await.unwrap();
    assert_eq!(sse_content(&text), "3 + 4 = 7. The answer is 7.");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let usage: Value = sse_data(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap();
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage["optiroute"]["cost_usd"].as_f64().unwrap(), cost);
    assert!(cost > 0.0);
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 1));
    // An answer that passes is replayed from the cheap tier.
    let mut body = chat_body("auto", PEARS);
    body["stream"] = json!(true);
    m1.handle.push(Behavior {
        text: Some("Ann has 5 - 2 = <<5-2=3>>3 pears left.\n#### 3".into()),
        ..Default::default()
    });
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "a");
    assert_eq!(
        sse_content(&r.text().await.unwrap()),
        "Ann has 5 - 2 = <<5-2=3>>3 pears left.\n#### 3"
    );
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (2, 1));
}

#[tokio::test]
async fn cascade_streams_false_serves_streams_live_and_unchecked() {
    let (m1, m2, gw) = cascade_gateway(|c| c.routing.cascade_streams = false).await;
    let mut body = cascade_scenario(&m1, &m2);
    body["stream"] = json!(true);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "a");
    assert_eq!(sse_content(&r.text().await.unwrap()), "Let me think about the apples.");
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 0));
}

/// A tool call from the cheap tier is an answer, not an empty text: it is not escalated.
#[tokio::test]
async fn cascade_accepts_a_tool_call() {
    let (m1, m2, gw) = cascade_gateway(|_| {}).await;
    let mut body = chat_body("auto", PEARS);
    m1.handle.push(Behavior {
        tool_call: Some("add".into()),
        ..Default::default()
    });
    body["tools"] = json!([{"type": "function", "function": {"name": "add", "parameters": {}}}]);
    let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "a");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "add",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 0));
}

/// A replay carries one choice's text, so streams that ask for tools or several choices stay live.
#[tokio::test]
async fn cascade_streams_with_tools_or_several_choices_stay_live() {
    let (m1, m2, gw) = cascade_gateway(|_| {}).await;
    for extra in [
        json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        json!({"n": 2}),
    ] {
        let mut body = cascade_scenario(&m1, &m2);
        body["stream"] = json!(true);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = client().post(gw.chat_url()).json(&body).send().await.unwrap();
        assert_eq!(r.headers()["x-optiroute-deployment"], "a", "{extra}");
        assert!(
            sse_content(&r.text().await.unwrap()).starts_with("Let me think"),
            "{extra}"
        );
    }
    assert_eq!(m2.handle.hits(), 0);
}

#[tokio::test]
async fn cascade_max_risk_1_keeps_rule_checks_only() {
    let (m1, m2, gw) = cascade_gateway(|c| c.routing.cascade_max_risk = 1.0).await;
    let (dep, _, answer) = ask_pears(&gw, &m1, WRONG_WORKING).await;
    assert_eq!((dep.as_str(), answer.as_str()), ("a", WRONG_WORKING));
    assert_eq!((m1.handle.hits(), m2.handle.hits()), (1, 0));
    // A rule failure still escalates.
    let r = client()
        .post(gw.chat_url())
        .json(&cascade_scenario(&m1, &m2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-optiroute-deployment"], "b");
}

#[tokio::test]
async fn group_strategies_order_candidates() {
    let mut cfg = Config::test_default();
    let mut third = cfg.deployments[1].clone();
    third.name = "cloud2".into();
    third.weight = 3;
    cfg.deployments.push(third);
    for (name, strategy) in [
        ("busy", Strategy::LeastBusy),
        ("fast", Strategy::LeastLatency),
        ("weighted", Strategy::Weighted),
        ("prio", Strategy::Priority),
    ] {
        cfg.models.push(ModelGroupConfig {
            name: name.into(),
            deployments: vec!["local".into(), "cloud".into(), "cloud2".into()],
            strategy,
            cache_ttl_secs: None,
        });
    }
    let st = AppState::new(cfg).await.unwrap();
    let names = |p: optiroute::routing::Plan| -> Vec<String> {
        p.candidates.iter().map(|&i| st.deployments[i].name.clone()).collect()
    };
    assert_eq!(names(plan(&st, "prio")), ["local", "cloud", "cloud2"]);
    st.deployments[0].in_flight.store(5, Ordering::Relaxed);
    st.deployments[1].in_flight.store(1, Ordering::Relaxed);
    st.deployments[2].in_flight.store(3, Ordering::Relaxed);
    assert_eq!(names(plan(&st, "busy")), ["cloud", "cloud2", "local"]);
    st.deployments[0].observe_latency(900);
    st.deployments[1].observe_latency(2_000);
    st.deployments[2].observe_latency(100);
    assert_eq!(names(plan(&st, "fast")), ["cloud2", "local", "cloud"]);
    // Weights 1, 1, 3: cloud2 should come first in about 3/5 of plans.
    let mut first = std::collections::HashMap::new();
    for _ in 0..2_000 {
        *first.entry(names(plan(&st, "weighted"))[0].clone()).or_insert(0) += 1;
    }
    let share = f64::from(first["cloud2"]) / 2_000.0;
    assert!((0.54..0.66).contains(&share), "{first:?}");
    assert!(first["local"] > 250 && first["cloud"] > 250, "{first:?}");
}
