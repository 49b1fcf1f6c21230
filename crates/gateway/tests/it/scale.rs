//! Scale-out: several in-process gateway replicas sharing one real redis-server (limits, spend) and
//! one key store (a real PostgreSQL when available, else a SQLite file), under concurrent load and
//! with Redis failing. No fixed sleeps: every wait polls a condition with a deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use optiroute::config::Config;
use optiroute::store::Store;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::auth::{PgDb, pg_database};
use crate::common::*;

const MASTER: &str = "sk-master-scale-0123456789abcdef";
/// What one request to the demo `local` deployment costs: $0.00002 per request, free tokens.
const COST: u64 = 20_000;

/// The replicas' key store: a fresh PostgreSQL database (if `pg` and one is available), else SQLite.
struct Db {
    url: String,
    pg: Option<PgDb>,
    _dir: tempfile::TempDir,
}

impl Db {
    async fn new(pg: bool) -> Db {
        let dir = tempfile::tempdir().unwrap();
        if pg && let Some(db) = pg_database().await {
            return Db {
                url: db.url.clone(),
                pg: Some(db),
                _dir: dir,
            };
        }
        Db {
            url: format!("sqlite://{}", dir.path().join("keys.db").display()),
            pg: None,
            _dir: dir,
        }
    }

    async fn drop(self) {
        if let Some(pg) = self.pg {
            pg.drop().await;
        }
    }
}

/// `n` replicas with auth on, keys in `db` and limits in `redis` (shared by `n` replicas).
async fn replicas(n: usize, db: &Db, redis: &Redis, edit: impl Fn(&mut Config)) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut cfg = Config::test_default();
        cfg.auth.master_key = Some(MASTER.into());
        cfg.store.database_url = Some(db.url.clone());
        cfg.limits.backend = "redis".into();
        cfg.limits.redis_url = Some(redis.url());
        cfg.limits.replicas = n as u64;
        // Generous: a loaded test machine must not trip the fallback where exact counts are asserted.
        cfg.limits.redis_timeout_ms = 2_000;
        edit(&mut cfg);
        out.push(TestGateway::start(cfg).await);
    }
    out
}

async fn create_key(gw: &TestGateway, spec: Value) -> (String, String) {
    let v = admin_create_key(gw, MASTER, spec).await;
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// One non-streaming request to the `local` deployment (distinct `text` → no cache hit).
/// Returns the status and the error code (empty on success); a transport error is status 0.
async fn chat(gw: &TestGateway, key: &str, text: &str) -> (u16, String) {
    let r = client()
        .post(gw.chat_url())
        .bearer_auth(key)
        .json(&chat_body("local", text))
        .send()
        .await;
    let Ok(r) = r else { return (0, String::new()) };
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
}

/// Sum of a metric over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// No replica counted a Redis failure: exact counts asserted by a test came from the shared limits,
/// not from the per-replica fallback.
async fn assert_redis_never_failed(gws: &[TestGateway]) {
    for gw in gws {
        let errors = metric_sum(&gw.metrics().await, "llm_limits_redis_errors_total");
        assert_eq!(errors, 0.0, "Redis failed during the test: the fallback applied");
    }
}

/// Polls an async condition until it holds or `within` passes.
async fn until<F: Future<Output = bool>>(within: Duration, mut cond: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The key's spend counter in Redis (budget period `total`).
async fn redis_spend(redis: &Redis, key_id: &str) -> Option<u64> {
    let mut c = redis_conn(redis).await;
    redis::cmd("GET")
        .arg(format!("optiroute:lim:spend:{key_id}:total:0"))
        .query_async::<Option<u64>>(&mut c)
        .await
        .unwrap()
}

/// Waits until every replica has applied its queued usage to Redis.
async fn drained(gws: &[TestGateway]) -> bool {
    for gw in gws {
        let sh = gw.state.limits.shared().unwrap().clone();
        let ok = until(Duration::from_secs(20), || {
            let sh = sh.clone();
            async move { sh.drain().await && sh.queued() == 0 }
        })
        .await;
        if !ok {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_60_rpm_key_gets_exactly_60_successes_across_three_replicas() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = Arc::new(replicas(3, &db, &redis, |_| {}).await);
    let (key, _) = create_key(&gws[0], json!({"name": "rpm", "rpm": 60})).await;
    // 150 concurrent requests spread over the replicas, well inside one 60 s window: a per-replica
    // limit would let 180 through; the shared sliding window lets exactly 60.
    let tasks = (0..150).map(|i| {
        let (gws, key) = (gws.clone(), key.clone());
        tokio::spawn(async move { chat(&gws[i % 3], &key, &format!("q{i}")).await })
    });
    let results: Vec<(u16, String)> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited = results
        .iter()
        .filter(|r| r.0 == 429 && r.1 == "rate_limit_exceeded")
        .count();
    assert_redis_never_failed(&gws).await;
    assert_eq!((ok, limited), (60, 90), "{results:?}");
    // Every replica now refuses the key.
    for gw in gws.iter() {
        assert_eq!(chat(gw, &key, "one more").await, (429, "rate_limit_exceeded".into()));
    }
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_holds_across_replicas_within_one_request() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(true).await;
    let gws = Arc::new(replicas(3, &db, &redis, |_| {}).await);
    let budget = 5 * COST;

    // Nine concurrent clients on three replicas, one request in flight at a time (max_concurrent 1,
    // global): usage is applied to Redis before the slot is released, so exactly budget / cost pass.
    let (key, id) = create_key(
        &gws[0],
        json!({"name": "b1", "budget_usd": budget as f64 / 1e9, "max_concurrent": 1}),
    )
    .await;
    let ok = Arc::new(AtomicUsize::new(0));
    let tasks = (0..9).map(|c| {
        let (gws, key, ok) = (gws.clone(), key.clone(), ok.clone());
        tokio::spawn(async move {
            for i in 0..5_000 {
                match chat(&gws[c % 3], &key, &format!("c{c} r{i}")).await {
                    (200, _) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    (429, code) if code == "rate_limit_exceeded" => {}
                    (402, code) if code == "budget_exceeded" => return true,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            false
        })
    });
    let finished = join_all(tasks).await;
    assert!(
        finished.into_iter().all(Result::unwrap),
        "a client never saw its budget run out"
    );
    assert_eq!(ok.load(Ordering::SeqCst), 5);
    assert!(drained(&gws).await);
    assert_eq!(redis_spend(&redis, &id).await, Some(budget));
    // The store (PostgreSQL or SQLite) holds the same spend, written by the replicas that served it.
    for gw in gws.iter() {
        gw.state.limits.flush().await;
    }
    let store = gws[0].state.auth.store.clone().unwrap();
    assert_eq!(store.key(&id).await.unwrap().spent_nanos, budget);

    // One client going round the replicas, no concurrency limit: usage reaches Redis asynchronously,
    // so at most the one request before the refusal may slip through.
    let (key, id) = create_key(&gws[0], json!({"name": "b2", "budget_usd": budget as f64 / 1e9})).await;
    let mut ok = 0;
    for i in 0..100 {
        match chat(&gws[i % 3], &key, &format!("seq {i}")).await {
            (200, _) => ok += 1,
            (402, _) => break,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((5..=6).contains(&ok), "{ok} requests served on a budget for 5");
    assert!(drained(&gws).await);
    let spent = redis_spend(&redis, &id).await.unwrap();
    assert!(spent >= budget && spent <= budget + COST, "{spent}");
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_retried_after_a_lost_reply_is_counted_once() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = replicas(1, &db, &redis, |c| c.limits.redis_timeout_ms = 200).await;
    let (key, id) = create_key(&gws[0], json!({"name": "once", "budget_usd": 1.0})).await;
    assert_eq!(chat(&gws[0], &key, "first").await.0, 200);
    assert!(drained(&gws).await);
    assert_eq!(redis_spend(&redis, &id).await, Some(COST));
    // Redis stops answering for 4 s: limit checks and settles time out (requests are served by the
    // local fallback), the worker retries its batch; the timed-out attempts run when Redis resumes.
    let mut c = redis_conn(&redis).await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    for t in ["second", "third", "fourth"] {
        assert_eq!(chat(&gws[0], &key, t).await.0, 200);
    }
    assert!(drained(&gws).await);
    let m = gws[0].metrics().await;
    assert!(
        metric_sum(&m, "llm_limits_redis_errors_total{op=\"settle\"}") >= 1.0,
        "no settle failed; the test did not exercise a retry: {m}"
    );
    assert_eq!(redis_spend(&redis, &id).await, Some(4 * COST), "counted twice or lost");
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_during_load_every_request_answers_and_limits_recover() {
    let Some(mut redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = Arc::new(replicas(2, &db, &redis, |c| c.limits.redis_timeout_ms = 300).await);
    let (key, _) = create_key(&gws[0], json!({"name": "load", "rpm": 1_000_000, "budget_usd": 100.0})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..6)
        .map(|c| {
            let (gws, key, stop, answered) = (gws.clone(), key.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let (s, code) = chat(&gws[c % 2], &key, &format!("l{c} {i}")).await;
                    statuses.push((s, code, started.elapsed()));
                    answered.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                statuses
            })
        })
        .collect();
    let answered_at_least = |n: usize| {
        let a = answered.clone();
        move || a.load(Ordering::SeqCst) >= n
    };
    assert!(eventually(Duration::from_secs(30), answered_at_least(40)).await);
    redis.kill();
    let base = answered.load(Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(30), answered_at_least(base + 60)).await);
    for gw in gws.iter() {
        assert!(metric_sum(&gw.metrics().await, "llm_limits_redis_errors_total") >= 1.0);
    }
    assert!(redis.restart(), "redis did not restart");
    assert!(drained(&gws).await, "the replicas did not reconnect");
    let base = answered.load(Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(30), answered_at_least(base + 40)).await);
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let bad: Vec<_> = all.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(bad.is_empty(), "requests without a proper answer: {bad:?}");
    let slowest = all.iter().map(|r| r.2).max().unwrap();
    assert!(slowest < Duration::from_secs(10), "a request hung for {slowest:?}");

    // Limits are global again: 10 RPM allows 10 in total (the local fallback would allow 5 per replica).
    let (key, _) = create_key(&gws[0], json!({"name": "after", "rpm": 10})).await;
    let mut ok = 0;
    for i in 0..20 {
        if chat(&gws[0], &key, &format!("after {i}")).await.0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(chat(&gws[1], &key, "on b").await.0, 429);
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_a_key_revoked_on_one_replica_is_refused_on_another_within_the_cache_ttl() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(true).await;
    let ttl = Duration::from_millis(500);
    // Without shared state in Redis there are no change notifications: the cache TTL is the bound.
    let gws = replicas(2, &db, &redis, |c| {
        c.auth.key_cache_ttl_ms = 500;
        c.limits.backend = "memory".into();
    })
    .await;
    let (key, id) = create_key(&gws[0], json!({"name": "rev", "rpm": 1000})).await;
    assert_eq!(chat(&gws[1], &key, "cached on b").await.0, 200);
    revoke(&gws[0], &id).await;
    let revoked = Instant::now();
    assert_eq!(
        chat(&gws[0], &key, "on a").await.0,
        401,
        "A applies its own revocation at once"
    );
    assert!(
        refused_within(&gws[1], &key, ttl + Duration::from_secs(5)).await,
        "B still accepts a revoked key"
    );
    let took = revoked.elapsed();
    assert!(took <= ttl + Duration::from_secs(2), "revocation took {took:?} on B");
    drop(gws);
    db.drop().await;
}

/// Revokes key `id` through `gw`'s admin API.
async fn revoke(gw: &TestGateway, id: &str) {
    let r = client()
        .delete(format!("{}/admin/keys/{id}", gw.url))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Whether `gw` refuses `key` (401) within `within`, asking with a fresh prompt each time.
async fn refused_within(gw: &TestGateway, key: &str, within: Duration) -> bool {
    let mut i = 0;
    until(within, || {
        i += 1;
        let text = format!("probe {i}");
        async move { chat(gw, key, &text).await.0 == 401 }
    })
    .await
}

async fn request_log_rows_reach_the_store(pg: bool) {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(pg).await;
    if pg && db.pg.is_none() {
        return;
    }
    let gws = replicas(2, &db, &redis, |_| {}).await;
    let (key, id) = create_key(&gws[0], json!({"name": "log", "rpm": 1000})).await;
    let secret_prompt = format!("prompt-text-{}", rand::random::<u64>());
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(chat(gw, &key, &format!("{secret_prompt} {i}")).await.0, 200);
    }
    // The same question again on A: a cache hit, logged with no cost.
    assert_eq!(chat(&gws[0], &key, &format!("{secret_prompt} 0")).await.0, 200);
    // And a stream on B.
    let r = client()
        .post(gws[1].chat_url())
        .bearer_auth(&key)
        .json(&json!({"model": "local", "stream": true, "messages": [{"role": "user", "content": format!("{secret_prompt} s")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let store: Store = gws[0].state.auth.store.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows: Vec<_> = optiroute::request_log::recent(&store, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.key_id == id)
            .collect();
        if rows.len() >= 4 || Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let found = rows.len() >= 4;
    assert!(found, "request log rows did not appear: {rows:?}");
    assert_eq!(rows.len(), 4, "{rows:?}");
    let hits: Vec<_> = rows.iter().filter(|r| r.cache == "hit").collect();
    assert_eq!(hits.len(), 1, "{rows:?}");
    assert_eq!(hits[0].cost_nanos, 0);
    for r in &rows {
        assert_eq!((r.status, r.deployment.as_str()), (200, "local"), "{r:?}");
        assert!(!r.request_id.is_empty() && r.at_ms > 0);
        assert_eq!(r.tier.as_deref(), Some("local"));
        if r.cache != "hit" {
            assert_eq!(r.cost_nanos, COST, "{r:?}");
            assert!(r.prompt_tokens > 0 && r.latency_us > 0, "{r:?}");
        }
        assert!(
            !format!("{r:?}").contains(&secret_prompt),
            "prompt text in the log: {r:?}"
        );
    }
    for gw in &gws {
        let m = gw.metrics().await;
        assert!(m.contains("llm_request_log_dropped_total 0"), "{m}");
    }
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_rows_reach_sqlite() {
    request_log_rows_reach_the_store(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_rows_reach_postgres() {
    request_log_rows_reach_the_store(true).await;
}

/// With Redis unreachable from the start, each `on_redis_error` policy answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_redis_error_policy_applies_when_redis_is_unreachable() {
    let db = Db::new(false).await;
    let nowhere = format!("redis://127.0.0.1:{}/", free_port());
    let start = |policy: &'static str| {
        let (url, nowhere) = (db.url.clone(), nowhere.clone());
        async move {
            let mut cfg = Config::test_default();
            cfg.auth.master_key = Some(MASTER.into());
            cfg.store.database_url = Some(url);
            cfg.limits.backend = "redis".into();
            cfg.limits.redis_url = Some(nowhere);
            cfg.limits.replicas = 2;
            cfg.limits.on_redis_error = policy.into();
            TestGateway::start(cfg).await
        }
    };
    // local: the key's 10 RPM becomes 5 on this replica (one of two).
    let gw = start("local").await;
    let (key, _) = create_key(&gw, json!({"name": "p", "rpm": 10})).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(chat(&gw, &key, &format!("local {i}")).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let m = gw.metrics().await;
    assert!(metric_sum(&m, "llm_limits_redis_errors_total") >= 1.0, "{m}");
    drop(gw);
    // fail-open: no limits at all.
    let gw = start("fail-open").await;
    for i in 0..12 {
        assert_eq!(chat(&gw, &key, &format!("open {i}")).await.0, 200);
    }
    drop(gw);
    // fail-closed: refused with 503 before anything is sent upstream.
    let gw = start("fail-closed").await;
    assert_eq!(chat(&gw, &key, "closed").await, (503, "limits_unavailable".into()));
    drop(gw);
    db.drop().await;
}

/// Sets a deployment's rpm/tpm in a test config.
fn deployment_limits(c: &mut Config, name: &str, rpm: Option<u64>, tpm: Option<u64>) {
    let d = c.deployments.iter_mut().find(|d| d.name == name).unwrap();
    d.rpm = rpm;
    d.tpm = tpm;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_rpm_and_tpm_are_one_budget_for_all_replicas() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = Arc::new(
        replicas(3, &db, &redis, |c| {
            deployment_limits(c, "local", Some(6), None);
            deployment_limits(c, "cloud", None, Some(1));
        })
        .await,
    );
    // RPM: 30 concurrent requests naming `local` spread over three replicas. Each replica's own window
    // would let 18 through; the shared one lets exactly 6.
    let tasks = (0..30).map(|i| {
        let gws = gws.clone();
        tokio::spawn(async move { chat(&gws[i % 3], MASTER, &format!("d{i}")).await })
    });
    let results: Vec<(u16, String)> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 6, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.0 == 200 || (r.0 == 429 && r.1 == "deployment_quota_exceeded")),
        "{results:?}"
    );

    // TPM: one answer from `cloud` on replica 0 spends its 1 token a minute. Replica 2 never served it,
    // so only the shared bucket can make it refuse, once replica 0's usage reached Redis.
    let cloud = |gw: usize, text: String| {
        let gws = gws.clone();
        async move {
            let r = client()
                .post(gws[gw].chat_url())
                .bearer_auth(MASTER)
                .json(&chat_body("cloud", &text))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(cloud(0, "first".into()).await, 200);
    let conn = redis_conn(&redis).await;
    assert!(
        until(Duration::from_secs(10), || {
            let mut conn = conn.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg("optiroute:lim:dep:tpm:cloud")
                    .query_async::<bool>(&mut conn)
                    .await
                    .unwrap_or(false)
            }
        })
        .await,
        "replica 0's token usage never reached Redis"
    );
    assert_ne!(
        cloud(2, "second".into()).await,
        200,
        "replica 2 served a deployment whose shared token budget is spent"
    );
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_reaches_the_other_replicas_through_redis_long_before_the_cache_ttl() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    // Ten minutes of key cache: without the published change B would accept the key all that time.
    let gws = replicas(2, &db, &redis, |c| c.auth.key_cache_ttl_ms = 600_000).await;
    let (key, id) = create_key(&gws[0], json!({"name": "pubsub", "rpm": 1000})).await;
    assert_eq!(chat(&gws[1], &key, "cached on b").await.0, 200);
    revoke(&gws[0], &id).await;
    assert!(
        refused_within(&gws[1], &key, Duration::from_secs(5)).await,
        "B still accepts a key revoked on A"
    );
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}

/// An OpenAI-compatible upstream that reports `tokens` prompt tokens for every completion (a broken
/// or hostile upstream's usage). Returns its base URL.
async fn upstream_reporting(tokens: u64) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000u64, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A cost beyond what Redis' INCRBY holds (10^16 tokens at $1/Mtok: $10^10) must still count: the key
/// is over its budget on every replica, and Redis never reports an error. It used to fail the settle
/// script, whose retry then skipped the cost (its applied-once marker was already set): the counter
/// stayed at $0 and every replica kept admitting the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cost_beyond_the_redis_counter_range_still_exhausts_the_budget() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let upstream = upstream_reporting(10_000_000_000_000_000).await;
    let gws = replicas(2, &db, &redis, |c| {
        let p = optiroute::config::ProviderConfig::new(
            "wild",
            optiroute::config::ProviderKind::Openai,
            Some(upstream.clone()),
            None,
        );
        c.providers.push(p);
        let mut d = optiroute::config::DeploymentConfig::new("wild", "wild", "m", "cloud");
        d.input_usd_per_mtok = Some(1.0);
        d.output_usd_per_mtok = Some(1.0);
        c.deployments.push(d);
    })
    .await;
    let (key, id) = create_key(&gws[0], json!({"name": "wild", "budget_usd": 1.0})).await;
    let r = client()
        .post(gws[0].chat_url())
        .bearer_auth(&key)
        .json(&chat_body("wild", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(drained(&gws).await, "settled usage did not reach Redis");
    assert_eq!(redis_spend(&redis, &id).await, Some(i64::MAX as u64));
    for gw in &gws {
        assert_eq!(chat(gw, &key, "more").await, (402, "budget_exceeded".into()));
    }
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}

async fn set_budget(gw: &TestGateway, id: &str, usd: Option<f64>) {
    let r = client()
        .patch(format!("{}/admin/keys/{id}", gw.url))
        .bearer_auth(MASTER)
        .json(&json!({ "budget_usd": usd }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// What a key spends while it has no budget still counts once a budget is set again: a replica
/// keeps it in memory and the store has it, and so must the shared counter. It used to count only
/// while the key had a budget, so a budget lifted and restored found the counter where it was left
/// and every replica admitted the key as if the spend in between had never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_while_a_budget_was_lifted_counts_when_it_is_restored() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = replicas(2, &db, &redis, |_| {}).await;
    let budget = 5.0 * COST as f64 / 1e9;
    let (key, id) = create_key(&gws[0], json!({"name": "lifted", "budget_usd": budget})).await;
    assert_eq!(chat(&gws[0], &key, "with a budget").await.0, 200);
    set_budget(&gws[0], &id, None).await;
    for i in 0..5 {
        assert_eq!(chat(&gws[i % 2], &key, &format!("no budget {i}")).await.0, 200);
    }
    assert!(drained(&gws).await);
    set_budget(&gws[0], &id, Some(budget)).await;
    // Six requests' worth spent on a budget for five: refused (A applies its own change at once).
    assert_eq!(
        chat(&gws[0], &key, "after the budget is back").await,
        (402, "budget_exceeded".into()),
        "the spend made without a budget was not counted"
    );
    assert_eq!(redis_spend(&redis, &id).await, Some(6 * COST));
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}

/// Breakers are per replica, deliberately: one replica's trouble with a provider must not take it
/// away from the others. Requests on a replica whose breaker is open send nothing to the provider, so
/// they must not spend the deployment's shared quota either (they used to take a request from it
/// before finding the breaker open, so replica B was refused a healthy provider's whole quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_breaker_on_one_replica_does_not_spend_the_shared_deployment_quota() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = replicas(2, &db, &redis, |c| deployment_limits(c, "local", Some(3), None)).await;
    let local = gws[0].state.by_name["local"];
    gws[0].state.deployments[local].breaker.force_open();
    for i in 0..5 {
        let (status, _) = chat(&gws[0], MASTER, &format!("a{i}")).await;
        assert_ne!(status, 200, "A's breaker is open");
    }
    for i in 0..3 {
        assert_eq!(
            chat(&gws[1], MASTER, &format!("b{i}")).await,
            (200, String::new()),
            "request {i} on B"
        );
    }
    assert_eq!(
        chat(&gws[1], MASTER, "b3").await,
        (429, "deployment_quota_exceeded".into())
    );
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}

/// A stream held past its concurrency lease keeps its slot (the replica renews it), a slot Redis lost
/// is put back, and the slot frees when the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_held_past_its_lease_is_renewed_and_still_counts() {
    let Some(redis) = Redis::start() else { return };
    let db = Db::new(false).await;
    let gws = replicas(2, &db, &redis, |c| {
        c.limits.concurrency_lease_secs = 1;
        // About 20 s of stream: far longer than the lease, and dropped as soon as the test is done.
        c.providers[0].simulated.tokens_per_s = 20.0;
        c.providers[0].simulated.answer_words = 400;
    })
    .await;
    let (key, id) = create_key(&gws[0], json!({"name": "lease", "max_concurrent": 1})).await;
    let mut body = chat_body("local", "a long stream");
    body["stream"] = json!(true);
    let stream = client()
        .post(gws[0].chat_url())
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let slots = format!("optiroute:lim:conc:{id}");
    // Redis' clock and the slot's lease end, both in microseconds.
    let now_us = || {
        let c = redis_conn(&redis);
        async move {
            let mut c = c.await;
            let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
            s * 1_000_000 + us
        }
    };
    let lease_end = || {
        let slots = slots.clone();
        let c = redis_conn(&redis);
        async move {
            let mut c = c.await;
            let v: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&slots)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .unwrap();
            v.first().map(|(_, s)| *s as u64)
        }
    };
    let first = lease_end().await.expect("no slot taken in Redis");
    // Past the first lease's end, the slot is still held: the other replica refuses a second request.
    assert!(
        until(Duration::from_secs(20), || {
            let n = now_us();
            async move { n.await > first }
        })
        .await
    );
    let (status, code) = chat(&gws[1], &key, "second").await;
    assert_eq!((status, code.as_str()), (429, "rate_limit_exceeded"));
    assert!(lease_end().await.unwrap() > first, "the lease was not renewed");

    // Redis loses the slot (say it restarted): the next renewal puts it back.
    redis::cmd("DEL")
        .arg(&slots)
        .query_async::<i64>(&mut redis_conn(&redis).await)
        .await
        .unwrap();
    assert!(
        until(Duration::from_secs(20), || {
            let l = lease_end();
            async move { l.await.is_some() }
        })
        .await
    );
    let (status, _) = chat(&gws[1], &key, "third").await;
    assert_eq!(status, 429);

    // The stream ends (abandoned): its slot is released and not renewed again.
    drop(stream);
    let short = || {
        let mut b = chat_body("local", "after");
        b["max_tokens"] = json!(1);
        client().post(gws[1].chat_url()).bearer_auth(&key).json(&b).send()
    };
    assert!(
        until(Duration::from_secs(20), || async {
            short().await.is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    assert_redis_never_failed(&gws).await;
    drop(gws);
    db.drop().await;
}
