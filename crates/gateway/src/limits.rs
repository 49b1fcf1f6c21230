//! Limits: per virtual key (requests and tokens per minute, concurrent requests, USD budget per
//! period) and per deployment (requests and tokens per minute toward a provider), plus a cap on open
//! client connections.
//!
//! Rates use GCRA (the generic cell rate algorithm: one "theoretical arrival time" per bucket) on
//! tokio's clock, so they are exact, O(1), and testable on a paused clock. Counters live in memory for
//! one replica. Spend is added in memory when a call settles (streams included) and persisted to the
//! store by a background task in batches; a request never waits on the database.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use optiroute_protocol::pricing::Nanos;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::store::{KeyRecord, Period, Store, unix_now};

/// Rate limits are per minute.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One GCRA bucket: `limit` units per `WINDOW`, bursts up to `limit`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gcra {
    /// Theoretical arrival time: when the bucket will be empty again at the configured rate.
    tat: Option<Instant>,
}

fn interval(limit: u64) -> u128 {
    (WINDOW.as_nanos() / u128::from(limit.max(1))).max(1)
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

impl Gcra {
    fn ahead(&self, now: Instant) -> u128 {
        self.tat.map_or(0, |t| t.saturating_duration_since(now).as_nanos())
    }

    /// Takes `n` units if they fit: `Ok(remaining)`, or `Err(wait)` until they would.
    pub fn take(&mut self, now: Instant, limit: u64, n: u64) -> Result<u64, Duration> {
        let t = interval(limit);
        let window = WINDOW.as_nanos();
        let ahead = self.ahead(now).saturating_add(t.saturating_mul(u128::from(n)));
        if ahead > window {
            return Err(nanos(ahead - window));
        }
        self.tat = Some(now + nanos(ahead));
        Ok(u64::try_from((window - ahead) / t).unwrap_or(u64::MAX))
    }

    /// Whether at least one unit is available, without taking it: `Ok(remaining)` or `Err(wait)`.
    pub fn peek(&self, now: Instant, limit: u64) -> Result<u64, Duration> {
        let t = interval(limit);
        let window = WINDOW.as_nanos();
        let ahead = self.ahead(now);
        if ahead + t > window {
            return Err(nanos(ahead + t - window));
        }
        Ok(u64::try_from((window - ahead) / t).unwrap_or(u64::MAX))
    }

    /// Charges `n` units that were already used (tokens known only after a call): may go into debt,
    /// which makes later `peek`s wait until it is paid off.
    pub fn charge(&mut self, now: Instant, limit: u64, n: u64) {
        let t = interval(limit);
        let ahead = self.ahead(now).saturating_add(t.saturating_mul(u128::from(n)));
        // Cap the debt at a day so a huge charge cannot overflow the clock.
        self.tat = Some(now + nanos(ahead.min(86_400 * 1_000_000_000)));
    }
}

/// `x-ratelimit-*` response headers for a key with limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateHeaders {
    /// (limit, remaining) requests per minute.
    pub requests: Option<(u64, u64)>,
    /// (limit, remaining) tokens per minute.
    pub tokens: Option<(u64, u64)>,
}

impl RateHeaders {
    pub fn apply(&self, h: &mut HeaderMap) {
        let mut put = |k: &'static str, v: u64| {
            if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
                h.insert(k, v);
            }
        };
        if let Some((l, r)) = self.requests {
            put("x-ratelimit-limit-requests", l);
            put("x-ratelimit-remaining-requests", r);
        }
        if let Some((l, r)) = self.tokens {
            put("x-ratelimit-limit-tokens", l);
            put("x-ratelimit-remaining-tokens", r);
        }
    }
}

/// Why a request was refused before any upstream call.
#[derive(Debug, Clone)]
pub enum LimitError {
    Requests {
        limit: u64,
        wait: Duration,
    },
    Tokens {
        limit: u64,
        wait: Duration,
    },
    Concurrency {
        limit: u64,
    },
    Budget {
        budget: Nanos,
        period: &'static str,
        wait: Option<Duration>,
    },
    /// The shared limits (Redis) cannot be checked and `on_redis_error = "fail-closed"`.
    Unavailable,
}

impl LimitError {
    pub fn to_api_error(&self) -> ApiError {
        match self {
            LimitError::Requests { limit, wait } => rate_error(
                format!(
                    "rate limit reached: {limit} requests per minute for this key; retry after the Retry-After header"
                ),
                *wait,
            ),
            LimitError::Tokens { limit, wait } => rate_error(
                format!(
                    "rate limit reached: {limit} tokens per minute for this key; retry after the Retry-After header"
                ),
                *wait,
            ),
            LimitError::Concurrency { limit } => rate_error(
                format!("too many concurrent requests: this key allows {limit} at a time"),
                Duration::from_secs(1),
            ),
            LimitError::Unavailable => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "rate limits cannot be checked right now; try again shortly",
                )
                .with_code("limits_unavailable");
                e.retry_after = Some(Duration::from_secs(1));
                e
            }
            LimitError::Budget { budget, period, wait } => {
                let per = match *period {
                    "total" => String::new(),
                    p => format!(" per {p}"),
                };
                let mut e = ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "insufficient_quota",
                    format!(
                        "budget exceeded: this key has spent its budget of ${}{per}",
                        budget.as_usd()
                    ),
                )
                .with_code("budget_exceeded");
                e.retry_after = *wait;
                e
            }
        }
    }
}

fn rate_error(message: String, wait: Duration) -> ApiError {
    let mut e =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).with_code("rate_limit_exceeded");
    e.retry_after = Some(wait.max(Duration::from_millis(1)));
    e
}

/// Holds one of a key's concurrent-request slots; released on drop (for streams: when the body ends).
#[derive(Debug)]
pub struct ConcurrencyGuard(
    Arc<AtomicU64>,
    /// The slot in Redis with shared limits: held only for its `Drop`, which releases it.
    #[allow(dead_code)]
    Option<crate::limits_redis::Slot>,
);

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request: the headers to send and the concurrency slot to hold until it is done.
#[derive(Debug, Default)]
pub struct Admission {
    pub headers: RateHeaders,
    pub guard: Option<ConcurrencyGuard>,
}

/// A key's spend in one budget period.
#[derive(Debug, Clone, Copy, Default)]
struct Spend {
    /// The period: its kind and start. The kind matters on the 1st of a month, when a day and a
    /// month start at the same second: a budget switched from one to the other starts afresh.
    period: (Period, i64),
    nanos: u64,
}

impl Spend {
    /// The period of `rec`'s budget that contains `unix`.
    fn period_of(rec: &KeyRecord, unix: i64) -> (Period, i64) {
        (rec.budget_period, rec.budget_period.start(unix))
    }

    /// Moves to `period`: a new period starts from `fresh`; in the same one, the larger of the two
    /// counts stands (`fresh` is the store's view, which may have seen other replicas' spend).
    fn roll(&mut self, period: (Period, i64), fresh: u64) {
        if self.period == period {
            self.nanos = self.nanos.max(fresh);
        } else {
            *self = Spend { period, nanos: fresh };
        }
    }
}

struct KeyState {
    rec: Mutex<Arc<KeyRecord>>,
    requests: Mutex<Gcra>,
    tokens: Mutex<Gcra>,
    in_flight: Arc<AtomicU64>,
    spend: Mutex<Spend>,
}

struct DeploymentLimit {
    /// The deployment's name: its key in the shared limits.
    name: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    requests: Mutex<Gcra>,
    tokens: Mutex<Gcra>,
}

/// Every limit the gateway enforces, and the spend it has to persist.
pub struct Limits {
    keys: Mutex<HashMap<String, Arc<KeyState>>>,
    deployments: Vec<DeploymentLimit>,
    pending: Mutex<HashMap<(String, Period, i64), u64>>,
    store: Option<Store>,
    notify: Arc<Notify>,
    flushing: tokio::sync::Mutex<()>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Limits shared by every replica (`[limits] backend = "redis"`); unset: this replica's own.
    shared: std::sync::OnceLock<Arc<crate::limits_redis::RedisLimits>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limits {
    /// `deployments`: (name, rpm, tpm) per deployment index. With a store, a background task persists
    /// spend; it stops when the `Limits` is dropped.
    pub fn new(deployments: Vec<(String, Option<u64>, Option<u64>)>, store: Option<Store>) -> Arc<Limits> {
        let with_store = store.is_some();
        let limits = Arc::new(Limits {
            keys: Mutex::new(HashMap::new()),
            deployments: deployments
                .into_iter()
                .map(|(name, rpm, tpm)| DeploymentLimit {
                    name,
                    rpm,
                    tpm,
                    requests: Mutex::new(Gcra::default()),
                    tokens: Mutex::new(Gcra::default()),
                })
                .collect(),
            pending: Mutex::new(HashMap::new()),
            store,
            notify: Arc::new(Notify::new()),
            flushing: tokio::sync::Mutex::new(()),
            flusher: Mutex::new(None),
            shared: std::sync::OnceLock::new(),
        });
        if with_store && tokio::runtime::Handle::try_current().is_ok() {
            let task = tokio::spawn(flusher(Arc::downgrade(&limits), limits.notify.clone()));
            *lock(&limits.flusher) = Some(task);
        }
        limits
    }

    /// The state of key `rec`, created on first sight (spend starts from what the store has) and kept
    /// in step with the latest record (limits may have been updated).
    fn key_state(&self, rec: &Arc<KeyRecord>) -> Arc<KeyState> {
        let now = unix_now();
        let mut keys = lock(&self.keys);
        if let Some(s) = keys.get(&rec.id) {
            let mut cur = lock(&s.rec);
            if !Arc::ptr_eq(&cur, rec) {
                *cur = rec.clone();
                lock(&s.spend).roll(Spend::period_of(rec, now), rec.stored_spend(now));
            }
            return s.clone();
        }
        let s = Arc::new(KeyState {
            rec: Mutex::new(rec.clone()),
            requests: Mutex::new(Gcra::default()),
            tokens: Mutex::new(Gcra::default()),
            in_flight: Arc::new(AtomicU64::new(0)),
            spend: Mutex::new(Spend {
                period: Spend::period_of(rec, now),
                nanos: rec.stored_spend(now),
            }),
        });
        keys.insert(rec.id.clone(), s.clone());
        s
    }

    /// Checks every limit of a key before a request is served; takes one request from its RPM bucket
    /// and one concurrency slot when admitted. Nothing is taken from a refused request.
    pub fn admit(&self, rec: &Arc<KeyRecord>) -> Result<Admission, (LimitError, RateHeaders)> {
        self.admit_scaled(rec, 1)
    }

    /// Uses Redis for the limits shared by all replicas (see [`crate::limits_redis`]) and, when Redis
    /// cannot answer, the `on_redis_error` policy; without shared limits, the same as [`Limits::admit`].
    pub async fn admit_shared(&self, rec: &Arc<KeyRecord>) -> Result<Admission, (LimitError, RateHeaders)> {
        let Some(shared) = self.shared.get() else {
            return self.admit(rec);
        };
        let s = self.key_state(rec);
        let seed = self.spent(rec);
        match shared.admit(rec, seed).await {
            Ok(crate::limits_redis::Verdict::Admitted(headers, slot)) => {
                let guard = rec.max_concurrent.map(|_| {
                    s.in_flight.fetch_add(1, Ordering::AcqRel);
                    ConcurrencyGuard(s.in_flight.clone(), slot)
                });
                Ok(Admission { headers, guard })
            }
            Ok(crate::limits_redis::Verdict::Refused(e, headers)) => Err((e, headers)),
            Err(()) => match shared.policy {
                crate::limits_redis::OnError::Local => self.admit_scaled(rec, shared.replicas),
                crate::limits_redis::OnError::FailOpen => Ok(Admission::default()),
                crate::limits_redis::OnError::FailClosed => Err((LimitError::Unavailable, RateHeaders::default())),
            },
        }
    }

    /// Makes this replica's key limits global through Redis.
    pub fn set_shared(&self, shared: Arc<crate::limits_redis::RedisLimits>) {
        let _ = self.shared.set(shared);
    }

    /// The shared limits, if configured.
    pub fn shared(&self) -> Option<&Arc<crate::limits_redis::RedisLimits>> {
        self.shared.get()
    }

    /// [`Limits::admit`] with every rate and concurrency limit divided by `scale` (each at least 1):
    /// the local fallback of `scale` replicas when the shared limits cannot be checked.
    fn admit_scaled(&self, rec: &Arc<KeyRecord>, scale: u64) -> Result<Admission, (LimitError, RateHeaders)> {
        let s = self.key_state(rec);
        let now = Instant::now();
        let mut headers = RateHeaders::default();
        let per = |l: u64| (l / scale.max(1)).max(1);
        let (rpm, tpm, max_concurrent) = (rec.rpm.map(per), rec.tpm.map(per), rec.max_concurrent.map(per));
        let tokens = tpm.map(|tpm| (tpm, lock(&s.tokens).peek(now, tpm)));
        if let Some((tpm, r)) = tokens {
            headers.tokens = Some((tpm, r.unwrap_or(0)));
        }
        if let Some(rpm) = rpm {
            headers.requests = Some((rpm, lock(&s.requests).peek(now, rpm).unwrap_or(0)));
        }
        if let Some(budget) = rec.budget_nanos {
            let unix = unix_now();
            let spent = current_spend(&lock(&s.spend), rec, unix);
            if spent >= budget {
                let wait = rec
                    .budget_period
                    .end(unix)
                    .map(|e| Duration::from_secs(u64::try_from(e - unix).unwrap_or(1)));
                let e = LimitError::Budget {
                    budget: Nanos(budget),
                    period: rec.budget_period.as_str(),
                    wait,
                };
                return Err((e, headers));
            }
        }
        if let Some((limit, Err(wait))) = tokens {
            return Err((LimitError::Tokens { limit, wait }, headers));
        }
        let guard = match max_concurrent {
            Some(limit) => {
                let prev = s.in_flight.fetch_add(1, Ordering::AcqRel);
                let g = ConcurrencyGuard(s.in_flight.clone(), None);
                if prev >= limit {
                    return Err((LimitError::Concurrency { limit }, headers));
                }
                Some(g)
            }
            None => None,
        };
        if let Some(rpm) = rpm {
            match lock(&s.requests).take(now, rpm, 1) {
                Ok(remaining) => headers.requests = Some((rpm, remaining)),
                Err(wait) => return Err((LimitError::Requests { limit: rpm, wait }, headers)),
            }
        }
        Ok(Admission { headers, guard })
    }

    /// Settles a served call: charges its tokens to the deployment's and the key's (`tenant`) token
    /// buckets and adds its cost to the key's spend (persisted in the background). Tenants that are
    /// not virtual keys (no auth, the master key) only count toward deployment limits.
    pub fn settle(&self, tenant: &str, dep: usize, cost: Nanos, tokens: u64) {
        let now = Instant::now();
        let shared = self.shared.get();
        // With shared limits the local buckets are this replica's share, used while Redis is away.
        let scale = shared.map_or(1, |sh| sh.replicas);
        if let Some(d) = self.deployments.get(dep)
            && let Some(tpm) = d.tpm
        {
            lock(&d.tokens).charge(now, (tpm / scale).max(1), tokens);
            if let Some(sh) = shared {
                sh.deployment_settle(&d.name, tpm, tokens);
            }
        }
        if tenant.is_empty() {
            return;
        }
        let Some(s) = lock(&self.keys).get(tenant).cloned() else {
            return;
        };
        let rec = lock(&s.rec).clone();
        if let Some(sh) = shared {
            sh.settle(&rec, tokens, cost.0, self.spent(&rec));
        }
        if let Some(tpm) = rec.tpm {
            lock(&s.tokens).charge(now, (tpm / scale).max(1), tokens);
        }
        if cost.0 == 0 {
            return;
        }
        let unix = unix_now();
        let period = Spend::period_of(&rec, unix);
        {
            let mut sp = lock(&s.spend);
            sp.roll(period, 0);
            sp.nanos = sp.nanos.saturating_add(cost.0);
        }
        if self.store.is_some() {
            let mut pending = lock(&self.pending);
            let delta = pending.entry((rec.id.clone(), period.0, period.1)).or_insert(0);
            *delta = delta.saturating_add(cost.0);
            drop(pending);
            self.notify.notify_one();
        }
    }

    /// The key's spend in the current period as this replica knows it (ahead of the store).
    pub fn spent(&self, rec: &KeyRecord) -> u64 {
        let unix = unix_now();
        match lock(&self.keys).get(&rec.id) {
            Some(s) => current_spend(&lock(&s.spend), rec, unix).max(rec.stored_spend(unix)),
            None => rec.stored_spend(unix),
        }
    }

    /// This replica's own buckets for deployment `dep`, with the limits divided by `scale` (each at
    /// least 1): takes one request from its RPM bucket, or `Err` with how long until it has room.
    fn deployment_admit_scaled(&self, dep: usize, scale: u64) -> Result<(), Duration> {
        let Some(d) = self.deployments.get(dep) else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(tpm) = d.tpm {
            lock(&d.tokens).peek(now, (tpm / scale).max(1))?;
        }
        if let Some(rpm) = d.rpm {
            lock(&d.requests).take(now, (rpm / scale).max(1), 1)?;
        }
        Ok(())
    }

    /// Whether deployment `dep` may take one more request now (takes it from its RPM window). At its
    /// rpm/tpm limit it is skipped like a deployment whose breaker is open: `Err(wait)`, the time until
    /// it has room. With `[limits] backend = "redis"` a deployment's
    /// rpm/tpm are one budget for all replicas, counted in Redis; when Redis cannot answer,
    /// `on_redis_error` applies (`local`: this replica's share, the limits divided by `replicas`).
    /// A deployment without limits never waits on Redis.
    pub async fn deployment_admit(&self, dep: usize) -> Result<(), Duration> {
        let Some(d) = self.deployments.get(dep) else {
            return Ok(());
        };
        if d.rpm.is_none() && d.tpm.is_none() {
            return Ok(());
        }
        let Some(sh) = self.shared.get() else {
            return self.deployment_admit_scaled(dep, 1);
        };
        match sh.deployment_admit(&d.name, d.rpm, d.tpm).await {
            Ok(verdict) => verdict,
            Err(()) => match sh.policy {
                crate::limits_redis::OnError::Local => self.deployment_admit_scaled(dep, sh.replicas),
                crate::limits_redis::OnError::FailOpen => Ok(()),
                crate::limits_redis::OnError::FailClosed => Err(Duration::from_secs(1)),
            },
        }
    }

    /// Writes all pending spend to the store. Concurrent calls wait for each other, so when this returns
    /// everything settled before the call is persisted (or kept pending after an error, to retry).
    pub async fn flush(&self) {
        if let Some(sh) = self.shared.get() {
            // One attempt (the worker retries); at shutdown the server waits for it with a bound.
            sh.drain().await;
        }
        let Some(store) = &self.store else { return };
        let _one_at_a_time = self.flushing.lock().await;
        let batch: Vec<((String, Period, i64), u64)> = lock(&self.pending).drain().collect();
        let mut failed = Vec::new();
        let mut error = None;
        for ((id, kind, period), delta) in batch {
            if error.is_some() {
                failed.push(((id, kind, period), delta));
                continue;
            }
            if let Err(e) = store.add_spend(&id, kind, period, delta).await {
                error = Some(e);
                failed.push(((id, kind, period), delta));
            }
        }
        if let Some(e) = error {
            tracing::warn!(error = %e, entries = failed.len(), "cannot persist key spend yet; will retry");
            let mut p = lock(&self.pending);
            for (k, v) in failed {
                let delta = p.entry(k).or_insert(0);
                *delta = delta.saturating_add(v);
            }
        }
    }
}

fn current_spend(sp: &Spend, rec: &KeyRecord, unix: i64) -> u64 {
    if sp.period == Spend::period_of(rec, unix) {
        sp.nanos
    } else {
        0
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.flusher).take() {
            t.abort();
        }
    }
}

/// Persists spend shortly after it is settled (batching bursts), and at least every second.
async fn flusher(limits: Weak<Limits>, notify: Arc<Notify>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
        let Some(l) = limits.upgrade() else { break };
        l.flush().await;
    }
}

/// Whether a body read failed because the client paused longer than `server.client_body_timeout_secs`.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A listener that holds at most `max` connections open: at the cap it stops accepting, and new
/// clients wait in the kernel's backlog until a connection closes.
pub struct ConnLimit<L> {
    inner: L,
    slots: Arc<Semaphore>,
}

impl<L> ConnLimit<L> {
    pub fn new(inner: L, max: usize) -> Self {
        ConnLimit {
            inner,
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for ConnLimit<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.slots.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed; if it were, accept nothing more.
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = self.inner.accept().await;
        (Counted { io, _slot: permit }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's slots.
pub struct Counted<I> {
    io: I,
    _slot: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_budget_switched_between_periods_that_start_together_starts_afresh() {
        // 2026-12-01T00:00Z: the day and the month start at the same second.
        let first = 1_796_083_200;
        assert_eq!(Period::Day.start(first), Period::Month.start(first));
        let mut sp = Spend {
            period: (Period::Day, first),
            nanos: 500,
        };
        // Same period: the larger count stands.
        sp.roll((Period::Day, first), 200);
        assert_eq!(sp.nanos, 500);
        sp.roll((Period::Day, first), 700);
        assert_eq!(sp.nanos, 700);
        // The month that starts at the same second is another period: it starts from the store's view.
        sp.roll((Period::Month, first), 0);
        assert_eq!((sp.period, sp.nanos), ((Period::Month, first), 0));
    }

    fn key(rpm: Option<u64>, tpm: Option<u64>, conc: Option<u64>, budget: Option<u64>) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: "key_test".into(),
            name: "t".into(),
            prefix: "sk-or-000000".into(),
            hash: "h".into(),
            models: vec![],
            rpm,
            tpm,
            max_concurrent: conc,
            budget_nanos: budget,
            budget_period: Period::Day,
            expires_at: None,
            metadata: serde_json::json!({}),
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
            spent_nanos: 0,
            spend_period_start: 0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_allows_exactly_the_limit_per_minute() {
        let mut g = Gcra::default();
        let t0 = Instant::now();
        for i in 0..60 {
            assert_eq!(g.take(t0, 60, 1), Ok(59 - i), "request {i}");
        }
        let wait = g.take(t0, 60, 1).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // One request frees up per second at 60 RPM.
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(g.take(Instant::now(), 60, 1).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(g.take(Instant::now(), 60, 1), Ok(0));
        // A full idle minute restores the whole burst, and no more.
        tokio::time::advance(WINDOW).await;
        assert_eq!(g.peek(Instant::now(), 60), Ok(60));
    }

    #[tokio::test(start_paused = true)]
    async fn key_rpm_is_enforced_with_headers_and_retry_after() {
        let l = Limits::new(vec![], None);
        let k = key(Some(3), None, None, None);
        let mut remaining = vec![];
        for _ in 0..3 {
            remaining.push(l.admit(&k).unwrap().headers.requests.unwrap());
        }
        assert_eq!(remaining, vec![(3, 2), (3, 1), (3, 0)]);
        let (e, h) = l.admit(&k).unwrap_err();
        assert_eq!(h.requests, Some((3, 0)));
        let api = e.to_api_error();
        assert_eq!((api.status.as_u16(), api.code), (429, Some("rate_limit_exceeded")));
        assert_eq!(api.retry_after, Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(l.admit(&k).is_ok());
        assert!(l.admit(&k).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn key_tpm_refuses_once_the_minute_is_spent_and_recovers() {
        let l = Limits::new(vec![], None);
        let k = key(None, Some(1000), None, None);
        let a = l.admit(&k).unwrap();
        assert_eq!(a.headers.tokens, Some((1000, 1000)));
        l.settle(&k.id, 0, Nanos::ZERO, 600);
        assert_eq!(l.admit(&k).unwrap().headers.tokens, Some((1000, 400)));
        // A call may overshoot (its tokens are known only afterwards); then requests wait.
        l.settle(&k.id, 0, Nanos::ZERO, 900);
        let (e, _) = l.admit(&k).unwrap_err();
        let api = e.to_api_error();
        assert_eq!(api.status.as_u16(), 429);
        // 1500 tokens used of 1000/min: 500 + 1 tokens of debt at 60 ms each.
        assert_eq!(api.retry_after, Some(Duration::from_millis(30_060)));
        tokio::time::advance(Duration::from_millis(30_059)).await;
        assert!(l.admit(&k).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.admit(&k).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_slots_are_held_until_dropped() {
        let l = Limits::new(vec![], None);
        let k = key(None, None, Some(2), None);
        let a = l.admit(&k).unwrap();
        let b = l.admit(&k).unwrap();
        let (e, _) = l.admit(&k).unwrap_err();
        assert!(matches!(e, LimitError::Concurrency { limit: 2 }));
        drop(a);
        let c = l.admit(&k).unwrap();
        drop((b, c));
        assert!(l.admit(&k).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_checked_before_and_spent_after() {
        let l = Limits::new(vec![], None);
        let k = key(Some(100), None, None, Some(1_000));
        assert!(l.admit(&k).is_ok());
        l.settle(&k.id, 0, Nanos(999), 10);
        assert_eq!(l.spent(&k), 999);
        assert!(l.admit(&k).is_ok(), "under budget by one nano-dollar");
        l.settle(&k.id, 0, Nanos(1), 10);
        let (e, _) = l.admit(&k).unwrap_err();
        let api = e.to_api_error();
        assert_eq!((api.status.as_u16(), api.code), (402, Some("budget_exceeded")));
        assert!(api.retry_after.unwrap() <= Duration::from_secs(86_400));
        // Refused requests take nothing from the rate limit.
        assert_eq!(l.admit(&k).unwrap_err().1.requests, Some((100, 98)));
        // Other tenants are not charged to this key.
        l.settle("", 0, Nanos(5), 10);
        l.settle("master", 0, Nanos(5), 10);
        assert_eq!(l.spent(&k), 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn deployment_limits_skip_a_deployment_at_quota() {
        let l = Limits::new(
            vec![
                ("a".into(), Some(2), None),
                ("b".into(), None, Some(100)),
                ("c".into(), None, None),
            ],
            None,
        );
        assert!(l.deployment_admit(0).await.is_ok() && l.deployment_admit(0).await.is_ok());
        // 2 rpm: the next slot is 30 s after the first.
        let wait = l.deployment_admit(0).await.unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30), "{wait:?}");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.deployment_admit(0).await.is_ok());
        assert!(l.deployment_admit(1).await.is_ok());
        l.settle("", 1, Nanos::ZERO, 100);
        assert!(l.deployment_admit(1).await.is_err());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(l.deployment_admit(1).await.is_ok());
        for _ in 0..1000 {
            assert!(l.deployment_admit(2).await.is_ok());
        }
        assert!(l.deployment_admit(99).await.is_ok(), "unknown index: no limit");
    }

    /// Costs too large to add up (absurd upstream usage) saturate: settling them must not panic on
    /// overflow (a debug build did, in the request's task; a release build wrapped the pending delta).
    #[tokio::test]
    async fn huge_costs_saturate() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let (rec, _) = store
            .create_key(&crate::store::KeySpec {
                name: Some("k".into()),
                budget_usd: Some(Some(1.0)),
                ..Default::default()
            })
            .await
            .unwrap();
        let rec = Arc::new(rec);
        let l = Limits::new(vec![], Some(store.clone()));
        l.admit(&rec).unwrap();
        l.settle(&rec.id, 0, Nanos(u64::MAX), 1);
        l.settle(&rec.id, 0, Nanos(u64::MAX), 1);
        assert_eq!(l.spent(&rec), u64::MAX);
        l.flush().await;
        assert_eq!(store.key(&rec.id).await.unwrap().spent_nanos, i64::MAX as u64);
        assert!(l.admit(&rec).is_err());
    }

    #[tokio::test]
    async fn spend_is_persisted_in_the_background() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let (rec, _) = store
            .create_key(&crate::store::KeySpec {
                name: Some("k".into()),
                budget_usd: Some(Some(1.0)),
                budget_period: Some(Period::Month),
                ..Default::default()
            })
            .await
            .unwrap();
        let rec = Arc::new(rec);
        let l = Limits::new(vec![], Some(store.clone()));
        l.admit(&rec).unwrap();
        l.settle(&rec.id, 0, Nanos(1234), 5);
        l.settle(&rec.id, 0, Nanos(1000), 5);
        l.flush().await;
        let stored = store.key(&rec.id).await.unwrap();
        assert_eq!(stored.stored_spend(unix_now()), 2234);
        // A fresh replica (new Limits) starts from the stored spend.
        let l2 = Limits::new(vec![], None);
        let stored = Arc::new(stored);
        l2.admit(&stored).unwrap();
        assert_eq!(l2.spent(&stored), 2234);
        // And the background task persists without an explicit flush.
        l.settle(&rec.id, 0, Nanos(6), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.key(&rec.id).await.unwrap().spent_nanos != 2240 {
            assert!(Instant::now() < deadline, "spend not persisted");
            tokio::task::yield_now().await;
        }
    }
}
