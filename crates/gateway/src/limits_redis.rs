//! Per-key limits shared by every replica, in Redis (`[limits] backend = "redis"`).
//!
//! - Admission is one Lua script (atomic on the Redis server, clock from Redis `TIME`, so replicas'
//!   clocks do not matter): budget (spend counter ≥ budget → refuse), tokens per minute (GCRA: one
//!   "theoretical arrival time" per key, charged when a call settles, may go into debt), concurrent
//!   requests (a sorted set of slots with a lease, so a replica that dies holding slots frees them; the
//!   worker renews the leases of the slots its replica holds every third of a lease) and requests per
//!   minute (a sliding-window log: exactly `rpm` admissions in any 60 s, across replicas).
//!   Nothing is taken from a refused request.
//! - Settling (tokens and cost of a finished call) and releasing a concurrency slot happen off the
//!   request path: they go to a bounded local queue that one worker applies in order, in batches (one
//!   Lua script per batch). Each settle carries a unique id; the script applies it only if its id was
//!   not applied before (`SET NX` marker, kept an hour), so a batch retried after a lost reply is never
//!   counted twice. While Redis is away the queue keeps the work (up to `settle_queue` entries; beyond
//!   that, entries are dropped and counted) and the worker retries with backoff.
//! - Spend counters are per key and budget period (`INCRBY` in nano-dollars, expiring a day after the
//!   period ends). A counter Redis does not have (first use, or Redis lost its data) starts from the
//!   spend this replica knows: the store's persisted spend (written by every replica) plus its own.
//! - When Redis fails or answers slower than `redis_timeout_ms`, the `on_redis_error` policy applies
//!   (see [`OnError`]), `llm_limits_redis_errors_total{op}` counts it and a warning is logged once per
//!   outage; Redis is not asked again for a second, then the connection manager reconnects.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::limits::{LimitError, RateHeaders};
use crate::store::{KeyRecord, unix_now};
use crate::telemetry::LimitOp;

/// What to do when Redis cannot answer a limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Enforce in memory, each replica allowing 1/`replicas` of every rate and concurrency limit
    /// (budgets against the spend this replica knows). The default.
    Local,
    /// Admit without limits.
    FailOpen,
    /// Refuse with 503 until Redis answers again.
    FailClosed,
}

impl OnError {
    fn parse(s: &str) -> OnError {
        match s {
            "fail-open" => OnError::FailOpen,
            "fail-closed" => OnError::FailClosed,
            _ => OnError::Local,
        }
    }
}

const PREFIX: &str = "optiroute:lim:";
/// The largest integer a Redis counter holds; spend counters saturate there.
const MAX_COUNTER: u64 = i64::MAX as u64;
/// Operations applied per batch (one script call).
const BATCH: usize = 128;
/// After a failure, Redis is left alone this long (requests use the fallback at once instead of waiting).
const BACKOFF: Duration = Duration::from_secs(1);

/// KEYS: rpm log, tpm TAT, concurrency slots, spend counter.
/// ARGV: rpm, tpm, max concurrent (0 = none), budget (-1 = none), spend seed, spend expiry (unix s,
/// 0 = none), request id, lease (ms).
/// Returns {status, requests left (-1 = no limit), tokens left (-1), wait ms}; status 0 admitted,
/// 1 budget, 2 tokens, 3 concurrency, 4 requests.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local conc = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local lease = tonumber(ARGV[8]) * 1000
local req_left = -1
local tok_left = -1
local tok_wait = 0
if tpm > 0 then
  local interval = window / tpm
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  local ahead = math.max(tat - now, 0)
  if ahead + interval > window then
    tok_left = 0
    tok_wait = ahead + interval - window
  else
    tok_left = math.floor((window - ahead) / interval)
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  req_left = rpm - redis.call('ZCARD', KEYS[1])
  if req_left < 0 then req_left = 0 end
end
if budget >= 0 then
  local spent = redis.call('GET', KEYS[4])
  if not spent then
    redis.call('SET', KEYS[4], ARGV[5])
    local exp = tonumber(ARGV[6])
    if exp > 0 then redis.call('EXPIREAT', KEYS[4], exp) end
    spent = ARGV[5]
  end
  if tonumber(spent) >= budget then return {1, req_left, tok_left, 0} end
end
if tok_wait > 0 then return {2, req_left, tok_left, math.ceil(tok_wait / 1000)} end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {3, req_left, tok_left, 1000} end
end
if rpm > 0 then
  if req_left <= 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local wait = window
    if oldest[2] then wait = tonumber(oldest[2]) + window - now end
    return {4, 0, tok_left, math.ceil(wait / 1000)}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[1], 61000)
  req_left = req_left - 1
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[7])
  redis.call('PEXPIRE', KEYS[3], math.floor(lease / 1000) + 1000)
end
return {0, req_left, tok_left, 0}
";

/// KEYS[1]: prefix of the applied-once markers. ARGV: operations of 9 fields each:
/// settle `s, id, tpm key, tpm, tokens, spend key, cost, spend seed, spend expiry` or
/// release `r, slot id, concurrency key, -, -, -, -, -, -`.
const APPLY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = 60000000
local n = #ARGV / 9
for i = 0, n - 1 do
  local b = i * 9
  if ARGV[b + 1] == 'r' then
    redis.call('ZREM', ARGV[b + 3], ARGV[b + 2])
  elseif redis.call('SET', KEYS[1] .. ARGV[b + 2], '1', 'NX', 'EX', 3600) then
    local tpm = tonumber(ARGV[b + 4])
    local tokens = tonumber(ARGV[b + 5])
    if tpm > 0 and tokens > 0 then
      local tat = tonumber(redis.call('GET', ARGV[b + 3]) or '0')
      if tat < now then tat = now end
      tat = math.min(tat + (window / tpm) * tokens, now + 86400000000)
      redis.call('SET', ARGV[b + 3], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
    end
    if ARGV[b + 7] ~= '0' then
      local sk = ARGV[b + 6]
      if redis.call('EXISTS', sk) == 0 then redis.call('SET', sk, ARGV[b + 8]) end
      -- Saturate rather than fail: an error here would stop the script after this settle's marker
      -- was set, so its retry would skip the cost.
      local r = redis.pcall('INCRBY', sk, ARGV[b + 7])
      if type(r) == 'table' and r.err then redis.call('SET', sk, '9223372036854775807') end
      local exp = tonumber(ARGV[b + 9])
      if exp > 0 then redis.call('EXPIREAT', sk, exp) end
    end
  end
end
return n
";

/// ARGV: lease (ms), then pairs of concurrency key and slot id: every slot this replica holds gets a
/// fresh lease (a slot Redis lost, say while it was away, is added back: it is still in use).
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1]) * 1000
for i = 2, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', ARGV[i], math.floor(lease / 1000) + 1000)
end
return (#ARGV - 1) / 2
";

/// Work for the Redis worker, applied in the order it was queued.
#[derive(Debug, Clone)]
enum Op {
    Settle {
        id: String,
        tpm_key: String,
        tpm: u64,
        tokens: u64,
        spend_key: String,
        cost: u64,
        seed: u64,
        expire_at: i64,
    },
    Release {
        conc_key: String,
        id: String,
    },
}

impl Op {
    fn args(&self, out: &mut Vec<String>) {
        match self {
            Op::Settle {
                id,
                tpm_key,
                tpm,
                tokens,
                spend_key,
                cost,
                seed,
                expire_at,
            } => out.extend([
                "s".to_owned(),
                id.clone(),
                tpm_key.clone(),
                tpm.to_string(),
                tokens.to_string(),
                spend_key.clone(),
                cost.to_string(),
                seed.to_string(),
                expire_at.to_string(),
            ]),
            Op::Release { conc_key, id } => out.extend([
                "r".to_owned(),
                id.clone(),
                conc_key.clone(),
                "0".to_owned(),
                "0".to_owned(),
                String::new(),
                "0".to_owned(),
                "0".to_owned(),
                "0".to_owned(),
            ]),
        }
    }
}

/// The result of a shared limit check that Redis answered.
#[derive(Debug)]
pub enum Verdict {
    Admitted(RateHeaders, Option<Slot>),
    Refused(LimitError, RateHeaders),
}

/// A concurrency slot held in Redis; released (through the worker queue) on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Weak<RedisLimits>,
    conc_key: String,
    id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(o) = self.owner.upgrade() {
            // Out of the held set before the release is queued: a renewal never sees a released slot.
            lock(&o.held).remove(&self.id);
            o.push(Op::Release {
                conc_key: std::mem::take(&mut self.conc_key),
                id: std::mem::take(&mut self.id),
            });
        }
    }
}

/// Shared limits in Redis, with the queue of settled usage and its worker.
pub struct RedisLimits {
    conn: ConnectionManager,
    admit_script: redis::Script,
    apply_script: redis::Script,
    renew_script: redis::Script,
    timeout: Duration,
    lease: Duration,
    /// The concurrency slots this replica holds (slot id → concurrency key), renewed by the worker.
    held: Mutex<HashMap<String, String>>,
    pub policy: OnError,
    pub replicas: u64,
    /// Unique per process: request and settle ids are `replica:seq`.
    replica: String,
    seq: AtomicU64,
    queue: Mutex<VecDeque<Op>>,
    capacity: usize,
    notify: Arc<Notify>,
    draining: tokio::sync::Mutex<()>,
    /// Set while Redis is considered away: no admission asks it until then.
    down_until: Mutex<Option<Instant>>,
    errors: Family<LimitOp, Counter>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Redis URL from `[limits] redis_url` (maybe `env:NAME`).
pub(crate) fn redis_url(cfg: &LimitsConfig) -> anyhow::Result<String> {
    let url = cfg
        .redis_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("limits.redis_url is required with limits.backend = \"redis\""))?;
    match url.strip_prefix("env:") {
        Some(var) => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("limits.redis_url: environment variable `{var}` is not set")),
        None => Ok(url),
    }
}

impl RedisLimits {
    /// Connects lazily (a Redis that is down at start is the same as one that fails later) and starts
    /// the worker, which stops when the returned value is dropped. Needs a tokio runtime.
    pub fn start(cfg: &LimitsConfig, errors: Family<LimitOp, Counter>) -> anyhow::Result<Arc<RedisLimits>> {
        let url = redis_url(cfg)?;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("limits.redis_url {}: {e}", crate::config::mask_url_credentials(&url)))?;
        let timeout = Duration::from_millis(cfg.redis_timeout_ms);
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, mcfg)
            .map_err(|e| anyhow::anyhow!("limits.redis_url: {e}"))?;
        let me = Arc::new(RedisLimits {
            conn,
            admit_script: redis::Script::new(ADMIT),
            apply_script: redis::Script::new(APPLY),
            renew_script: redis::Script::new(RENEW),
            timeout,
            lease: Duration::from_secs(cfg.concurrency_lease_secs),
            held: Mutex::new(HashMap::new()),
            policy: OnError::parse(&cfg.on_redis_error),
            replicas: cfg.replicas.max(1),
            replica: hex::encode(rand::random::<[u8; 6]>()),
            seq: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
            capacity: cfg.settle_queue,
            notify: Arc::new(Notify::new()),
            draining: tokio::sync::Mutex::new(()),
            down_until: Mutex::new(None),
            errors,
            worker: Mutex::new(None),
        });
        let task = tokio::spawn(worker(Arc::downgrade(&me), me.notify.clone()));
        *lock(&me.worker) = Some(task);
        Ok(me)
    }

    fn next_id(&self) -> String {
        format!("{}:{}", self.replica, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|t| Instant::now() < t)
    }

    /// Counts a failure; the first one of an outage is logged.
    fn failed(&self, op: &'static str, error: &str) {
        self.errors.get_or_create(&LimitOp { op }).inc();
        let mut d = lock(&self.down_until);
        let first = d.is_none();
        *d = Some(Instant::now() + BACKOFF);
        drop(d);
        if first {
            let policy = match self.policy {
                OnError::Local => "local limits divided by the replica count",
                OnError::FailOpen => "no limits (fail-open)",
                OnError::FailClosed => "refusing limited requests (fail-closed)",
            };
            tracing::warn!(
                op,
                error,
                policy,
                "shared limits: Redis unavailable; applying on_redis_error until it is back"
            );
        }
    }

    fn succeeded(&self) {
        let mut d = lock(&self.down_until);
        if d.take().is_some() {
            tracing::info!("shared limits: Redis is back");
        }
    }

    /// Checks every limit of `rec` in Redis and takes one request (and a concurrency slot) when
    /// admitted. `Err(())`: Redis did not answer in time; the caller applies the policy.
    /// `seed`: the key's spend as this replica knows it, used only if Redis has no counter.
    pub async fn admit(self: &Arc<Self>, rec: &KeyRecord, seed: u64) -> Result<Verdict, ()> {
        if rec.rpm.is_none() && rec.tpm.is_none() && rec.max_concurrent.is_none() && rec.budget_nanos.is_none() {
            return Ok(Verdict::Admitted(RateHeaders::default(), None));
        }
        if self.is_down() {
            self.errors.get_or_create(&LimitOp { op: "admit_skipped" }).inc();
            return Err(());
        }
        let unix = unix_now();
        let period_start = rec.budget_period.start(unix);
        let expire_at = rec.budget_period.end(unix).map_or(0, |e| e + 86_400);
        let id = self.next_id();
        let conc_key = format!("{PREFIX}conc:{}", rec.id);
        let mut inv = self.admit_script.prepare_invoke();
        inv.key(format!("{PREFIX}rpm:{}", rec.id))
            .key(format!("{PREFIX}tpm:{}", rec.id))
            .key(&conc_key)
            .key(spend_key(rec, period_start))
            .arg(rec.rpm.unwrap_or(0))
            .arg(rec.tpm.unwrap_or(0))
            .arg(rec.max_concurrent.unwrap_or(0))
            .arg(rec.budget_nanos.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)))
            .arg(seed.min(MAX_COUNTER))
            .arg(expire_at)
            .arg(&id)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
        let reply = match self.run_admit(&inv, "admit").await {
            Ok(v) => v,
            Err(timed_out) => {
                if timed_out && rec.max_concurrent.is_some() {
                    // The script may still run after we gave up: give back the slot it would take (the
                    // release follows it on the same connection).
                    self.push(Op::Release { conc_key, id });
                }
                return Err(());
            }
        };
        let left = |n: i64| u64::try_from(n).unwrap_or(0);
        let headers = RateHeaders {
            requests: rec.rpm.map(|l| (l, left(reply[1]))),
            tokens: rec.tpm.map(|l| (l, left(reply[2]))),
        };
        let wait = Duration::from_millis(left(reply[3]));
        Ok(match reply[0] {
            0 => {
                let slot = rec.max_concurrent.map(|_| {
                    lock(&self.held).insert(id.clone(), conc_key.clone());
                    Slot {
                        owner: Arc::downgrade(self),
                        conc_key,
                        id,
                    }
                });
                Verdict::Admitted(headers, slot)
            }
            1 => Verdict::Refused(
                LimitError::Budget {
                    budget: optiroute_protocol::pricing::Nanos(rec.budget_nanos.unwrap_or(0)),
                    period: rec.budget_period.as_str(),
                    wait: rec
                        .budget_period
                        .end(unix)
                        .map(|e| Duration::from_secs(u64::try_from(e - unix).unwrap_or(1))),
                },
                headers,
            ),
            2 => Verdict::Refused(
                LimitError::Tokens {
                    limit: rec.tpm.unwrap_or(0),
                    wait,
                },
                headers,
            ),
            3 => Verdict::Refused(
                LimitError::Concurrency {
                    limit: rec.max_concurrent.unwrap_or(0),
                },
                headers,
            ),
            _ => Verdict::Refused(
                LimitError::Requests {
                    limit: rec.rpm.unwrap_or(0),
                    wait,
                },
                headers,
            ),
        })
    }

    /// Runs the admission script with the caller's keys and arguments. `Err(timed_out)` when Redis did
    /// not answer properly (counted, and Redis is left alone for a moment).
    async fn run_admit(&self, inv: &redis::ScriptInvocation<'_>, op: &'static str) -> Result<Vec<i64>, bool> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) if v.len() == 4 => {
                self.succeeded();
                Ok(v)
            }
            Ok(Ok(v)) => {
                self.failed(op, &format!("unexpected reply of {} values", v.len()));
                Err(false)
            }
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                Err(false)
            }
            Err(_) => {
                self.failed(op, "timed out");
                Err(true)
            }
        }
    }

    /// Takes one request from deployment `name`'s shared RPM window if it has one left and its shared
    /// TPM bucket is not spent. `Ok(Err(wait))`: at its limit, with room again after `wait`.
    /// `Err(())`: Redis did not answer in time.
    pub async fn deployment_admit(
        &self,
        name: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<Result<(), Duration>, ()> {
        if self.is_down() {
            self.errors.get_or_create(&LimitOp { op: "admit_skipped" }).inc();
            return Err(());
        }
        // The key script without concurrency or budget: rpm window, tpm bucket, two unused keys.
        let mut inv = self.admit_script.prepare_invoke();
        inv.key(format!("{PREFIX}dep:rpm:{name}"))
            .key(format!("{PREFIX}dep:tpm:{name}"))
            .key(format!("{PREFIX}dep:conc:{name}"))
            .key(format!("{PREFIX}dep:spend:{name}"))
            .arg(rpm.unwrap_or(0))
            .arg(tpm.unwrap_or(0))
            .arg(0)
            .arg(-1)
            .arg(0)
            .arg(0)
            .arg(self.next_id())
            .arg(0);
        match self.run_admit(&inv, "deployment_admit").await {
            Ok(reply) if reply[0] == 0 => Ok(Ok(())),
            Ok(reply) => Ok(Err(Duration::from_millis(u64::try_from(reply[3]).unwrap_or(0).max(1)))),
            Err(_) => Err(()),
        }
    }

    /// Queues a deployment's served tokens toward its shared TPM bucket.
    pub fn deployment_settle(&self, name: &str, tpm: u64, tokens: u64) {
        if tpm == 0 || tokens == 0 {
            return;
        }
        self.push(Op::Settle {
            id: self.next_id(),
            tpm_key: format!("{PREFIX}dep:tpm:{name}"),
            tpm,
            tokens,
            spend_key: String::new(),
            cost: 0,
            seed: 0,
            expire_at: 0,
        });
    }

    /// Queues a settled call's tokens (toward the key's TPM) and cost (toward its spend) for Redis.
    /// The cost counts whether or not the key has a budget now, so a budget set later starts from the
    /// key's real spend, as it does in memory. `seed`: the key's spend before this call as this
    /// replica knows it.
    pub fn settle(&self, rec: &KeyRecord, tokens: u64, cost: u64, seed: u64) {
        let tpm = rec.tpm.unwrap_or(0);
        if (tpm == 0 || tokens == 0) && cost == 0 {
            return;
        }
        let unix = unix_now();
        let period_start = rec.budget_period.start(unix);
        self.push(Op::Settle {
            id: self.next_id(),
            tpm_key: format!("{PREFIX}tpm:{}", rec.id),
            tpm,
            tokens,
            spend_key: spend_key(rec, period_start),
            cost,
            seed: seed.min(MAX_COUNTER),
            expire_at: rec.budget_period.end(unix).map_or(0, |e| e + 86_400),
        });
    }

    fn push(&self, op: Op) {
        {
            let mut q = lock(&self.queue);
            if q.len() >= self.capacity {
                drop(q);
                self.errors.get_or_create(&LimitOp { op: "queue_full" }).inc();
                tracing::warn!("shared limits: settle queue full; an update is dropped");
                return;
            }
            q.push_back(op);
        }
        self.notify.notify_one();
    }

    /// Operations waiting for Redis.
    pub fn queued(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Applies queued operations in order until the queue is empty (`true`) or Redis fails (`false`:
    /// the failed batch goes back to the front, to be retried as it was).
    pub async fn drain(&self) -> bool {
        let _one_at_a_time = self.draining.lock().await;
        loop {
            if self.is_down() {
                return lock(&self.queue).is_empty();
            }
            let batch: Vec<Op> = {
                let mut q = lock(&self.queue);
                let n = q.len().min(BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return true;
            }
            let mut args = Vec::with_capacity(batch.len() * 9);
            for op in &batch {
                op.args(&mut args);
            }
            let mut inv = self.apply_script.prepare_invoke();
            inv.key(format!("{PREFIX}done:"));
            for a in &args {
                inv.arg(a);
            }
            let mut conn = self.conn.clone();
            let wait = self.timeout.max(Duration::from_secs(1));
            let error = match tokio::time::timeout(wait, inv.invoke_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            if let Some(e) = error {
                {
                    let mut q = lock(&self.queue);
                    for op in batch.into_iter().rev() {
                        q.push_front(op);
                    }
                }
                self.failed("settle", &e);
                return false;
            }
            self.succeeded();
        }
    }

    /// How often the worker renews held slots: three times per lease, so one failed renewal (Redis
    /// slow or away for a moment) does not let a slot in use expire.
    fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Gives every slot this replica holds a fresh lease. Runs under the drain lock, so it is ordered
    /// with the queued releases: a slot released before the snapshot is not in it, and a release
    /// queued after it is applied after the renewal.
    async fn renew(&self) {
        let _one_at_a_time = self.draining.lock().await;
        let held: Vec<(String, String)> = lock(&self.held)
            .iter()
            .map(|(id, key)| (key.clone(), id.clone()))
            .collect();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        for chunk in held.chunks(BATCH) {
            let mut inv = self.renew_script.prepare_invoke();
            inv.arg(lease_ms);
            for (key, id) in chunk {
                inv.arg(key).arg(id);
            }
            let mut conn = self.conn.clone();
            let wait = self.timeout.max(Duration::from_secs(1));
            let error = match tokio::time::timeout(wait, inv.invoke_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            // The next renewal comes long before the lease ends.
            self.failed("renew", &error);
            return;
        }
    }

    /// Applies what is queued, waiting at most `within` (for shutdown). Returns whether all was applied.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.drain().await {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    queued = self.queued(),
                    "shared limits: Redis unavailable; settled usage not applied to Redis (it is in the store)"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RedisLimits {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.worker).take() {
            t.abort();
        }
    }
}

/// Applies queued work as soon as it arrives (while Redis is away, retries at least every second) and
/// renews the leases of held slots on time.
async fn worker(owner: Weak<RedisLimits>, notify: Arc<Notify>) {
    let mut next_renewal = Instant::now();
    loop {
        let idle = match owner.upgrade() {
            None => break,
            Some(me) => {
                if Instant::now() >= next_renewal {
                    next_renewal = Instant::now() + me.renew_every();
                    if !me.is_down() {
                        me.renew().await;
                    }
                }
                if me.queued() > 0 && !me.is_down() {
                    me.drain().await;
                    None
                } else {
                    Some(next_renewal.saturating_duration_since(Instant::now()).min(BACKOFF))
                }
            }
        };
        if let Some(idle) = idle {
            let _ = tokio::time::timeout(idle, notify.notified()).await;
        }
    }
}

/// The Redis counter of `rec`'s spend in the period starting at `period_start`. The period's kind is
/// part of the name: on the 1st of a month a day and a month start at the same second, and a budget
/// switched between them must not pick up the other's count.
fn spend_key(rec: &KeyRecord, period_start: i64) -> String {
    format!("{PREFIX}spend:{}:{}:{period_start}", rec.id, rec.budget_period.as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ops_have_nine_fields() {
        let mut v = Vec::new();
        Op::Release {
            conc_key: "c".into(),
            id: "i".into(),
        }
        .args(&mut v);
        assert_eq!(v.len(), 9);
        Op::Settle {
            id: "i".into(),
            tpm_key: "t".into(),
            tpm: 1,
            tokens: 2,
            spend_key: "s".into(),
            cost: 3,
            seed: 4,
            expire_at: 5,
        }
        .args(&mut v);
        assert_eq!(v.len(), 18);
        assert_eq!(v[9..13], ["s", "i", "t", "1"]);
        assert_eq!(OnError::parse("fail-closed"), OnError::FailClosed);
        assert_eq!(OnError::parse("local"), OnError::Local);
    }
}
