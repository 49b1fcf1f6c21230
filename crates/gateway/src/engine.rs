//! The request pipeline: plan the route, look up the cache, coalesce identical requests, call upstream
//! through the resilience loop, account for usage and cost, store the answer.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use optiroute_protocol::openai::{ChatChunk, ChatCompletion, ChatRequest, ChunkAccumulator, Usage};
use optiroute_protocol::pricing::Nanos;
use optiroute_protocol::sse;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{CachedResponse, Key, Lookup};
use crate::error::{ApiError, UpstreamError};
use crate::providers::{CallTarget, ChunkStream};
use crate::resilience::breaker::Permit;
use crate::resilience::retry;
use crate::routing::{Plan, Target};
use crate::state::{AppState, SharedState};
use crate::telemetry::{CacheOp, Outcome};

/// Per-request options from headers.
#[derive(Debug, Clone, Default)]
pub struct RequestCtx {
    pub request_id: String,
    pub forced_tier: Option<String>,
    /// `Cache-Control: no-cache`: do not look up (still store).
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store.
    pub no_store: bool,
    /// Tenant (API key id) for cache isolation; empty without auth.
    pub tenant: String,
    /// The caller's virtual key (limits, allowed models); `None` without auth or for the master key.
    pub key: Option<Arc<crate::store::KeyRecord>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What the gateway tells the client about how a request was served (headers and the `optiroute` object).
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub provider: String,
    pub model: String,
    pub deployment: String,
    pub tier: Option<String>,
    pub route_reason: String,
    pub cache: CacheStatus,
    #[serde(serialize_with = "as_usd")]
    pub cost_usd: Nanos,
    #[serde(serialize_with = "as_usd")]
    pub saved_usd: Nanos,
    pub saved_by: Option<&'static str>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub usage_estimated: bool,
    #[serde(skip)]
    pub usage: Option<Usage>,
    /// Input for the request log's router features (`[routing] log_features`, `auto` requests).
    #[serde(skip)]
    pub features: Option<Arc<crate::request_log::FeatureInput>>,
}

fn as_usd<S: serde::Serializer>(n: &Nanos, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(n.as_usd())
}

/// Single flight: concurrent identical cacheable requests share one upstream call.
///
/// The first request for a key leads: it calls upstream and shares its answer with the requests
/// that arrive while it is in flight (followers). A leader that ends without an answer to share
/// (an error, or an answer that is not cacheable) says so, and each follower calls on its own. A
/// leader that never ends (its client left, which cancels its handler) says nothing: its followers
/// elect a new leader among themselves instead of all calling upstream at once.
#[derive(Default)]
pub struct Coalescer {
    inflight: Mutex<HashMap<Key, watch::Receiver<Lead>>>,
}

/// What the leader of a flight has to say so far.
#[derive(Clone)]
enum Lead {
    Pending,
    Answer(Arc<CachedResponse>),
    /// The leader finished without an answer to share.
    Nothing,
}

/// The outcome of joining a flight.
enum Coalesced {
    /// This request leads: it calls upstream, then publishes or finishes.
    Lead(Leader),
    /// A leader's answer.
    Answer(Arc<CachedResponse>),
    /// Call alone: the leader had nothing to share, or took longer than the deadline.
    Alone,
}

/// Held by the request that calls upstream; followers wait on it. Dropped without [`Leader::publish`]
/// or [`Leader::finish`], it tells them the leader was cancelled.
pub struct Leader {
    st: SharedState,
    key: Key,
    tx: watch::Sender<Lead>,
}

impl Leader {
    /// Hands the answer to the followers (before it is stored: they need not wait for the store).
    fn publish(&self, value: Arc<CachedResponse>) {
        self.tx.send_replace(Lead::Answer(value));
    }

    /// Tells the followers that no answer is coming (a no-op after [`Leader::publish`]).
    fn finish(&self) {
        self.tx.send_if_modified(|l| match l {
            Lead::Pending => {
                *l = Lead::Nothing;
                true
            }
            _ => false,
        });
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Out of the map before `tx` closes: a follower that sees the close finds no stale entry.
        if let Ok(mut m) = self.st.coalescer.inflight.lock() {
            m.remove(&self.key);
        }
    }
}

/// Joins the flight for `key`, waiting at most until `deadline` for a leader's answer.
async fn coalesce(st: &SharedState, key: Key, deadline: Instant) -> Coalesced {
    loop {
        let mut rx = {
            let Ok(mut m) = st.coalescer.inflight.lock() else {
                return Coalesced::Alone;
            };
            match m.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(Lead::Pending);
                    m.insert(key, rx);
                    return Coalesced::Lead(Leader {
                        st: st.clone(),
                        key,
                        tx,
                    });
                }
            }
        };
        match tokio::time::timeout_at(deadline, rx.wait_for(|l| !matches!(l, Lead::Pending))).await {
            Ok(Ok(lead)) => {
                return match &*lead {
                    Lead::Answer(v) => Coalesced::Answer(v.clone()),
                    _ => Coalesced::Alone,
                };
            }
            // The leader was cancelled: join again (one of the followers leads now).
            Ok(Err(_closed)) => {}
            Err(_elapsed) => return Coalesced::Alone,
        }
    }
}

/// Cache decisions for one request.
struct CachePlan {
    key: Option<Key>,
    lookup: bool,
    store: bool,
    ttl: Duration,
}

fn cache_plan(st: &AppState, req: &ChatRequest, plan: &Plan, ctx: &RequestCtx) -> CachePlan {
    let c = &st.cache;
    let deterministic = req.temperature.is_none_or(|t| t == 0.0);
    let allowed = c.enabled && (deterministic || c.cache_nondeterministic) && req.n.is_none_or(|n| n == 1);
    if !allowed {
        return CachePlan {
            key: None,
            lookup: false,
            store: false,
            ttl: Duration::ZERO,
        };
    }
    CachePlan {
        key: Some(crate::cache::key(req, &plan.cache_scope, &ctx.tenant)),
        lookup: !ctx.no_cache,
        store: !ctx.no_store,
        ttl: plan.cache_ttl_secs.map_or(c.default_ttl, Duration::from_secs),
    }
}

impl CachePlan {
    fn status(&self) -> CacheStatus {
        if self.lookup {
            CacheStatus::Miss
        } else {
            CacheStatus::Bypass
        }
    }
}

/// Looks the request up in the cache and counts a hit; a miss is counted once its outcome is known
/// ([`count_missed_lookup`]).
async fn lookup(st: &AppState, cp: &CachePlan) -> Option<Arc<CachedResponse>> {
    let key = cp.key.as_ref().filter(|_| cp.lookup)?;
    match st.cache.get(key).await {
        Ok(v) => {
            st.metrics.hot.cache_hit.inc();
            st.ledger.cache_hits.fetch_add(1, Relaxed);
            Some(v)
        }
        Err(kind) => {
            if kind == Lookup::Error {
                st.metrics
                    .cache_errors
                    .get_or_create(&CacheOp {
                        backend: st.cache.backend_name(),
                        op: "get",
                    })
                    .inc();
            }
            None
        }
    }
}

/// Counts a lookup that missed: `coalesced` when an identical request in flight answered it, else
/// `miss` (this request goes upstream). Every lookup is exactly one of hit, coalesced and miss.
fn count_missed_lookup(st: &AppState, cp: &CachePlan, coalesced: bool) {
    if cp.key.is_none() || !cp.lookup {
        return;
    }
    if coalesced {
        st.metrics.hot.cache_coalesced.inc();
        st.ledger.coalesced.fetch_add(1, Relaxed);
    } else {
        st.metrics.hot.cache_miss.inc();
        st.ledger.cache_misses.fetch_add(1, Relaxed);
    }
}

async fn store(st: &AppState, cp: &CachePlan, value: &Arc<CachedResponse>) {
    if let Some(key) = cp.key.filter(|_| cp.store)
        && !st.cache.put(key, value.clone(), cp.ttl).await
    {
        st.metrics
            .cache_errors
            .get_or_create(&CacheOp {
                backend: st.cache.backend_name(),
                op: "set",
            })
            .inc();
    }
}

/// Whether an `auto` answer came from another tier than the one routing chose (that tier was failing,
/// and this one stood in). Such an answer is served but not cached: once the chosen tier is back, the
/// prompt gets its answer again instead of the stand-in's for the cache's whole TTL.
fn is_stand_in(st: &AppState, plan: &Plan, dep: usize) -> bool {
    plan.target == Target::Auto && plan.tier.is_some() && st.deployments[dep].tier != plan.tier
}

/// Whether fields a replay does not reproduce hold anything (OpenAI sends `"logprobs": null`,
/// `"refusal": null` and `"annotations": []` with every answer).
fn carries(extra: &serde_json::Map<String, serde_json::Value>) -> bool {
    extra.values().any(|v| match v {
        serde_json::Value::Null => false,
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
        _ => true,
    })
}

/// Whether an answer may be cached: it has a choice (a 200 with `choices: []` is no answer to keep),
/// and it is not a tool-call turn.
fn cacheable_answer(c: &ChatCompletion) -> bool {
    !c.choices.is_empty()
        && c.choices.iter().all(|ch| {
            ch.message.tool_calls.as_ref().is_none_or(Vec::is_empty)
                && ch.finish_reason.as_deref() != Some("tool_calls")
        })
}

/// Meta for an answer served from the cache (or from a coalesced leader): free, and it saved what the
/// original call cost. It keeps the request's router features, so a rating of a cached answer is a
/// training row like any other.
fn hit_meta(st: &AppState, hit: &CachedResponse, plan: &Plan, started: Instant) -> Meta {
    st.metrics.hot.saved_cache.inc_by(hit.cost.as_usd());
    st.ledger.saved_cache.fetch_add(hit.cost.0, Relaxed);
    Meta {
        provider: hit.provider.clone(),
        model: hit.completion.model.clone(),
        deployment: hit.deployment.clone(),
        tier: hit.tier.clone(),
        route_reason: hit.route_reason.clone(),
        cache: CacheStatus::Hit,
        cost_usd: Nanos::ZERO,
        saved_usd: hit.cost,
        saved_by: Some("cache"),
        latency_ms: ms(started.elapsed()),
        ttft_ms: Some(ms(started.elapsed())),
        usage_estimated: hit.usage_estimated,
        usage: Some(hit.usage),
        features: plan.features.clone(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn record_decision(st: &AppState, plan: &Plan) {
    if let Some(tier) = &plan.tier {
        st.metrics.record_routing(tier, plan.reason);
    }
}

/// Usage, cost and savings of a served call; updates metrics and the ledger.
fn account(st: &AppState, dep_idx: usize, usage: Usage) -> (Nanos, Nanos) {
    account_inner(st, dep_idx, usage, true)
}

/// [`account`]; `claim_saving = false` records the cost but no saving (a cascade's discarded answer).
fn account_inner(st: &AppState, dep_idx: usize, usage: Usage, claim_saving: bool) -> (Nanos, Nanos) {
    let d = &st.deployments[dep_idx];
    let cached = usage.cached_prompt_tokens();
    let cost = d.price.cost(&usage, cached);
    let reference = st.router.reference.map(|r| &st.deployments[r]);
    let saved = match reference {
        Some(r) if claim_saving && r.idx != dep_idx => r.price.cost(&usage, cached).saturating_sub(cost),
        _ => Nanos::ZERO,
    };
    let m = &st.metrics;
    d.m.cost_usd.inc_by(cost.as_usd());
    if saved.0 > 0 {
        m.hot.saved_routing.inc_by(saved.as_usd());
        st.ledger.saved_routing.fetch_add(saved.0, Relaxed);
    }
    d.m.tokens_in.inc_by(usage.prompt_tokens);
    d.m.tokens_out.inc_by(usage.completion_tokens);
    let s = &st.ledger.per_deployment[dep_idx];
    s.requests.fetch_add(1, Relaxed);
    s.cost.fetch_add(cost.0, Relaxed);
    s.tokens_in.fetch_add(usage.prompt_tokens, Relaxed);
    s.tokens_out.fetch_add(usage.completion_tokens, Relaxed);
    if let Some(t) = &d.tier {
        st.ledger.record_tier(t);
    }
    (cost, saved)
}

/// Prompt tokens for a usage estimate: the router's count if it was exact, else the tokenizer's.
fn exact_prompt_tokens(plan: &Plan, req: &ChatRequest) -> u64 {
    if plan.prompt_tokens_exact {
        plan.prompt_tokens
    } else {
        optiroute_protocol::usage::estimate_prompt_tokens(req)
    }
}

/// The text a tool call generated (its function's name and arguments), for a usage estimate.
fn push_tool_call_text(call: &serde_json::Value, out: &mut String) {
    let f = call.get("function").unwrap_or(call);
    for field in ["name", "arguments"] {
        if let Some(t) = f.get(field).and_then(serde_json::Value::as_str) {
            out.push_str(t);
        }
    }
}

/// Completion tokens of an answer whose upstream reported no usage: every choice's text and tool calls.
fn estimate_completion_tokens(c: &ChatCompletion) -> u64 {
    c.choices
        .iter()
        .map(|ch| {
            let mut calls = String::new();
            for call in ch.message.tool_calls.iter().flatten() {
                push_tool_call_text(call, &mut calls);
            }
            optiroute_protocol::usage::count_text(&ch.message.text()) + optiroute_protocol::usage::count_text(&calls)
        })
        .sum()
}

/// Counts a call that did not succeed (successes use the deployment's own handle, `d.m.success`).
fn outcome_metric(st: &AppState, dep_idx: usize, outcome: &'static str) {
    let d = &st.deployments[dep_idx];
    st.metrics
        .llm_requests
        .get_or_create(&Outcome {
            provider: d.labels.provider.clone(),
            model: d.labels.model.clone(),
            outcome,
        })
        .inc();
}

fn deadline(st: &AppState) -> Instant {
    Instant::now() + Duration::from_millis(st.cfg.resilience.deadline_ms)
}

/// A non-streaming completion, for a request that arrived at `started`. A success is recorded (ledger,
/// request log) here, before the answer's cache store: a client that leaves during that store cancels
/// this future, and the call is paid for.
pub async fn complete(
    st: &SharedState,
    req: &ChatRequest,
    ctx: &RequestCtx,
    started: Instant,
) -> Result<(ChatCompletion, Meta), ApiError> {
    crate::auth::check_model(st, ctx, &req.model)?;
    let plan = st.router.plan(st, req, ctx.forced_tier.as_deref(), &ctx.tenant)?;
    complete_planned(st, req, ctx, plan, started).await
}

/// Records a request answered in full (ledger, request log): a JSON answer, or a replayed stream.
fn record_served(st: &AppState, ctx: &RequestCtx, started: Instant, meta: &Meta) {
    st.ledger
        .record_request(started.elapsed().as_micros() as u64, meta.cost_usd, true);
    crate::request_log::finished(st, &ctx.request_id, &ctx.tenant, meta, 200);
}

/// How a request gets its answer before any upstream call.
enum Before {
    /// From the cache or from an identical request in flight; counted and recorded as served.
    Answered(Arc<CachedResponse>, Meta),
    /// From upstream, leading the flight for its key if it has one, within `deadline`.
    Call { leader: Option<Leader>, deadline: Instant },
}

/// Looks the request up in the cache, then joins the flight of identical requests (JSON and streams).
async fn before_calling(st: &SharedState, ctx: &RequestCtx, plan: &Plan, cp: &CachePlan, started: Instant) -> Before {
    if let Some(hit) = lookup(st, cp).await {
        let meta = hit_meta(st, &hit, plan, started);
        record_served(st, ctx, started, &meta);
        return Before::Answered(hit, meta);
    }
    let deadline = deadline(st);
    let Some(key) = cp.key.filter(|_| cp.lookup && cp.store) else {
        return Before::Call { leader: None, deadline };
    };
    match coalesce(st, key, deadline).await {
        Coalesced::Answer(v) => {
            count_missed_lookup(st, cp, true);
            let meta = hit_meta(st, &v, plan, started);
            record_served(st, ctx, started, &meta);
            Before::Answered(v, meta)
        }
        Coalesced::Lead(l) => Before::Call {
            leader: Some(l),
            deadline,
        },
        // Waiting for a leader is not an attempt (and a live stream is not bounded by the deadline
        // after its first byte): the follower's own call gets a full deadline.
        Coalesced::Alone => Before::Call {
            leader: None,
            deadline: self::deadline(st),
        },
    }
}

/// [`complete`] once the request is authorised and routed.
async fn complete_planned(
    st: &SharedState,
    req: &ChatRequest,
    ctx: &RequestCtx,
    plan: Plan,
    started: Instant,
) -> Result<(ChatCompletion, Meta), ApiError> {
    let cp = cache_plan(st, req, &plan, ctx);
    let (leader, deadline) = match before_calling(st, ctx, &plan, &cp, started).await {
        Before::Answered(v, meta) => return Ok((v.completion.clone(), meta)),
        Before::Call { leader, deadline } => (leader, deadline),
    };
    let answered = lead_json(st, req, ctx, plan, started, cp, leader.as_ref(), deadline).await;
    // Reached unless this request was cancelled: followers learn that no answer is coming, if so.
    if let Some(l) = &leader {
        l.finish();
    }
    answered
}

/// The upstream part of [`complete_planned`]: calls (escalating a cascade), accounts, records and
/// stores the answer, handing it to the flight's followers if this request leads one.
#[allow(clippy::too_many_arguments)]
async fn lead_json(
    st: &SharedState,
    req: &ChatRequest,
    ctx: &RequestCtx,
    plan: Plan,
    started: Instant,
    mut cp: CachePlan,
    leader: Option<&Leader>,
    deadline: Instant,
) -> Result<(ChatCompletion, Meta), ApiError> {
    count_missed_lookup(st, &cp, false);
    record_decision(st, &plan);
    let mut call = call_json(st, &plan, req, deadline).await?;
    let mut upstream = call.upstream;
    let mut cascade_note = None;
    let mut wasted = Nanos::ZERO;
    let mut stand_in = is_stand_in(st, &plan, call.dep);
    if let Some((why, strong_plan)) = cascade_escalation(st, &plan, req, ctx, &call) {
        // The cheap answer failed its check: it was paid for, but no routing saving is claimed for it.
        let cheap_cost = account_inner(st, call.dep, call.usage, false).0;
        st.limits
            .settle(&ctx.tenant, call.dep, cheap_cost, call.usage.total_tokens);
        let cheap_tier = st.deployments[call.dep].tier.clone().unwrap_or_default();
        match call_json(st, &strong_plan, req, deadline).await {
            Ok(strong) => {
                upstream += strong.upstream;
                wasted = cheap_cost;
                cascade_note = Some(format!(
                    "cascade: the {cheap_tier} answer failed its check ({why}); escalated"
                ));
                call = strong;
                stand_in = false;
            }
            // The strong tier failed too: the cheap answer is better than an error, but not one to keep.
            Err(e) => {
                tracing::warn!(error = %e.message, "cascade escalation failed; serving the cheap answer");
                call.already_accounted = Some(cheap_cost);
                stand_in = true;
            }
        }
    }
    let d = &st.deployments[call.dep];
    let (usage, estimated) = (call.usage, call.estimated);
    let mut completion = call.completion;
    let (cost, saved) = match call.already_accounted {
        Some(c) => (c, Nanos::ZERO),
        None => {
            let (c, s) = account(st, call.dep, usage);
            st.limits.settle(&ctx.tenant, call.dep, c, usage.total_tokens);
            (c, s)
        }
    };
    let cost = cost + wasted;
    let saved = saved.saturating_sub(wasted);
    if let Some(text) = completion.choices.first().map(|c| c.message.text()) {
        st.router
            .remember_strong_answer(&ctx.tenant, &plan, d.tier.as_deref(), &text);
    }
    let route = match cascade_note {
        Some(note) => note,
        None => route_reason(&plan, call.position, d),
    };
    if completion.usage.is_none() {
        completion.usage = Some(usage);
    }
    let meta = Meta {
        provider: d.provider_name.clone(),
        model: completion.model.clone(),
        deployment: d.name.clone(),
        tier: d.tier.clone(),
        route_reason: route,
        cache: cp.status(),
        cost_usd: cost,
        saved_usd: saved,
        saved_by: (saved.0 > 0).then_some("routing"),
        latency_ms: ms(started.elapsed()),
        ttft_ms: None,
        usage_estimated: estimated,
        usage: Some(usage),
        features: plan.features.clone(),
    };
    st.metrics
        .overhead
        .observe(started.elapsed().saturating_sub(upstream).as_secs_f64());
    record_served(st, ctx, started, &meta);
    // A stand-in is shared with coalesced followers (they asked at the same moment) but not stored.
    cp.store &= !stand_in;
    if cp.key.is_some() && cacheable_answer(&completion) {
        let entry = Arc::new(CachedResponse {
            completion: completion.clone(),
            pieces: None,
            deployment: meta.deployment.clone(),
            provider: meta.provider.clone(),
            tier: meta.tier.clone(),
            route_reason: meta.route_reason.clone(),
            cost,
            usage,
            usage_estimated: estimated,
        });
        if let Some(l) = leader {
            l.publish(entry.clone());
        }
        store(st, &cp, &entry).await;
    }
    Ok((completion, meta))
}

/// One served non-streaming upstream call, with its usage settled (breaker, latency, metrics).
struct JsonCall {
    completion: ChatCompletion,
    dep: usize,
    position: usize,
    usage: Usage,
    estimated: bool,
    upstream: Duration,
    /// Set when the cost was already put on the ledger (a cascade that kept the cheap answer).
    already_accounted: Option<Nanos>,
}

async fn call_json(st: &SharedState, plan: &Plan, req: &ChatRequest, deadline: Instant) -> Result<JsonCall, ApiError> {
    let served = retry::run(st, plan, deadline, |d| {
        let (model, max_tokens) = (d.model.clone(), d.default_max_tokens);
        let provider = d.provider.clone();
        async move {
            let target = CallTarget {
                model: &model,
                default_max_tokens: max_tokens,
            };
            provider.chat(req, &target).await
        }
    })
    .await?;
    let d = &st.deployments[served.dep];
    let upstream = served.sent_at.elapsed();
    st.on_transition(d, d.breaker.success(served.permit));
    d.observe_latency(upstream.as_micros() as u64);
    d.m.upstream_duration.observe(upstream.as_secs_f64());
    d.m.success.inc();
    let completion = served.value;
    let (usage, estimated) = match completion.usage {
        Some(u) => (u, false),
        None => {
            let u = Usage::new(exact_prompt_tokens(plan, req), estimate_completion_tokens(&completion));
            (u, true)
        }
    };
    Ok(JsonCall {
        completion,
        dep: served.dep,
        position: served.position,
        usage,
        estimated,
        upstream,
        already_accounted: None,
    })
}

/// Cascade mode covers `auto` requests that the score routed to a cheaper tier.
fn cascade_applies(st: &AppState, plan: &Plan, ctx: &RequestCtx) -> bool {
    st.router.cascade && plan.target == Target::Auto && ctx.forced_tier.is_none() && plan.reason == "score_low"
}

/// Cascade mode: whether a cheap-tier answer must be escalated, and the plan for the strong tier.
fn cascade_escalation(
    st: &AppState,
    plan: &Plan,
    req: &ChatRequest,
    ctx: &RequestCtx,
    call: &JsonCall,
) -> Option<(String, Plan)> {
    if !cascade_applies(st, plan, ctx) {
        return None;
    }
    let strongest = st.router.strongest_tier()?;
    if st.deployments[call.dep].tier.as_deref() == Some(strongest) {
        return None;
    }
    let choice = call.completion.choices.first()?;
    if choice.message.tool_calls.as_ref().is_some_and(|t| !t.is_empty()) {
        // A tool call is an answer the client acts on, not text to check.
        return None;
    }
    let opts = optiroute_router::cascade::CheckOptions {
        math: crate::routing::looks_math(&req.last_user_text()),
        json: req.wants_json(),
        // A cap the client chose is not a failure of the model.
        hit_length_limit: choice.finish_reason.as_deref() == Some("length") && req.output_cap().is_none(),
    };
    let answer = choice.message.text();
    let (escalation, why) = match optiroute_router::cascade::check(&answer, opts) {
        Some(e) => (e, e.as_str().to_owned()),
        None => {
            // Math-style answers that pass the checks: escalate when the verifier rates them likely wrong.
            let v = st.router.verifier.as_ref().filter(|_| opts.math)?;
            let risk = v.risk(&req.last_user_text(), &answer, opts);
            if risk < st.router.cascade_max_risk {
                return None;
            }
            (
                optiroute_router::cascade::Escalation::LikelyWrong,
                optiroute_router::cascade::likely_wrong_reason(risk),
            )
        }
    };
    let candidates: Vec<usize> = plan
        .candidates
        .iter()
        .copied()
        .filter(|&i| st.deployments[i].tier.as_deref() == Some(strongest))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    st.metrics.record_routing(strongest, "cascade_escalated");
    st.metrics.record_cascade_escalation(escalation);
    Some((
        why,
        Plan {
            candidates,
            tier: Some(strongest.to_owned()),
            reason: "cascade_escalated",
            ..plan.clone()
        },
    ))
}

fn route_reason(plan: &Plan, position: usize, d: &crate::state::Deployment) -> String {
    if position == 0 {
        plan.explanation.clone()
    } else {
        format!("fallback to `{}` ({})", d.name, plan.explanation)
    }
}

/// A streamed completion: the meta known before the first byte, and the SSE body.
pub struct StreamReply {
    pub meta: Meta,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::convert::Infallible>> + Send>>,
    /// The whole answer, its cost and its log row are known before the first byte (a cache replay or a
    /// buffered cascade): the caller logs now and sends the cost headers.
    pub complete: bool,
}

pub async fn stream(st: &SharedState, req: ChatRequest, ctx: &RequestCtx) -> Result<StreamReply, ApiError> {
    let started = Instant::now();
    crate::auth::check_model(st, ctx, &req.model)?;
    let plan = st.router.plan(st, &req, ctx.forced_tier.as_deref(), &ctx.tenant)?;
    let include_usage = req.include_usage();
    // A replay carries one choice's text: requests for tool calls or several choices stream live.
    let replayable = !req.has_tools() && req.n.is_none_or(|n| n == 1);
    if st.router.cascade_streams && replayable && cascade_applies(st, &plan, ctx) {
        // The check needs the whole cheap answer before anything is sent: answer in full (escalating
        // if the check fails), then replay the answer as a stream.
        let (completion, meta) = complete_planned(st, &req, ctx, plan, started).await?;
        let usage = meta.usage.unwrap_or_default();
        return Ok(replay(&completion, None, usage, meta, include_usage));
    }
    let mut cp = cache_plan(st, &req, &plan, ctx);
    let (leader, deadline) = match before_calling(st, ctx, &plan, &cp, started).await {
        Before::Answered(v, meta) => return Ok(replay_hit(v, meta, include_usage)),
        Before::Call { leader, deadline } => (leader, deadline),
    };
    count_missed_lookup(st, &cp, false);
    record_decision(st, &plan);
    // Start the stream and wait for its first chunk inside the resilience loop: a stream that fails
    // before its first byte is retried or falls back like any call.
    let served = retry::run(st, &plan, deadline, |d| {
        let (model, max_tokens, pname) = (d.model.clone(), d.default_max_tokens, d.provider_name.clone());
        let provider = d.provider.clone();
        let req = &req;
        async move {
            let target = CallTarget {
                model: &model,
                default_max_tokens: max_tokens,
            };
            let mut s: ChunkStream = provider.chat_stream(req, &target).await?;
            // Hold back chunks that carry nothing yet (the role-only opener): until real output
            // arrives, nothing has been sent and a failure can still be retried or failed over.
            let mut held = Vec::new();
            loop {
                match s.next().await {
                    Some(Ok(chunk)) => {
                        let substantive = chunk.usage.is_some()
                            || chunk.choices.iter().any(|c| {
                                c.finish_reason.is_some()
                                    || c.delta.tool_calls.is_some()
                                    || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                            });
                        held.push(chunk);
                        if substantive {
                            return Ok((held, s));
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(UpstreamError::new(
                            crate::error::UpstreamKind::Interrupted,
                            &pname,
                            "stream ended before any output",
                        ));
                    }
                }
            }
        }
    })
    .await
    .inspect_err(|_| {
        // No answer is coming: the followers call on their own.
        if let Some(l) = &leader {
            l.finish();
        }
    })?;
    let d = &st.deployments[served.dep];
    cp.store &= !is_stand_in(st, &plan, served.dep);
    let meta = Meta {
        provider: d.provider_name.clone(),
        model: d.model.clone(),
        deployment: d.name.clone(),
        tier: d.tier.clone(),
        route_reason: route_reason(&plan, served.position, d),
        cache: cp.status(),
        cost_usd: Nanos::ZERO,
        saved_usd: Nanos::ZERO,
        saved_by: None,
        latency_ms: 0.0,
        ttft_ms: None,
        usage_estimated: false,
        usage: None,
        features: plan.features.clone(),
    };
    let (held, rest) = served.value;
    d.in_flight.fetch_add(1, Relaxed);
    // The handler's gauge ends with the response head; a live stream counts until its last byte.
    st.metrics.in_flight.inc();
    let live = LiveStream {
        st: st.clone(),
        req,
        tenant: ctx.tenant.clone(),
        request_id: ctx.request_id.clone(),
        plan,
        cp,
        leader,
        dep: served.dep,
        permit: Some(served.permit),
        sent_at: served.sent_at,
        started,
        include_usage,
        held: held.into(),
        acc: ChunkAccumulator::default(),
        other_output: String::new(),
        faithful: true,
        pieces: Vec::new(),
        upstream_usage: None,
        ttft: None,
        meta: meta.clone(),
        done: false,
        chunk_id: String::new(),
        created: 0,
    };
    let body = futures_util::stream::unfold((live, rest, false), |(mut live, mut rest, finished)| async move {
        if finished {
            return None;
        }
        let item = match live.held.pop_front() {
            Some(c) => Some(Ok(c)),
            None => rest.next().await,
        };
        let mut out = Vec::with_capacity(2);
        let end = match item {
            Some(Ok(chunk)) => {
                live.on_chunk(chunk, &mut out);
                false
            }
            Some(Err(e)) => {
                live.on_error(&e, &mut out);
                true
            }
            None => {
                live.on_end(&mut out).await;
                true
            }
        };
        let bytes = Bytes::from(out.concat());
        Some((Ok(bytes), (live, rest, end)))
    })
    .filter(|r: &Result<Bytes, std::convert::Infallible>| {
        let keep = r.as_ref().map(|b| !b.is_empty()).unwrap_or(true);
        async move { keep }
    });
    Ok(StreamReply {
        meta,
        body: Box::pin(body),
        complete: false,
    })
}

/// A live stream stops counting as in flight (the deployment's count and the gauge).
fn leave_in_flight(st: &AppState, d: &crate::state::Deployment) {
    d.in_flight.fetch_sub(1, Relaxed);
    st.metrics.in_flight.dec();
}

/// State of a live stream being forwarded. Its `Drop` settles a stream the client abandoned.
struct LiveStream {
    st: SharedState,
    /// Kept for a usage estimate if the upstream reports none.
    req: ChatRequest,
    /// Whose spend and limits this stream's cost counts against.
    tenant: String,
    /// For the request log.
    request_id: String,
    plan: Plan,
    cp: CachePlan,
    leader: Option<Leader>,
    dep: usize,
    permit: Option<Permit>,
    sent_at: Instant,
    started: Instant,
    include_usage: bool,
    /// Chunks read while the call was still retryable, not yet forwarded. They were generated (and
    /// are paid for) even if the client leaves before reading them.
    held: std::collections::VecDeque<ChatChunk>,
    acc: ChunkAccumulator,
    /// Generated text the accumulator does not keep (other choices' text, tool calls), for a usage
    /// estimate.
    other_output: String,
    /// Whether the chunks held only text and finish reasons: the pieces kept for a replay drop
    /// anything else (`logprobs`, reasoning), so a stream with more is not cached.
    faithful: bool,
    pieces: Vec<String>,
    upstream_usage: Option<Usage>,
    ttft: Option<Duration>,
    meta: Meta,
    done: bool,
    /// Id and timestamp of the upstream's chunks, reused for the closing usage chunk.
    chunk_id: String,
    created: u64,
}

impl LiveStream {
    fn on_chunk(&mut self, chunk: ChatChunk, out: &mut Vec<Bytes>) {
        if self.chunk_id.is_empty() {
            self.chunk_id.clone_from(&chunk.id);
            self.created = chunk.created;
        }
        self.count_output(&chunk);
        let has_text = chunk.delta_text().any(|t| !t.is_empty());
        if has_text && self.ttft.is_none() {
            let t = self.sent_at.elapsed();
            self.ttft = Some(t);
            let d = &self.st.deployments[self.dep];
            d.m.ttft.observe(t.as_secs_f64());
        }
        for t in chunk.delta_text() {
            if !t.is_empty() {
                self.pieces.push(t.to_owned());
            }
        }
        if self.faithful
            && chunk
                .choices
                .iter()
                .any(|c| carries(&c.extra) || carries(&c.delta.extra))
        {
            self.faithful = false;
        }
        // The usage-only chunk is re-emitted at the end with our accounting (if the client wants it).
        if chunk.choices.is_empty() {
            return;
        }
        let mut chunk = chunk;
        chunk.usage = None;
        if let Ok(json) = serde_json::to_vec(&chunk) {
            out.push(sse::encode_data(&json));
        }
    }

    /// Takes in what a chunk says about usage and generated output (for [`Self::usage`]).
    fn count_output(&mut self, chunk: &ChatChunk) {
        if let Some(u) = chunk.usage {
            self.upstream_usage = Some(u);
        }
        for c in &chunk.choices {
            if c.index != 0
                && let Some(t) = &c.delta.content
            {
                self.other_output.push_str(t);
            }
            for call in c.delta.tool_calls.iter().flatten() {
                push_tool_call_text(call, &mut self.other_output);
            }
        }
        self.acc.push(chunk);
    }

    fn usage(&self) -> (Usage, bool) {
        match self.upstream_usage.or(self.acc.usage()) {
            Some(u) => (u, false),
            None => (
                Usage::new(
                    exact_prompt_tokens(&self.plan, &self.req),
                    optiroute_protocol::usage::count_text(self.acc.text())
                        + optiroute_protocol::usage::count_text(&self.other_output),
                ),
                true,
            ),
        }
    }

    /// Puts what the stream cost so far on its meta (for its log row, access log line and usage chunk).
    fn set_spent(&mut self, cost: Nanos, usage: Usage, estimated: bool) {
        self.meta.cost_usd = cost;
        self.meta.usage = Some(usage);
        self.meta.usage_estimated = estimated;
        self.meta.latency_ms = ms(self.started.elapsed());
    }

    /// The stream's row in the request log and its access log line, written when it ends (`status`
    /// 502 or 499: it did not finish, and the meta holds what it cost so far).
    fn log_end(&self, st: &AppState, status: u16) {
        crate::request_log::finished(st, &self.request_id, &self.tenant, &self.meta, status);
        access_log(
            &self.request_id,
            &self.req.model,
            status,
            self.started,
            Some(&self.meta),
            true,
        );
    }

    async fn on_end(&mut self, out: &mut Vec<Bytes>) {
        self.done = true;
        let st = self.st.clone();
        let d = &st.deployments[self.dep];
        let upstream = self.sent_at.elapsed();
        if let Some(p) = self.permit.take() {
            st.on_transition(d, d.breaker.success(p));
        }
        d.observe_latency(upstream.as_micros() as u64);
        d.m.upstream_duration.observe(upstream.as_secs_f64());
        d.m.success.inc();
        let (usage, estimated) = self.usage();
        st.router
            .remember_strong_answer(&self.tenant, &self.plan, self.meta.tier.as_deref(), self.acc.text());
        let (cost, saved) = account(&st, self.dep, usage);
        st.limits.settle(&self.tenant, self.dep, cost, usage.total_tokens);
        self.set_spent(cost, usage, estimated);
        self.meta.saved_usd = saved;
        self.meta.saved_by = (saved.0 > 0).then_some("routing");
        self.meta.ttft_ms = self.ttft.map(ms);
        self.log_end(&st, 200);
        st.ledger
            .record_request(self.started.elapsed().as_micros() as u64, cost, true);
        // For streams, gateway overhead is the time spent before the upstream was called.
        st.metrics
            .overhead
            .observe(self.sent_at.duration_since(self.started).as_secs_f64());
        if self.include_usage {
            let mut u = ChatChunk::new(&self.chunk_id, self.created, &self.meta.model);
            u.usage = Some(usage);
            u.extra
                .insert("optiroute".into(), serde_json::to_value(&self.meta).unwrap_or_default());
            if let Ok(json) = serde_json::to_vec(&u) {
                out.push(sse::encode_data(&json));
            }
        }
        out.push(Bytes::from_static(sse::DONE));
        // Before the store's await: a client that leaves during it drops this future, and `done`
        // already tells `Drop` that the stream was settled.
        leave_in_flight(&st, d);
        let acc = std::mem::take(&mut self.acc);
        let completion = acc.into_completion();
        // A stream that ended without a finish reason may have been cut short (by a proxy, say).
        let finished = completion.choices.iter().all(|c| c.finish_reason.is_some());
        if self.cp.key.is_some() && self.faithful && finished && cacheable_answer(&completion) {
            let entry = Arc::new(CachedResponse {
                completion,
                pieces: Some(std::mem::take(&mut self.pieces)),
                deployment: self.meta.deployment.clone(),
                provider: self.meta.provider.clone(),
                tier: self.meta.tier.clone(),
                route_reason: self.meta.route_reason.clone(),
                cost,
                usage,
                usage_estimated: estimated,
            });
            if let Some(l) = &self.leader {
                l.publish(entry.clone());
            }
            store(&st, &self.cp, &entry).await;
        }
        if let Some(l) = self.leader.take() {
            l.finish();
        }
    }

    fn on_error(&mut self, e: &UpstreamError, out: &mut Vec<Bytes>) {
        self.done = true;
        let st = self.st.clone();
        let d = &st.deployments[self.dep];
        if let Some(p) = self.permit.take() {
            if e.is_upstream_fault() {
                st.on_transition(d, d.breaker.failure(p));
            } else {
                d.breaker.release(p);
            }
        }
        outcome_metric(&st, self.dep, e.outcome());
        st.ledger.per_deployment[self.dep].errors.fetch_add(1, Relaxed);
        // What was generated before the failure was still paid for.
        let (usage, estimated) = self.usage();
        let (cost, _) = account(&st, self.dep, usage);
        st.limits.settle(&self.tenant, self.dep, cost, usage.total_tokens);
        st.ledger
            .record_request(self.started.elapsed().as_micros() as u64, cost, false);
        self.set_spent(cost, usage, estimated);
        self.log_end(&st, 502);
        if let Some(l) = self.leader.take() {
            l.finish();
        }
        tracing::warn!(deployment = %d.name, error = %e, "stream failed after its first byte; not retried");
        let api: ApiError = e.clone().into();
        if let Ok(json) = serde_json::to_vec(&api.body()) {
            out.push(sse::encode_data(&json));
        }
        leave_in_flight(&st, d);
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away mid-stream: the upstream request is cancelled by dropping its stream.
        // It says nothing about the upstream's health, but what was generated so far was paid for.
        let st = self.st.clone();
        let d = &st.deployments[self.dep];
        if let Some(p) = self.permit.take() {
            d.breaker.release(p);
        }
        outcome_metric(&st, self.dep, "cancelled");
        // chunks the client never read were still generated
        for chunk in std::mem::take(&mut self.held) {
            self.count_output(&chunk);
        }
        let (usage, estimated) = self.usage();
        let (cost, _) = account(&st, self.dep, usage);
        st.limits.settle(&self.tenant, self.dep, cost, usage.total_tokens);
        self.set_spent(cost, usage, estimated);
        self.log_end(&st, 499);
        // A cancellation is the client's choice, not an error.
        st.ledger
            .record_request(self.started.elapsed().as_micros() as u64, cost, true);
        leave_in_flight(&st, d);
        tracing::info!(deployment = %d.name, "client disconnected mid-stream; upstream request cancelled");
    }
}

/// The access log's target, as before the line moved here (`RUST_LOG` filters may name it).
const ACCESS_TARGET: &str = "optiroute::http::chat";

/// The access log line of one request: who, what, where it went, status, latency, tokens, cost.
/// Live streams log it when they end, with their total latency.
pub fn access_log(request_id: &str, model: &str, status: u16, started: Instant, meta: Option<&Meta>, stream: bool) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match meta {
        Some(m) => tracing::info!(
            target: ACCESS_TARGET,
            request_id = %request_id, model, status, stream, latency_ms,
            provider = %m.provider, deployment = %m.deployment, tier = m.tier.as_deref().unwrap_or(""),
            route_reason = %m.route_reason, cache = m.cache.as_str(),
            prompt_tokens = m.usage.map(|u| u.prompt_tokens), completion_tokens = m.usage.map(|u| u.completion_tokens),
            cost_usd = %m.cost_usd, "request"
        ),
        None => {
            tracing::info!(target: ACCESS_TARGET, request_id = %request_id, model, status, stream, latency_ms, "request")
        }
    }
}

/// Replays a cached response as a stream.
fn replay_hit(hit: Arc<CachedResponse>, meta: Meta, include_usage: bool) -> StreamReply {
    replay(&hit.completion, hit.pieces.as_deref(), hit.usage, meta, include_usage)
}

/// Replays a finished completion as a proper SSE stream: role chunk, content pieces (as originally
/// streamed, or word-sized; one piece with everything when the answer carries more than text),
/// finish, usage, [DONE].
fn replay(c: &ChatCompletion, pieces: Option<&[String]>, usage: Usage, meta: Meta, include_usage: bool) -> StreamReply {
    let id = c.id.clone();
    let created = crate::providers::unix_now();
    let model = c.model.clone();
    let mut out: Vec<Bytes> = Vec::new();
    let mut push = |chunk: &ChatChunk| {
        if let Ok(json) = serde_json::to_vec(chunk) {
            out.push(sse::encode_data(&json));
        }
    };
    let mut role = ChatChunk::content(&id, created, &model, "");
    role.choices[0].delta.role = Some("assistant".into());
    push(&role);
    let first = c.choices.first();
    let text = first.map(|ch| ch.message.text()).unwrap_or_default();
    match first.filter(|ch| carries(&ch.extra) || carries(&ch.message.extra)) {
        // Fields besides the text (`logprobs`, a model's reasoning, a refusal) go with the text in one
        // chunk, under the names a stream gives them: the choice's beside `delta`, the message's in it.
        Some(ch) => {
            let mut all = ChatChunk::content(&id, created, &model, &text);
            all.choices[0].extra.clone_from(&ch.extra);
            all.choices[0].delta.extra.clone_from(&ch.message.extra);
            push(&all);
        }
        None => {
            let split;
            let pieces = match pieces {
                Some(p) => p,
                None => {
                    split = split_words(&text);
                    &split[..]
                }
            };
            for p in pieces {
                push(&ChatChunk::content(&id, created, &model, p));
            }
        }
    }
    let mut fin = ChatChunk::content(&id, created, &model, "");
    fin.choices[0].delta.content = None;
    fin.choices[0].finish_reason = c.choices.first().and_then(|ch| ch.finish_reason.clone());
    push(&fin);
    if include_usage {
        let mut u = ChatChunk::new(&id, created, &model);
        u.usage = Some(usage);
        u.extra
            .insert("optiroute".into(), serde_json::to_value(&meta).unwrap_or_default());
        push(&u);
    }
    out.push(Bytes::from_static(sse::DONE));
    let body = futures_util::stream::iter(out.into_iter().map(Ok));
    StreamReply {
        meta,
        body: Box::pin(body),
        complete: true,
    }
}

/// Splits text into word-sized pieces that concatenate back to the original.
fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_whitespace() && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_round_trips() {
        for t in ["", "one", "Hello, world!  How are\nyou?", " lead", "trail "] {
            assert_eq!(split_words(t).concat(), t);
        }
        assert!(split_words("a b c").len() == 3);
    }
}
