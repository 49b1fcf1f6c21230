//! Shared state: deployments with their providers and breakers, routing, cache, ledger, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use optiroute_protocol::pricing::Price;

use crate::cache::Cache;
use crate::config::{Config, Strategy};
use crate::ledger::Ledger;
use crate::providers::Provider;
use crate::resilience::breaker::{Breaker, Transition};
use crate::routing::Router;
use crate::telemetry::{BreakerTransition, DeploymentLabel, Metrics, ProviderModel};

pub struct Deployment {
    pub idx: usize,
    pub name: String,
    pub provider_name: String,
    pub provider: Arc<Provider>,
    /// Model name sent upstream.
    pub model: String,
    pub tier: Option<String>,
    pub price: Price,
    pub context_window: Option<u64>,
    pub supports_tools: bool,
    pub supports_json: bool,
    pub supports_vision: bool,
    pub weight: u32,
    pub default_max_tokens: u32,
    pub breaker: Breaker,
    pub in_flight: AtomicU64,
    /// Exponentially weighted moving average of successful call latency, microseconds (0 = unknown).
    pub ewma_latency_us: AtomicU64,
    /// Metric labels, built once.
    pub labels: ProviderModel,
    pub dep_label: DeploymentLabel,
    /// This deployment's hot metric series.
    pub m: crate::telemetry::DeploymentMetrics,
}

impl Deployment {
    pub fn observe_latency(&self, us: u64) {
        let old = self.ewma_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 4 + us) / 5 };
        self.ewma_latency_us.store(new, Ordering::Relaxed);
    }
}

pub struct Group {
    pub name: String,
    pub deployments: Vec<usize>,
    pub strategy: Strategy,
    pub cache_ttl_secs: Option<u64>,
}

pub struct AppState {
    pub cfg: Config,
    pub deployments: Vec<Deployment>,
    pub by_name: HashMap<String, usize>,
    pub groups: Vec<Group>,
    pub group_by_name: HashMap<String, usize>,
    pub router: Router,
    pub cache: Cache,
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub coalescer: crate::engine::Coalescer,
    /// Gateway keys (master and virtual) and the key store; off in demo mode.
    pub auth: crate::auth::Auth,
    /// Per-key and per-deployment rate limits, concurrency and budgets.
    pub limits: Arc<crate::limits::Limits>,
    /// Key changes published to and received from the other replicas (`[limits] backend = "redis"`).
    pub key_events: Option<crate::key_events::KeyEvents>,
    /// One row per finished request, written to the store in the background (or disabled).
    pub request_log: Arc<crate::request_log::RequestLog>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub async fn new(cfg: Config) -> anyhow::Result<SharedState> {
        cfg.validate("config")?;
        let mut metrics = Metrics::new();
        let dep_tiers = cfg.deployments.iter().filter_map(|d| d.tier.as_deref());
        metrics.resolve_routing(cfg.routing.tiers.iter().map(String::as_str).chain(dep_tiers));
        let mut providers = HashMap::new();
        for p in &cfg.providers {
            let built = Provider::build(p).map_err(anyhow::Error::msg)?;
            providers.insert(p.name.clone(), Arc::new(built));
        }
        let mut deployments = Vec::new();
        let mut by_name = HashMap::new();
        for (idx, d) in cfg.deployments.iter().enumerate() {
            let provider = providers
                .get(&d.provider)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("deployment `{}`: no provider `{}`", d.name, d.provider))?;
            let dep = Deployment {
                idx,
                name: d.name.clone(),
                provider_name: d.provider.clone(),
                provider,
                model: d.model.clone(),
                tier: d.tier.clone(),
                price: d.price(),
                context_window: d.context_window,
                supports_tools: d.supports_tools,
                supports_json: d.supports_json,
                supports_vision: d.supports_vision,
                weight: d.weight.max(1),
                default_max_tokens: d.default_max_tokens.unwrap_or(4096),
                breaker: Breaker::new(cfg.resilience.breaker.clone(), idx as u64 + 1),
                in_flight: AtomicU64::new(0),
                ewma_latency_us: AtomicU64::new(0),
                m: metrics.for_deployment(&ProviderModel {
                    provider: d.provider.clone(),
                    model: d.model.clone(),
                }),
                labels: ProviderModel {
                    provider: d.provider.clone(),
                    model: d.model.clone(),
                },
                dep_label: DeploymentLabel {
                    deployment: d.name.clone(),
                },
            };
            metrics.breaker_state.get_or_create(&dep.dep_label).set(0);
            by_name.insert(d.name.clone(), idx);
            deployments.push(dep);
        }
        let mut groups = Vec::new();
        let mut group_by_name = HashMap::new();
        for g in &cfg.models {
            group_by_name.insert(g.name.clone(), groups.len());
            groups.push(Group {
                name: g.name.clone(),
                deployments: g.deployments.iter().filter_map(|n| by_name.get(n).copied()).collect(),
                strategy: g.strategy,
                cache_ttl_secs: g.cache_ttl_secs,
            });
        }
        let router = Router::new(&cfg, &deployments)?;
        let cache = Cache::new(&cfg.cache).await?;
        let ledger = Ledger::new(&cfg, &deployments);
        let auth = crate::auth::Auth::from_config(&cfg).await?;
        let limits = crate::limits::Limits::new(
            cfg.deployments.iter().map(|d| (d.name.clone(), d.rpm, d.tpm)).collect(),
            auth.store.clone(),
        );
        if cfg.limits.backend == "redis" {
            limits.set_shared(crate::limits_redis::RedisLimits::start(
                &cfg.limits,
                metrics.limits_redis_errors.clone(),
            )?);
        }
        let key_events = match (&auth.store, cfg.limits.backend.as_str()) {
            (Some(_), "redis") => Some(crate::key_events::KeyEvents::start(
                &crate::limits_redis::redis_url(&cfg.limits)?,
                std::time::Duration::from_millis(cfg.limits.redis_timeout_ms),
                auth.cache(),
                metrics.limits_redis_errors.clone(),
            )?),
            _ => None,
        };
        let log_wanted = cfg
            .store
            .request_log
            .unwrap_or(auth.store.is_some() || cfg.store.database_url.is_some());
        let request_log = match (log_wanted, &auth.store) {
            (false, _) => crate::request_log::RequestLog::disabled(metrics.request_log_dropped.clone()),
            (true, Some(store)) => crate::request_log::RequestLog::start(
                store.clone(),
                cfg.store.request_log_queue,
                metrics.request_log_dropped.clone(),
            ),
            (true, None) => crate::request_log::RequestLog::start(
                crate::auth::open_store(&cfg).await?,
                cfg.store.request_log_queue,
                metrics.request_log_dropped.clone(),
            ),
        };
        Ok(Arc::new(AppState {
            cfg,
            deployments,
            by_name,
            groups,
            group_by_name,
            router,
            cache,
            ledger,
            metrics,
            coalescer: crate::engine::Coalescer::default(),
            auth,
            limits,
            key_events,
            request_log,
        }))
    }

    /// Applies a changed or revoked key at once: drops this replica's cached lookup and tells the
    /// other replicas to drop theirs.
    pub async fn key_changed(&self, rec: &crate::store::KeyRecord) {
        self.auth.forget(rec).await;
        if let Some(ev) = &self.key_events {
            ev.publish(&rec.hash).await;
        }
    }

    /// Records a breaker state change in metrics and the log. (The state gauge is read from the
    /// breaker at each scrape: an open breaker turns half-open by the clock, with no transition.)
    pub fn on_transition(&self, dep: &Deployment, t: Option<Transition>) {
        let Some(t) = t else { return };
        self.metrics
            .breaker_transitions
            .get_or_create(&BreakerTransition {
                deployment: dep.name.clone(),
                to: t.to.as_str(),
            })
            .inc();
        tracing::warn!(deployment = %dep.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker transition");
    }

    /// Public model names: `auto`, groups, deployments.
    pub fn model_names(&self) -> Vec<&str> {
        let mut v = vec!["auto"];
        v.extend(self.groups.iter().map(|g| g.name.as_str()));
        v.extend(self.deployments.iter().map(|d| d.name.as_str()));
        v
    }

    /// At least one deployment can take a request now.
    pub fn is_ready(&self) -> bool {
        self.deployments
            .iter()
            .any(|d| d.breaker.state() != crate::resilience::breaker::State::Open)
    }
}
