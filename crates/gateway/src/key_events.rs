//! Virtual-key changes pushed to every replica through Redis pub/sub.
//!
//! Each replica caches key lookups (`[auth] key_cache_ttl_ms`). A key revoked or updated through one
//! replica's admin API is dropped from that replica's cache at once; with `[limits] backend = "redis"`
//! the replica also publishes the key's hash, and every replica subscribed drops its cached lookup
//! too, so a revocation applies everywhere within milliseconds instead of a cache TTL. Pub/sub
//! delivers only to those listening: after a (re)subscription a replica empties its whole key cache,
//! since it cannot know what it missed. When Redis is away, the cache TTL still bounds staleness.

use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::auth::KeyCache;
use crate::telemetry::LimitOp;

const CHANNEL: &str = "optiroute:keys:changed";
/// Wait before subscribing again after the subscription broke or could not be made.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

pub struct KeyEvents {
    client: redis::Client,
    timeout: Duration,
    errors: Family<LimitOp, Counter>,
    listener: tokio::task::JoinHandle<()>,
}

impl KeyEvents {
    /// Starts listening (in the background; a Redis that is down now is retried every second).
    pub fn start(
        url: &str,
        timeout: Duration,
        cache: KeyCache,
        errors: Family<LimitOp, Counter>,
    ) -> anyhow::Result<KeyEvents> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("limits.redis_url {}: {e}", crate::config::mask_url_credentials(url)))?;
        let listener = tokio::spawn(listen(client.clone(), cache, errors.clone()));
        Ok(KeyEvents {
            client,
            timeout,
            errors,
            listener,
        })
    }

    /// Tells every replica that the key with this hash changed. Bounded by the Redis timeout; a
    /// failure is counted (`llm_limits_redis_errors_total{op="key_event"}`) and logged, and the other
    /// replicas then see the change when their cached lookup expires.
    pub async fn publish(&self, key_hash: &str) {
        let send = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(key_hash)
                .query_async::<i64>(&mut conn)
                .await
        };
        let failure = match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), send).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        self.errors.get_or_create(&LimitOp { op: "key_event" }).inc();
        tracing::warn!(error = %failure, "key change not published; other replicas apply it when their key cache expires");
    }
}

impl Drop for KeyEvents {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

async fn listen(client: redis::Client, cache: KeyCache, errors: Family<LimitOp, Counter>) {
    let mut logged = false;
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                // Whatever changed while nobody listened is unknown: look every key up again.
                cache.invalidate_all();
                if logged {
                    tracing::info!("key change notifications: subscribed again");
                    logged = false;
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(hash) = msg.get_payload::<String>() {
                        cache.invalidate(&hash).await;
                    }
                }
            }
            Err(e) => {
                errors.get_or_create(&LimitOp { op: "key_event" }).inc();
                if !logged {
                    tracing::warn!(error = %e, "key change notifications unavailable; key cache TTL applies");
                    logged = true;
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}
