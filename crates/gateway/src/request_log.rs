//! The request log: one row per finished completion request in the store (`request_log` table, SQLite
//! or PostgreSQL), never with prompt or completion text.
//!
//! The request path only offers a row to a bounded queue (`[store] request_log_queue`) and never
//! waits: when the queue is full the row is dropped and counted in `llm_request_log_dropped_total`.
//! One writer task takes rows off the queue in batches (whatever has arrived, up to [`BATCH`]) and
//! inserts each batch in one statement; a batch the store refuses three times is dropped and counted
//! too. At shutdown the queue is closed and the writer writes what is left before it stops.
//!
//! With `[routing] log_features`, an `auto` request's row also gets the learned scorer's inputs
//! (`features`, see `optiroute_router::traffic`; never prompt text). They are computed off the
//! response path: the request hands its conversation to the queue with the row, and the writer
//! computes the features of a whole batch on a blocking thread before inserting it. Conversations
//! waiting in the queue are bounded by [`FEATURE_BYTES_MAX`]; beyond it a row is logged without them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use optiroute_router::Conversation;
use optiroute_router::features::HashConfig;
use prometheus_client::metrics::counter::Counter;
use sqlx::QueryBuilder;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Meta;
use crate::state::AppState;
use crate::store::Store;

/// Rows per insert at most.
pub const BATCH: usize = 256;
/// Bytes of conversation text waiting in the queue for feature computation, at most.
pub const FEATURE_BYTES_MAX: usize = 64 << 20;

/// What the writer needs to compute a row's features: the scorer's view of the request and the
/// n-gram settings of the shipped learned weights.
#[derive(Debug)]
pub struct FeatureInput {
    pub conv: Conversation,
    pub hash: Arc<HashConfig>,
}

impl FeatureInput {
    fn bytes(&self) -> usize {
        self.conv.messages.iter().map(|m| m.text.len()).sum()
    }
}

/// One finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unix milliseconds when the request finished.
    pub at_ms: i64,
    pub request_id: String,
    /// Virtual key id, `master`, or empty without auth.
    pub key_id: String,
    /// Upstream model that answered.
    pub model: String,
    pub deployment: String,
    pub tier: Option<String>,
    pub route_reason: String,
    /// `hit`, `miss` or `bypass`.
    pub cache: String,
    /// 200; 502 for a stream that failed after its first byte; 499 for a stream the client abandoned.
    pub status: u16,
    pub latency_us: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nanos: u64,
    /// Token counts estimated by the gateway (the upstream reported none).
    pub estimated: bool,
    /// The router's feature inputs as JSON (`optiroute_router::traffic::LoggedFeatures`), if logged.
    pub features: Option<String>,
}

// Rows are nearly every item; boxing them would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Item {
    Row(Record, Option<Arc<FeatureInput>>),
    /// Acknowledged once every row queued before it is written (or dropped).
    Flush(oneshot::Sender<()>),
}

/// The queue and its writer.
pub struct RequestLog {
    tx: Mutex<Option<mpsc::Sender<Item>>>,
    dropped: Counter,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    store: Option<Store>,
    /// Conversation bytes queued for feature computation.
    feature_bytes: Arc<AtomicUsize>,
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RequestLog {
    /// A log that records nothing.
    pub fn disabled(dropped: Counter) -> Arc<RequestLog> {
        Arc::new(RequestLog {
            tx: Mutex::new(None),
            dropped,
            writer: tokio::sync::Mutex::new(None),
            store: None,
            feature_bytes: Arc::default(),
        })
    }

    /// Starts the writer on `store` (needs a tokio runtime); it runs until [`RequestLog::close`].
    pub fn start(store: Store, capacity: usize, dropped: Counter) -> Arc<RequestLog> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let feature_bytes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(writer(store.clone(), rx, dropped.clone(), feature_bytes.clone()));
        Arc::new(RequestLog {
            tx: Mutex::new(Some(tx)),
            dropped,
            writer: tokio::sync::Mutex::new(Some(task)),
            store: Some(store),
            feature_bytes,
        })
    }

    /// The store the log writes to (`None` when the log is disabled).
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref().filter(|_| self.enabled())
    }

    pub fn enabled(&self) -> bool {
        self.tx.lock().is_ok_and(|t| t.is_some())
    }

    /// Offers a row to the queue; never waits. A full queue drops the row (counted).
    pub fn push(&self, rec: Record) {
        self.push_with(rec, None);
    }

    /// [`RequestLog::push`] with the input for the row's features, computed by the writer.
    pub fn push_with(&self, rec: Record, features: Option<Arc<FeatureInput>>) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        let features = features.filter(|f| {
            let n = f.bytes();
            let before = self.feature_bytes.fetch_add(n, Ordering::Relaxed);
            let fits = before.saturating_add(n) <= FEATURE_BYTES_MAX;
            if !fits {
                self.feature_bytes.fetch_sub(n, Ordering::Relaxed);
            }
            fits
        });
        let queued = features.as_ref().map_or(0, |f| f.bytes());
        if tx.try_send(Item::Row(rec, features)).is_err() {
            self.feature_bytes.fetch_sub(queued, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Waits (at most `within`) until every row queued before this call is written to the store (or
    /// dropped). False if that did not happen in time or the log is closed.
    pub async fn flush(&self, within: Duration) -> bool {
        let tx = match self.tx.lock() {
            Ok(t) => t.clone(),
            Err(_) => None,
        };
        let Some(tx) = tx else { return false };
        let (ack, done) = oneshot::channel();
        tokio::time::timeout(within, async move {
            tx.send(Item::Flush(ack)).await.is_ok() && done.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Closes the queue and waits (at most `within`) for the writer to store what is left.
    pub async fn close(&self, within: Duration) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let Some(mut task) = self.writer.lock().await.take() else {
            return;
        };
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::warn!("request log: the store is too slow; unwritten rows are dropped at exit");
            task.abort();
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.try_lock()
            && let Some(t) = w.take()
        {
            t.abort();
        }
    }
}

/// Records a finished request served with `meta` (call once per request, where it settles).
pub fn finished(st: &AppState, request_id: &str, tenant: &str, meta: &Meta, status: u16) {
    if !st.request_log.enabled() {
        return;
    }
    let usage = meta.usage.unwrap_or_default();
    st.request_log.push_with(
        Record {
            at_ms: unix_ms(),
            request_id: request_id.to_owned(),
            key_id: tenant.to_owned(),
            model: meta.model.clone(),
            deployment: meta.deployment.clone(),
            tier: meta.tier.clone(),
            route_reason: meta.route_reason.chars().take(500).collect(),
            cache: meta.cache.as_str().to_owned(),
            status,
            latency_us: (meta.latency_ms * 1000.0).max(0.0) as u64,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_nanos: meta.cost_usd.0,
            estimated: meta.usage_estimated,
            features: None,
        },
        meta.features.clone(),
    );
}

/// Computes the features of the rows that have an input (on a blocking thread: it is CPU work).
async fn compute_features(batch: Vec<(Record, Option<Arc<FeatureInput>>)>, bytes: &AtomicUsize) -> Vec<Record> {
    let queued: usize = batch.iter().filter_map(|(_, f)| f.as_ref()).map(|f| f.bytes()).sum();
    let out = if batch.iter().all(|(_, f)| f.is_none()) {
        batch.into_iter().map(|(r, _)| r).collect()
    } else {
        let work = move || {
            batch
                .into_iter()
                .map(|(mut r, f)| {
                    if let Some(f) = f {
                        r.features =
                            Some(optiroute_router::traffic::LoggedFeatures::compute(&f.conv, &f.hash).to_json());
                    }
                    r
                })
                .collect::<Vec<_>>()
        };
        tokio::task::spawn_blocking(work).await.unwrap_or_default()
    };
    bytes.fetch_sub(queued, Ordering::Relaxed);
    out
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Item>, dropped: Counter, feature_bytes: Arc<AtomicUsize>) {
    let mut items = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut items, BATCH).await > 0 {
        let mut rows = Vec::with_capacity(items.len());
        let mut acks = Vec::new();
        for item in items.drain(..) {
            match item {
                Item::Row(r, f) => rows.push((r, f)),
                Item::Flush(ack) => acks.push(ack),
            }
        }
        let n = rows.len();
        let buf = compute_features(rows, &feature_bytes).await;
        if buf.len() < n {
            // The feature computation failed as a whole (it panicked): the rows are lost.
            dropped.inc_by((n - buf.len()) as u64);
        }
        let mut attempt = 0u32;
        loop {
            match insert(&store, &buf).await {
                Ok(()) => break,
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    tracing::warn!(error = %e, rows = buf.len(), "request log: write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = buf.len(), "request log: write failed; rows dropped");
                    dropped.inc_by(buf.len() as u64);
                    break;
                }
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

const INSERT: &str = "INSERT INTO request_log (at_ms, request_id, key_id, model, deployment, tier, route_reason, \
     cache_status, status, latency_us, prompt_tokens, completion_tokens, cost_nanos, estimated, features) ";

macro_rules! build_insert {
    ($db:ty, $rows:expr) => {{
        let mut q = QueryBuilder::<$db>::new(INSERT);
        q.push_values($rows.iter(), |mut b, r| {
            b.push_bind(r.at_ms)
                .push_bind(r.request_id.clone())
                .push_bind(r.key_id.clone())
                .push_bind(r.model.clone())
                .push_bind(r.deployment.clone())
                .push_bind(r.tier.clone())
                .push_bind(r.route_reason.clone())
                .push_bind(r.cache.clone())
                .push_bind(i64::from(r.status))
                .push_bind(i64_of(r.latency_us))
                .push_bind(i64_of(r.prompt_tokens))
                .push_bind(i64_of(r.completion_tokens))
                .push_bind(i64_of(r.cost_nanos))
                .push_bind(i64::from(r.estimated))
                .push_bind(r.features.clone());
        });
        q
    }};
}

async fn insert(store: &Store, rows: &[Record]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    match store {
        Store::Sqlite(p) => {
            let mut q = build_insert!(sqlx::Sqlite, rows);
            q.build().execute(p).await?;
        }
        Store::Postgres(p) => {
            let mut q = build_insert!(sqlx::Postgres, rows);
            q.build().execute(p).await?;
        }
    }
    Ok(())
}

const SELECT: &str = "SELECT at_ms, request_id, key_id, model, deployment, tier, route_reason, cache_status, status, \
     latency_us, prompt_tokens, completion_tokens, cost_nanos, estimated, features FROM request_log ORDER BY at_ms DESC LIMIT $1";

fn record_of<'r, R>(row: &'r R) -> Result<Record, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Record {
        at_ms: row.try_get("at_ms")?,
        request_id: row.try_get("request_id")?,
        key_id: row.try_get("key_id")?,
        model: row.try_get("model")?,
        deployment: row.try_get("deployment")?,
        tier: row.try_get("tier")?,
        route_reason: row.try_get("route_reason")?,
        cache: row.try_get("cache_status")?,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
        latency_us: u(row.try_get("latency_us")?),
        prompt_tokens: u(row.try_get("prompt_tokens")?),
        completion_tokens: u(row.try_get("completion_tokens")?),
        cost_nanos: u(row.try_get("cost_nanos")?),
        estimated: row.try_get::<i64, _>("estimated")? != 0,
        features: row.try_get("features")?,
    })
}

/// The latest `limit` rows, newest first (for tests and tools).
pub async fn recent(store: &Store, limit: i64) -> Result<Vec<Record>, sqlx::Error> {
    crate::store::on_pool!(store, p => sqlx::query(SELECT)
        .bind(limit)
        .fetch_all(p)
        .await?
        .iter()
        .map(record_of)
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            at_ms: 1_000 + i as i64,
            request_id: format!("req-{i}"),
            key_id: "key_a".into(),
            model: "m".into(),
            deployment: "d".into(),
            tier: if i.is_multiple_of(2) {
                Some("cloud".into())
            } else {
                None
            },
            route_reason: "r".into(),
            cache: "miss".into(),
            status: 200,
            latency_us: 1234,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_nanos: 9_000 + i,
            estimated: i.is_multiple_of(3),
            features: None,
        }
    }

    #[tokio::test]
    async fn rows_are_written_in_batches_and_flushed_at_close() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let dropped = Counter::default();
        let log = RequestLog::start(store.clone(), 10_000, dropped.clone());
        for i in 0..600 {
            log.push(rec(i));
        }
        log.close(Duration::from_secs(10)).await;
        assert!(!log.enabled());
        let rows = recent(&store, 1000).await.unwrap();
        assert_eq!(rows.len(), 600);
        assert_eq!(rows[0], rec(599));
        assert_eq!(dropped.get(), 0);
        // After close, pushes are ignored (not queued, not counted).
        log.push(rec(1));
        assert_eq!(recent(&store, 1000).await.unwrap().len(), 600);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let dropped = Counter::default();
        // On a current-thread runtime the writer cannot run until we yield: the queue fills.
        let log = RequestLog::start(store.clone(), 10, dropped.clone());
        for i in 0..25 {
            log.push(rec(i));
        }
        assert_eq!(dropped.get(), 15);
        log.close(Duration::from_secs(10)).await;
        assert_eq!(recent(&store, 100).await.unwrap().len(), 10);
    }
}
