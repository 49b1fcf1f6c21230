//! Gateway keys: the master key and virtual keys, the auth middleware, and the `optiroute keys` CLI.
//!
//! Auth is off unless configured (demo mode). When on, `/v1/*` and `/generate` need
//! `Authorization: Bearer <key>` (or `x-api-key`), `/admin/*` needs the master key, and `/metrics` and
//! `/api/stats` need it when `[auth] protect_metrics = true`. A presented key is hashed (SHA-256) and
//! looked up in a moka cache in front of the store; the cache's TTL bounds how long a revocation made
//! elsewhere (the CLI, another replica) takes to apply. Revocations through this process's admin API
//! apply at once. No key, hash or prefix of a presented key is ever logged or echoed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::engine::RequestCtx;
use crate::error::ApiError;
use crate::state::{AppState, SharedState};
use crate::store::{KeyRecord, KeySpec, Period, Store, StoreError, unix_now};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Master,
    Key(Arc<KeyRecord>),
}

impl Principal {
    /// The tenant id used for cache isolation, limits and spend.
    pub fn tenant(&self) -> String {
        match self {
            Principal::Master => "master".into(),
            Principal::Key(k) => k.id.clone(),
        }
    }

    pub fn key(&self) -> Option<Arc<KeyRecord>> {
        match self {
            Principal::Master => None,
            Principal::Key(k) => Some(k.clone()),
        }
    }
}

/// Key lookups by key hash (`None`: no such key), shared with [`crate::key_events`].
///
/// A lookup races a change: a request may read a key from the store just before an admin revokes it,
/// and insert that record after the revocation cleared the cache. Every invalidation bumps a generation,
/// and a lookup is kept only if no invalidation happened between its store read and its insert, so a
/// revoked key is refused from the next request on, not after the cache's TTL.
#[derive(Clone)]
pub struct KeyCache {
    entries: moka::future::Cache<String, Option<Arc<KeyRecord>>>,
    generation: Arc<AtomicU64>,
}

impl KeyCache {
    fn new(entries: moka::future::Cache<String, Option<Arc<KeyRecord>>>) -> KeyCache {
        KeyCache {
            entries,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn get(&self, hash: &str) -> Option<Option<Arc<KeyRecord>>> {
        self.entries.get(hash).await
    }

    /// Read before a store lookup; passed to [`KeyCache::insert_read_at`].
    fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Caches a store lookup that started at `generation`, unless an invalidation came in between.
    async fn insert_read_at(&self, generation: u64, hash: String, rec: Option<Arc<KeyRecord>>) {
        if self.generation() != generation {
            return;
        }
        self.entries.insert(hash.clone(), rec).await;
        // An invalidation between the check and the insert: take the insert back.
        if self.generation() != generation {
            self.entries.invalidate(&hash).await;
        }
    }

    pub async fn invalidate(&self, hash: &str) {
        self.generation.fetch_add(1, SeqCst);
        self.entries.invalidate(hash).await;
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, SeqCst);
        self.entries.invalidate_all();
    }
}

/// Authentication state: whether auth is on, the master key's hash, the store and the lookup cache.
pub struct Auth {
    pub enabled: bool,
    master: Option<[u8; 32]>,
    pub store: Option<Store>,
    cache: KeyCache,
    pub protect_metrics: bool,
    pub cache_ttl: Duration,
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Resolves the master key from the config (`master_key`, maybe `env:NAME`) or `master_key_env`.
fn master_key(cfg: &Config) -> anyhow::Result<Option<String>> {
    let a = &cfg.auth;
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let key = match &a.master_key {
        Some(k) => match k.strip_prefix("env:") {
            Some(name) => Some(
                env(name)
                    .ok_or_else(|| anyhow::anyhow!("auth.master_key: environment variable `{name}` is not set"))?,
            ),
            None => Some(k.clone()),
        },
        None => a.master_key_env.as_deref().and_then(env),
    };
    if let Some(k) = &key
        && k.len() < 16
    {
        anyhow::bail!("the master key must be at least 16 characters long");
    }
    Ok(key)
}

/// The store URL from the config: `[store] database_url` (maybe `env:NAME`), else `optiroute.db`.
pub fn database_url(cfg: &Config) -> anyhow::Result<String> {
    match cfg.store.database_url.as_deref() {
        None => Ok("sqlite://optiroute.db".into()),
        Some(u) => match u.strip_prefix("env:") {
            Some(name) => std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| anyhow::anyhow!("store.database_url: environment variable `{name}` is not set")),
            None => Ok(u.to_owned()),
        },
    }
}

/// Opens the configured store (errors never show the URL's credentials).
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let url = database_url(cfg)?;
    Store::connect(&url).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open the key store {}: {e}",
            crate::config::mask_url_credentials(&url)
        )
    })
}

impl Auth {
    pub fn disabled() -> Auth {
        Auth {
            enabled: false,
            master: None,
            store: None,
            cache: KeyCache::new(moka::future::Cache::new(1)),
            protect_metrics: false,
            cache_ttl: Duration::ZERO,
        }
    }

    /// Builds auth from the config: off unless a master key is found or `enabled = true`; the store is
    /// opened (and migrated) only when auth is on.
    pub async fn from_config(cfg: &Config) -> anyhow::Result<Auth> {
        let master = master_key(cfg)?;
        let enabled = cfg.auth.enabled.unwrap_or(master.is_some());
        if !enabled {
            return Ok(Auth::disabled());
        }
        let store = open_store(cfg).await?;
        let ttl = Duration::from_millis(cfg.auth.key_cache_ttl_ms);
        Ok(Auth {
            enabled: true,
            master: master.as_deref().map(sha),
            store: Some(store),
            cache: KeyCache::new(
                moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(ttl.max(Duration::from_millis(1)))
                    .build(),
            ),
            protect_metrics: cfg.auth.protect_metrics,
            cache_ttl: ttl,
        })
    }

    /// One line for the startup banner.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off (no master key configured: every request is accepted)".into();
        }
        format!(
            "ON: /v1/* and /generate need `Authorization: Bearer <key>`; keys in {}{}{}",
            self.store.as_ref().map_or("-", Store::backend),
            if self.master.is_some() {
                "; master key set"
            } else {
                "; no master key (admin API closed)"
            },
            if self.protect_metrics {
                "; /metrics protected"
            } else {
                ""
            }
        )
    }

    /// Identifies the caller from `Authorization: Bearer` (or `x-api-key`).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(presented) = bearer(headers) else {
            return Err(unauthorized("missing API key: send `Authorization: Bearer <key>`"));
        };
        let digest = sha(presented);
        if self.master.is_some_and(|m| constant_time_eq(&m, &digest)) {
            return Ok(Principal::Master);
        }
        let hash = hex::encode(digest);
        let rec = match self.cache.get(&hash).await {
            Some(r) => r,
            None => {
                let Some(store) = &self.store else {
                    return Err(unauthorized("invalid API key"));
                };
                let generation = self.cache.generation();
                let found = store.key_by_hash(&hash).await.map_err(|e| {
                    tracing::error!(error = %e, "key lookup failed");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "the key store is unavailable; try again",
                    )
                    .with_code("key_store_unavailable")
                })?;
                let r = found.map(Arc::new);
                self.cache.insert_read_at(generation, hash, r.clone()).await;
                r
            }
        };
        match rec {
            None => Err(unauthorized("invalid API key")),
            Some(r) if r.revoked_at.is_some() => Err(unauthorized("this API key has been revoked")),
            Some(r) if r.is_expired(unix_now()) => Err(unauthorized("this API key has expired")),
            Some(r) => Ok(Principal::Key(r)),
        }
    }

    /// Drops a key's cached lookup so a change made through this process applies at once.
    pub async fn forget(&self, rec: &KeyRecord) {
        self.cache.invalidate(&rec.hash).await;
    }

    /// The lookup cache (a handle to the same entries).
    pub fn cache(&self) -> KeyCache {
        self.cache.clone()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|k| !k.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).with_code("invalid_api_key")
}

fn forbidden(message: &str, code: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
}

/// The refusal as a response, and one log line for it (request id, path, status, code; never the key).
fn refuse(req: &Request, e: ApiError) -> Response {
    let id = req
        .extensions()
        .get::<crate::http::RequestId>()
        .map_or("", |r| r.0.as_str());
    tracing::info!(
        request_id = %id,
        path = %req.uri().path(),
        status = e.status.as_u16(),
        code = e.code.unwrap_or(""),
        "request refused"
    );
    error_response(e)
}

fn error_response(e: ApiError) -> Response {
    let unauth = e.status == StatusCode::UNAUTHORIZED;
    let mut resp = e.into_response();
    if unauth {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[derive(PartialEq, Eq)]
enum Class {
    /// Completions: authenticated and limited.
    Limited,
    /// Other API routes: authenticated.
    Api,
    Admin,
    Metrics,
    Open,
}

fn classify(method: &axum::http::Method, path: &str) -> Class {
    if (path == "/v1/chat/completions" || path == "/generate") && method == axum::http::Method::POST {
        Class::Limited
    } else if path.starts_with("/v1/") || path == "/v1" || path == "/generate" {
        Class::Api
    } else if path == "/admin" || path.starts_with("/admin/") {
        Class::Admin
    } else if path == "/metrics" || path == "/api/stats" {
        Class::Metrics
    } else {
        Class::Open
    }
}

/// The auth middleware: identifies the caller, enforces the key's limits before the handler runs,
/// puts the [`Principal`] in the request's extensions, and adds the `x-ratelimit-*` headers.
pub async fn guard(State(st): State<SharedState>, mut req: Request, next: Next) -> Response {
    if !st.auth.enabled {
        return next.run(req).await;
    }
    let class = classify(req.method(), req.uri().path());
    if class == Class::Open || (class == Class::Metrics && !st.auth.protect_metrics) {
        return next.run(req).await;
    }
    let principal = match st.auth.authenticate(req.headers()).await {
        Ok(p) => p,
        Err(e) => return refuse(&req, e),
    };
    match (&class, &principal) {
        (Class::Admin | Class::Metrics, Principal::Key(_)) => {
            return refuse(
                &req,
                forbidden(
                    "this endpoint needs the master key; a virtual key cannot use it",
                    "master_key_required",
                ),
            );
        }
        (_, Principal::Master) | (Class::Api, _) => {
            req.extensions_mut().insert(principal);
            return next.run(req).await;
        }
        _ => {}
    }
    let Principal::Key(rec) = &principal else {
        return next.run(req).await;
    };
    let admission = match st.limits.admit_shared(rec).await {
        Ok(a) => a,
        Err((e, headers)) => {
            let mut resp = refuse(&req, e.to_api_error());
            headers.apply(resp.headers_mut());
            return resp;
        }
    };
    req.extensions_mut().insert(principal.clone());
    let mut resp = next.run(req).await;
    admission.headers.apply(resp.headers_mut());
    match admission.guard {
        // Hold the concurrency slot until the body (a stream, maybe) is finished or dropped.
        Some(slot) => resp.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            }))
        }),
        None => resp,
    }
}

/// The request's tenant and key, for [`RequestCtx`].
pub fn tenant_of(p: Option<&Principal>) -> (String, Option<Arc<KeyRecord>>) {
    match p {
        Some(p) => (p.tenant(), p.key()),
        None => (String::new(), None),
    }
}

/// Whether a virtual key may use `model` (see [`check_model`]); also filters `/v1/models`.
pub fn key_allows(st: &AppState, rec: &KeyRecord, model: &str) -> bool {
    if rec.models.is_empty() || rec.models.iter().any(|m| m == model) {
        return true;
    }
    st.by_name.get(model).is_some_and(|&dep| {
        rec.models.iter().any(|m| {
            st.group_by_name
                .get(m)
                .is_some_and(|&g| st.groups[g].deployments.contains(&dep))
        })
    })
}

/// Whether the request's key may use `model`: its list is empty (all), names the model, or names a
/// group that contains the requested deployment. Checked before routing, so an unknown model is not
/// revealed to a key that could not use it anyway.
pub fn check_model(st: &AppState, ctx: &RequestCtx, model: &str) -> Result<(), ApiError> {
    if ctx.key.as_ref().is_none_or(|rec| key_allows(st, rec, model)) {
        return Ok(());
    }
    let mut e = forbidden(
        &format!(
            "this API key may not use model `{}`",
            model.chars().take(100).collect::<String>()
        ),
        "model_not_allowed",
    );
    e.param = Some("model".into());
    Err(e)
}

// ---------------------------------------------------------------------------------------------
// `optiroute keys ...`: the same operations as the admin API, directly on the store.

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Config file (TOML); its `[store] database_url` is used.
    #[arg(long, short, env = "OPTIROUTE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Store URL (overrides the config): `sqlite://optiroute.db`, `postgres://...`, `env:NAME`.
    #[arg(long, env = "OPTIROUTE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed once and never stored.
    Create {
        /// A name for the key (an application or team).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// List keys (never their secrets).
    List,
    /// Change a key's limits, models, budget, expiry or metadata.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// Revoke a key (a running gateway refuses it within `[auth] key_cache_ttl_ms`).
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub struct KeyOpts {
    /// Allowed model, group or deployment names (repeat or comma-separate); none = all.
    #[arg(long = "models", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Requests per minute (0 = no limit).
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (0 = no limit).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Concurrent requests (0 = no limit).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Budget in USD per `--budget-period`.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// Remove the budget.
    #[arg(long, conflicts_with = "budget_usd")]
    pub no_budget: bool,
    /// day, month or total.
    #[arg(long)]
    pub budget_period: Option<Period>,
    /// Expiry: a duration from now (`90s`, `30m`, `12h`, `30d`).
    #[arg(long, value_parser = parse_duration_secs)]
    pub expires_in: Option<u64>,
    /// Expiry as Unix seconds.
    #[arg(long, conflicts_with = "expires_in")]
    pub expires_at: Option<i64>,
    /// Remove the expiry.
    #[arg(long, conflicts_with_all = ["expires_in", "expires_at"])]
    pub no_expiry: bool,
    /// Metadata, a JSON object.
    #[arg(long, value_parser = parse_json_object)]
    pub metadata: Option<serde_json::Value>,
}

fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 12h, 30d"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in `{s}`: use s, m, h or d")),
    };
    n.checked_mul(mul).ok_or_else(|| "duration too long".to_owned())
}

fn parse_json_object(s: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("metadata is not JSON: {e}"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err("metadata must be a JSON object".into())
    }
}

impl KeyOpts {
    fn spec(&self, name: Option<String>) -> KeySpec {
        KeySpec {
            name,
            models: self.models.clone(),
            rpm: self.rpm.map(Some),
            tpm: self.tpm.map(Some),
            max_concurrent: self.max_concurrent.map(Some),
            budget_usd: if self.no_budget {
                Some(None)
            } else {
                self.budget_usd.map(Some)
            },
            budget_period: self.budget_period,
            expires_at: if self.no_expiry {
                Some(None)
            } else {
                self.expires_at.map(Some)
            },
            expires_in_secs: self.expires_in,
            metadata: self.metadata.clone(),
        }
    }
}

fn show(rec: &KeyRecord) -> String {
    let limit = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
    format!(
        "{}  {:<20} {}…  models={}  rpm={} tpm={} concurrent={} budget={} expires={}{}",
        rec.id,
        rec.name,
        rec.prefix,
        if rec.models.is_empty() {
            "all".to_owned()
        } else {
            rec.models.join(",")
        },
        limit(rec.rpm),
        limit(rec.tpm),
        limit(rec.max_concurrent),
        rec.budget_nanos.map_or("-".to_owned(), |b| format!(
            "${}/{} (spent ${})",
            b as f64 / 1e9,
            rec.budget_period.as_str(),
            rec.stored_spend(unix_now()) as f64 / 1e9
        )),
        rec.expires_at.map_or("never".to_owned(), |e| e.to_string()),
        if rec.revoked_at.is_some() { "  REVOKED" } else { "" },
    )
}

/// Runs `optiroute keys ...` against the configured store; returns what to print on stdout.
pub async fn run_cli(args: KeysArgs) -> anyhow::Result<String> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::from_env(),
    };
    if let Some(u) = args.database_url {
        cfg.store.database_url = Some(u);
    }
    let store = open_store(&cfg).await?;
    let out = cli_command(&store, args.command, args.json).await;
    store.close().await;
    out
}

async fn cli_command(store: &Store, cmd: KeysCommand, json: bool) -> anyhow::Result<String> {
    let cli_err = |e: StoreError| anyhow::anyhow!("{e}");
    Ok(match cmd {
        KeysCommand::Create { name, opts } => {
            let (rec, secret) = store.create_key(&opts.spec(Some(name))).await.map_err(cli_err)?;
            if json {
                let mut v = rec.to_json(0);
                v["key"] = serde_json::Value::String(secret);
                format!("{v}\n")
            } else {
                format!(
                    "created {}\n\n  {secret}\n\nThis key is shown once; only its hash is stored. Store it now.\n",
                    show(&rec)
                )
            }
        }
        KeysCommand::List => {
            let keys = store.list_keys().await.map_err(cli_err)?;
            if json {
                let data: Vec<_> = keys.iter().map(|k| k.to_json(k.stored_spend(unix_now()))).collect();
                format!("{}\n", serde_json::json!({"object": "list", "data": data}))
            } else if keys.is_empty() {
                "no keys\n".into()
            } else {
                keys.iter().map(|k| format!("{}\n", show(k))).collect()
            }
        }
        KeysCommand::Update { id, name, opts } => {
            let rec = store.update_key(&id, &opts.spec(name)).await.map_err(cli_err)?;
            if json {
                format!("{}\n", rec.to_json(rec.stored_spend(unix_now())))
            } else {
                format!("updated {}\n", show(&rec))
            }
        }
        KeysCommand::Revoke { id } => {
            let rec = store.revoke_key(&id).await.map_err(cli_err)?;
            if json {
                format!("{}\n", rec.to_json(rec.stored_spend(unix_now())))
            } else {
                format!("revoked {}\n", show(&rec))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_lookup_that_raced_an_invalidation_is_not_cached() {
        let cache = KeyCache::new(moka::future::Cache::new(10));
        // Undisturbed: the lookup is cached.
        let g = cache.generation();
        cache.insert_read_at(g, "a".into(), None).await;
        assert!(matches!(cache.get("a").await, Some(None)));
        // A request reads the store, the key is revoked (the cache entry dropped), then the request
        // would cache what it read before the revocation: it must not.
        let g = cache.generation();
        cache.invalidate("b").await;
        cache.insert_read_at(g, "b".into(), None).await;
        assert!(cache.get("b").await.is_none());
        // The same across replicas, where a notification drops everything after a reconnect.
        let g = cache.generation();
        cache.invalidate_all();
        cache.insert_read_at(g, "c".into(), None).await;
        assert!(cache.get("c").await.is_none());
        assert!(cache.get("a").await.is_none());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  sk-1 "));
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("sk-2"));
        assert_eq!(bearer(&h), Some("sk-2"));
    }

    #[test]
    fn durations_and_routes() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        assert!(parse_duration_secs("3w").is_err() && parse_duration_secs("h").is_err());
        use axum::http::Method;
        assert!(classify(&Method::POST, "/v1/chat/completions") == Class::Limited);
        assert!(classify(&Method::GET, "/v1/models") == Class::Api);
        assert!(classify(&Method::GET, "/admin/keys") == Class::Admin);
        assert!(classify(&Method::GET, "/metrics") == Class::Metrics);
        assert!(classify(&Method::GET, "/health") == Class::Open);
        assert!(classify(&Method::GET, "/administrator") == Class::Open);
    }

    #[test]
    fn master_key_resolution() {
        let mut cfg = Config::test_default();
        assert_eq!(master_key(&cfg).unwrap(), None);
        cfg.auth.master_key = Some("short".into());
        assert!(master_key(&cfg).is_err());
        cfg.auth.master_key = Some("sk-long-enough-master".into());
        assert_eq!(master_key(&cfg).unwrap().as_deref(), Some("sk-long-enough-master"));
        cfg.auth.master_key = Some("env:OPTIROUTE_TEST_SURELY_UNSET_VAR".into());
        assert!(master_key(&cfg).is_err());
    }

    #[test]
    fn constant_time_compare() {
        let a = sha("a");
        assert!(constant_time_eq(&a, &sha("a")));
        assert!(!constant_time_eq(&a, &sha("b")));
    }
}
