//! Candidate selection. A request names `auto`, a model group or a deployment; the router turns that
//! into an ordered list of deployments to try, and says why.
//!
//! `auto` picks a tier: hard constraints first (context window, tools, JSON mode, vision), then a
//! complexity score from a swappable [`Scorer`] compared with a threshold (biased per model group).
//! The chosen tier's deployments come first; the other eligible tiers follow as fallbacks, so an
//! outage of one tier degrades to the other instead of failing.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use optiroute_protocol::openai::ChatRequest;
use optiroute_router::calibrate::Cut;
use optiroute_router::{
    Conversation, HeuristicScorer, LearnedScorer, LengthRule, Scorer, ThresholdCalibrator, TokenCounts,
};

use crate::config::{Config, Strategy};
use crate::error::ApiError;
use crate::state::{AppState, Deployment};

/// What the client asked for, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Auto,
    Group(usize),
    Deployment(usize),
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    /// Deployments to try, in order.
    pub candidates: Vec<usize>,
    pub tier: Option<String>,
    /// Short, low-cardinality reason code (metrics label).
    pub reason: &'static str,
    /// Human-readable explanation (header, log line).
    pub explanation: String,
    pub score: Option<f32>,
    /// Prompt tokens as counted for the context-window check: exact (tokenizer) when the prompt is
    /// long enough for a window to matter, otherwise a cheap approximation.
    pub prompt_tokens: u64,
    pub prompt_tokens_exact: bool,
    /// What the cache key uses to name the target (the requested model, plus a forced tier).
    pub cache_scope: String,
    pub cache_ttl_secs: Option<u64>,
    /// `auto` with `[routing] log_features`: what the request log computes the router features from.
    pub features: Option<std::sync::Arc<crate::request_log::FeatureInput>>,
}

pub struct Router {
    tiers: Vec<String>,
    scorer: Box<dyn Scorer>,
    threshold: f32,
    bias: std::collections::BTreeMap<String, f64>,
    /// Deployment whose price is the reference for "saved by routing".
    pub reference: Option<usize>,
    strategy_name: &'static str,
    /// Smallest context window of any deployment: prompts far below it skip exact token counting.
    min_window: u64,
    /// Where the threshold comes from (`threshold` is also the fallback of a calibrator).
    policy: ThresholdPolicy,
    /// Fingerprints of recent answers from the strongest tier, for conversation stickiness.
    strong_answers: Option<moka::sync::Cache<u64, ()>>,
    sticky_max_tokens: u64,
    pub cascade: bool,
    /// `[routing] cascade_streams`: buffer, check and replay streamed requests in cascade mode.
    pub cascade_streams: bool,
    /// Cascade mode: rates cheap answers to math-style prompts that pass the rule checks.
    pub verifier: Option<optiroute_router::verifier::Verifier>,
    /// Escalate when the verifier's risk reaches this (`[routing] cascade_max_risk`; 1 = never).
    pub cascade_max_risk: f32,
    /// `[routing] log_features`: the shipped learned weights' n-gram settings, in which features are logged.
    feature_hash: Option<std::sync::Arc<optiroute_router::features::HashConfig>>,
}

/// How the `auto` threshold is set.
enum ThresholdPolicy {
    /// `routing.threshold`.
    Fixed,
    /// `routing.strong_share`: calibrated on the scores of recent traffic.
    Share(Mutex<ThresholdCalibrator>),
    /// `routing.usd_per_quality_point`: from each request's extra cost on the strongest tier, with
    /// `routing.cost_completion_tokens` output tokens when the request sets no cap.
    Cost { usd_per_point: f64, default_output: u32 },
}

/// Reads a model file named by a config key; errors name the key and the path.
fn read_model_file<T, E: std::fmt::Display>(
    key: &str,
    path: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{key}: cannot read `{path}`: {e}"))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{key}: `{path}` is not {what}: {e}"))
}

/// A stable fingerprint of an answer's text (whitespace-trimmed) as given to `tenant`: stickiness is
/// per tenant, so one key's strong answers never pull another key's conversations to the strong tier.
fn fingerprint(tenant: &str, text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut h);
    text.trim().hash(&mut h);
    h.finish()
}

impl Router {
    pub fn new(cfg: &Config, deps: &[Deployment]) -> anyhow::Result<Router> {
        let r = &cfg.routing;
        // Retrained weights (`router train`) replace the shipped ones: for the scorer, and for the
        // n-gram settings the request log uses when it logs features.
        let custom = match &r.weights {
            Some(path) => Some(read_model_file(
                "routing.weights",
                path,
                "a weights file",
                LearnedScorer::from_json,
            )?),
            None => None,
        };
        let feature_hash = match (r.log_features, &custom) {
            (false, _) => None,
            (true, Some(w)) => Some(std::sync::Arc::new(w.hash_config().clone())),
            (true, None) => Some(std::sync::Arc::new(
                optiroute_router::traffic::shipped_hash_config()
                    .map_err(|e| anyhow::anyhow!("routing.log_features: {e}"))?,
            )),
        };
        let (scorer, strategy_name): (Box<dyn Scorer>, &'static str) = match r.strategy.as_str() {
            "length" => (
                Box::new(LengthRule {
                    threshold_chars: r.length_threshold_chars,
                }),
                "length",
            ),
            "learned" => match custom {
                Some(w) => (Box::new(w), "learned"),
                None => (
                    Box::new(LearnedScorer::embedded().map_err(|e| anyhow::anyhow!("learned scorer: {e}"))?),
                    "learned",
                ),
            },
            _ => (Box::new(HeuristicScorer::default()), "heuristic"),
        };
        let verifier = if r.cascade && r.cascade_max_risk < 1.0 {
            let v = match &r.cascade_verifier {
                Some(path) => read_model_file(
                    "routing.cascade_verifier",
                    path,
                    "a verifier file",
                    optiroute_router::verifier::Verifier::from_json,
                )?,
                None => optiroute_router::verifier::Verifier::embedded()
                    .map_err(|e| anyhow::anyhow!("cascade verifier: {e}"))?,
            };
            Some(v)
        } else {
            None
        };
        let reference = match &r.reference {
            Some(name) => deps.iter().position(|d| &d.name == name),
            None => r
                .tiers
                .iter()
                .rev()
                .find_map(|t| deps.iter().position(|d| d.tier.as_deref() == Some(t.as_str()))),
        };
        Ok(Router {
            tiers: r.tiers.clone(),
            scorer,
            threshold: r.threshold as f32,
            bias: r.bias.clone(),
            reference,
            strategy_name,
            min_window: deps.iter().filter_map(|d| d.context_window).min().unwrap_or(u64::MAX),
            // Config validation allows at most one of the two.
            policy: match (r.strong_share, r.usd_per_quality_point) {
                (Some(share), _) => ThresholdPolicy::Share(Mutex::new(ThresholdCalibrator::new(
                    share,
                    r.calibration_window,
                    (r.calibration_window / 20).clamp(1, 200),
                    r.threshold as f32,
                ))),
                (None, Some(usd_per_point)) => ThresholdPolicy::Cost {
                    usd_per_point,
                    default_output: r.cost_completion_tokens,
                },
                (None, None) => ThresholdPolicy::Fixed,
            },
            strong_answers: r.sticky.then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(3600))
                    .build()
            }),
            sticky_max_tokens: r.sticky_max_tokens,
            cascade: r.cascade,
            cascade_streams: r.cascade_streams,
            verifier,
            cascade_max_risk: r.cascade_max_risk as f32,
            feature_hash,
        })
    }

    /// The strongest configured tier.
    pub fn strongest_tier(&self) -> Option<&str> {
        self.tiers.last().map(String::as_str)
    }

    /// Remembers an answer the strongest tier gave to `tenant`, so a short follow-up to it from the
    /// same tenant stays there.
    pub fn remember_strong_answer(&self, tenant: &str, plan: &Plan, tier: Option<&str>, text: &str) {
        if let Some(cache) = &self.strong_answers
            && plan.target == Target::Auto
            && tier.is_some()
            && tier == self.strongest_tier()
            && !text.trim().is_empty()
        {
            cache.insert(fingerprint(tenant, text), ());
        }
    }

    /// A short user turn that follows an answer the strongest tier gave to `tenant`.
    fn is_sticky_follow_up(&self, req: &ChatRequest, tenant: &str) -> bool {
        let Some(cache) = &self.strong_answers else {
            return false;
        };
        let n = req.messages.len();
        if n < 2 || req.messages[n - 1].role != "user" {
            return false;
        }
        let prev = &req.messages[n - 2];
        prev.role == "assistant"
            && (req.messages[n - 1].text_len() as u64).div_ceil(4) <= self.sticky_max_tokens
            && cache.contains_key(&fingerprint(tenant, &prev.text()))
    }

    /// Prompt tokens for routing: approximate, or exact when a context window could be at stake.
    /// The prompt size (tokens) the router scores a request with.
    pub fn prompt_tokens_of(&self, req: &ChatRequest) -> u64 {
        self.prompt_tokens(req).0
    }

    fn prompt_tokens(&self, req: &ChatRequest) -> (u64, bool) {
        let approx = optiroute_protocol::usage::approx_prompt_tokens(req);
        let needed = approx + u64::from(req.output_cap().unwrap_or(0));
        if needed.saturating_mul(2) >= self.min_window {
            (optiroute_protocol::usage::estimate_prompt_tokens(req), true)
        } else {
            (approx, false)
        }
    }

    pub fn scorer_name(&self) -> &'static str {
        self.strategy_name
    }

    /// Scores a request (higher = more need for the strong tier), as `auto` routing does.
    pub fn score(&self, req: &ChatRequest, prompt_tokens: u64) -> f32 {
        self.scorer.score(&conversation(req, prompt_tokens))
    }

    /// Plans a request from `tenant` (the API key id; empty without auth), which scopes stickiness.
    pub fn plan(
        &self,
        st: &AppState,
        req: &ChatRequest,
        forced_tier: Option<&str>,
        tenant: &str,
    ) -> Result<Plan, ApiError> {
        let (prompt_tokens, prompt_tokens_exact) = self.prompt_tokens(req);
        let need = Needs::of(req, prompt_tokens);
        let model = req.model.as_str();
        if model == "auto" {
            let mut plan = self.plan_auto(st, req, forced_tier, tenant, need, prompt_tokens)?;
            plan.prompt_tokens_exact = prompt_tokens_exact;
            return Ok(plan);
        }
        if let Some(&g) = st.group_by_name.get(model) {
            let group = &st.groups[g];
            let eligible: Vec<usize> = group
                .deployments
                .iter()
                .copied()
                .filter(|&i| need.unmet(&st.deployments[i]).is_none())
                .collect();
            if eligible.is_empty() {
                let why = group
                    .deployments
                    .first()
                    .and_then(|&i| need.unmet(&st.deployments[i]))
                    .unwrap_or("unsupported");
                return Err(unsupported(model, why));
            }
            return Ok(Plan {
                target: Target::Group(g),
                candidates: order(st, eligible, group.strategy),
                tier: None,
                reason: "group",
                explanation: format!("model group `{}` ({})", group.name, strategy_label(group.strategy)),
                score: None,
                prompt_tokens,
                prompt_tokens_exact,
                cache_scope: format!("group:{model}"),
                cache_ttl_secs: group.cache_ttl_secs,
                features: None,
            });
        }
        if let Some(&d) = st.by_name.get(model) {
            let dep = &st.deployments[d];
            if let Some(why) = need.unmet(dep) {
                return Err(unsupported(model, why));
            }
            return Ok(Plan {
                target: Target::Deployment(d),
                candidates: vec![d],
                tier: dep.tier.clone(),
                reason: "direct",
                explanation: format!("deployment `{model}` requested directly"),
                score: None,
                prompt_tokens,
                prompt_tokens_exact,
                cache_scope: format!("deployment:{model}"),
                cache_ttl_secs: None,
                features: None,
            });
        }
        Err(ApiError::model_not_found(model))
    }

    fn plan_auto(
        &self,
        st: &AppState,
        req: &ChatRequest,
        forced_tier: Option<&str>,
        tenant: &str,
        need: Needs,
        prompt_tokens: u64,
    ) -> Result<Plan, ApiError> {
        // Built once: scored below, and its features logged by the request log.
        let conv = conversation(req, prompt_tokens);
        // Eligible deployments per tier, and the first constraint that excluded a tier.
        let mut eligible: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut excluded_by: Option<&'static str> = None;
        for t in &self.tiers {
            let deps: Vec<usize> = st
                .deployments
                .iter()
                .filter(|d| d.tier.as_deref() == Some(t.as_str()))
                .filter(|d| match need.unmet(d) {
                    None => true,
                    Some(why) => {
                        excluded_by.get_or_insert(why);
                        false
                    }
                })
                .map(|d| d.idx)
                .collect();
            if !deps.is_empty() {
                eligible.push((t.as_str(), deps));
            }
        }
        if eligible.is_empty() {
            return Err(unsupported("auto", excluded_by.unwrap_or("no tier configured")));
        }
        let cheapest_configured = self.tiers.first().map(String::as_str);
        let (chosen, reason, explanation, score) = if let Some(forced) = forced_tier {
            if !self.tiers.iter().any(|t| t == forced) {
                return Err(ApiError::invalid_param(
                    "x-optiroute-tier",
                    format!("unknown tier `{forced}`; configured tiers: {}", self.tiers.join(", ")),
                ));
            }
            let Some(pos) = eligible.iter().position(|(t, _)| *t == forced) else {
                return Err(unsupported(
                    &format!("tier {forced}"),
                    excluded_by.unwrap_or("unsupported"),
                ));
            };
            (pos, "forced", format!("tier `{forced}` forced by the client"), None)
        } else {
            let raw = self.scorer.score(&conv);
            let bias = self.bias.get("auto").copied().unwrap_or(0.0) as f32;
            let score = (raw + bias).clamp(0.0, 1.0);
            let (cut, cost_note) = match &self.policy {
                ThresholdPolicy::Fixed => (Cut::plain(self.threshold), String::new()),
                ThresholdPolicy::Share(c) => {
                    let cut = c.lock().map_or(Cut::plain(self.threshold), |mut c| {
                        c.observe(score);
                        c.cut()
                    });
                    (cut, String::new())
                }
                &ThresholdPolicy::Cost {
                    usd_per_point,
                    default_output,
                } => {
                    let output = req.output_cap().unwrap_or(default_output);
                    let cheap = eligible[0].1[0];
                    let strong = eligible[eligible.len() - 1].1[0];
                    let extra = extra_cost(st, cheap, strong, prompt_tokens, u64::from(output));
                    (
                        Cut::plain(optiroute_router::calibrate::threshold_for_cost(extra, usd_per_point)),
                        format!(
                            " (strong call +${extra:.6} for ~{prompt_tokens}+{output} tokens, ${usd_per_point} per quality point)"
                        ),
                    )
                }
            };
            let threshold = cut.threshold;
            // A calibrated threshold that many scores tie at sends only a share of the ties to the
            // strong tier, each request by a hash of its messages (the same request, the same tier).
            let tie = cut.splits(score);
            let by_score = cut.route_strong(score, || tie_key(req, &conv));
            let sticky = !by_score && self.is_sticky_follow_up(req, tenant);
            let strong = by_score || sticky;
            let tie_note = if tie {
                format!(
                    " (a tie: {:.1}% of tied requests go to the strongest tier)",
                    cut.tie_share * 100.0
                )
            } else {
                String::new()
            };
            let pos = if strong { eligible.len() - 1 } else { 0 };
            let cheapest_excluded = eligible.first().map(|(t, _)| *t) != cheapest_configured;
            let (reason, why) = if sticky && eligible.len() > 1 {
                ("sticky", "short follow-up to an answer from this tier".to_owned())
            } else if !strong && cheapest_excluded {
                let code = excluded_by.unwrap_or("unsupported");
                (code, format!("cheapest tier cannot serve this request ({code})"))
            } else if self.strategy_name == "length" {
                (
                    "length_rule",
                    format!(
                        "{} prompt ({} chars){tie_note}",
                        if strong { "long" } else { "short" },
                        req.last_user_text().chars().count()
                    ),
                )
            } else {
                let code = if strong { "score_high" } else { "score_low" };
                let cmp = if tie {
                    "at"
                } else if strong {
                    ">="
                } else {
                    "<"
                };
                (
                    code,
                    format!("complexity {score:.3} {cmp} threshold {threshold:.3}{cost_note}{tie_note}"),
                )
            };
            (pos, reason, why, Some(score))
        };
        let tier = eligible[chosen].0.to_owned();
        let mut candidates = order(st, eligible[chosen].1.clone(), Strategy::Priority);
        for (i, (_, deps)) in eligible.iter().enumerate() {
            if i != chosen {
                candidates.extend(order(st, deps.clone(), Strategy::Priority));
            }
        }
        Ok(Plan {
            target: Target::Auto,
            candidates,
            tier: Some(tier.clone()),
            reason,
            explanation: format!("{tier}: {explanation}"),
            score,
            prompt_tokens,
            prompt_tokens_exact: false, // set by `plan`
            cache_scope: match forced_tier {
                Some(t) => format!("auto:{t}"),
                None => "auto".to_owned(),
            },
            cache_ttl_secs: None,
            // Only a copy of the conversation here: the request log computes the features.
            features: self
                .feature_hash
                .as_ref()
                .filter(|_| st.request_log.enabled())
                .map(|hash| {
                    std::sync::Arc::new(crate::request_log::FeatureInput {
                        conv,
                        hash: hash.clone(),
                    })
                }),
        })
    }
}

/// A stable key of a request's messages (their roles as sent, and the texts `conv` already holds),
/// which decides a score tied at a calibrated threshold.
fn tie_key(req: &ChatRequest, conv: &Conversation) -> u64 {
    optiroute_router::calibrate::tie_key(
        req.messages
            .iter()
            .zip(&conv.messages)
            .flat_map(|(m, c)| [m.role.as_str(), c.text.as_str()]),
    )
}

/// What a request of this size costs more on `strong` than on `cheap`, in USD (never negative).
fn extra_cost(st: &AppState, cheap: usize, strong: usize, prompt_tokens: u64, output_tokens: u64) -> f64 {
    let usage = optiroute_protocol::openai::Usage {
        prompt_tokens,
        completion_tokens: output_tokens,
        total_tokens: prompt_tokens + output_tokens,
        prompt_tokens_details: None,
    };
    let cost = |i: usize| st.deployments[i].price.cost(&usage, 0).as_usd();
    (cost(strong) - cost(cheap)).max(0.0)
}

fn unsupported(model: &str, why: &str) -> ApiError {
    let what = match why {
        "context_window" => "the prompt does not fit its context window",
        "needs_tools" => "it does not support tools",
        "needs_json" => "it does not support JSON mode",
        "needs_vision" => "it does not support images",
        other => other,
    };
    ApiError::bad_request(format!("`{model}` cannot serve this request: {what}")).with_code("unsupported_request")
}

fn strategy_label(s: Strategy) -> &'static str {
    match s {
        Strategy::Priority => "priority",
        Strategy::Weighted => "weighted",
        Strategy::LeastLatency => "least-latency",
        Strategy::LeastBusy => "least-busy",
    }
}

/// Orders a group's deployments by its strategy.
fn order(st: &AppState, mut deps: Vec<usize>, strategy: Strategy) -> Vec<usize> {
    match strategy {
        Strategy::Priority => {}
        Strategy::LeastBusy => deps.sort_by_key(|&i| st.deployments[i].in_flight.load(Ordering::Relaxed)),
        Strategy::LeastLatency => deps.sort_by_key(|&i| st.deployments[i].ewma_latency_us.load(Ordering::Relaxed)),
        Strategy::Weighted => {
            // Weighted random order without replacement.
            let mut out = Vec::with_capacity(deps.len());
            while !deps.is_empty() {
                let total: u64 = deps.iter().map(|&i| u64::from(st.deployments[i].weight)).sum();
                let mut pick = rand::random::<u64>() % total.max(1);
                let mut chosen = 0;
                for (k, &i) in deps.iter().enumerate() {
                    let w = u64::from(st.deployments[i].weight);
                    if pick < w {
                        chosen = k;
                        break;
                    }
                    pick -= w;
                }
                out.push(deps.remove(chosen));
            }
            deps = out;
        }
    }
    deps
}

/// Capabilities a request needs.
#[derive(Debug, Clone, Copy)]
struct Needs {
    tokens: u64,
    tools: bool,
    json: bool,
    vision: bool,
}

impl Needs {
    fn of(req: &ChatRequest, prompt_tokens: u64) -> Needs {
        Needs {
            tokens: prompt_tokens + u64::from(req.output_cap().unwrap_or(0)),
            tools: req.has_tools(),
            json: req.wants_json(),
            vision: req.has_images(),
        }
    }

    /// The first need this deployment cannot meet, as a reason code.
    fn unmet(&self, d: &Deployment) -> Option<&'static str> {
        if d.context_window.is_some_and(|w| self.tokens > w) {
            Some("context_window")
        } else if self.tools && !d.supports_tools {
            Some("needs_tools")
        } else if self.json && !d.supports_json {
            Some("needs_json")
        } else if self.vision && !d.supports_vision {
            Some("needs_vision")
        } else {
            None
        }
    }
}

/// The scorer's view of a request.
pub fn conversation(req: &ChatRequest, prompt_tokens: u64) -> Conversation {
    let last_user = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or(0, |m| (m.text_len() as u64).div_ceil(4));
    Conversation::from_pairs(req.messages.iter().map(|m| (m.role.as_str(), m.text())))
        .with_max_tokens(req.output_cap())
        .with_tokens(Some(TokenCounts {
            last_user: u32::try_from(last_user).unwrap_or(u32::MAX),
            context: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        }))
}

/// Whether a prompt reads like a math word problem (cascade mode then requires a final number).
pub fn looks_math(text: &str) -> bool {
    let digits = text.chars().filter(char::is_ascii_digit).count();
    if digits < 2 {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    const CUES: &[&str] = &[
        "how many",
        "how much",
        "how long",
        "calculate",
        "compute",
        "total",
        "solve",
        "percent",
        "average",
        "what is the",
        "sum of",
        "product of",
        "remainder",
        "%",
        " + ",
        " * ",
        " = ",
    ];
    CUES.iter().any(|c| lower.contains(c))
}
