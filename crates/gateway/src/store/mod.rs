//! Persistent state: virtual API keys and their spend, in SQLite (default, one embedded file) or
//! PostgreSQL (when `[store] database_url` says so). sqlx with runtime queries only; the same SQL runs on
//! both (TEXT and BIGINT columns, `$N` placeholders, which SQLite also understands).
//!
//! A key's secret is never stored: only its SHA-256 (hex) and a short prefix for display.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ColumnIndex, Decode, Row, Type};

pub mod feedback;

/// Schema migrations, applied in order at start; each version once (recorded in `optiroute_migrations`).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_api_keys.sql")),
    (2, include_str!("../../migrations/0002_request_log.sql")),
    (3, include_str!("../../migrations/0003_feedback.sql")),
];

/// The PostgreSQL advisory lock key serializing migrations across replicas.
const MIGRATION_LOCK: i64 = 0x6f70_7469_726f_7574;

/// What every virtual key starts with (OpenAI SDKs accept any string).
pub const KEY_PREFIX: &str = "sk-or-";
/// Characters of a key kept for display: `sk-or-` and 6 hex digits (24 of 256 random bits).
const DISPLAY_CHARS: usize = KEY_PREFIX.len() + 6;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id `{0}`")]
    NotFound(String),
}

/// The period a key's budget applies to. Periods are calendar periods in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
    #[default]
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// Start (Unix seconds) of the period that contains `now`; 0 for `total`.
    pub fn start(self, now: i64) -> i64 {
        let day = now.div_euclid(86_400);
        match self {
            Period::Total => 0,
            Period::Day => day * 86_400,
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1) * 86_400
            }
        }
    }

    /// End (Unix seconds, exclusive) of the period that contains `now`; `None` for `total`.
    pub fn end(self, now: i64) -> Option<i64> {
        let day = now.div_euclid(86_400);
        match self {
            Period::Total => None,
            Period::Day => Some((day + 1) * 86_400),
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(ny, nm, 1) * 86_400)
            }
        }
    }
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "day" | "daily" => Ok(Period::Day),
            "month" | "monthly" => Ok(Period::Month),
            "total" => Ok(Period::Total),
            _ => Err(format!("unknown budget period `{s}`; expected day, month or total")),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Wall-clock Unix seconds (budgets and expiry are calendar facts, not durations).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// SHA-256 of a presented key, hex: the only form in which a key is stored or looked up.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random key: `sk-or-` and 32 random bytes (256 bits) in hex.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// A virtual key as stored (never the secret).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The key's first characters, for display; not enough to use or guess it.
    pub prefix: String,
    pub hash: String,
    /// Model names, group names or deployment names this key may use; empty = all.
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub budget_nanos: Option<u64>,
    pub budget_period: Period,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
    /// Spend persisted so far in the period starting at `spend_period_start`.
    pub spent_nanos: u64,
    pub spend_period_start: i64,
}

impl KeyRecord {
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// The record as the admin API and the CLI show it (no hash, no secret). `spent_nanos` is the
    /// current period's spend as the caller knows it (in memory, possibly ahead of the store).
    pub fn to_json(&self, spent_nanos: u64) -> serde_json::Value {
        let usd = |n: u64| n as f64 / 1e9;
        serde_json::json!({
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "key_prefix": format!("{}…", self.prefix),
            "models": self.models,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "budget_usd": self.budget_nanos.map(usd),
            "budget_period": self.budget_period.as_str(),
            "spent_usd": usd(spent_nanos),
            "expires_at": self.expires_at,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revoked_at": self.revoked_at,
            "revoked": self.revoked_at.is_some(),
        })
    }

    /// Spend in the period containing `now`, as persisted.
    pub fn stored_spend(&self, now: i64) -> u64 {
        if self.spend_period_start == self.budget_period.start(now) {
            self.spent_nanos
        } else {
            0
        }
    }
}

/// Present-but-null is `Some(None)` (clear the value); absent is `None` (keep it).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What a create or update sets. In an update, absent fields are kept and `null` clears a limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Allowed models/groups/deployments; `[]` = all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    pub rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub max_concurrent: Option<Option<u64>>,
    #[serde(default, deserialize_with = "some")]
    pub budget_usd: Option<Option<f64>>,
    #[serde(default)]
    pub budget_period: Option<Period>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "some")]
    pub expires_at: Option<Option<i64>>,
    /// Alternative to `expires_at`: seconds from now.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

impl KeySpec {
    /// Applies the spec to `rec`, validating every value.
    pub fn apply(&self, rec: &mut KeyRecord, now: i64) -> Result<(), StoreError> {
        let bad = |m: &str| Err(StoreError::Invalid(m.to_owned()));
        if let Some(n) = &self.name {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > 200 {
                return bad("`name` must be 1 to 200 characters");
            }
            rec.name = n.to_owned();
        }
        if let Some(m) = &self.models {
            if m.len() > 1000 || m.iter().any(|s| s.trim().is_empty() || s.len() > 200) {
                return bad("`models` must hold at most 1000 non-empty names");
            }
            rec.models = m.iter().map(|s| s.trim().to_owned()).collect();
        }
        // 0 means "no limit" too, so a CLI can clear a limit with `--rpm 0`.
        let limit = |v: Option<u64>| v.filter(|&n| n > 0);
        if let Some(v) = self.rpm {
            rec.rpm = limit(v);
        }
        if let Some(v) = self.tpm {
            rec.tpm = limit(v);
        }
        if let Some(v) = self.max_concurrent {
            rec.max_concurrent = limit(v);
        }
        if let Some(b) = self.budget_usd {
            rec.budget_nanos = match b {
                None => None,
                Some(usd) if (0.0..1e9).contains(&usd) => Some((usd * 1e9).round() as u64),
                Some(_) => return bad("`budget_usd` must be a non-negative number of dollars"),
            };
        }
        if let Some(p) = self.budget_period {
            rec.budget_period = p;
        }
        if let Some(e) = self.expires_at {
            rec.expires_at = e;
        }
        if let Some(s) = self.expires_in_secs {
            rec.expires_at = Some(now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
        }
        if let Some(m) = &self.metadata {
            if !(m.is_object() || m.is_null()) {
                return bad("`metadata` must be a JSON object");
            }
            if m.to_string().len() > 16 * 1024 {
                return bad("`metadata` must be at most 16 KiB of JSON");
            }
            rec.metadata = if m.is_null() { serde_json::json!({}) } else { m.clone() };
        }
        rec.updated_at = now;
        Ok(())
    }
}

/// The key store. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever pool this is (each arm is compiled for its own database).
/// Runs the same sqlx code on whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

const COLUMNS: &str = "id, name, key_hash, key_prefix, allowed_models, rpm, tpm, max_concurrent, budget_nanos, \
     budget_period, expires_at, metadata, created_at, updated_at, revoked_at, spent_nanos, spend_period_start";

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| u64::try_from(n).unwrap_or(0))
}

fn record_from<'r, R>(row: &'r R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let models: String = row.try_get("allowed_models")?;
    let metadata: String = row.try_get("metadata")?;
    let period: String = row.try_get("budget_period")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hash: row.try_get("key_hash")?,
        prefix: row.try_get("key_prefix")?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        rpm: to_u64(row.try_get("rpm")?),
        tpm: to_u64(row.try_get("tpm")?),
        max_concurrent: to_u64(row.try_get("max_concurrent")?),
        budget_nanos: to_u64(row.try_get("budget_nanos")?),
        budget_period: period.parse().unwrap_or_default(),
        expires_at: row.try_get("expires_at")?,
        metadata: serde_json::from_str(&metadata).unwrap_or_else(|_| serde_json::json!({})),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revoked_at: row.try_get("revoked_at")?,
        spent_nanos: to_u64(Some(row.try_get("spent_nanos")?)).unwrap_or(0),
        spend_period_start: row.try_get("spend_period_start")?,
    })
}

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates. `url`: `postgres://...`,
    /// `postgresql://...`, `sqlite://PATH`, `sqlite:PATH` or a bare file path.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            Store::Postgres(pool)
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::Invalid("empty SQLite path".into()));
            }
            let memory = path == ":memory:";
            let mut opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(5));
            if !memory {
                opts = opts.journal_mode(SqliteJournalMode::Wal);
            }
            let mut pool = SqlitePoolOptions::new().acquire_timeout(Duration::from_secs(5));
            if memory {
                // Each connection to :memory: is its own database: keep exactly one, forever.
                pool = pool
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            } else {
                pool = pool.max_connections(4);
            }
            Store::Sqlite(pool.connect_with(opts).await?)
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Replicas starting together against one PostgreSQL would race (concurrent CREATE TABLE IF NOT
        // EXISTS fails on pg_type, a migration could run twice): one migrates at a time, under a session
        // advisory lock held by a dedicated connection, closed (releasing the lock) afterwards.
        let lock = match self {
            Store::Postgres(p) => {
                let mut conn = p.acquire().await?.detach();
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut conn)
                    .await?;
                Some(conn)
            }
            Store::Sqlite(_) => None,
        };
        let result = self.migrate_locked().await;
        if let Some(conn) = lock {
            let _ = sqlx::Connection::close(conn).await;
        }
        result
    }

    async fn migrate_locked(&self) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS optiroute_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(p)
            .await?;
            for (version, sql) in MIGRATIONS {
                let done = sqlx::query("SELECT version FROM optiroute_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(p)
                    .await?
                    .is_some();
                if done {
                    continue;
                }
                let mut tx = p.begin().await?;
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO optiroute_migrations (version, applied_at) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
                )
                .bind(*version)
                .bind(unix_now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        });
        Ok(())
    }

    /// Creates a key from `spec` (`name` required). Returns the record and the secret, which is shown
    /// once and not kept anywhere.
    pub async fn create_key(&self, spec: &KeySpec) -> Result<(KeyRecord, String), StoreError> {
        if spec.name.is_none() {
            return Err(StoreError::Invalid("`name` is required".into()));
        }
        let now = unix_now();
        let secret = generate_secret();
        let id = format!("key_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut rec = KeyRecord {
            id,
            name: String::new(),
            prefix: secret[..DISPLAY_CHARS].to_owned(),
            hash: hash_key(&secret),
            models: Vec::new(),
            rpm: None,
            tpm: None,
            max_concurrent: None,
            budget_nanos: None,
            budget_period: Period::Total,
            expires_at: None,
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
            revoked_at: None,
            spent_nanos: 0,
            spend_period_start: 0,
        };
        spec.apply(&mut rec, now)?;
        rec.spend_period_start = rec.budget_period.start(now);
        let sql = format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        );
        let models = serde_json::to_string(&rec.models).unwrap_or_else(|_| "[]".into());
        let metadata = rec.metadata.to_string();
        on_pool!(self, p => {
            sqlx::query(&sql)
                .bind(&rec.id)
                .bind(&rec.name)
                .bind(&rec.hash)
                .bind(&rec.prefix)
                .bind(&models)
                .bind(to_i64(rec.rpm))
                .bind(to_i64(rec.tpm))
                .bind(to_i64(rec.max_concurrent))
                .bind(to_i64(rec.budget_nanos))
                .bind(rec.budget_period.as_str())
                .bind(rec.expires_at)
                .bind(&metadata)
                .bind(rec.created_at)
                .bind(rec.updated_at)
                .bind(rec.revoked_at)
                .bind(0i64)
                .bind(rec.spend_period_start)
                .execute(p)
                .await?;
        });
        Ok((rec, secret))
    }

    /// The key whose hash is `hash` (revoked and expired keys included: the caller decides).
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(hash).fetch_optional(p).await? {
                Some(row) => Ok(Some(record_from(&row)?)),
                None => Ok(None),
            }
        })
    }

    pub async fn key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await? {
                Some(row) => record_from(&row),
                None => Err(StoreError::NotFound(id.to_owned())),
            }
        })
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id");
        on_pool!(self, p => {
            sqlx::query(&sql)
                .fetch_all(p)
                .await?
                .iter()
                .map(record_from)
                .collect()
        })
    }

    /// Applies `spec` to key `id` and returns the updated record.
    pub async fn update_key(&self, id: &str, spec: &KeySpec) -> Result<KeyRecord, StoreError> {
        let mut rec = self.key(id).await?;
        let now = unix_now();
        let old_period = rec.budget_period;
        spec.apply(&mut rec, now)?;
        if rec.budget_period != old_period {
            // A new kind of period starts counting now; the stored spend belongs to the old one (and
            // `add_spend` for the new period must not be refused as "older than the stored period").
            rec.spent_nanos = 0;
            rec.spend_period_start = rec.budget_period.start(now);
        }
        let models = serde_json::to_string(&rec.models).unwrap_or_else(|_| "[]".into());
        let metadata = rec.metadata.to_string();
        // The spend columns are reset in the same statement, only if the period really changes (the
        // right-hand sides see the row before the update), so a concurrent `add_spend` is not lost.
        let sql = "UPDATE api_keys SET name = $1, allowed_models = $2, rpm = $3, tpm = $4, max_concurrent = $5, \
                   budget_nanos = $6, \
                   spent_nanos = CASE WHEN budget_period = $7 THEN spent_nanos ELSE 0 END, \
                   spend_period_start = CASE WHEN budget_period = $8 THEN spend_period_start ELSE $9 END, \
                   budget_period = $10, expires_at = $11, metadata = $12, updated_at = $13 WHERE id = $14";
        on_pool!(self, p => {
            sqlx::query(sql)
                .bind(&rec.name)
                .bind(&models)
                .bind(to_i64(rec.rpm))
                .bind(to_i64(rec.tpm))
                .bind(to_i64(rec.max_concurrent))
                .bind(to_i64(rec.budget_nanos))
                .bind(rec.budget_period.as_str())
                .bind(rec.budget_period.as_str())
                .bind(rec.budget_period.start(now))
                .bind(rec.budget_period.as_str())
                .bind(rec.expires_at)
                .bind(&metadata)
                .bind(rec.updated_at)
                .bind(id)
                .execute(p)
                .await?;
        });
        Ok(rec)
    }

    /// Revokes key `id` (idempotent: a revoked key keeps its first revocation time).
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let now = unix_now();
        let sql = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), updated_at = $2 WHERE id = $3";
        let n = on_pool!(self, p => sqlx::query(sql).bind(now).bind(now).bind(id).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        self.key(id).await
    }

    /// Adds `delta` nano-dollars to key `id`'s spend for the period starting at `period_start`. A newer
    /// period resets the counter; a delta for an older period than the stored one is dropped (it
    /// cannot count against the current budget any more), and so is one for another kind of period
    /// than the key's (settled before its budget period was changed).
    pub async fn add_spend(&self, id: &str, period: Period, period_start: i64, delta: u64) -> Result<(), StoreError> {
        let delta = i64::try_from(delta).unwrap_or(i64::MAX);
        // The sum saturates at the column's maximum (overflow is an error in PostgreSQL, a REAL in SQLite).
        let sql = "UPDATE api_keys SET \
                   spent_nanos = CASE WHEN spend_period_start = $1 THEN \
                                        CASE WHEN spent_nanos > 9223372036854775807 - $2 THEN 9223372036854775807 \
                                             ELSE spent_nanos + $3 END \
                                      WHEN spend_period_start < $4 THEN $5 ELSE spent_nanos END, \
                   spend_period_start = CASE WHEN spend_period_start < $6 THEN $7 ELSE spend_period_start END \
                   WHERE id = $8 AND budget_period = $9";
        on_pool!(self, p => {
            sqlx::query(sql)
                .bind(period_start)
                .bind(delta)
                .bind(delta)
                .bind(period_start)
                .bind(delta)
                .bind(period_start)
                .bind(period_start)
                .bind(id)
                .bind(period.as_str())
                .execute(p)
                .await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-30T07:16:17Z
        let t = 1_796_022_977;
        assert_eq!(civil_from_days(t / 86_400), (2026, 11, 30));
        assert_eq!(Period::Day.start(t), 1_795_996_800);
        assert_eq!(Period::Day.end(t), Some(1_795_996_800 + 86_400));
        let m = Period::Month.start(t);
        assert_eq!(civil_from_days(m / 86_400), (2026, 11, 1));
        assert_eq!(civil_from_days(Period::Month.end(t).unwrap() / 86_400), (2026, 12, 1));
        let dec = days_from_civil(2026, 12, 15) * 86_400;
        assert_eq!(civil_from_days(Period::Month.end(dec).unwrap() / 86_400), (2027, 1, 1));
        assert_eq!(Period::Total.start(t), 0);
        assert_eq!(Period::Total.end(t), None);
        for d in [-1000, 0, 59, 60, 365, 10_957, 20_000, 100_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(!hash_key(&a).contains(&a[KEY_PREFIX.len()..]));
    }

    #[test]
    fn spec_validation() {
        let mut rec = KeyRecord {
            id: "k".into(),
            name: "n".into(),
            prefix: "p".into(),
            hash: "h".into(),
            models: vec![],
            rpm: Some(5),
            tpm: None,
            max_concurrent: None,
            budget_nanos: None,
            budget_period: Period::Total,
            expires_at: None,
            metadata: serde_json::json!({}),
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
            spent_nanos: 0,
            spend_period_start: 0,
        };
        let spec: KeySpec = serde_json::from_str(r#"{"rpm": null, "budget_usd": 1.5, "tpm": 100}"#).unwrap();
        spec.apply(&mut rec, 10).unwrap();
        assert_eq!(
            (rec.rpm, rec.tpm, rec.budget_nanos),
            (None, Some(100), Some(1_500_000_000))
        );
        let keep: KeySpec = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
        keep.apply(&mut rec, 11).unwrap();
        assert_eq!((rec.tpm, rec.name.as_str()), (Some(100), "x"));
        for bad in [
            r#"{"budget_usd": -1}"#,
            r#"{"name": ""}"#,
            r#"{"metadata": [1]}"#,
            r#"{"models": [""]}"#,
        ] {
            let s: KeySpec = serde_json::from_str(bad).unwrap();
            assert!(s.apply(&mut rec, 12).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<KeySpec>(r#"{"nope": 1}"#).is_err());
    }

    #[tokio::test]
    async fn sqlite_in_memory_crud() {
        let s = Store::connect("sqlite::memory:").await.unwrap();
        let spec = KeySpec {
            name: Some("team-a".into()),
            rpm: Some(Some(60)),
            ..Default::default()
        };
        let (rec, secret) = s.create_key(&spec).await.unwrap();
        let found = s.key_by_hash(&hash_key(&secret)).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.rpm), (rec.id.as_str(), Some(60)));
        assert!(s.key_by_hash(&hash_key("sk-or-nope")).await.unwrap().is_none());
        s.add_spend(&rec.id, Period::Total, 0, 5).await.unwrap();
        s.add_spend(&rec.id, Period::Total, 0, 7).await.unwrap();
        assert_eq!(s.key(&rec.id).await.unwrap().spent_nanos, 12);
        // A new period resets; an old period's late delta is dropped.
        s.add_spend(&rec.id, Period::Total, 100, 3).await.unwrap();
        s.add_spend(&rec.id, Period::Total, 0, 50).await.unwrap();
        let r = s.key(&rec.id).await.unwrap();
        assert_eq!((r.spent_nanos, r.spend_period_start), (3, 100));
        // Migrations are idempotent.
        s.migrate().await.unwrap();
        assert_eq!(s.list_keys().await.unwrap().len(), 1);
    }

    /// Spend saturates at the largest storable amount: a sum past it (absurd upstream usage) must not
    /// overflow the column, which made the key unreadable (SQLite turns the sum into a REAL).
    #[tokio::test]
    async fn spend_saturates_instead_of_overflowing() {
        let s = Store::connect("sqlite::memory:").await.unwrap();
        let spec = KeySpec {
            name: Some("big".into()),
            ..Default::default()
        };
        let (rec, _) = s.create_key(&spec).await.unwrap();
        s.add_spend(&rec.id, Period::Total, 0, u64::MAX).await.unwrap();
        s.add_spend(&rec.id, Period::Total, 0, 5).await.unwrap();
        let r = s.key(&rec.id).await.unwrap();
        assert_eq!(r.stored_spend(unix_now()), i64::MAX as u64);
        assert_eq!(s.list_keys().await.unwrap().len(), 1);
    }

    /// Changing a key's budget period must not make the store drop every later spend.
    #[tokio::test]
    async fn spend_is_still_persisted_after_the_budget_period_changes() {
        let s = Store::connect("sqlite::memory:").await.unwrap();
        let spec = KeySpec {
            name: Some("p".into()),
            budget_usd: Some(Some(1.0)),
            budget_period: Some(Period::Day),
            ..Default::default()
        };
        let (rec, _) = s.create_key(&spec).await.unwrap();
        let now = unix_now();
        s.add_spend(&rec.id, Period::Day, Period::Day.start(now), 5)
            .await
            .unwrap();
        // day -> total: the limits layer now persists spend for period start 0.
        let total = KeySpec {
            budget_period: Some(Period::Total),
            ..Default::default()
        };
        let rec = s.update_key(&rec.id, &total).await.unwrap();
        // A delta settled under the old period and flushed after the change must not take over.
        s.add_spend(&rec.id, Period::Day, Period::Day.start(now), 9)
            .await
            .unwrap();
        s.add_spend(&rec.id, rec.budget_period, rec.budget_period.start(now), 7)
            .await
            .unwrap();
        let r = s.key(&rec.id).await.unwrap();
        assert_eq!((r.stored_spend(now), r.spend_period_start), (7, 0));
    }
}
