//! Runs the load generator against a small OpenAI-shaped server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use clap::Parser;
use optiroute_bench::{BenchArgs, Report, run, run_and_print};
use serde_json::{Value, json};

/// Request `n` (in arrival order) fails with 500 when `n % fail_every == fail_every - 1`;
/// otherwise it is a cache hit when `n` is even, and routed to `cloud` when `n % 4 == 0`.
/// A miss costs 0.002 USD; a hit saves 0.002 USD.
#[derive(Default)]
struct Behaviour {
    fail_every: u64,
    api_key: Option<String>,
    first_token_delay_ms: u64,
    token_gap_ms: u64,
}

struct ServerState {
    behaviour: Behaviour,
    counter: AtomicU64,
    prompts: Mutex<Vec<String>>,
    /// `model` of each `/generate` request.
    models: Mutex<Vec<String>>,
    /// The headers of the last chat request.
    last_headers: Mutex<HeaderMap>,
}

const MISS_COST: f64 = 0.002;
const TOKENS: [&str; 4] = ["Hel", "lo", " there", "!"];

fn decide(n: u64) -> (bool, &'static str) {
    (n.is_multiple_of(2), if n.is_multiple_of(4) { "cloud" } else { "local" })
}

fn meta(hit: bool, tier: &str) -> Value {
    json!({
        "provider": "simulated", "model": "sim", "deployment": tier, "tier": tier,
        "route_reason": "test", "cache": if hit { "hit" } else { "miss" },
        "cost_usd": if hit { 0.0 } else { MISS_COST }, "saved_usd": if hit { MISS_COST } else { 0.0 },
        "saved_by": if hit { json!("cache") } else { Value::Null },
        "latency_ms": 1.0, "ttft_ms": null, "usage_estimated": false
    })
}

fn authorised(state: &ServerState, headers: &HeaderMap) -> bool {
    match &state.behaviour.api_key {
        None => true,
        Some(key) => {
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(format!("Bearer {key}").as_str())
        }
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    let body = json!({"error": {"message": msg, "type": "test", "param": null, "code": null}});
    (status, Json(body)).into_response()
}

async fn chat(State(st): State<Arc<ServerState>>, headers: HeaderMap, Json(req): Json<Value>) -> Response {
    *st.last_headers.lock().unwrap() = headers.clone();
    if !authorised(&st, &headers) {
        return error(StatusCode::UNAUTHORIZED, "bad key");
    }
    let prompt = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str());
    st.prompts.lock().unwrap().push(prompt.unwrap_or_default().to_owned());
    let n = st.counter.fetch_add(1, Ordering::SeqCst);
    let fe = st.behaviour.fail_every;
    if fe > 0 && n % fe == fe - 1 {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "upstream broke");
    }
    let (hit, tier) = decide(n);
    let cache = if hit { "hit" } else { "miss" };
    if req["stream"] == json!(true) {
        let (first, gap) = (st.behaviour.first_token_delay_ms, st.behaviour.token_gap_ms);
        let events = futures_util::stream::unfold(0usize, move |i| async move {
            let chunk = |v: Value| format!("data: {v}\n\n");
            let text = match i {
                0 => {
                    tokio::time::sleep(Duration::from_millis(first)).await;
                    chunk(
                        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
                    ) + &chunk(
                        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": TOKENS[0]}}]}),
                    )
                }
                1..4 => {
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                    chunk(
                        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": TOKENS[i]}}]}),
                    )
                }
                4 => {
                    chunk(json!({"object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                    "optiroute": meta(hit, tier)}))
                        + "data: [DONE]\n\n"
                }
                _ => return None,
            };
            Some((Ok::<_, Infallible>(Bytes::from(text)), i + 1))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header("x-optiroute-cache", cache)
            .header("x-optiroute-tier", tier)
            .body(Body::from_stream(events))
            .unwrap();
    }
    let body = json!({
        "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 0, "model": "sim",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        "optiroute": meta(hit, tier)
    });
    let cost = if hit { 0.0 } else { MISS_COST };
    let saved = if hit { MISS_COST } else { 0.0 };
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    h.insert("x-optiroute-cache", cache.parse().unwrap());
    h.insert("x-optiroute-tier", tier.parse().unwrap());
    h.insert("x-optiroute-cost-usd", cost.to_string().parse().unwrap());
    h.insert("x-optiroute-saved-usd", saved.to_string().parse().unwrap());
    resp
}

/// `/generate`: no optiroute headers; `cached` is true for every third request.
async fn generate(State(st): State<Arc<ServerState>>, Json(req): Json<Value>) -> Response {
    st.prompts
        .lock()
        .unwrap()
        .push(req["prompt"].as_str().unwrap_or_default().to_owned());
    st.models
        .lock()
        .unwrap()
        .push(req["model"].as_str().unwrap_or("(none)").to_owned());
    let n = st.counter.fetch_add(1, Ordering::SeqCst);
    let cached = n.is_multiple_of(3);
    Json(
        json!({"response": "ok", "provider": "simulated", "model": "sim", "cached": cached,
                "cost_usd": if cached { 0.0 } else { 0.001 }, "latency_ms": 1.0}),
    )
    .into_response()
}

struct TestServer {
    url: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(behaviour: Behaviour) -> TestServer {
    let state = Arc::new(ServerState {
        behaviour,
        counter: AtomicU64::new(0),
        prompts: Mutex::new(Vec::new()),
        models: Mutex::new(Vec::new()),
        last_headers: Mutex::new(HeaderMap::new()),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/generate", post(generate))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer { url, state, task }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

async fn bench(url: &str, extra: &[&str]) -> Report {
    let mut args = vec!["bench", "--url", url, "--quiet"];
    args.extend_from_slice(extra);
    run(Cli::try_parse_from(args).unwrap().bench).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_requests_count_errors_cache_routing_and_cost() {
    let srv = start(Behaviour {
        fail_every: 4,
        ..Behaviour::default()
    })
    .await;
    let r = bench(&srv.url, &["--users", "4", "--requests", "40"]).await;

    let ns: Vec<u64> = (0..40).collect();
    let fails = ns.iter().filter(|n| *n % 4 == 3).count() as u64;
    let oks: Vec<u64> = ns.iter().copied().filter(|n| n % 4 != 3).collect();
    let hits = oks.iter().filter(|n| decide(**n).0).count() as u64;
    let cloud = oks.iter().filter(|n| decide(**n).1 == "cloud").count() as u64;

    assert_eq!(srv.state.counter.load(Ordering::SeqCst), 40);
    assert_eq!(r.requests, 40);
    assert_eq!(r.errors, fails);
    assert_eq!(r.errors_by_status.get("500"), Some(&fails));
    assert_eq!(r.errors_by_status.len(), 1);
    assert_eq!(r.ok, 40 - fails);
    assert_eq!((r.cache.hits, r.cache.misses), (hits, oks.len() as u64 - hits));
    let rate = r.cache.hit_rate.unwrap();
    assert!((rate - hits as f64 / oks.len() as f64).abs() < 1e-9);
    assert_eq!(r.tiers.get("cloud"), Some(&cloud));
    assert_eq!(r.tiers.get("local"), Some(&(oks.len() as u64 - cloud)));
    let misses = oks.len() as f64 - hits as f64;
    assert!(
        (r.cost_usd.unwrap() - misses * MISS_COST).abs() < 1e-9,
        "{:?}",
        r.cost_usd
    );
    assert!(
        (r.saved_usd.unwrap() - hits as f64 * MISS_COST).abs() < 1e-9,
        "{:?}",
        r.saved_usd
    );
    assert_eq!(r.latency_ms.as_ref().unwrap().count, r.ok);
    assert!(r.ttft_ms.is_none());
    assert!(r.requests_per_s > 0.0);
    assert_eq!(r.mode, "closed");
    // The JSON form carries the same numbers.
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["errors_by_status"]["500"], json!(fails));
    assert_eq!(v["cache"]["hits"], json!(hits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_measure_ttft_gaps_tokens_and_final_chunk_cost() {
    let srv = start(Behaviour {
        first_token_delay_ms: 40,
        token_gap_ms: 15,
        ..Behaviour::default()
    })
    .await;
    let r = bench(&srv.url, &["--users", "3", "--requests", "12", "--stream"]).await;
    assert_eq!(r.requests, 12);
    assert_eq!(r.ok, 12, "{:?}", r.errors_by_status);
    let ttft = r.ttft_ms.as_ref().unwrap();
    let lat = r.latency_ms.as_ref().unwrap();
    let itl = r.inter_token_ms.as_ref().unwrap();
    assert_eq!(ttft.count, 12);
    assert!(ttft.p50 >= 40.0, "{ttft:?}");
    // Three more tokens, 15 ms apart, after the first one.
    assert!(lat.p50 >= ttft.p50 + 3.0 * 15.0 - 1.0, "{lat:?} vs {ttft:?}");
    assert_eq!(itl.count, 12 * 3);
    assert!(itl.p50 >= 10.0, "{itl:?}");
    assert_eq!(r.output_tokens, Some(12 * 4));
    assert!(r.output_tokens_per_s.unwrap() > 0.0);
    let hits = (0..12u64).filter(|n| decide(*n).0).count() as u64;
    assert_eq!(r.cache.hits, hits);
    // Cost is only in the final usage chunk's `optiroute` object.
    assert!(
        (r.cost_usd.unwrap() - (12 - hits) as f64 * MISS_COST).abs() < 1e-9,
        "{:?}",
        r.cost_usd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_endpoint_reads_cache_and_cost_from_the_body() {
    let srv = start(Behaviour::default()).await;
    let r = bench(
        &srv.url,
        &[
            "--endpoint",
            "generate",
            "--users",
            "2",
            "--requests",
            "9",
            "--mix",
            "repeated",
            "--model",
            "local",
        ],
    )
    .await;
    assert_eq!(r.requests, 9);
    assert_eq!(*srv.state.models.lock().unwrap(), vec!["local"; 9]);
    assert_eq!((r.cache.hits, r.cache.misses), (3, 6));
    assert!((r.cost_usd.unwrap() - 0.006).abs() < 1e-9);
    assert!(r.tiers.is_empty());
    let pool = optiroute_bench::builtin_pool();
    let prompts = srv.state.prompts.lock().unwrap().clone();
    assert!(prompts.iter().all(|p| pool.contains(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_file_and_api_key() {
    let srv = start(Behaviour {
        api_key: Some("sk-test".into()),
        ..Behaviour::default()
    })
    .await;
    let path = std::env::temp_dir().join(format!("optiroute-bench-prompts-{}.jsonl", std::process::id()));
    std::fs::write(
        &path,
        "{\"prompt\": \"first\"}\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"second\"}]}\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();

    let r = bench(
        &srv.url,
        &[
            "--users",
            "1",
            "--requests",
            "5",
            "--prompts",
            file,
            "--api-key",
            "sk-test",
        ],
    )
    .await;
    assert_eq!(r.ok, 5, "{:?}", r.errors_by_status);
    assert_eq!(
        *srv.state.prompts.lock().unwrap(),
        vec!["first", "second", "first", "second", "first"]
    );

    let r = bench(
        &srv.url,
        &[
            "--users",
            "2",
            "--requests",
            "6",
            "--prompts",
            file,
            "--api-key",
            "wrong",
        ],
    )
    .await;
    assert_eq!(r.errors_by_status.get("401"), Some(&6));
    assert_eq!(r.ok, 0);
    assert!(r.latency_ms.is_none());
    std::fs::remove_file(&path).unwrap();
}

/// A `--header` replaces the generator's own header of that name: one `Authorization`, the `-H`
/// one, and the `-H` User-Agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_replaces_api_key() {
    let srv = start(Behaviour {
        api_key: Some("sk-header".into()),
        ..Behaviour::default()
    })
    .await;
    let r = bench(
        &srv.url,
        &[
            "--users",
            "1",
            "--requests",
            "2",
            "--api-key",
            "sk-flag",
            "-H",
            "Authorization: Bearer sk-header",
            "-H",
            "User-Agent: mine",
        ],
    )
    .await;
    assert_eq!(r.ok, 2, "{:?}", r.errors_by_status);
    let h = srv.state.last_headers.lock().unwrap().clone();
    let all = |name| h.get_all(name).iter().collect::<Vec<_>>();
    assert_eq!(all(header::AUTHORIZATION), ["Bearer sk-header"]);
    assert_eq!(all(header::USER_AGENT), ["mine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_exactly_n_at_the_rate() {
    let srv = start(Behaviour::default()).await;
    let r = bench(&srv.url, &["--rate", "200/s", "--requests", "30", "--mix", "unique"]).await;
    assert_eq!(r.mode, "open");
    assert_eq!(r.requests, 30);
    assert_eq!(r.ok, 30);
    // 30 arrivals 5 ms apart: the last one is due at 145 ms.
    assert!(r.duration_s >= 0.145, "{}", r.duration_s);
    assert!(r.max_schedule_lag_ms.is_some());
    let prompts = srv.state.prompts.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = prompts.iter().collect();
    assert_eq!(distinct.len(), 30, "unique mix must not repeat");
    // Some requests succeeded: run_and_print does not fail.
    let args = ["bench", "--url", &srv.url, "--requests", "2", "--json"];
    assert!(run_and_print(Cli::try_parse_from(args).unwrap().bench).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_run_stops_on_time() {
    let srv = start(Behaviour::default()).await;
    let r = bench(&srv.url, &["--users", "2", "--run-time", "300ms"]).await;
    assert!(r.requests > 0);
    assert_eq!(r.errors, 0);
    assert_eq!(r.unfinished, 0);
    assert!(r.duration_s >= 0.3 && r.duration_s < 5.0, "{}", r.duration_s);
    assert_eq!(srv.state.counter.load(Ordering::SeqCst), r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let r = bench(&url, &["--users", "2", "--requests", "4"]).await;
    assert_eq!(r.requests, 4);
    assert_eq!(r.errors_by_status.get("connect"), Some(&4), "{:?}", r.errors_by_status);

    // `optiroute bench` fails (exit status 1) when no request succeeded.
    let args = ["bench", "--url", &url, "--requests", "2", "--json"];
    let err = run_and_print(Cli::try_parse_from(args).unwrap().bench)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no request succeeded: 2 errors (connect: 2)");
}

#[tokio::test]
async fn bad_arguments_are_errors_not_panics() {
    let parse = |extra: &[&str]| {
        let mut args = vec!["bench", "--quiet"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().bench
    };
    for url in ["not a url", "ftp://x", "localhost:8080", "http://"] {
        let err = run(parse(&["--url", url, "--requests", "1"])).await.unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{url}: {err:#}");
    }
    assert!(
        run(parse(&["--endpoint", "generate", "--stream", "--requests", "1"]))
            .await
            .is_err()
    );
    assert!(
        run(parse(&["--prompts", "/nonexistent/prompts.jsonl", "--requests", "1"]))
            .await
            .is_err()
    );
    assert!(run(parse(&["--requests", "0"])).await.is_err());
}
