//! Configuration: one TOML file (every table `deny_unknown_fields`), environment overrides, validation.
//!
//! Without a file the gateway builds a config from the environment: provider keys found there enable
//! real providers; with none, demo mode serves two simulated deployments.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use optiroute_protocol::pricing::{Nanos, Price, known_price};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    pub deployments: Vec<DeploymentConfig>,
    pub models: Vec<ModelGroupConfig>,
    pub routing: RoutingConfig,
    pub resilience: ResilienceConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    /// Where per-key rate limits, concurrency and spend counters live (one replica or many).
    pub limits: LimitsConfig,
    /// Set when the config was made up because nothing was configured.
    #[serde(skip)]
    pub demo: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits.
    pub shutdown_grace_secs: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// Log prompt and completion text (off by default).
    pub log_prompts: bool,
    /// Most messages one request may carry.
    pub max_messages: usize,
    /// Origins allowed by CORS (`["*"]` for any); empty (the default) sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Most client connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Longest a client may pause while sending a request body, seconds (then 408).
    pub client_body_timeout_secs: u64,
    /// Longest a client may take to send a request's headers, seconds; then the connection is closed
    /// (a client trickling headers cannot hold a connection slot).
    pub header_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            body_limit_bytes: 4 * 1024 * 1024,
            shutdown_grace_secs: 30,
            log_format: "text".into(),
            log_prompts: false,
            max_messages: 2048,
            cors_origins: Vec::new(),
            max_connections: 10_000,
            client_body_timeout_secs: 30,
            header_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, TGI Messages API, Groq, Together.
    Openai,
    Anthropic,
    Huggingface,
    Simulated,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra headers sent upstream (values may be `env:NAME` to read a secret from the environment).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// OpenAI-compatible only: ask for usage in streams (`stream_options.include_usage`).
    #[serde(default = "yes")]
    pub stream_usage: bool,
    /// Anthropic only: API version header.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// Hugging Face only: prompt template (`plain` or `chatml`).
    #[serde(default)]
    pub chat_template: Option<String>,
    #[serde(default)]
    pub simulated: SimulatedConfig,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub connect_ms: u64,
    /// Until the response headers (a non-streaming upstream usually sends them with the whole answer).
    pub first_byte_ms: u64,
    /// Longest gap between two stream chunks.
    pub idle_ms: u64,
    /// Whole call, counted from the request: header wait and body read together, streaming or not.
    pub total_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_ms: 5_000,
            first_byte_ms: 60_000,
            idle_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

impl TimeoutConfig {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
}

/// The built-in simulated provider: deterministic text, configurable latency, speed and failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// Time to first token.
    pub latency_ms: u64,
    /// Uniform jitter added to the latency, 0..=jitter.
    pub jitter_ms: u64,
    /// Output speed; 0 means all at once.
    pub tokens_per_s: f64,
    /// Share of requests that fail with a 503, 0.0..=1.0.
    pub failure_rate: f64,
    /// Words in each answer (before `max_tokens` caps it).
    pub answer_words: usize,
    pub seed: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            latency_ms: 50,
            jitter_ms: 0,
            tokens_per_s: 0.0,
            failure_rate: 0.0,
            answer_words: 40,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Unique name; clients may send it as `model` to address this deployment directly.
    pub name: String,
    pub provider: String,
    /// Model name sent upstream.
    pub model: String,
    /// Routing tier (e.g. `local`, `cloud`), used by `auto`.
    #[serde(default)]
    pub tier: Option<String>,
    /// USD per 1M input tokens; omitted = the built-in list price of `model`, or free.
    #[serde(default)]
    pub input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Flat USD per request (local GPUs priced by the call).
    #[serde(default)]
    pub usd_per_request: Option<f64>,
    /// Context window in tokens.
    #[serde(default)]
    pub context_window: Option<u64>,
    #[serde(default = "yes")]
    pub supports_tools: bool,
    #[serde(default = "yes")]
    pub supports_json: bool,
    #[serde(default = "yes")]
    pub supports_vision: bool,
    /// Relative weight for the `weighted` strategy.
    #[serde(default = "one")]
    pub weight: u32,
    /// Anthropic: `max_tokens` when the client sends none.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Requests per minute the gateway sends this deployment at most (a provider quota); at the limit
    /// the deployment is skipped like one with an open breaker.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute sent to this deployment at most.
    #[serde(default)]
    pub tpm: Option<u64>,
}

fn one() -> u32 {
    1
}

impl DeploymentConfig {
    /// The deployment's price: the built-in list price of `model` (free when it has none), with each
    /// price field the config sets replacing that one field only (a built-in cached-input price above
    /// a configured input price is capped at it).
    pub fn price(&self) -> Price {
        let mut p = known_price(&self.model).unwrap_or_default();
        if let Some(v) = self.input_usd_per_mtok {
            p = p.with_input(v);
        }
        if let Some(v) = self.output_usd_per_mtok {
            p = p.with_output(v);
        }
        match self.cached_input_usd_per_mtok {
            Some(c) => p = p.with_cached_input(c),
            // A built-in cached-input price above a configured input price would make cache hits
            // dearer than misses: such a cached price is capped at the input price.
            None => {
                p.cached_input_micros_per_mtok = p.cached_input_micros_per_mtok.map(|c| c.min(p.input_micros_per_mtok));
            }
        }
        if let Some(r) = self.usd_per_request {
            p.per_request = Nanos::from_usd(r);
        }
        p
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Ordered fallback: first healthy deployment serves.
    #[default]
    Priority,
    Weighted,
    LeastLatency,
    LeastBusy,
}

/// A public model name mapped to deployments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    pub name: String,
    pub deployments: Vec<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Cache TTL for this group, overriding `cache.ttl_secs`.
    #[serde(default)]
    pub cache_ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Scorer behind `auto`: `heuristic` (default), `length` (the original 60-character rule) or `learned`.
    pub strategy: String,
    /// Tiers from cheapest to strongest.
    pub tiers: Vec<String>,
    /// Score at or above which a request goes to the strong tier.
    pub threshold: f64,
    /// `length` strategy: prompts longer than this many characters go to the strong tier.
    pub length_threshold_chars: usize,
    /// Deployment whose price is the reference for "saved by routing"; default: first of the strongest tier.
    pub reference: Option<String>,
    /// Per model group bias added to the score before comparing with the threshold.
    pub bias: BTreeMap<String, f64>,
    /// Target share of `auto` requests sent to the strongest tier. When set, the threshold is calibrated
    /// continuously on the scores of recent traffic so that this share holds (instead of `threshold`).
    pub strong_share: Option<f64>,
    /// Recent requests the calibration looks at.
    pub calibration_window: usize,
    /// Cost weight instead of a share (`strategy = "learned"`): what one point of answer quality (one
    /// answer turned from wrong to right) is worth to you, in USD. A request goes to the strongest tier
    /// when the learned scorer's expected quality gain, valued at this, exceeds the strong call's extra
    /// cost for this request (from the deployments' prices, its prompt tokens and its expected output).
    pub usd_per_quality_point: Option<f64>,
    /// Output tokens assumed for that extra cost when the request sets no `max_tokens`.
    pub cost_completion_tokens: u32,
    /// A short follow-up to an answer from the strongest tier stays on that tier.
    pub sticky: bool,
    /// Largest last user turn (approximate tokens) that counts as a short follow-up.
    pub sticky_max_tokens: u64,
    /// Cascade mode (`auto` requests routed to a cheaper tier): answer there first and escalate to the
    /// strongest tier when a check on the answer fails (empty, truncated, refusal, invalid JSON, no final
    /// answer to a math question).
    pub cascade: bool,
    /// Cascade mode covers streamed requests too: the cheap answer is generated in full and checked, and
    /// the answer served (cheap or escalated) is then replayed as a stream. `false`: streams are served
    /// live and never checked.
    pub cascade_streams: bool,
    /// Cascade mode, math-style prompts: a cheap answer that passes the checks is still escalated when the
    /// verifier's probability that it is wrong reaches this (1 = rule checks only).
    pub cascade_max_risk: f64,
    /// Verifier file for cascade mode (from `optiroute router train-verifier`), read at start; default:
    /// the verifier built into the binary.
    pub cascade_verifier: Option<String>,
    /// Log the learned router's feature inputs (hashed n-grams and dense counts, never prompt text)
    /// with each `auto` request in the request log, for `optiroute router export` / `router train`.
    pub log_features: bool,
    /// Weights file for the `learned` scorer (from `optiroute router train`), read at start; default: the
    /// weights built into the binary.
    pub weights: Option<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: "heuristic".into(),
            tiers: vec!["local".into(), "cloud".into()],
            threshold: 0.5,
            length_threshold_chars: 60,
            reference: None,
            bias: BTreeMap::new(),
            strong_share: None,
            calibration_window: 2000,
            usd_per_quality_point: None,
            cost_completion_tokens: 256,
            sticky: true,
            sticky_max_tokens: 64,
            cascade: false,
            cascade_streams: true,
            cascade_max_risk: 0.5,
            cascade_verifier: None,
            log_features: false,
            weights: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Attempts on one deployment (1 = no retry).
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Deadline for all attempts and fallbacks of one request.
    pub deadline_ms: u64,
    pub breaker: BreakerConfig,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            max_attempts: 2,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
            deadline_ms: 120_000,
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive upstream failures that open the breaker.
    pub consecutive_failures: u32,
    /// Error ratio over the window that opens the breaker (with at least `min_requests`).
    pub error_ratio: f64,
    pub window_secs: u64,
    pub min_requests: u32,
    pub cooldown_secs: u64,
    pub max_cooldown_secs: u64,
    /// Probe requests admitted while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 3,
            error_ratio: 0.5,
            window_secs: 30,
            min_requests: 20,
            cooldown_secs: 30,
            max_cooldown_secs: 300,
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// `memory` or `redis`.
    pub backend: String,
    /// Redis URL, or the name of an environment variable holding it as `env:NAME`.
    pub redis_url: Option<String>,
    pub ttl_secs: u64,
    /// Memory backend bound, in bytes of cached responses.
    pub max_bytes: u64,
    /// Cache requests with temperature > 0 too.
    pub cache_nondeterministic: bool,
    /// Redis operation timeout; a slower Redis counts as a miss.
    pub redis_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            backend: "memory".into(),
            redis_url: None,
            ttl_secs: 3600,
            max_bytes: 256 * 1024 * 1024,
            cache_nondeterministic: true,
            redis_timeout_ms: 50,
        }
    }
}

/// Gateway keys. Auth is on when a master key is configured (or `enabled = true`); off otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Force auth on or off; unset: on exactly when a master key is found.
    pub enabled: Option<bool>,
    /// Environment variable holding the master key.
    pub master_key_env: Option<String>,
    /// The master key itself, or `env:NAME` (prefer `master_key_env`: keep secrets out of files).
    pub master_key: Option<String>,
    /// How long a key lookup is cached; bounds how late a revocation made elsewhere takes effect.
    pub key_cache_ttl_ms: u64,
    /// Require the master key for `/metrics` and `/api/stats` too.
    pub protect_metrics: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: None,
            master_key_env: Some("OPTIROUTE_MASTER_KEY".into()),
            master_key: None,
            key_cache_ttl_ms: 5_000,
            protect_metrics: false,
        }
    }
}

/// Where keys and spend are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (default `sqlite://optiroute.db` in the working directory), `postgres://...`,
    /// or `env:NAME` to read the URL from the environment.
    pub database_url: Option<String>,
    /// Write one row per finished request to the store (asynchronously, in batches). Unset: on when a
    /// store is open (auth on, or `database_url` set).
    pub request_log: Option<bool>,
    /// Request-log entries waiting to be written at most; beyond it entries are dropped and counted in
    /// `llm_request_log_dropped_total` (the request path never waits).
    pub request_log_queue: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: None,
            request_log: None,
            request_log_queue: 10_000,
        }
    }
}

/// `[limits]`: per-key limits in memory (one replica) or in Redis (shared by every replica).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `memory` (per replica) or `redis` (global across replicas).
    pub backend: String,
    /// Redis URL, or `env:NAME`.
    pub redis_url: Option<String>,
    /// When Redis fails: `local` (in-memory limits divided by `replicas`), `fail-open` (no limits) or
    /// `fail-closed` (refuse with 503).
    pub on_redis_error: String,
    /// How many replicas share the limits; the `local` fallback gives each replica 1/`replicas` of a limit.
    pub replicas: u64,
    /// Longest a limit check may wait on Redis before the fallback applies.
    pub redis_timeout_ms: u64,
    /// Settled usage waiting to reach Redis at most (retried while Redis is away).
    pub settle_queue: usize,
    /// A concurrency slot not renewed for this long (its replica died holding it) is freed by Redis;
    /// a live replica renews the slots it holds every third of this.
    pub concurrency_lease_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: "memory".into(),
            redis_url: None,
            on_redis_error: "local".into(),
            replicas: 1,
            redis_timeout_ms: 250,
            settle_queue: 100_000,
            concurrency_lease_secs: 60,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
}

impl Config {
    /// Loads a TOML file and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_error_message(&text, &e),
        })?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// The config used when no file is given: providers whose keys are in the environment, or demo mode.
    pub fn from_env() -> Config {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] over any variable lookup (tests pass a map).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Config {
        let mut cfg = Config::default();
        let env = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let mut tiers_local = Vec::new();
        let mut tiers_cloud = Vec::new();
        let mut add = |cfg: &mut Config, p: ProviderConfig, d: DeploymentConfig| {
            if d.tier.as_deref() == Some("local") {
                tiers_local.push(d.name.clone());
            } else {
                tiers_cloud.push(d.name.clone());
            }
            cfg.providers.push(p);
            cfg.deployments.push(d);
        };
        if let Some(url) = env("OPTIROUTE_LOCAL_URL").or_else(|| env("OLLAMA_HOST").map(ollama_url)) {
            let model = env("OPTIROUTE_LOCAL_MODEL").unwrap_or_else(|| "llama3.1:8b".into());
            add(
                &mut cfg,
                ProviderConfig::new("local-gpu", ProviderKind::Openai, Some(url), None),
                DeploymentConfig::new("local", "local-gpu", &model, "local"),
            );
        }
        if env("OPENAI_API_KEY").is_some() {
            add(
                &mut cfg,
                ProviderConfig::new(
                    "openai",
                    ProviderKind::Openai,
                    Some("https://api.openai.com/v1".into()),
                    Some("OPENAI_API_KEY".into()),
                ),
                DeploymentConfig::new("gpt-4o-mini", "openai", "gpt-4o-mini", "cloud"),
            );
        }
        if env("ANTHROPIC_API_KEY").is_some() {
            add(
                &mut cfg,
                ProviderConfig::new(
                    "anthropic",
                    ProviderKind::Anthropic,
                    Some("https://api.anthropic.com".into()),
                    Some("ANTHROPIC_API_KEY".into()),
                ),
                DeploymentConfig::new("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-latest", "cloud"),
            );
        }
        if env("HF_TOKEN").is_some() && env("HF_TGI_URL").is_some() {
            add(
                &mut cfg,
                ProviderConfig::new(
                    "huggingface",
                    ProviderKind::Huggingface,
                    env("HF_TGI_URL"),
                    Some("HF_TOKEN".into()),
                ),
                DeploymentConfig::new("hf", "huggingface", "tgi", "cloud"),
            );
        }
        if cfg.deployments.is_empty() {
            return Config::demo(None);
        }
        cfg
    }

    /// Demo mode: two simulated deployments, `local` (free, fast) and `cloud` (priced like a strong
    /// hosted model, slower). `local_latency_ms` overrides the local model's latency.
    pub fn demo(local_latency_ms: Option<u64>) -> Config {
        let mut local = ProviderConfig::new("sim-local", ProviderKind::Simulated, None, None);
        local.simulated = SimulatedConfig {
            latency_ms: local_latency_ms.unwrap_or(40),
            jitter_ms: 20,
            tokens_per_s: 400.0,
            seed: 1,
            ..SimulatedConfig::default()
        };
        let mut cloud = ProviderConfig::new("sim-cloud", ProviderKind::Simulated, None, None);
        cloud.simulated = SimulatedConfig {
            latency_ms: 250,
            jitter_ms: 100,
            tokens_per_s: 150.0,
            answer_words: 80,
            seed: 2,
            ..SimulatedConfig::default()
        };
        let mut d_local = DeploymentConfig::new("local", "sim-local", "sim-local-8b", "local");
        d_local.input_usd_per_mtok = Some(0.0);
        d_local.output_usd_per_mtok = Some(0.0);
        d_local.usd_per_request = Some(0.00002);
        d_local.context_window = Some(8192);
        d_local.supports_tools = false;
        d_local.supports_vision = false;
        let mut d_cloud = DeploymentConfig::new("cloud", "sim-cloud", "sim-cloud-large", "cloud");
        d_cloud.input_usd_per_mtok = Some(2.50);
        d_cloud.output_usd_per_mtok = Some(10.00);
        d_cloud.context_window = Some(128_000);
        Config {
            providers: vec![local, cloud],
            deployments: vec![d_local, d_cloud],
            demo: true,
            ..Config::default()
        }
    }

    /// A small valid config for tests: demo deployments with no latency.
    pub fn test_default() -> Config {
        let mut cfg = Config::demo(Some(0));
        for p in &mut cfg.providers {
            p.simulated.latency_ms = 0;
            p.simulated.jitter_ms = 0;
            p.simulated.tokens_per_s = 0.0;
        }
        cfg.server.port = 0;
        // Tests turn auth on explicitly, never from the developer's environment.
        cfg.auth.master_key_env = None;
        cfg
    }

    /// Checks cross-references and ranges. `origin` names the file in messages.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        };
        let mut names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            if !names.insert(p.name.as_str()) {
                return Err(bad(
                    format!("providers[{i}].name"),
                    format!("duplicate provider `{}`", p.name),
                ));
            }
            if p.kind != ProviderKind::Simulated {
                match &p.base_url {
                    None => {
                        return Err(bad(
                            format!("providers[{i}].base_url"),
                            format!("required for a `{:?}` provider", p.kind).to_lowercase(),
                        ));
                    }
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        return Err(bad(
                            format!("providers[{i}].base_url"),
                            "must start with http:// or https://".into(),
                        ));
                    }
                    Some(_) => {}
                }
            }
            let t = &p.timeouts;
            for (k, v) in [
                ("connect_ms", t.connect_ms),
                ("first_byte_ms", t.first_byte_ms),
                ("idle_ms", t.idle_ms),
                ("total_ms", t.total_ms),
            ] {
                if v == 0 {
                    return Err(bad(
                        format!("providers[{i}].timeouts.{k}"),
                        "must be at least 1 (a zero timeout fails every call)".into(),
                    ));
                }
            }
            let s = &p.simulated;
            if !(0.0..=1.0).contains(&s.failure_rate) {
                return Err(bad(
                    format!("providers[{i}].simulated.failure_rate"),
                    "must be between 0 and 1".into(),
                ));
            }
            if !s.tokens_per_s.is_finite() || s.tokens_per_s < 0.0 {
                return Err(bad(
                    format!("providers[{i}].simulated.tokens_per_s"),
                    "must be a non-negative number".into(),
                ));
            }
            if let Some(t) = &p.chat_template
                && !matches!(t.as_str(), "plain" | "chatml")
            {
                return Err(bad(
                    format!("providers[{i}].chat_template"),
                    "must be `plain` or `chatml`".into(),
                ));
            }
        }
        if self.deployments.is_empty() {
            return Err(bad("deployments".into(), "at least one deployment is required".into()));
        }
        let mut dep_names = HashSet::new();
        for (i, d) in self.deployments.iter().enumerate() {
            if d.name == "auto" {
                return Err(bad(format!("deployments[{i}].name"), "`auto` is reserved".into()));
            }
            if !dep_names.insert(d.name.as_str()) {
                return Err(bad(
                    format!("deployments[{i}].name"),
                    format!("duplicate deployment `{}`", d.name),
                ));
            }
            if !names.contains(d.provider.as_str()) {
                return Err(bad(
                    format!("deployments[{i}].provider"),
                    format!("no provider named `{}`", d.provider),
                ));
            }
            if let Some(tier) = &d.tier
                && !self.routing.tiers.contains(tier)
            {
                return Err(bad(
                    format!("deployments[{i}].tier"),
                    format!(
                        "deployment `{}` has tier `{tier}`, which is not one of routing.tiers [{}]; `auto` could never route to it",
                        d.name,
                        self.routing.tiers.join(", ")
                    ),
                ));
            }
            for (k, v) in [
                ("input_usd_per_mtok", d.input_usd_per_mtok),
                ("output_usd_per_mtok", d.output_usd_per_mtok),
                ("cached_input_usd_per_mtok", d.cached_input_usd_per_mtok),
                ("usd_per_request", d.usd_per_request),
            ] {
                if let Some(v) = v
                    && (!v.is_finite() || v < 0.0)
                {
                    return Err(bad(
                        format!("deployments[{i}].{k}"),
                        "must be a non-negative number".into(),
                    ));
                }
            }
        }
        let mut group_names = HashSet::new();
        for (i, g) in self.models.iter().enumerate() {
            if g.name == "auto" || dep_names.contains(g.name.as_str()) {
                return Err(bad(
                    format!("models[{i}].name"),
                    format!("`{}` is already a deployment name or reserved", g.name),
                ));
            }
            if !group_names.insert(g.name.as_str()) {
                return Err(bad(
                    format!("models[{i}].name"),
                    format!("duplicate model group `{}`", g.name),
                ));
            }
            if g.deployments.is_empty() {
                return Err(bad(format!("models[{i}].deployments"), "must not be empty".into()));
            }
            for d in &g.deployments {
                if !dep_names.contains(d.as_str()) {
                    return Err(bad(
                        format!("models[{i}].deployments"),
                        format!("no deployment named `{d}`"),
                    ));
                }
            }
        }
        let r = &self.routing;
        if !matches!(r.strategy.as_str(), "heuristic" | "length" | "learned") {
            return Err(bad(
                "routing.strategy".into(),
                "must be `heuristic`, `length` or `learned`".into(),
            ));
        }
        if let Some(share) = r.strong_share
            && !(0.0..=1.0).contains(&share)
        {
            return Err(bad("routing.strong_share".into(), "must be between 0 and 1".into()));
        }
        if let Some(v) = r.usd_per_quality_point {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(
                    "routing.usd_per_quality_point".into(),
                    "must be a positive number of USD".into(),
                ));
            }
            if r.strong_share.is_some() {
                return Err(bad(
                    "routing.usd_per_quality_point".into(),
                    "set either strong_share or usd_per_quality_point, not both".into(),
                ));
            }
            if r.strategy != "learned" {
                return Err(bad(
                    "routing.usd_per_quality_point".into(),
                    "needs strategy = \"learned\", whose score estimates the quality gain".into(),
                ));
            }
        }
        if r.calibration_window == 0 {
            return Err(bad("routing.calibration_window".into(), "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&r.threshold) {
            return Err(bad("routing.threshold".into(), "must be between 0 and 1".into()));
        }
        if !(0.0..=1.0).contains(&r.cascade_max_risk) {
            return Err(bad("routing.cascade_max_risk".into(), "must be between 0 and 1".into()));
        }
        for (key, path, what) in [
            (
                "routing.weights",
                &r.weights,
                "a weights file from `optiroute router train`",
            ),
            (
                "routing.cascade_verifier",
                &r.cascade_verifier,
                "a verifier file from `optiroute router train-verifier`",
            ),
        ] {
            if let Some(path) = path
                && !std::path::Path::new(path).is_file()
            {
                return Err(bad(key.into(), format!("`{path}` is not a readable file ({what})")));
            }
        }
        if let Some(reference) = &r.reference
            && !dep_names.contains(reference.as_str())
        {
            return Err(bad(
                "routing.reference".into(),
                format!("no deployment named `{reference}`"),
            ));
        }
        for group in r.bias.keys() {
            if group != "auto" && !group_names.contains(group.as_str()) {
                return Err(bad(format!("routing.bias.{group}"), "no such model group".into()));
            }
        }
        let res = &self.resilience;
        if res.deadline_ms == 0 {
            return Err(bad(
                "resilience.deadline_ms".into(),
                "must be at least 1 (a zero deadline fails every request)".into(),
            ));
        }
        if res.max_attempts == 0 {
            return Err(bad("resilience.max_attempts".into(), "must be at least 1".into()));
        }
        if res.breaker.consecutive_failures == 0 {
            return Err(bad(
                "resilience.breaker.consecutive_failures".into(),
                "must be at least 1".into(),
            ));
        }
        if res.breaker.half_open_probes == 0 {
            return Err(bad(
                "resilience.breaker.half_open_probes".into(),
                "must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&res.breaker.error_ratio) || res.breaker.error_ratio == 0.0 {
            return Err(bad("resilience.breaker.error_ratio".into(), "must be in (0, 1]".into()));
        }
        if !matches!(self.cache.backend.as_str(), "memory" | "redis") {
            return Err(bad("cache.backend".into(), "must be `memory` or `redis`".into()));
        }
        if self.cache.redis_timeout_ms == 0 {
            return Err(bad(
                "cache.redis_timeout_ms".into(),
                "must be at least 1 (a zero timeout makes every lookup a miss)".into(),
            ));
        }
        if self.cache.backend == "redis" && self.cache.redis_url.is_none() {
            return Err(bad(
                "cache.redis_url".into(),
                "required when cache.backend = \"redis\"".into(),
            ));
        }
        if !matches!(self.server.log_format.as_str(), "text" | "json") {
            return Err(bad("server.log_format".into(), "must be `text` or `json`".into()));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(bad("server.body_limit_bytes".into(), "must be at least 1024".into()));
        }
        if self.server.max_connections == 0 {
            return Err(bad("server.max_connections".into(), "must be at least 1".into()));
        }
        if self.server.header_timeout_secs == 0 {
            return Err(bad("server.header_timeout_secs".into(), "must be at least 1".into()));
        }
        if self.server.client_body_timeout_secs == 0 {
            return Err(bad(
                "server.client_body_timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        for (i, d) in self.deployments.iter().enumerate() {
            if d.rpm == Some(0) || d.tpm == Some(0) {
                return Err(bad(
                    format!("deployments[{i}].rpm/tpm"),
                    "must be at least 1 (omit it for no limit)".into(),
                ));
            }
        }
        if self.auth.key_cache_ttl_ms > 3_600_000 {
            return Err(bad(
                "auth.key_cache_ttl_ms".into(),
                "must be at most 3600000 (one hour)".into(),
            ));
        }
        let l = &self.limits;
        if !matches!(l.backend.as_str(), "memory" | "redis") {
            return Err(bad("limits.backend".into(), "must be `memory` or `redis`".into()));
        }
        if l.backend == "redis" && l.redis_url.is_none() {
            return Err(bad(
                "limits.redis_url".into(),
                "required when limits.backend = \"redis\"".into(),
            ));
        }
        if !matches!(l.on_redis_error.as_str(), "local" | "fail-open" | "fail-closed") {
            return Err(bad(
                "limits.on_redis_error".into(),
                "must be `local`, `fail-open` or `fail-closed`".into(),
            ));
        }
        if l.replicas == 0 || l.redis_timeout_ms == 0 || l.settle_queue == 0 || l.concurrency_lease_secs == 0 {
            return Err(bad(
                "limits".into(),
                "replicas, redis_timeout_ms, settle_queue and concurrency_lease_secs must be at least 1".into(),
            ));
        }
        if self.store.request_log_queue == 0 {
            return Err(bad("store.request_log_queue".into(), "must be at least 1".into()));
        }
        if let Some(u) = &self.store.database_url {
            let ok = ["postgres://", "postgresql://", "sqlite:", "env:"]
                .iter()
                .any(|p| u.starts_with(p));
            if !ok {
                return Err(bad(
                    "store.database_url".into(),
                    "must start with postgres://, postgresql://, sqlite: or env:".into(),
                ));
            }
        }
        Ok(())
    }

    /// The resolved config as TOML, with every secret masked. Provider keys are referenced by env var
    /// name and never stored here, but header values and URLs may carry credentials.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        for p in &mut c.providers {
            for v in p.headers.values_mut() {
                if !v.starts_with("env:") {
                    *v = "****".into();
                }
            }
            if let Some(u) = &p.base_url {
                p.base_url = Some(mask_url_credentials(u));
            }
        }
        if let Some(u) = &c.cache.redis_url {
            c.cache.redis_url = Some(mask_url_credentials(u));
        }
        if let Some(k) = &c.auth.master_key
            && !k.starts_with("env:")
        {
            c.auth.master_key = Some("****".into());
        }
        if let Some(u) = &c.store.database_url {
            c.store.database_url = Some(mask_url_credentials(u));
        }
        if let Some(u) = &c.limits.redis_url {
            c.limits.redis_url = Some(mask_url_credentials(u));
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Deployments of a tier, in config order.
    pub fn tier_deployments(&self, tier: &str) -> Vec<&DeploymentConfig> {
        self.deployments
            .iter()
            .filter(|d| d.tier.as_deref() == Some(tier))
            .collect()
    }
}

/// Loads the `.env` file of the working directory or its nearest ancestor into the environment
/// (variables already set win). No `.env` is fine (`Ok(None)`); any other problem (unreadable, a line
/// that does not parse) is an error naming the file and the line, never the line's text (it may
/// hold a key). The file is checked whole before anything is loaded, so a bad line never leaves the
/// keys after it silently unset.
pub fn load_dotenv() -> Result<Option<PathBuf>, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot look for .env: {e}"))?;
    let Some(path) = find_dotenv(&cwd)? else {
        return Ok(None);
    };
    let text = read_dotenv(&path)?;
    check_dotenv(&path, &text)?;
    // Checked above: this parse of the same bytes cannot fail.
    dotenvy::from_read(&text[..]).map_err(|_| format!("cannot load {}", path.display()))?;
    Ok(Some(path))
}

/// A dotenv file's bytes, without a UTF-8 BOM (as dotenvy's own loader skips it).
fn read_dotenv(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// `.env` in `dir` or its nearest ancestor (what `dotenvy::dotenv` loads).
fn find_dotenv(dir: &Path) -> Result<Option<PathBuf>, String> {
    for d in dir.ancestors() {
        let candidate = d.join(".env");
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => return Ok(Some(candidate)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", candidate.display())),
        }
    }
    Ok(None)
}

/// Parses a dotenv file's bytes whole without loading them; an error names the file and the (first)
/// line of the entry that failed.
fn check_dotenv(path: &Path, text: &[u8]) -> Result<(), String> {
    let mut reader = LineCountingReader {
        inner: text,
        lines: 0,
        mid_line: false,
    };
    match dotenvy::from_read_iter(&mut reader).find_map(Result::err) {
        Some(e) => Err(dotenv_error(path, &e, reader.lines)),
        None => Ok(()),
    }
}

/// A dotenv error without the offending text (dotenvy's `Display` quotes the line). `lines_read` is
/// how many lines the parser had read when it failed: the last line of the failing entry.
fn dotenv_error(path: &Path, e: &dotenvy::Error, lines_read: usize) -> String {
    match e {
        dotenvy::Error::LineParse(text, _) => {
            // An entry spans several lines when a quoted value does: name its first line.
            let extra = text.trim_end_matches(['\n', '\r']).matches('\n').count();
            format!(
                "{}: line {}: not a valid `KEY=value` entry (a missing `=`, an unquoted space or an unclosed quote?); nothing from the file was loaded",
                path.display(),
                lines_read.saturating_sub(extra).max(1)
            )
        }
        dotenvy::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        _ => format!("cannot load {}", path.display()),
    }
}

/// Hands the dotenv parser at most one line per `read`, so the lines it has consumed are known when it
/// fails (its own buffer never runs ahead of the line it is parsing).
struct LineCountingReader<R> {
    inner: R,
    /// Lines handed out, counting a final line without a newline.
    lines: usize,
    mid_line: bool,
}

impl<R: std::io::BufRead> std::io::Read for LineCountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.inner.fill_buf()?;
        if available.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        let line_end = available
            .iter()
            .position(|&b| b == b'\n')
            .map_or(available.len(), |i| i + 1);
        let n = line_end.min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        if !self.mid_line {
            self.lines += 1;
        }
        self.mid_line = available[n - 1] != b'\n';
        self.inner.consume(n);
        Ok(n)
    }
}

/// A TOML error as `line L, column C: message`, without the source line that toml's `Display`
/// quotes (it may hold a secret). A string value serde quotes in its message (`invalid type: string
/// "..."`) is elided for the same reason.
fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    // Without the input, `Display` is the message plus the key path, never source text.
    let mut bare = e.clone();
    bare.set_input(None);
    let message = elide_string_values(&bare.to_string())
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Replaces each `string "..."` (serde's rendering of an unexpected string value) with `a string`.
fn elide_string_values(s: &str) -> String {
    const PAT: &str = "string \"";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(PAT) {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let value = &rest[i + PAT.len()..];
        // The value is Debug-formatted: it ends at the first quote not escaped by a backslash.
        let mut escaped = false;
        let mut end = value.len();
        for (j, c) in value.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Masks the credentials a URL may carry: userinfo (`user:password@` becomes `****@`) and the values
/// of query parameters that name a secret (`password`, `api-key`, `token`, `access_token`, `key`...).
pub fn mask_url_credentials(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut tail = url;
    if let Some(scheme_end) = url.find("://") {
        // The userinfo ends at the last `@` of the authority. Taking the later of "before the first
        // `/`" and "before the first `?` or `#`" also masks a password holding an unescaped `/`, `?`
        // or `#` (over-masking a `@` in a path is harmless).
        let rest = &url[scheme_end + 3..];
        let before = |stops: &[char]| &rest[..rest.find(stops).unwrap_or(rest.len())];
        let at = [before(&['/']), before(&['?', '#'])]
            .into_iter()
            .filter_map(|s| s.rfind('@'))
            .max();
        if let Some(at) = at {
            out.push_str(&url[..scheme_end]);
            out.push_str("://****@");
            tail = &rest[at + 1..];
        }
    }
    match tail.split_once('?') {
        None => out.push_str(tail),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            // Everything after `?` counts as the query (a fragment in a base URL means nothing, and
            // a secret value holding `#` stays masked whole).
            for (i, param) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => {
                        out.push_str(k);
                        out.push_str("=****");
                    }
                    _ => out.push_str(param),
                }
            }
        }
    }
    out
}

/// Whether a query parameter's name says its value is a credential.
fn is_secret_param(name: &str) -> bool {
    let n = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase()
        .replace(['-', '.'], "_");
    matches!(
        n.as_str(),
        "key" | "pass" | "pwd" | "auth" | "sig" | "signature" | "code" | "credential" | "credentials"
    ) || [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "auth_key",
        "access_key",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_key")
}

/// Ollama's default port, used when `OLLAMA_HOST` names a host without one (as Ollama itself does).
const OLLAMA_PORT: u16 = 11434;

/// The OpenAI-compatible base URL for an `OLLAMA_HOST` value: `host`, `host:port`, `[v6]:port` or a
/// URL. Only an `http://` or `https://` prefix is a scheme (a host named `httpbox` is a host); without
/// one the port defaults to 11434, with one the URL is taken as written.
fn ollama_url(host: String) -> String {
    let host = host.trim();
    let lower = host.to_ascii_lowercase();
    let base = if lower.starts_with("http://") || lower.starts_with("https://") {
        host.trim_end_matches('/').to_owned()
    } else {
        let (hostport, path) = match host.find('/') {
            Some(i) => host.split_at(i),
            None => (host, ""),
        };
        let hostport = if let Some(v6) = hostport.strip_prefix('[') {
            // `[addr]` or `[addr]:port`.
            match v6.split_once(']') {
                Some((addr, port)) if port.starts_with(':') && port.len() > 1 => format!("[{addr}]{port}"),
                Some((addr, _)) => format!("[{addr}]:{OLLAMA_PORT}"),
                None => format!("[{v6}]:{OLLAMA_PORT}"),
            }
        } else if hostport.matches(':').count() > 1 {
            // A bare IPv6 address: it cannot carry a port without brackets.
            format!("[{hostport}]:{OLLAMA_PORT}")
        } else {
            match hostport.split_once(':') {
                Some((h, port)) => {
                    let h = if h.is_empty() { "127.0.0.1" } else { h };
                    let port = if port.is_empty() {
                        OLLAMA_PORT.to_string()
                    } else {
                        port.to_owned()
                    };
                    format!("{h}:{port}")
                }
                None if hostport.is_empty() => format!("127.0.0.1:{OLLAMA_PORT}"),
                None => format!("{hostport}:{OLLAMA_PORT}"),
            }
        };
        format!("http://{hostport}{}", path.trim_end_matches('/'))
    };
    format!("{base}/v1")
}

impl ProviderConfig {
    pub fn new(name: &str, kind: ProviderKind, base_url: Option<String>, api_key_env: Option<String>) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url,
            api_key_env,
            headers: BTreeMap::new(),
            timeouts: TimeoutConfig::default(),
            stream_usage: true,
            anthropic_version: None,
            chat_template: None,
            simulated: SimulatedConfig::default(),
        }
    }
}

impl DeploymentConfig {
    pub fn new(name: &str, provider: &str, model: &str, tier: &str) -> Self {
        DeploymentConfig {
            name: name.into(),
            provider: provider.into(),
            model: model.into(),
            tier: Some(tier.into()),
            input_usd_per_mtok: None,
            output_usd_per_mtok: None,
            cached_input_usd_per_mtok: None,
            usd_per_request: None,
            context_window: None,
            supports_tools: true,
            supports_json: true,
            supports_vision: true,
            weight: 1,
            default_max_tokens: None,
            rpm: None,
            tpm: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn demo_and_test_default_are_valid() {
        Config::demo(None).validate("demo").unwrap();
        Config::test_default().validate("test").unwrap();
    }

    #[test]
    fn environment_keys_enable_providers_instead_of_demo_mode() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert!(Config::from_vars(vars(&[])).demo);
        assert!(
            Config::from_vars(vars(&[("OPENAI_API_KEY", "  ")])).demo,
            "blank keys do not count"
        );
        let c = Config::from_vars(vars(&[("OPENAI_API_KEY", "sk-x"), ("OLLAMA_HOST", "127.0.0.1:11434")]));
        assert!(!c.demo);
        c.validate("env").unwrap();
        let names: Vec<&str> = c.deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["local", "gpt-4o-mini"]);
        assert_eq!(c.providers[0].base_url.as_deref(), Some("http://127.0.0.1:11434/v1"));
        assert_eq!(c.providers[1].api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert!(!c.to_masked_toml().contains("sk-x"));
        let a = Config::from_vars(vars(&[("ANTHROPIC_API_KEY", "k")]));
        assert_eq!(a.providers[0].kind, ProviderKind::Anthropic);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = toml::from_str::<Config>("[server]\nprot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config::test_default();
        c.deployments[0].provider = "nope".into();
        let e = c.validate("x.toml").unwrap_err().to_string();
        assert!(
            e.contains("x.toml") && e.contains("deployments[0].provider") && e.contains("nope"),
            "{e}"
        );
        let mut c = Config::test_default();
        c.routing.weights = Some("/nonexistent/weights.json".into());
        let e = c.validate("x.toml").unwrap_err().to_string();
        assert!(
            e.contains("routing.weights") && e.contains("/nonexistent/weights.json"),
            "{e}"
        );
    }

    #[test]
    fn limits_config_is_validated() {
        let mut c = Config::test_default();
        c.limits.backend = "redis".into();
        let e = c.validate("x").unwrap_err().to_string();
        assert!(e.contains("limits.redis_url"), "{e}");
        c.limits.redis_url = Some("env:REDIS_URL".into());
        c.validate("x").unwrap();
        c.limits.on_redis_error = "maybe".into();
        assert!(c.validate("x").unwrap_err().to_string().contains("on_redis_error"));
        c.limits.on_redis_error = "fail-closed".into();
        c.limits.replicas = 0;
        assert!(c.validate("x").is_err());
        let parsed: Config = toml::from_str(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://h\"\nreplicas = 3\n[store]\nrequest_log = false\n",
        )
        .unwrap();
        assert_eq!(
            (parsed.limits.replicas, parsed.limits.on_redis_error.as_str()),
            (3, "local")
        );
        assert_eq!(parsed.store.request_log, Some(false));
    }

    #[test]
    fn masking_hides_credentials() {
        assert_eq!(
            mask_url_credentials("redis://u:secret@h:6379/0"),
            "redis://****@h:6379/0"
        );
        assert_eq!(mask_url_credentials("http://h/v1"), "http://h/v1");
        let mut c = Config::test_default();
        c.providers[0].headers.insert("x-key".into(), "sk-secret".into());
        c.cache.redis_url = Some("redis://:pw123@localhost".into());
        c.auth.master_key = Some("sk-master-0123456789".into());
        c.store.database_url = Some("postgres://u:dbpw42@h/db".into());
        c.limits.redis_url = Some("redis://:limitpw7@h:6379".into());
        let out = c.to_masked_toml();
        assert!(!out.contains("limitpw7"), "{out}");
        assert!(!out.contains("sk-secret") && !out.contains("pw123"), "{out}");
        assert!(
            !out.contains("sk-master-0123456789") && !out.contains("dbpw42"),
            "{out}"
        );
    }

    #[test]
    fn a_malformed_dotenv_line_is_an_error_naming_the_file_and_line_not_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        let check = |text: &str| {
            std::fs::write(&path, text).unwrap();
            check_dotenv(&path, &read_dotenv(&path)?)
        };
        assert_eq!(
            check("# keys\nOPENAI_API_KEY=sk-ok\n\nexport B=\"two\nlines\"\n"),
            Ok(())
        );
        for (text, line) in [
            ("OPENAI_API_KEY=sk-ok\nsk-secret-123 oops\nANTHROPIC_API_KEY=x\n", 2),
            ("# c\nA=1\nB=sk-secret-123 trailing\n", 3),
            // A BOM does not shift the count; an unclosed quote names the line it opened on.
            ("\u{feff}A=1\nB=\"sk-secret-123\nC=2\n", 2),
            ("A=1\nB='sk-secret-123\n", 2),
            ("A=1\nB=\"a\nsk-secret-123\" x\nC=3", 2),
            ("A=1\n=sk-secret-123", 2),
        ] {
            let e = check(text).unwrap_err();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(&format!("line {line}:")),
                "{text:?}: {e}"
            );
            assert!(!e.contains("sk-secret-123"), "{e}");
        }
        // Found from below; a directory named .env on the way is not a file.
        assert_eq!(find_dotenv(dir.path()).unwrap().as_deref(), Some(path.as_path()));
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(sub.join(".env")).unwrap();
        assert_eq!(find_dotenv(&sub).unwrap().as_deref(), Some(path.as_path()));
    }

    #[test]
    fn toml_parse_errors_give_line_and_column_without_the_source_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (text, at) in [
            ("[auth]\nmaster_key = \"sk-leak-0123456789\n", "line 2, column"),
            (
                "[server]\nport = 1\n\n[auth]\nmaster_key = sk-leak-0123456789\n",
                "line 5, column 14",
            ),
            ("[server]\nport = \"sk-leak-0123456789\"\n", "line 2, column 8"),
            (
                "[auth]\nmaster_key = \"ok\"\nprotect_metrics = \"sk-leak-0123456789 \\\" x\"\n",
                "line 3",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains(at), "{e}");
            assert!(!e.contains("sk-leak") && !e.contains("0123456789"), "{e}");
        }
        // Messages keep what helps: the unknown key's name.
        std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("prot") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn masking_hides_credentials_in_query_parameters() {
        for (url, masked) in [
            ("https://h/v1?api-key=s3cret1", "https://h/v1?api-key=****"),
            (
                "redis://h:6379/0?password=s3cret1&db=2",
                "redis://h:6379/0?password=****&db=2",
            ),
            (
                "postgres://h/db?sslmode=require&PassWord=s3cret1",
                "postgres://h/db?sslmode=require&PassWord=****",
            ),
            ("https://h/v1?x=1&api_key=s3cret1", "https://h/v1?x=1&api_key=****"),
            ("https://h/v1?key=s3cret1", "https://h/v1?key=****"),
            ("https://h/v1?token=s3cret1", "https://h/v1?token=****"),
            ("https://h/v1?access_token=s3cret1#f", "https://h/v1?access_token=****"),
            (
                "https://h/v1?x-goog-api-key=s3cret1",
                "https://h/v1?x-goog-api-key=****",
            ),
            ("https://h/v1?client_secret=s3cret1", "https://h/v1?client_secret=****"),
            ("https://h/v1?api%2Dkey=s3cret1", "https://h/v1?api%2Dkey=****"),
            ("sqlite://o.db?auth_token=s3cret1", "sqlite://o.db?auth_token=****"),
            // Userinfo and query together; a password holding `/` or `?`.
            (
                "redis://u:s3cret1@h:6379/0?token=s3cret1",
                "redis://****@h:6379/0?token=****",
            ),
            ("redis://:pa/s3cret1@h", "redis://****@h"),
            ("redis://:pa?s3cret1@h/0", "redis://****@h/0"),
            // Nothing secret: unchanged.
            ("http://h/v1?model=x&email=a@b", "http://h/v1?model=x&email=a@b"),
            ("env:REDIS_URL", "env:REDIS_URL"),
        ] {
            assert_eq!(mask_url_credentials(url), masked, "{url}");
        }
        let mut c = Config::test_default();
        let mut p = ProviderConfig::new("az", ProviderKind::Openai, None, None);
        p.base_url = Some("https://az.example/openai?api-version=1&api-key=azkey77".into());
        c.providers.push(p);
        c.cache.redis_url = Some("redis://h/0?password=cachepw7".into());
        c.limits.redis_url = Some("rediss://user:limpw7@h:6380".into());
        c.store.database_url = Some("postgres://h/db?user=u&password=dbpw7".into());
        let out = c.to_masked_toml();
        for secret in ["azkey77", "cachepw7", "limpw7", "dbpw7"] {
            assert!(!out.contains(secret), "{secret} in\n{out}");
        }
        assert!(out.contains("api-version=1&api-key=****"), "{out}");
    }

    #[test]
    fn zero_timeouts_and_deadlines_are_rejected() {
        type Edit = fn(&mut Config);
        let cases: [(&str, Edit); 6] = [
            ("providers[0].timeouts.connect_ms", |c| {
                c.providers[0].timeouts.connect_ms = 0
            }),
            ("providers[1].timeouts.first_byte_ms", |c| {
                c.providers[1].timeouts.first_byte_ms = 0
            }),
            ("providers[0].timeouts.idle_ms", |c| c.providers[0].timeouts.idle_ms = 0),
            ("providers[0].timeouts.total_ms", |c| {
                c.providers[0].timeouts.total_ms = 0
            }),
            ("resilience.deadline_ms", |c| c.resilience.deadline_ms = 0),
            ("cache.redis_timeout_ms", |c| c.cache.redis_timeout_ms = 0),
        ];
        for (key, edit) in cases {
            let mut c = Config::test_default();
            edit(&mut c);
            let e = c.validate("x.toml").unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{key}: {e}");
        }
        let mut c = Config::test_default();
        c.providers[0].timeouts.total_ms = 1;
        c.resilience.deadline_ms = 1;
        c.validate("x.toml").unwrap();
    }

    #[test]
    fn a_deployment_tier_must_be_one_of_the_routing_tiers() {
        let mut c = Config::test_default();
        c.deployments[1].tier = Some("clowd".into());
        let e = c.validate("x.toml").unwrap_err().to_string();
        assert!(
            e.contains("deployments[1].tier") && e.contains("`cloud`") && e.contains("`clowd`"),
            "{e}"
        );
        // Checked against the effective list: the default when `[routing] tiers` is not set...
        let parsed: Config = toml::from_str(
            "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n[[deployments]]\nname = \"d\"\nprovider = \"p\"\nmodel = \"m\"\ntier = \"gpu\"\n",
        )
        .unwrap();
        let e = parsed.validate("x.toml").unwrap_err().to_string();
        assert!(e.contains("`gpu`") && e.contains("local, cloud"), "{e}");
        // ...or the configured one; a deployment without a tier is only addressed by name.
        let mut c = Config::test_default();
        c.routing.tiers = vec!["small".into(), "large".into()];
        c.deployments[0].tier = Some("small".into());
        c.deployments[1].tier = None;
        c.validate("x.toml").unwrap();
        c.deployments[1].tier = Some("cloud".into());
        assert!(c.validate("x.toml").unwrap_err().to_string().contains("small, large"));
    }

    #[test]
    fn ollama_host_without_port_uses_11434_and_only_http_prefixes_are_schemes() {
        for (host, url) in [
            ("myhost", "http://myhost:11434/v1"),
            ("myhost:8080", "http://myhost:8080/v1"),
            ("httpbox:1234", "http://httpbox:1234/v1"),
            ("httpbox", "http://httpbox:11434/v1"),
            ("https-gpu.lan", "http://https-gpu.lan:11434/v1"),
            ("127.0.0.1", "http://127.0.0.1:11434/v1"),
            ("0.0.0.0:11434", "http://0.0.0.0:11434/v1"),
            (":5000", "http://127.0.0.1:5000/v1"),
            ("::1", "http://[::1]:11434/v1"),
            ("[::1]", "http://[::1]:11434/v1"),
            ("[::1]:9000", "http://[::1]:9000/v1"),
            ("myhost/ollama/", "http://myhost:11434/ollama/v1"),
            ("http://myhost:1234", "http://myhost:1234/v1"),
            ("https://ollama.example/", "https://ollama.example/v1"),
            ("HTTP://myhost:1234", "HTTP://myhost:1234/v1"),
        ] {
            assert_eq!(ollama_url(host.into()), url, "{host}");
        }
        let c = Config::from_vars(|k| (k == "OLLAMA_HOST").then(|| "gpubox".to_owned()));
        assert_eq!(c.providers[0].base_url.as_deref(), Some("http://gpubox:11434/v1"));
    }

    #[test]
    fn one_configured_price_field_keeps_the_built_in_others() {
        let micros = |usd: f64| (usd * 1e6).round() as u64;
        let list = known_price("gpt-4o-mini").unwrap();
        assert_eq!(list.output_micros_per_mtok, micros(0.60));
        let mut d = DeploymentConfig::new("d", "p", "gpt-4o-mini", "cloud");
        assert_eq!(d.price(), list);
        d.input_usd_per_mtok = Some(0.20);
        let p = d.price();
        assert_eq!(p.input_micros_per_mtok, micros(0.20));
        assert_eq!(p.output_micros_per_mtok, micros(0.60), "output kept from the list");
        assert_eq!(p.cached_input_micros_per_mtok, Some(micros(0.075)));
        d.input_usd_per_mtok = None;
        d.output_usd_per_mtok = Some(1.0);
        let p = d.price();
        assert_eq!(
            (p.input_micros_per_mtok, p.output_micros_per_mtok),
            (micros(0.15), micros(1.0))
        );
        d.cached_input_usd_per_mtok = Some(0.01);
        d.usd_per_request = Some(0.5);
        let p = d.price();
        assert_eq!(p.input_micros_per_mtok, micros(0.15));
        assert_eq!(p.cached_input_micros_per_mtok, Some(micros(0.01)));
        assert_eq!(p.per_request, Nanos::from_usd(0.5));
        // A configured input price below the list's cached price caps the cached price.
        let mut d = DeploymentConfig::new("d", "p", "gpt-4o-mini", "cloud");
        d.input_usd_per_mtok = Some(0.0);
        assert_eq!(d.price().cached_input_micros_per_mtok, Some(0));
        // A model without a list price: unset fields are free.
        let mut d = DeploymentConfig::new("d", "p", "my-finetune", "cloud");
        d.output_usd_per_mtok = Some(2.0);
        let p = d.price();
        assert_eq!((p.input_micros_per_mtok, p.output_micros_per_mtok), (0, micros(2.0)));
    }
}
