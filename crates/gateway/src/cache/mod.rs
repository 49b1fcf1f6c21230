//! Exact-match response cache.
//!
//! The key is SHA-256 over a canonical JSON form of everything that can change the answer: the
//! resolved target (model group, deployment, or `auto` with any forced tier), the tenant, the messages
//! and every generation parameter. Object keys are sorted (serde_json's map is ordered), so the same
//! request in any key order has one key. `stream`, `stream_options` and `user` do not change the answer
//! and are left out, so streaming and non-streaming requests share entries.
//!
//! Backends: memory (moka, bounded by bytes) or Redis. A Redis that is down or slow counts as a miss
//! (and in `llm_cache_errors_total`); the connection manager reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

use optiroute_protocol::openai::{ChatCompletion, ChatRequest, Usage};
use optiroute_protocol::pricing::Nanos;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::CacheConfig;

pub type Key = [u8; 32];

/// A stored answer and what it cost to produce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedResponse {
    pub completion: ChatCompletion,
    /// Content pieces as they were streamed (replayed as separate chunks); `None` for JSON answers.
    pub pieces: Option<Vec<String>>,
    pub deployment: String,
    pub provider: String,
    pub tier: Option<String>,
    pub route_reason: String,
    /// What producing this answer cost: a hit saves this much.
    pub cost: Nanos,
    pub usage: Usage,
    pub usage_estimated: bool,
}

impl CachedResponse {
    fn weight(&self) -> u32 {
        let text: usize = self.completion.choices.iter().map(|c| c.message.text_len()).sum();
        let pieces: usize = self.pieces.as_ref().map_or(0, |p| p.iter().map(|s| s.len() + 24).sum());
        u32::try_from(text + pieces + 512).unwrap_or(u32::MAX)
    }
}

/// The longest time an entry is kept (100 years): a longer TTL, such as `u64::MAX` seconds for
/// "never", would overflow the clock (a panic) or Redis' expiry.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.min(MAX_TTL)
}

/// The cache key of a request.
pub fn key(req: &ChatRequest, scope: &str, tenant: &str) -> Key {
    let mut v = match serde_json::to_value(req) {
        Ok(v) => v,
        Err(_) => serde_json::Value::Null,
    };
    if let Some(obj) = v.as_object_mut() {
        obj.remove("stream");
        obj.remove("stream_options");
        obj.remove("user");
        obj.remove("model");
    }
    let mut h = Sha256::new();
    h.update(b"optiroute-cache-v1\0");
    h.update(scope.as_bytes());
    h.update(b"\0");
    h.update(tenant.as_bytes());
    h.update(b"\0");
    // serde_json's Map is a BTreeMap here: serialising sorts every object's keys.
    h.update(v.to_string().as_bytes());
    h.finalize().into()
}

#[derive(Clone)]
struct Entry {
    value: Arc<CachedResponse>,
    expires: Instant,
}

enum Backend {
    Memory(moka::future::Cache<Key, Entry>),
    Redis(RedisCache),
}

pub struct Cache {
    pub enabled: bool,
    pub cache_nondeterministic: bool,
    pub default_ttl: Duration,
    backend: Backend,
}

/// Why a lookup did not return an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Miss,
    /// The backend failed; treated as a miss.
    Error,
}

impl Cache {
    pub async fn new(cfg: &CacheConfig) -> anyhow::Result<Cache> {
        let backend = if cfg.backend == "redis" {
            let url = cfg.redis_url.clone().unwrap_or_default();
            let url = match url.strip_prefix("env:") {
                Some(var) => {
                    std::env::var(var).map_err(|_| anyhow::anyhow!("cache.redis_url: env var `{var}` is not set"))?
                }
                None => url,
            };
            Backend::Redis(RedisCache::new(&url, Duration::from_millis(cfg.redis_timeout_ms))?)
        } else {
            Backend::Memory(
                moka::future::Cache::builder()
                    .max_capacity(cfg.max_bytes)
                    .weigher(|_k: &Key, e: &Entry| e.value.weight())
                    .build(),
            )
        };
        Ok(Cache {
            enabled: cfg.enabled,
            cache_nondeterministic: cfg.cache_nondeterministic,
            default_ttl: Duration::from_secs(cfg.ttl_secs),
            backend,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, key: &Key) -> Result<Arc<CachedResponse>, Lookup> {
        match &self.backend {
            Backend::Memory(m) => match m.get(key).await {
                Some(e) if e.expires > Instant::now() => Ok(e.value),
                Some(_) => {
                    drop_if_expired(m, key).await;
                    Err(Lookup::Miss)
                }
                None => Err(Lookup::Miss),
            },
            Backend::Redis(r) => r.get(key).await,
        }
    }

    /// Stores an entry; returns false when the backend failed.
    pub async fn put(&self, key: Key, value: Arc<CachedResponse>, ttl: Duration) -> bool {
        let ttl = clamp_ttl(ttl);
        match &self.backend {
            Backend::Memory(m) => {
                m.insert(
                    key,
                    Entry {
                        value,
                        expires: Instant::now() + ttl,
                    },
                )
                .await;
                true
            }
            Backend::Redis(r) => r.put(&key, &value, ttl).await,
        }
    }

    /// Entries and weighted size (memory backend; for tests and stats).
    pub async fn memory_usage(&self) -> Option<(u64, u64)> {
        match &self.backend {
            Backend::Memory(m) => {
                m.run_pending_tasks().await;
                Some((m.entry_count(), m.weighted_size()))
            }
            Backend::Redis(_) => None,
        }
    }
}

/// Removes `key`'s entry if it is (still) expired: an answer stored since a lookup found the old one
/// expired stays.
async fn drop_if_expired(m: &moka::future::Cache<Key, Entry>, key: &Key) {
    m.entry(*key)
        .and_compute_with(|e| async move {
            match e {
                Some(e) if e.value().expires <= Instant::now() => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            }
        })
        .await;
}

/// Redis backend. Connects in the background; until connected (and whenever Redis is down or slower
/// than the timeout) every operation is a miss, never an error for the client.
pub struct RedisCache {
    conn: Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
    timeout: Duration,
    prefix: &'static str,
}

impl RedisCache {
    fn new(url: &str, timeout: Duration) -> anyhow::Result<RedisCache> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("cache.redis_url: {e}"))?;
        let conn = Arc::new(tokio::sync::OnceCell::new());
        let slot = conn.clone();
        // The connector stops by itself once connected; it holds only the cell, not the state.
        tokio::spawn(async move {
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(2);
            let mut delay = Duration::from_millis(100);
            loop {
                match redis::aio::ConnectionManager::new_with_config(client.clone(), cfg.clone()).await {
                    Ok(c) => {
                        let _ = slot.set(c);
                        tracing::info!("redis cache connected");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis cache unavailable; serving without cache until it connects");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
                if Arc::strong_count(&slot) == 1 {
                    return;
                }
            }
        });
        Ok(RedisCache {
            conn,
            timeout,
            prefix: "optiroute:cache:",
        })
    }

    fn redis_key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, hex::encode(key))
    }

    async fn get(&self, key: &Key) -> Result<Arc<CachedResponse>, Lookup> {
        let Some(conn) = self.conn.get() else {
            return Err(Lookup::Error);
        };
        let mut conn = conn.clone();
        let k = self.redis_key(key);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&k);
        let fut = cmd.query_async::<Option<Vec<u8>>>(&mut conn);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).map(Arc::new).map_err(|_| Lookup::Error),
            Ok(Ok(None)) => Err(Lookup::Miss),
            Ok(Err(_)) | Err(_) => Err(Lookup::Error),
        }
    }

    async fn put(&self, key: &Key, value: &CachedResponse, ttl: Duration) -> bool {
        let Some(conn) = self.conn.get() else {
            return false;
        };
        let Ok(bytes) = serde_json::to_vec(value) else {
            return false;
        };
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key))
            .arg(bytes)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        let fut = cmd.query_async::<()>(&mut conn);
        matches!(tokio::time::timeout(self.timeout, fut).await, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn req(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn key_ignores_order_stream_and_user() {
        let a = req(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5,"top_p":1,"stream":true,"user":"u"}"#,
        );
        let b = req(r#"{"top_p":1,"temperature":0.5,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#);
        assert_eq!(key(&a, "auto", ""), key(&b, "auto", ""));
    }

    #[test]
    fn key_separates_scope_tenant_and_params() {
        let base = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let k = key(&req(base), "auto", "");
        assert_ne!(k, key(&req(base), "group:x", ""));
        assert_ne!(k, key(&req(base), "auto", "tenant-a"));
        for variant in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"x"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":2}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","messages":[{"role":"system","content":"hi"}]}"#,
        ] {
            assert_ne!(k, key(&req(variant), "auto", ""), "{variant}");
        }
    }

    proptest! {
        #[test]
        fn key_is_order_independent_and_parameter_sensitive(
            text in "[a-z ]{0,40}", temp in 0u8..20, top in 1u8..10, seed in 0i64..1000, extra in "[a-z]{1,8}"
        ) {
            let t = f64::from(temp) / 10.0;
            let p = f64::from(top) / 10.0;
            let a = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"temperature":{t},"top_p":{p},"seed":{seed},"x_{extra}":1}}"#);
            let b = format!(r#"{{"x_{extra}":1,"seed":{seed},"top_p":{p},"temperature":{t},"messages":[{{"content":"{text}","role":"user"}}],"model":"m"}}"#);
            let ka = key(&req(&a), "auto", "");
            prop_assert_eq!(ka, key(&req(&b), "auto", ""));
            let c = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{text}"}}],"temperature":{t},"top_p":{p},"seed":{},"x_{extra}":1}}"#, seed + 1);
            prop_assert_ne!(ka, key(&req(&c), "auto", ""));
        }
    }

    fn entry(text: &str) -> Arc<CachedResponse> {
        let mut acc = optiroute_protocol::openai::ChunkAccumulator::default();
        acc.push(&optiroute_protocol::openai::ChatChunk::content("id", 1, "m", text));
        Arc::new(CachedResponse {
            completion: acc.into_completion(),
            pieces: None,
            deployment: "d".into(),
            provider: "p".into(),
            tier: None,
            route_reason: "r".into(),
            cost: Nanos(5),
            usage: Usage::new(1, 1),
            usage_estimated: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_on_the_tokio_clock() {
        let c = Cache::new(&CacheConfig::default()).await.unwrap();
        c.put([1; 32], entry("a"), Duration::from_secs(60)).await;
        assert!(c.get(&[1; 32]).await.is_ok());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(c.get(&[1; 32]).await.is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get(&[1; 32]).await.err(), Some(Lookup::Miss));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lookup_does_not_remove_an_answer_stored_since() {
        let c = Cache::new(&CacheConfig::default()).await.unwrap();
        let Backend::Memory(m) = &c.backend else { unreachable!() };
        c.put([1; 32], entry("old"), Duration::from_secs(1)).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        // A lookup finds "old" expired; before it removes it, another request stores a fresh answer.
        c.put([1; 32], entry("new"), Duration::from_secs(60)).await;
        drop_if_expired(m, &[1; 32]).await;
        let hit = c.get(&[1; 32]).await.unwrap();
        assert_eq!(hit.completion.choices[0].message.text(), "new");
        // An entry still expired is removed.
        tokio::time::advance(Duration::from_secs(61)).await;
        drop_if_expired(m, &[1; 32]).await;
        m.run_pending_tasks().await;
        assert_eq!(m.entry_count(), 0);
    }

    // `ttl_secs = 18446744073709551615` ("never expire") is accepted by the config: storing with it
    // panicked (an Instant overflow) in every cacheable request.
    #[tokio::test(start_paused = true)]
    async fn a_huge_ttl_is_a_long_one_not_a_panic() {
        let c = Cache::new(&CacheConfig::default()).await.unwrap();
        assert!(c.put([1; 32], entry("a"), Duration::from_secs(u64::MAX)).await);
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(c.get(&[1; 32]).await.is_ok());
        assert_eq!(clamp_ttl(Duration::MAX), MAX_TTL);
    }

    #[tokio::test]
    async fn memory_is_bounded_by_bytes() {
        let cfg = CacheConfig {
            max_bytes: 64 * 1024,
            ..CacheConfig::default()
        };
        let c = Cache::new(&cfg).await.unwrap();
        let big = "x".repeat(8 * 1024);
        for i in 0..64u8 {
            c.put([i; 32], entry(&big), Duration::from_secs(60)).await;
        }
        let (entries, bytes) = c.memory_usage().await.unwrap();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(entries < 64 && entries > 0, "{entries}");
    }
}
