//! Keys, auth, limits and budgets through the HTTP API, the key store on SQLite and on a real
//! PostgreSQL, the `optiroute keys` CLI, and secrets kept out of logs and responses.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use optiroute::config::Config;
use optiroute::store::{KeySpec, Store, hash_key};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::*;

const MASTER: &str = "sk-master-test-0123456789abcdef";

/// A gateway with auth on (master key [`MASTER`]) and its keys in `database_url`.
async fn gateway(database_url: &str, edit: impl FnOnce(&mut Config)) -> TestGateway {
    let mut cfg = Config::test_default();
    cfg.auth.master_key = Some(MASTER.into());
    cfg.store.database_url = Some(database_url.into());
    edit(&mut cfg);
    TestGateway::start(cfg).await
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("keys.db").display())
}

async fn create_key(gw: &TestGateway, spec: Value) -> (String, Value) {
    let v = admin_create_key(gw, MASTER, spec).await;
    (v["key"].as_str().unwrap().to_owned(), v)
}

/// POST a chat completion; returns status, headers and the body text.
async fn chat(
    gw: &TestGateway,
    key: Option<&str>,
    model: &str,
    text: &str,
    stream: bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut body = chat_body(model, text);
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let mut rb = client().post(gw.chat_url()).json(&body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

async fn get(gw: &TestGateway, path: &str, key: Option<&str>) -> (u16, String) {
    let mut rb = client().get(format!("{}{path}", gw.url));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn auth_is_off_by_default() {
    let gw = TestGateway::start(Config::test_default()).await;
    assert!(!gw.state.auth.enabled);
    let (s, _, _) = chat(&gw, None, "local", "hi", false).await;
    assert_eq!(s, 200);
    assert!(gw.state.auth.describe().starts_with("off"));
}

#[tokio::test]
async fn auth_matrix_gives_exact_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |_| {}).await;
    assert!(gw.state.auth.describe().starts_with("ON"));
    let (good, created) = create_key(&gw, json!({"name": "app", "models": ["local"]})).await;
    assert!(good.starts_with("sk-or-") && good.len() == 70, "{good}");
    assert!(created.get("key_hash").is_none());
    let (expired, _) = create_key(&gw, json!({"name": "old", "expires_at": 1})).await;
    let (revoked, rv) = create_key(&gw, json!({"name": "gone"})).await;
    let r = client()
        .delete(format!("{}/admin/keys/{}", gw.url, rv["id"].as_str().unwrap()))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // No key, a bad key, a revoked key (at once: revoked through this replica), an expired key: 401.
    let (s, h, b) = chat(&gw, None, "local", "a", false).await;
    assert_eq!((s, code(&b).as_str()), (401, "invalid_api_key"), "{b}");
    assert_eq!(h["www-authenticate"], "Bearer");
    let bad = "sk-or-0000000000000000000000000000000000000000000000000000000000000000";
    for (key, why) in [
        (bad, "bad"),
        (revoked.as_str(), "revoked"),
        (expired.as_str(), "expired"),
    ] {
        let (s, _, b) = chat(&gw, Some(key), "local", "a", false).await;
        assert_eq!((s, code(&b).as_str()), (401, "invalid_api_key"), "{why}: {b}");
        assert!(!b.contains(key), "the key is echoed: {b}");
    }
    // A valid key: 200 for its model, 403 for another, with the param named.
    let (s, _, b) = chat(&gw, Some(&good), "local", "a", false).await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = chat(&gw, Some(&good), "cloud", "a", false).await;
    assert_eq!((s, code(&b).as_str()), (403, "model_not_allowed"), "{b}");
    let (s, _, b) = chat(&gw, Some(&good), "auto", "a", true).await;
    assert_eq!((s, code(&b).as_str()), (403, "model_not_allowed"), "stream: {b}");
    // /generate too.
    let r = client()
        .post(format!("{}/generate", gw.url))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The master key may use everything.
    let (s, _, _) = chat(&gw, Some(MASTER), "cloud", "a", false).await;
    assert_eq!(s, 200);
    // Admin endpoints: 401 without a key, 403 with a virtual key, 200 with the master key.
    assert_eq!(get(&gw, "/admin/keys", None).await.0, 401);
    let (s, b) = get(&gw, "/admin/keys", Some(&good)).await;
    assert_eq!((s, code(&b).as_str()), (403, "master_key_required"), "{b}");
    assert_eq!(get(&gw, "/admin/breakers", Some(&good)).await.0, 403);
    let (s, b) = get(&gw, "/admin/keys", Some(MASTER)).await;
    assert_eq!(s, 200);
    let list: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    for k in [&good, &expired, &revoked] {
        assert!(!b.contains(k.as_str()), "a listing shows a secret");
    }
    // Models need a key; health, readiness and (unprotected) metrics do not.
    assert_eq!(get(&gw, "/v1/models", None).await.0, 401);
    let ids = |body: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // A key lists (and finds) only the models it may use; the master key sees them all.
    let (s, listed) = get(&gw, "/v1/models", Some(&good)).await;
    assert_eq!((s, ids(&listed)), (200, vec!["local".to_owned()]), "{listed}");
    let all = ids(&get(&gw, "/v1/models", Some(MASTER)).await.1);
    assert!(
        ["auto", "local", "cloud"].iter().all(|m| all.contains(&m.to_string())),
        "{all:?}"
    );
    assert_eq!(get(&gw, "/v1/models/local", Some(&good)).await.0, 200);
    assert_eq!(get(&gw, "/v1/models/cloud", Some(&good)).await.0, 404);
    assert_eq!(get(&gw, "/v1/models/cloud", Some(MASTER)).await.0, 200);
    assert_eq!(get(&gw, "/health", None).await.0, 200);
    assert_eq!(get(&gw, "/ready", None).await.0, 200);
    let (s, metrics) = get(&gw, "/metrics", None).await;
    assert_eq!(s, 200);
    for k in [&good, &expired, &revoked, &MASTER.to_owned()] {
        assert!(!metrics.contains(k.as_str()));
    }
    // Admin API errors are OpenAI-shaped.
    let (s, b) = get(&gw, "/admin/keys/key_nope", Some(MASTER)).await;
    assert_eq!((s, code(&b).as_str()), (404, "key_not_found"));
    let r = client()
        .post(format!("{}/admin/keys", gw.url))
        .bearer_auth(MASTER)
        .json(&json!({"name": "x", "budget_usd": -3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn protected_metrics_need_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |c| c.auth.protect_metrics = true).await;
    let (key, _) = create_key(&gw, json!({"name": "app"})).await;
    for path in ["/metrics", "/api/stats"] {
        assert_eq!(get(&gw, path, None).await.0, 401, "{path}");
        assert_eq!(get(&gw, path, Some(&key)).await.0, 403, "{path}");
        assert_eq!(get(&gw, path, Some(MASTER)).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |_| {}).await;
    let (key, _) = create_key(&gw, json!({"name": "r", "rpm": 2, "tpm": 100000})).await;
    let mut remaining = vec![];
    for t in ["one", "two"] {
        let (s, h, b) = chat(&gw, Some(&key), "local", t, false).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
        remaining.push(h["x-ratelimit-remaining-requests"].to_str().unwrap().to_owned());
    }
    assert_eq!(remaining, ["1", "0"]);
    let (s, h, b) = chat(&gw, Some(&key), "local", "three", false).await;
    assert_eq!((s, code(&b).as_str()), (429, "rate_limit_exceeded"), "{b}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    // Another key is not affected; the master key has no limits.
    let (other, _) = create_key(&gw, json!({"name": "o", "rpm": 1})).await;
    assert_eq!(chat(&gw, Some(&other), "local", "x", false).await.0, 200);
    assert_eq!(chat(&gw, Some(MASTER), "local", "y", false).await.0, 200);
}

/// Conversation stickiness is per key: a strong answer one key got does not pull another key's
/// follow-up to the same text to the strong tier.
#[tokio::test]
async fn stickiness_is_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |c| c.cache.enabled = false).await;
    let (a, _) = create_key(&gw, json!({"name": "a"})).await;
    let (b, _) = create_key(&gw, json!({"name": "b"})).await;
    let send = |key: String, body: Value| {
        let url = gw.chat_url();
        async move {
            let r = client().post(url).bearer_auth(key).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let header = |n: &str| r.headers()[n].to_str().unwrap().to_owned();
            let (tier, reason) = (header("x-optiroute-tier"), header("x-optiroute-route-reason"));
            let v: Value = r.json().await.unwrap();
            (
                tier,
                reason,
                v["choices"][0]["message"]["content"].as_str().unwrap().to_owned(),
            )
        }
    };
    let hard = "Prove step by step that there are infinitely many primes, then write a Rust function that \
                returns the n-th prime with an efficient sieve, and analyse its time complexity rigorously.";
    let (tier, _, answer) = send(a.clone(), chat_body("auto", hard)).await;
    assert_eq!(tier, "cloud");
    let follow = json!({"model": "auto", "messages": [
        {"role": "user", "content": hard},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "thanks, and why?"}
    ]});
    // Key b sends the same conversation: the strong answer was not given to it.
    let (tier, reason, _) = send(b.clone(), follow.clone()).await;
    assert_eq!(tier, "local", "{reason}");
    // Nor to the master key.
    let (tier, reason, _) = send(MASTER.to_owned(), follow.clone()).await;
    assert_eq!(tier, "local", "{reason}");
    // Key a's own follow-up stays strong.
    let (tier, reason, _) = send(a, follow).await;
    assert_eq!(tier, "cloud", "{reason}");
    assert!(reason.contains("follow-up"), "{reason}");
}

#[tokio::test]
async fn concurrent_requests_are_capped_per_key() {
    let dir = tempfile::tempdir().unwrap();
    // A slow streamed answer holds its slot until the body ends.
    let gw = gateway(&sqlite_url(&dir), |c| {
        c.providers[0].simulated.tokens_per_s = 20.0;
        c.providers[0].simulated.answer_words = 40;
    })
    .await;
    let (key, _) = create_key(&gw, json!({"name": "c", "max_concurrent": 1})).await;
    let mut body = chat_body("local", "slow one");
    body["stream"] = json!(true);
    let first = client()
        .post(gw.chat_url())
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let (s, _, b) = chat(&gw, Some(&key), "local", "second", false).await;
    assert_eq!((s, code(&b).as_str()), (429, "rate_limit_exceeded"), "{b}");
    // Finishing (here: abandoning) the stream frees the slot.
    drop(first);
    let c = client();
    let mut ok = false;
    for i in 0..200 {
        let r = c
            .post(gw.chat_url())
            .bearer_auth(&key)
            .json(&chat_body("local", &format!("after {i}")))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was never released");
}

#[tokio::test]
async fn budgets_count_json_and_streamed_requests_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let gw = gateway(&url, |_| {}).await;
    // The simulated `local` deployment costs $0.00002 per request: the budget covers two.
    let (key, created) = create_key(
        &gw,
        json!({"name": "b", "budget_usd": 0.00004, "budget_period": "month", "metadata": {"team": "x"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (s, _, _) = chat(&gw, Some(&key), "local", "first", false).await;
    assert_eq!(s, 200);
    let (s, _, body) = chat(&gw, Some(&key), "local", "second, streamed", true).await;
    assert_eq!(s, 200);
    assert!(body.contains("[DONE]"), "{body}");
    // The stream settled its cost when it ended: the budget is spent.
    let (s, h, b) = chat(&gw, Some(&key), "local", "third", false).await;
    assert_eq!((s, code(&b).as_str()), (402, "budget_exceeded"), "{b}");
    assert!(h.contains_key("retry-after"), "a monthly budget says when it resets");
    let (s, b) = get(&gw, &format!("/admin/keys/{id}"), Some(MASTER)).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!((v["spent_usd"].as_f64().unwrap() - 0.00004).abs() < 1e-12, "{v}");
    assert_eq!(v["metadata"]["team"], "x");
    // Persisted (asynchronously) to the store.
    gw.state.limits.flush().await;
    let store = Store::connect(&url).await.unwrap();
    let rec = store.key(&id).await.unwrap();
    assert_eq!(rec.spent_nanos, 40_000);
    // Raising the budget through the admin API lets the key spend again.
    let r = client()
        .patch(format!("{}/admin/keys/{id}", gw.url))
        .bearer_auth(MASTER)
        .json(&json!({"budget_usd": 0.001}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(chat(&gw, Some(&key), "local", "fourth", false).await.0, 200);
    // A cache hit costs nothing and is not charged.
    assert_eq!(chat(&gw, Some(&key), "local", "fourth", false).await.0, 200);
    gw.state.limits.flush().await;
    assert_eq!(store.key(&id).await.unwrap().spent_nanos, 60_000);
}

#[tokio::test]
async fn a_stream_abandoned_mid_way_is_still_charged() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |c| {
        c.providers[0].simulated.tokens_per_s = 50.0;
        c.providers[0].simulated.answer_words = 40;
    })
    .await;
    let (key, created) = create_key(&gw, json!({"name": "s", "budget_usd": 0.00001})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut body = chat_body("local", "stream and leave");
    body["stream"] = json!(true);
    let mut r = client()
        .post(gw.chat_url())
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _first = r.chunk().await.unwrap();
    drop(r);
    let limits = gw.state.limits.clone();
    let rec = Arc::new(gw.state.auth.store.as_ref().unwrap().key(&id).await.unwrap());
    assert!(
        eventually(Duration::from_secs(10), || limits.spent(&rec) == 20_000).await,
        "the abandoned stream was not charged"
    );
    let (s, _, b) = chat(&gw, Some(&key), "local", "next", false).await;
    assert_eq!((s, code(&b).as_str()), (402, "budget_exceeded"), "{b}");
}

#[tokio::test]
async fn deployment_rpm_falls_back_instead_of_exceeding_a_provider_quota() {
    let mut cfg = Config::test_default();
    cfg.deployments[0].rpm = Some(2);
    cfg.models.push(optiroute::config::ModelGroupConfig {
        name: "pool".into(),
        deployments: vec!["local".into(), "cloud".into()],
        strategy: optiroute::config::Strategy::Priority,
        cache_ttl_secs: None,
    });
    let gw = TestGateway::start(cfg).await;
    let mut served = vec![];
    for i in 0..4 {
        let (s, h, b) = chat(&gw, None, "pool", &format!("q{i}"), false).await;
        assert_eq!(s, 200, "{b}");
        served.push(h["x-optiroute-deployment"].to_str().unwrap().to_owned());
    }
    assert_eq!(served, ["local", "local", "cloud", "cloud"]);
    // Addressed directly, a deployment at its quota is not called: 429 with the time until it has
    // room (2 rpm: a slot every 30 s).
    let (s, h, b) = chat(&gw, None, "local", "direct", false).await;
    assert_eq!(s, 429, "{b}");
    assert!(b.contains("rpm/tpm") && b.contains("deployment_quota_exceeded"), "{b}");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&wait), "retry-after {wait}");
}

/// A deployment's `rpm` is what the provider may receive: a retry is one more request to it, so it
/// must fit in the quota too (it used to be taken once per candidate, then retried freely).
#[tokio::test]
async fn retries_count_against_a_deployments_rpm() {
    let (mock, gw) = openai_setup(|c| {
        c.deployments[0].rpm = Some(2);
        c.resilience.max_attempts = 4;
        c.resilience.breaker.consecutive_failures = 100;
    })
    .await;
    mock.handle.set_default(optiroute::mock::Behavior::status(503));
    for i in 0..3 {
        let (s, _, b) = chat(&gw, None, "m", &format!("q{i}"), false).await;
        assert!(s == 503 || s == 502 || s == 429, "{s} {b}");
    }
    assert_eq!(mock.handle.hits(), 2, "the provider got more requests than its 2 rpm");
}

// ------------------------------------------------------------------------------------------------
// The key store on SQLite and on PostgreSQL.

async fn store_crud(store: &Store) {
    let (rec, secret) = store
        .create_key(&KeySpec {
            name: Some("crud".into()),
            models: Some(vec!["local".into()]),
            rpm: Some(Some(60)),
            budget_usd: Some(Some(10.0)),
            metadata: Some(json!({"owner": "qa"})),
            ..Default::default()
        })
        .await
        .unwrap();
    // Only the hash and a short prefix are stored.
    assert_eq!(rec.hash, hash_key(&secret));
    assert!(secret.starts_with(&rec.prefix) && rec.prefix.len() < 16);
    let found = store.key_by_hash(&hash_key(&secret)).await.unwrap().unwrap();
    assert_eq!(found.id, rec.id);
    assert_eq!(found.models, ["local"]);
    assert_eq!((found.rpm, found.budget_nanos), (Some(60), Some(10_000_000_000)));
    assert_eq!(found.metadata["owner"], "qa");
    let dump = format!("{:?}", store.list_keys().await.unwrap());
    assert!(!dump.contains(&secret[rec.prefix.len()..]), "the secret is stored");
    let upd = store
        .update_key(
            &rec.id,
            &KeySpec {
                rpm: Some(None),
                tpm: Some(Some(5000)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((upd.rpm, upd.tpm, upd.name.as_str()), (None, Some(5000), "crud"));
    store
        .add_spend(&rec.id, rec.budget_period, rec.spend_period_start, 123)
        .await
        .unwrap();
    store
        .add_spend(&rec.id, rec.budget_period, rec.spend_period_start, 7)
        .await
        .unwrap();
    assert_eq!(store.key(&rec.id).await.unwrap().spent_nanos, 130);
    // A sum past the column's range saturates (PostgreSQL refused the update, SQLite made it a REAL).
    store
        .add_spend(&rec.id, rec.budget_period, rec.spend_period_start, u64::MAX)
        .await
        .unwrap();
    assert_eq!(store.key(&rec.id).await.unwrap().spent_nanos, i64::MAX as u64);
    let rv = store.revoke_key(&rec.id).await.unwrap();
    assert!(rv.revoked_at.is_some());
    let again = store.revoke_key(&rec.id).await.unwrap();
    assert_eq!(again.revoked_at, rv.revoked_at, "revocation is idempotent");
    assert!(matches!(
        store.revoke_key("key_missing").await,
        Err(optiroute::store::StoreError::NotFound(_))
    ));
    assert!(store.key_by_hash(&hash_key("sk-or-other")).await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_store_crud_and_file_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store_crud(&store).await;
    let (_, secret) = store
        .create_key(&KeySpec {
            name: Some("file".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    store.close().await;
    // Reopening re-runs migrations idempotently and keeps the data.
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap().len(), 2);
    store.close().await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        // SQLite may still be removing its -wal/-shm files after the close: a file gone is skipped.
        match std::fs::read(entry.unwrap().path()) {
            Ok(b) => bytes.extend(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{e}"),
        }
    }
    let hay = String::from_utf8_lossy(&bytes);
    assert!(hay.contains(&hash_key(&secret)));
    assert!(!hay.contains(&secret[6..]), "the secret is in the database file");
}

#[tokio::test]
async fn postgres_store_crud() {
    let Some(db) = pg_database().await else { return };
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    store_crud(&store).await;
    // Migrations are idempotent on PostgreSQL too.
    let again = Store::connect(&db.url).await.unwrap();
    assert_eq!(again.list_keys().await.unwrap().len(), 1);
    again.close().await;
    store.close().await;
    db.drop().await;
}

async fn revocation_elsewhere_applies_within_the_cache_ttl(url: &str) {
    let ttl = Duration::from_millis(1500);
    let gw = gateway(url, |c| c.auth.key_cache_ttl_ms = ttl.as_millis() as u64).await;
    let (key, created) = create_key(&gw, json!({"name": "r"})).await;
    assert_eq!(chat(&gw, Some(&key), "local", "a", false).await.0, 200);
    // Revoked by another process (the CLI, another replica): the cached lookup may serve until the
    // TTL passes, then the key is refused.
    let other = Store::connect(url).await.unwrap();
    let revoked_at = tokio::time::Instant::now();
    other.revoke_key(created["id"].as_str().unwrap()).await.unwrap();
    let c = client();
    let refused_after = loop {
        let r = c
            .post(gw.chat_url())
            .bearer_auth(&key)
            .json(&chat_body("local", "b"))
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(r.status(), 200);
        assert!(revoked_at.elapsed() < ttl * 4, "revocation not applied within the TTL");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(refused_after <= ttl + Duration::from_secs(2), "{refused_after:?}");
    other.close().await;
}

#[tokio::test]
async fn sqlite_revocation_applies_within_the_cache_ttl() {
    let dir = tempfile::tempdir().unwrap();
    revocation_elsewhere_applies_within_the_cache_ttl(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_gateway_auth_limits_and_revocation() {
    let Some(db) = pg_database().await else { return };
    revocation_elsewhere_applies_within_the_cache_ttl(&db.url).await;
    let gw = gateway(&db.url, |_| {}).await;
    let (key, created) = create_key(&gw, json!({"name": "pg", "budget_usd": 0.00002, "models": ["local"]})).await;
    assert_eq!(chat(&gw, Some(&key), "cloud", "c", false).await.0, 403);
    assert_eq!(chat(&gw, Some(&key), "local", "a", true).await.0, 200);
    let (s, _, b) = chat(&gw, Some(&key), "local", "b", false).await;
    assert_eq!((s, code(&b).as_str()), (402, "budget_exceeded"), "{b}");
    gw.state.limits.flush().await;
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(
        store.key(created["id"].as_str().unwrap()).await.unwrap().spent_nanos,
        20_000
    );
    store.close().await;
    drop(gw);
    db.drop().await;
}

// ------------------------------------------------------------------------------------------------
// The CLI and the binary: a key is shown once; no secret reaches a log line or check-config.

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_optiroute"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin()
        .args(args)
        .env_remove("OPTIROUTE_CONFIG")
        .env_remove("OPTIROUTE_MASTER_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn secrets_in(text: &str) -> Vec<String> {
    let mut found = vec![];
    let mut rest = text;
    while let Some(i) = rest.find("sk-or-") {
        let tail = &rest[i..];
        let end = tail[6..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map_or(tail.len(), |e| e + 6);
        if end == 70 {
            found.push(tail[..end].to_owned());
        }
        rest = &tail[6..];
    }
    found
}

#[tokio::test]
async fn cli_keys_create_shows_the_key_once_and_the_gateway_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (ok, out, err) = run(&[
        "keys",
        "create",
        "--database-url",
        &url,
        "--name",
        "cli-app",
        "--budget-usd",
        "10",
        "--rpm",
        "60",
        "--models",
        "local,cloud",
        "--expires-in",
        "30d",
        "--metadata",
        r#"{"team":"search"}"#,
    ]);
    assert!(ok, "{err}");
    let secrets = secrets_in(&out);
    assert_eq!(secrets.len(), 1, "the key must be printed exactly once: {out}");
    let secret = &secrets[0];
    assert!(out.contains("shown once"), "{out}");
    assert!(!err.contains(secret.as_str()));
    let (ok, list, err) = run(&["keys", "list", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(
        list.contains("cli-app") && list.contains("rpm=60") && list.contains("$10/total"),
        "{list}"
    );
    assert!(
        !list.contains(secret.as_str()) && secrets_in(&list).is_empty(),
        "{list}"
    );
    assert!(list.contains(&secret[..12]), "the display prefix is shown: {list}");
    let (ok, json_list, _) = run(&["keys", "list", "--database-url", &url, "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&json_list).unwrap();
    let id = v["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["data"][0]["metadata"]["team"], "search");
    assert!(v["data"][0]["expires_at"].as_i64().unwrap() > 0);

    // A gateway on the same store accepts the key until it is revoked (by the CLI).
    let ttl = Duration::from_millis(300);
    let gw = gateway(&url, |c| c.auth.key_cache_ttl_ms = ttl.as_millis() as u64).await;
    assert_eq!(chat(&gw, Some(secret), "local", "hi", false).await.0, 200);
    let (ok, out, err) = run(&[
        "keys",
        "update",
        &id,
        "--database-url",
        &url,
        "--rpm",
        "0",
        "--no-budget",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("rpm=-") && out.contains("budget=-"), "{out}");
    let (ok, out, err) = run(&["keys", "revoke", &id, "--database-url", &url]);
    assert!(ok && out.contains("REVOKED"), "{out} {err}");
    let c = client();
    let mut refused = false;
    for _ in 0..400 {
        let r = c
            .post(gw.chat_url())
            .bearer_auth(secret)
            .json(&chat_body("local", "again"))
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a key revoked by the CLI is still accepted");
    let (ok, _, err) = run(&["keys", "revoke", "key_nope", "--database-url", &url]);
    assert!(!ok && err.contains("no key with id"), "{err}");
}

#[tokio::test]
async fn no_secret_in_logs_responses_metrics_or_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("optiroute.toml");
    let db_path = dir.path().join("keys.db");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
[server]
port = 0

[auth]
master_key_env = "OPTIROUTE_TEST_SECRET_MASTER"

[store]
database_url = "sqlite://{}"

[[providers]]
name = "sim"
kind = "simulated"
[providers.simulated]
latency_ms = 0

[[deployments]]
name = "local"
provider = "sim"
model = "sim-8b"
tier = "local"

[[deployments]]
name = "cloud"
provider = "sim"
model = "sim-70b"
tier = "cloud"
"#,
            db_path.display()
        ),
    )
    .unwrap();
    let master = format!("sk-master-{}", hex_random());
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("OPTIROUTE_TEST_SECRET_MASTER", &master)
        .env("RUST_LOG", "debug")
        .env_remove("OPTIROUTE_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the gateway exited");
        if let Some(u) = line.trim().strip_prefix("OPTIROUTE_LISTENING ") {
            break u.to_owned();
        }
    };
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let c = client();
    let mut bodies = String::new();
    let created: Value = c
        .post(format!("{url}/admin/keys"))
        .bearer_auth(&master)
        .json(&json!({"name": "logged", "rpm": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let bad = format!("sk-or-{}", hex_random());
    let wrong_master = format!("{master}x");
    for (k, model, stream) in [
        (key.as_str(), "local", false),
        (key.as_str(), "local", true),
        (bad.as_str(), "local", false),
        (wrong_master.as_str(), "local", false),
        (master.as_str(), "cloud", true),
        (key.as_str(), "missing-model", false),
    ] {
        let mut body = chat_body(model, "tell me");
        body["stream"] = json!(stream);
        let r = c
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(k)
            .json(&body)
            .send()
            .await
            .unwrap();
        bodies.push_str(&format!("{:?}\n", r.headers()));
        bodies.push_str(&r.text().await.unwrap());
    }
    for path in ["/admin/keys", "/metrics", "/api/stats", "/v1/models"] {
        let r = c.get(format!("{url}{path}")).bearer_auth(&master).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        bodies.push_str(&r.text().await.unwrap());
    }
    let check = bin()
        .args(["check-config", "--config"])
        .arg(&cfg_path)
        .env("OPTIROUTE_TEST_SECRET_MASTER", &master)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Stop the gateway we started (by its own handle) and collect everything it logged.
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let logs = log.join().unwrap();
    assert!(logs.contains("auth: ON"), "the banner must say auth is on: {logs}");
    assert!(logs.contains("request"), "no request lines were logged: {logs}");
    assert!(
        logs.lines().any(|l| l.contains("stream=true")
            && l.contains("status=200")
            && l.contains("completion_tokens=")
            && l.contains("cost_usd=")),
        "a finished stream logs its line with its tokens and cost: {logs}"
    );
    assert!(
        logs.contains("request refused"),
        "refusals are logged (without the key): {logs}"
    );
    for (what, text) in [
        ("logs", &logs),
        ("stdout", &rest),
        ("responses", &bodies),
        ("check-config", &check_out),
    ] {
        for secret in [&master, &key, &bad] {
            assert!(!text.contains(secret.as_str()), "a secret appears in {what}");
        }
        // Not even the random part of a key.
        assert!(!text.contains(&key[12..]), "a key's random part appears in {what}");
    }
}

fn hex_random() -> String {
    let mut s = String::new();
    for _ in 0..4 {
        s.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    s
}

// ------------------------------------------------------------------------------------------------
// A real PostgreSQL for the tests: `OPTIROUTE_TEST_PG_URL` if set; else a private server started from
// /usr/lib/postgresql/*/bin in a temp dir on a free port (as the `postgres` user when run as root),
// stopped when the test process exits; else 127.0.0.1:5432 if it answers; else the tests are skipped.

struct PgServer {
    /// URL of a database we may connect to and run CREATE DATABASE from.
    admin_url: String,
    /// Keeps the private server's watchdog pipe open: when this process exits, the pipe closes and
    /// the watchdog stops the server and removes its data directory.
    _watchdog: Option<std::process::ChildStdin>,
}

static PG: tokio::sync::OnceCell<Option<PgServer>> = tokio::sync::OnceCell::const_new();

async fn pg_server() -> Option<&'static PgServer> {
    PG.get_or_init(|| async {
        if let Ok(url) = std::env::var("OPTIROUTE_TEST_PG_URL")
            && !url.trim().is_empty()
        {
            return Some(PgServer {
                admin_url: url,
                _watchdog: None,
            });
        }
        if let Some(s) = start_private_pg().await {
            return Some(s);
        }
        let fallback = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
        if sqlx::PgConnection::connect(&fallback).await.is_ok() {
            return Some(PgServer {
                admin_url: fallback,
                _watchdog: None,
            });
        }
        eprintln!("PostgreSQL not available (no OPTIROUTE_TEST_PG_URL, no initdb, nothing on :5432): skipping");
        None
    })
    .await
    .as_ref()
}

async fn start_private_pg() -> Option<PgServer> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .max()?;
    let root = Command::new("id").arg("-u").output().ok()?.stdout.starts_with(b"0\n");
    let dir = tempfile::Builder::new().prefix("optiroute-pg-").tempdir().ok()?.keep();
    let as_user = |script: String| -> Command {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    let d = dir.display();
    let b = bin.display();
    let init = as_user(format!(
        "'{b}/initdb' -D '{d}/data' -A trust -U postgres --no-sync -E UTF8 >'{d}/initdb.log' 2>&1"
    ))
    .status()
    .ok()?;
    if !init.success() {
        eprintln!("initdb failed (see {d}/initdb.log)");
        return None;
    }
    let port = free_port();
    // The watchdog: runs the server until our end of its stdin closes (this process exited), then
    // stops it (fast shutdown) and removes the data directory.
    let script = format!(
        "'{b}/postgres' -D '{d}/data' -p {port} -k '{d}' -c listen_addresses=127.0.0.1 -c fsync=off \
         -c full_page_writes=off -c synchronous_commit=off >'{d}/server.log' 2>&1 </dev/null & pid=$!; \
         cat >/dev/null; kill -INT $pid; wait $pid; rm -rf '{d}'"
    );
    let mut child = as_user(script).stdin(Stdio::piped()).spawn().ok()?;
    let stdin = child.stdin.take();
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if sqlx::PgConnection::connect(&admin_url).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("private PostgreSQL did not start (see {d}/server.log)");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("started a private PostgreSQL on 127.0.0.1:{port}");
    Some(PgServer {
        admin_url,
        _watchdog: stdin,
    })
}

/// A fresh database for one test.
pub(crate) struct PgDb {
    pub(crate) url: String,
    name: String,
    admin_url: String,
}

pub(crate) async fn pg_database() -> Option<PgDb> {
    let server = pg_server().await?;
    let name = format!("optiroute_t_{}", &hex_random()[..16]);
    let mut conn = sqlx::PgConnection::connect(&server.admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (base, query) = match server.admin_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server.admin_url.as_str(), String::new()),
    };
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    Some(PgDb {
        url: format!("{prefix}/{name}{query}"),
        name,
        admin_url: server.admin_url.clone(),
    })
}

impl PgDb {
    pub(crate) async fn drop(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Hardening: slow clients, connection cap, CORS, and what auth costs per request.

/// POSTs to `path` the headers and the first bytes of a 100-byte body, then nothing, to a gateway
/// with a 1 s body timeout; returns the start of its answer.
async fn answer_to_a_stalled_body(path: &str) -> String {
    let mut cfg = Config::test_default();
    cfg.server.client_body_timeout_secs = 1;
    let gw = TestGateway::start(cfg).await;
    stalled_body_answer(&gw, "POST", path, "").await
}

/// Sends `method path` with `extra_headers` (each ending in CRLF) and the first bytes of a
/// 100-byte body, then nothing; returns the start of the answer.
async fn stalled_body_answer(gw: &TestGateway, method: &str, path: &str, extra_headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.addr();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra_headers}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"re"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408() {
    let head = answer_to_a_stalled_body("/v1/chat/completions").await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
}

#[tokio::test]
async fn a_feedback_whose_body_stalls_gets_408() {
    let head = answer_to_a_stalled_body("/v1/feedback").await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
}

#[tokio::test]
async fn admin_bodies_that_stall_or_overflow_get_openai_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |c| {
        c.server.client_body_timeout_secs = 1;
        c.server.body_limit_bytes = 1024;
    })
    .await;
    let (_, key) = create_key(&gw, json!({"name": "app"})).await;
    let auth = format!("Authorization: Bearer {MASTER}\r\n");
    let update = format!("/admin/keys/{}", key["id"].as_str().unwrap());
    for (method, path) in [("POST", "/admin/keys"), ("PATCH", update.as_str())] {
        let head = stalled_body_answer(&gw, method, path, &auth).await;
        assert!(head.starts_with("HTTP/1.1 408"), "{method} {path}: {head}");
        assert!(head.contains("request_timeout"), "{method} {path}: {head}");
        let big = json!({"name": "x".repeat(2000)});
        let r = client()
            .request(method.parse().unwrap(), format!("{}{path}", gw.url))
            .bearer_auth(MASTER)
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "request_too_large", "{v}");
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = Config::test_default();
    cfg.server.header_timeout_secs = 1;
    let gw = TestGateway::start(cfg).await;
    let addr = gw.addr();
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One more header byte every 100 ms, which no idle timeout would ever catch, until the gateway
    // hangs up (reads EOF or a reset).
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..400 {
            tick.tick().await;
            if wr.write_all(b"X-Slow: a\r\n").await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // (a 408 before the close would be fine too)
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the connection was still open after 20 s of trickled headers"
    );
    // The gateway still serves everyone else.
    let r = client().get(format!("{}/health", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let mut cfg = Config::test_default();
    cfg.server.max_connections = 1;
    let gw = TestGateway::start(cfg).await;
    let addr = gw.addr();
    // An idle connection takes the only slot.
    let idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let r = quick.get(format!("{}/health", gw.url)).send().await;
    assert!(r.is_err(), "a second connection was served beyond max_connections");
    drop(idle);
    let c = reqwest::Client::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.get(format!("{}/health", gw.url)).send())
        .await
        .expect("the freed slot was not reused")
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let preflight = |gw: &TestGateway, origin: &str| {
        client()
            .request(reqwest::Method::OPTIONS, gw.chat_url())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let gw = TestGateway::start(Config::test_default()).await;
    let r = preflight(&gw, "https://app.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = client()
        .post(gw.chat_url())
        .header("origin", "https://app.example")
        .json(&chat_body("local", "x"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let mut cfg = Config::test_default();
    cfg.server.cors_origins = vec!["https://app.example".into()];
    let gw = TestGateway::start(cfg).await;
    let r = preflight(&gw, "https://app.example").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = preflight(&gw, "https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cached_auth_costs_microseconds() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&sqlite_url(&dir), |_| {}).await;
    let (key, _) = create_key(&gw, json!({"name": "fast"})).await;
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let auth = &gw.state.auth;
    auth.authenticate(&h).await.unwrap();
    let n = 20_000u32;
    let t = tokio::time::Instant::now();
    for _ in 0..n {
        auth.authenticate(&h).await.unwrap();
    }
    let per = t.elapsed() / n;
    eprintln!("cached virtual-key auth: {per:?} per request");
    // Generous for an unoptimised build on a busy machine; a store round trip would be far slower.
    assert!(per < Duration::from_micros(200), "{per:?}");
}

/// Several replicas starting at once against a fresh PostgreSQL all migrate it.
#[tokio::test]
async fn replicas_starting_together_all_migrate_postgres() {
    for round in 0..3 {
        // A fresh database per round.
        let Some(db) = pg_database().await else { return };
        let stores = futures_util::future::join_all((0..6).map(|_| Store::connect(&db.url))).await;
        let errors: Vec<String> = stores
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        for s in stores.into_iter().flatten() {
            s.close().await;
        }
        db.drop().await;
        assert!(
            errors.is_empty(),
            "round {round}: {} of 6 replicas failed to start: {:?}",
            errors.len(),
            errors
        );
    }
}

/// Changing a key's budget period keeps persisting its spend (PostgreSQL: same SQL as SQLite).
#[tokio::test]
async fn postgres_spend_is_persisted_after_a_budget_period_change() {
    use optiroute::store::{Period, unix_now};
    let Some(db) = pg_database().await else { return };
    let s = Store::connect(&db.url).await.unwrap();
    let (rec, _) = s
        .create_key(&KeySpec {
            name: Some("p".into()),
            budget_usd: Some(Some(1.0)),
            budget_period: Some(Period::Month),
            ..Default::default()
        })
        .await
        .unwrap();
    let now = unix_now();
    s.add_spend(&rec.id, Period::Month, Period::Month.start(now), 5)
        .await
        .unwrap();
    let rec = s
        .update_key(
            &rec.id,
            &KeySpec {
                budget_period: Some(Period::Total),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.add_spend(&rec.id, Period::Month, Period::Month.start(now), 9)
        .await
        .unwrap();
    s.add_spend(&rec.id, Period::Total, 0, 7).await.unwrap();
    s.add_spend(&rec.id, Period::Total, 0, 1).await.unwrap();
    let r = s.key(&rec.id).await.unwrap();
    assert_eq!((r.stored_spend(now), r.spend_period_start), (8, 0));
    // An update that keeps the period keeps the spend.
    let r = s
        .update_key(
            &rec.id,
            &KeySpec {
                rpm: Some(Some(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.key(&r.id).await.unwrap().spent_nanos, 8);
    s.close().await;
    db.drop().await;
}
