//! Retraining on one's own traffic: `POST /v1/feedback`, router features in the request log
//! (`[routing] log_features`), `optiroute router export` and `optiroute router train` on the export.

use std::time::Duration;

use clap::Parser;
use optiroute::config::Config;
use optiroute::store::Store;
use optiroute::store::feedback::{self, ExportOptions};
use optiroute_router::traffic::{TrafficRow, parse_traffic};
use optiroute_router::{LearnedScorer, Scorer};
use serde_json::{Value, json};

use crate::auth::pg_database;
use crate::common::*;

const MASTER: &str = "sk-master-feedback-0123456789abcdef";

/// A gateway whose request log (and feedback) goes to `url`.
async fn gateway(url: &str, edit: impl FnOnce(&mut Config)) -> TestGateway {
    let mut cfg = Config::test_default();
    cfg.store.database_url = Some(url.to_owned());
    edit(&mut cfg);
    TestGateway::start(cfg).await
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("log.db").display())
}

/// Sends a chat request; returns the status, the `x-request-id` and the served tier.
async fn chat(gw: &TestGateway, key: Option<&str>, body: Value, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client().post(gw.chat_url()).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, tier) = (header("x-request-id"), header("x-optiroute-tier"));
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, id, tier)
}

async fn rate(gw: &TestGateway, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(format!("{}/v1/feedback", gw.url)).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn store(gw: &TestGateway) -> Store {
    gw.state.request_log.store().cloned().expect("request log on")
}

async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_recorded_replaced_validated_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |_| {}).await;
    let (s, id, _) = chat(&gw, None, chat_body("auto", "What is the capital of France?"), &[]).await;
    assert_eq!(s, 200);
    assert!(!id.is_empty());
    // Rated at once: the row may still be queued; the endpoint flushes the log and finds it.
    let (s, b) = rate(&gw, None, json!({"request_id": id, "score": 0.2})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["object"].as_str(), b["score"].as_f64()),
        (Some("feedback"), Some(0.2))
    );
    let st = store(&gw);
    assert_eq!(feedback::get(&st, "", &id).await.unwrap().unwrap().score, 0.2);
    // Rating again replaces the rating.
    let (s, _) = rate(
        &gw,
        None,
        json!({"request_id": id, "score": 1, "comment": "right after all"}),
    )
    .await;
    assert_eq!(s, 200);
    let f = feedback::get(&st, "", &id).await.unwrap().unwrap();
    assert_eq!((f.score, f.comment.as_deref()), (1.0, Some("right after all")));
    assert_eq!(metric(&gw, "llm_feedback_total").await, 2.0);

    // Validation: OpenAI-shaped 400 naming the field.
    for (body, param) in [
        (json!({"request_id": id, "score": 1.5}), "score"),
        (json!({"request_id": id, "score": -1}), "score"),
        (json!({"request_id": id, "score": "great"}), "score"),
        (json!({"request_id": id}), "score"),
        (json!({"score": 0.5}), "request_id"),
        (json!({"request_id": "", "score": 0.5}), "request_id"),
        (
            json!({"request_id": id, "score": 0.5, "comment": "x".repeat(1025)}),
            "comment",
        ),
        (json!({"request_id": id, "score": 0.5, "stars": 5}), "stars"),
    ] {
        let (s, b) = rate(&gw, None, body.clone()).await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert_eq!(b["error"]["param"].as_str(), Some(param), "{body} -> {b}");
        assert_eq!(b["error"]["type"].as_str(), Some("invalid_request_error"));
    }
    let r = client()
        .post(format!("{}/v1/feedback", gw.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown id: 404.
    let (s, b) = rate(&gw, None, json!({"request_id": "req_never_seen", "score": 1})).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["code"].as_str(), Some("request_not_found"));
    assert_eq!(metric(&gw, "llm_feedback_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_request_log_feedback_is_refused_plainly() {
    let gw = TestGateway::start(Config::test_default()).await;
    let (s, b) = rate(&gw, None, json!({"request_id": "req_x", "score": 1})).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["code"].as_str(), Some("request_log_disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_key_that_made_a_request_may_rate_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |c| c.auth.master_key = Some(MASTER.into())).await;
    let a = admin_create_key(&gw, MASTER, json!({"name": "a"})).await;
    let b = admin_create_key(&gw, MASTER, json!({"name": "b"})).await;
    let (ka, kb) = (a["key"].as_str().unwrap(), b["key"].as_str().unwrap());
    let (ida, idb) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let (s, id, _) = chat(&gw, Some(ka), chat_body("auto", "Name three primes."), &[]).await;
    assert_eq!(s, 200);
    // No key: 401. Another key: 404, exactly like an unknown id.
    assert_eq!(rate(&gw, None, json!({"request_id": id, "score": 1})).await.0, 401);
    let (s, other) = rate(&gw, Some(kb), json!({"request_id": id, "score": 0})).await;
    let (_, unknown) = rate(&gw, Some(kb), json!({"request_id": "req_unknown_1", "score": 0})).await;
    assert_eq!(s, 404);
    assert_eq!(other, unknown);
    let st = store(&gw);
    assert!(feedback::get(&st, idb, &id).await.unwrap().is_none());
    assert!(feedback::get(&st, ida, &id).await.unwrap().is_none());
    // The owner may.
    assert_eq!(
        rate(&gw, Some(ka), json!({"request_id": id, "score": 0.5})).await.0,
        200
    );
    assert_eq!(feedback::get(&st, ida, &id).await.unwrap().unwrap().score, 0.5);
    // The master key may rate any request; the rating is the request's (key a's), replaced.
    assert_eq!(
        rate(&gw, Some(MASTER), json!({"request_id": id, "score": 0.25}))
            .await
            .0,
        200
    );
    assert_eq!(feedback::get(&st, ida, &id).await.unwrap().unwrap().score, 0.25);
    // Request ids are the client's: key b reusing a's id rates only its own request.
    let (s, id_b, _) = chat(
        &gw,
        Some(kb),
        chat_body("auto", "Name four primes."),
        &[("x-request-id", id.as_str())],
    )
    .await;
    assert_eq!((s, id_b.as_str()), (200, id.as_str()));
    assert_eq!(rate(&gw, Some(kb), json!({"request_id": id, "score": 1})).await.0, 200);
    assert_eq!(feedback::get(&st, idb, &id).await.unwrap().unwrap().score, 1.0);
    assert_eq!(feedback::get(&st, ida, &id).await.unwrap().unwrap().score, 0.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_are_logged_only_when_enabled_and_hold_no_prompt_text() {
    let secret = format!("zebracorn{}", rand::random::<u32>());
    let prompt = format!("Please explain why the {secret} migrates north every winter, step by step.");
    for enabled in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(&sqlite_url(&dir), |c| c.routing.log_features = enabled).await;
        let (s, auto_id, _) = chat(&gw, None, chat_body("auto", &prompt), &[]).await;
        assert_eq!(s, 200);
        let (s, direct_id, _) = chat(&gw, None, chat_body("local", &format!("{prompt} (direct)")), &[]).await;
        assert_eq!(s, 200);
        // A streamed auto request gets features too.
        let body = json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": format!("{prompt} (stream)")}]});
        let (s, stream_id, _) = chat(&gw, None, body, &[]).await;
        assert_eq!(s, 200);
        // The first prompt again, as JSON and as a stream: cache hits, which carry features as well.
        let (s, hit_id, _) = chat(&gw, None, chat_body("auto", &prompt), &[]).await;
        assert_eq!(s, 200);
        let body = json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": prompt}]});
        let (s, stream_hit_id, _) = chat(&gw, None, body, &[]).await;
        assert_eq!(s, 200);
        assert!(gw.state.request_log.flush(Duration::from_secs(10)).await);
        let rows = optiroute::request_log::recent(&store(&gw), 10).await.unwrap();
        assert_eq!(rows.len(), 5, "{rows:?}");
        let row = |id: &str| rows.iter().find(|r| r.request_id == id).unwrap();
        for id in [&hit_id, &stream_hit_id] {
            assert_eq!(row(id).cache, "hit", "{:?}", row(id));
            assert_eq!(
                row(id).features,
                row(&auto_id).features,
                "a hit has its prompt's features"
            );
        }
        for r in &rows {
            let f = r.features.as_deref();
            let want = enabled && r.request_id != direct_id;
            assert_eq!(f.is_some(), want, "enabled {enabled}: {r:?}");
            if let Some(f) = f {
                assert!([&auto_id, &stream_id, &hit_id, &stream_hit_id].contains(&&r.request_id));
                let lower = f.to_lowercase();
                for word in prompt.split_whitespace().filter(|w| w.len() > 3) {
                    let w = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
                    assert!(!lower.contains(&w), "`{w}` in the logged features: {f}");
                }
                let v: Value = serde_json::from_str(f).unwrap();
                assert_eq!(
                    v["v"].as_u64(),
                    Some(u64::from(optiroute_router::features::FEATURE_VERSION))
                );
                assert_eq!(
                    v["dense"].as_array().unwrap().len(),
                    optiroute_router::features::DENSE_NAMES.len()
                );
            }
        }
    }
}

/// Sends `n` auto requests of two kinds to the cheap tier (forced, so they are comparable), rates the
/// first kind 0 and the second 1, and one strong-tier request left unrated.
async fn rated_traffic(gw: &TestGateway, n: usize) -> (Vec<String>, Vec<String>) {
    let (mut bad, mut good) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (kind, score, ids) in [(kind_a(i), 0.0, &mut bad), (kind_b(i), 1.0, &mut good)] {
            let (s, id, tier) = chat(gw, None, chat_body("auto", &kind), &[("x-optiroute-tier", "local")]).await;
            assert_eq!((s, tier.as_str()), (200, "local"));
            assert_eq!(rate(gw, None, json!({"request_id": id, "score": score})).await.0, 200);
            ids.push(id);
        }
    }
    let (s, _, tier) = chat(
        gw,
        None,
        chat_body("auto", "Unrated question"),
        &[("x-optiroute-tier", "cloud")],
    )
    .await;
    assert_eq!((s, tier.as_str()), (200, "cloud"));
    assert!(gw.state.request_log.flush(Duration::from_secs(10)).await);
    (bad, good)
}

fn kind_a(i: usize) -> String {
    format!("Translate shipping manifest {i} into Klingon verse with footnotes")
}

fn kind_b(i: usize) -> String {
    format!("What colour is the banana in photo {i}?")
}

async fn export_round_trip(url: &str) {
    let gw = gateway(url, |c| c.routing.log_features = true).await;
    let (bad, good) = rated_traffic(&gw, 3).await;
    let st = store(&gw);
    let mut out = Vec::new();
    let opts = ExportOptions {
        strong_tier: Some("cloud".into()),
        ..ExportOptions::default()
    };
    let counts = feedback::export(&st, &opts, &mut out).await.unwrap();
    let rows: Vec<TrafficRow> = parse_traffic(std::str::from_utf8(&out).unwrap(), "export").unwrap();
    assert_eq!((counts.rows, counts.with_feedback, counts.with_features), (7, 6, 7));
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert_eq!((r.status, r.cache.as_str()), (200, "miss"), "{r:?}");
        assert!(r.features.is_some() && r.at_ms > 0 && r.prompt_tokens > 0);
        let want = if bad.contains(&r.request_id) {
            Some(0.0)
        } else if good.contains(&r.request_id) {
            Some(1.0)
        } else {
            None
        };
        assert_eq!(r.feedback.as_ref().map(|f| f.score), want, "{r:?}");
        assert_eq!(r.strong_tier, r.tier.as_deref() == Some("cloud"));
        assert_eq!(r.strong_tier, want.is_none());
        assert!(!r.cascade_escalated);
    }
    // Only labelled rows, and only recent ones.
    let mut out = Vec::new();
    let labelled = ExportOptions {
        labelled: true,
        ..opts.clone()
    };
    assert_eq!(feedback::export(&st, &labelled, &mut out).await.unwrap().rows, 6);
    let future = ExportOptions {
        since_ms: i64::MAX,
        ..opts
    };
    assert_eq!(feedback::export(&st, &future, &mut Vec::new()).await.unwrap().rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trip_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    export_round_trip(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trip_postgres() {
    let Some(db) = pg_database().await else { return };
    export_round_trip(&db.url).await;
    db.drop().await;
}

/// The whole loop through the command line: serve, rate, `router export`, `router train`; the new
/// weights score the kind of prompt the cheap tier got wrong higher, relative to the other kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_train_on_exported_traffic_moves_toward_the_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let gw = gateway(&url, |c| c.routing.log_features = true).await;
    rated_traffic(&gw, 25).await;
    let traffic = dir.path().join("traffic.jsonl");
    let weights = dir.path().join("weights.json");
    let run = |args: Vec<String>| async move {
        let cli = optiroute::cli::Cli::try_parse_from(args).unwrap();
        let optiroute::cli::Command::Router(cmd) = cli.command else {
            panic!("not a router command")
        };
        match cmd {
            optiroute_router::RouterCommand::Export(a) => optiroute::store::feedback::export_cli(a).await,
            other => tokio::task::spawn_blocking(move || optiroute_router::run(other))
                .await
                .unwrap(),
        }
    };
    let s = |p: &std::path::Path| p.display().to_string();
    run(vec![
        "optiroute".into(),
        "router".into(),
        "export".into(),
        "--store".into(),
        url.clone(),
        "--labelled".into(),
        "--out".into(),
        s(&traffic),
    ])
    .await
    .unwrap();
    let text = std::fs::read_to_string(&traffic).unwrap();
    assert_eq!(text.lines().count(), 50);
    // A base model in the gateway's feature space (the embedded weights' n-gram settings), trained on a
    // few benchmark-style rows, stands in for the shipped weights.
    let bench = dir.path().join("bench.jsonl");
    let bench_rows: String = (0..40)
        .map(|i| {
            let (prompt, strong, weak) = match i % 4 {
                0 => (format!("Prove lemma {i} about prime gaps step by step"), true, false),
                1 => (format!("Say hello to visitor {i}"), true, true),
                2 => (format!("Integrate x^{i} sin(x) dx and explain"), true, false),
                _ => (format!("List {i} fruits"), true, true),
            };
            json!({"prompt": prompt, "strong_correct": strong, "weak_correct": weak}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&bench, bench_rows).unwrap();
    let hash = optiroute_router::traffic::shipped_hash_config().unwrap();
    let base_weights = dir.path().join("base.json");
    let hash_args = |v: &mut Vec<String>| {
        for (flag, value) in [
            ("--bits", hash.bits.to_string()),
            ("--char-min", hash.char_min.to_string()),
            ("--char-max", hash.char_max.to_string()),
            ("--word-max", hash.word_max.to_string()),
            ("--word-weight", hash.word_weight.to_string()),
            ("--iters", "40".to_owned()),
        ] {
            v.push(flag.into());
            v.push(value);
        }
    };
    let mut args: Vec<String> = [
        "optiroute",
        "router",
        "train",
        "--data",
        &s(&bench),
        "--out",
        &s(&base_weights),
    ]
    .map(String::from)
    .to_vec();
    hash_args(&mut args);
    run(args).await.unwrap();
    let mut args: Vec<String> = [
        "optiroute",
        "router",
        "train",
        "--data",
        &s(&traffic),
        "--data",
        &s(&bench),
        "--base",
        &s(&base_weights),
        "--out",
        &s(&weights),
    ]
    .map(String::from)
    .to_vec();
    hash_args(&mut args);
    run(args).await.unwrap();
    let trained = LearnedScorer::from_json(&std::fs::read_to_string(&weights).unwrap()).unwrap();
    let base = LearnedScorer::from_json(&std::fs::read_to_string(&base_weights).unwrap()).unwrap();
    let conv =
        |t: String| optiroute::routing::conversation(&serde_json::from_value(chat_body("auto", &t)).unwrap(), 16);
    let (a, b) = (conv(kind_a(1000)), conv(kind_b(1000)));
    let (base_gap, new_gap) = (base.score(&a) - base.score(&b), trained.score(&a) - trained.score(&b));
    assert!(
        trained.score(&a) > trained.score(&b) && new_gap > base_gap,
        "base gap {base_gap}, trained gap {new_gap}"
    );
    assert_eq!(
        trained.meta()["traffic"]["used"].as_u64(),
        Some(50),
        "{}",
        trained.meta()
    );

    // The gateway runs the retrained weights from the file (`[routing] weights`), and its decisions
    // carry the retrained model's score.
    let mut cfg = Config::test_default();
    cfg.routing.strategy = "learned".into();
    cfg.routing.weights = Some(s(&weights));
    let served = TestGateway::start(cfg).await;
    for prompt in [kind_a(1000), kind_b(1000)] {
        let req: optiroute_protocol::openai::ChatRequest = serde_json::from_value(chat_body("auto", &prompt)).unwrap();
        let expected = trained.score(&optiroute::routing::conversation(&req, 16));
        assert_eq!(served.state.router.score(&req, 16), expected, "{prompt}");
        let resp = reqwest::Client::new()
            .post(served.chat_url())
            .json(&chat_body("auto", &prompt))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let reason = resp.headers()["x-optiroute-route-reason"].to_str().unwrap().to_owned();
        let tokens = served.state.router.prompt_tokens_of(&req);
        let logged = served.state.router.score(&req, tokens);
        assert!(reason.contains(&format!("complexity {logged:.3}")), "{reason}");
    }
}

/// A `[routing] weights` or `cascade_verifier` file that is missing or of the wrong kind stops the
/// start, naming the key and the path; `cascade_max_risk` must be a probability.
#[tokio::test]
async fn a_bad_model_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"format\": \"something else\"}").unwrap();
    type SetPath = fn(&mut Config, String);
    let cases: [(&str, SetPath); 2] = [
        ("routing.weights", |c, path| {
            c.routing.strategy = "learned".into();
            c.routing.weights = Some(path);
        }),
        ("routing.cascade_verifier", |c, path| {
            c.routing.cascade = true;
            c.routing.cascade_verifier = Some(path);
        }),
    ];
    for (key, set) in cases {
        for path in [
            junk.display().to_string(),
            dir.path().join("missing.json").display().to_string(),
        ] {
            let mut cfg = Config::test_default();
            set(&mut cfg, path.clone());
            let err = match optiroute::state::AppState::new(cfg).await {
                Ok(_) => panic!("started with {key} = {path}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(key) && err.contains(&path), "{err}");
        }
    }
    let mut cfg = Config::test_default();
    cfg.routing.cascade_max_risk = 1.5;
    let err = cfg.validate("test").unwrap_err().to_string();
    assert!(err.contains("routing.cascade_max_risk"), "{err}");
}

/// A cascade escalation is exported as such, with features, and labels the weak head "wrong" even
/// without feedback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_escalation_is_exported_and_labelled() {
    use optiroute::config::ProviderKind;
    use optiroute::mock::MockServer;
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (MockServer::start(0).await.unwrap(), MockServer::start(0).await.unwrap());
    let mut cfg = config_with(
        &[
            ("p1", ProviderKind::Openai, &format!("{}/v1", m1.url())),
            ("p2", ProviderKind::Openai, &format!("{}/v1", m2.url())),
        ],
        &[("a", "p1", "model-a", "local"), ("b", "p2", "model-b", "cloud")],
    );
    cfg.store.database_url = Some(sqlite_url(&dir));
    cfg.routing.cascade = true;
    cfg.routing.sticky = false;
    cfg.routing.log_features = true;
    let gw = TestGateway::start(cfg).await;
    let body = cascade_scenario(&m1, &m2);
    let (s, id, tier) = chat(&gw, None, body.clone(), &[]).await;
    assert_eq!((s, tier.as_str()), (200, "cloud"));
    // The same prompt again is a cache hit of the escalated answer: it carries the escalation's
    // route reason but is no second escalation (one label per checked answer, not per replay).
    let (s, _, _) = chat(&gw, None, body, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(gw.state.ledger.cache_hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(gw.state.request_log.flush(Duration::from_secs(10)).await);
    let mut out = Vec::new();
    let opts = ExportOptions {
        labelled: true,
        strong_tier: Some("cloud".into()),
        ..ExportOptions::default()
    };
    assert_eq!(
        feedback::export(&store(&gw), &opts, &mut out).await.unwrap().escalated,
        1
    );
    let rows = parse_traffic(std::str::from_utf8(&out).unwrap(), "export").unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.request_id, id);
    assert!(
        r.cascade_escalated && r.strong_tier && r.feedback.is_none() && r.features.is_some(),
        "{r:?}"
    );
    assert_eq!(optiroute_router::traffic::labels(r, [0.6, 0.3]), Some([0.6, 1.0]));
}
