//! `/v1/chat/completions`, `/v1/models` and the simple `/generate`.

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use optiroute_protocol::openai::{ChatCompletion, ChatRequest, Message, to_json_sized};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{PathParam, RequestId, read_body};
use crate::auth::Principal;
use crate::engine::{self, Meta, RequestCtx};
use crate::error::ApiError;
use crate::state::SharedState;

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];
/// The most choices (`n`) a request may ask for, as OpenAI allows.
const MAX_CHOICES: u32 = 128;

/// Parses and validates a chat request body; errors name the offending field.
pub fn parse_chat_request(body: &[u8], max_messages: usize) -> Result<ChatRequest, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("request body is empty; expected a JSON object"));
    }
    // Fast path: plain serde. Only a body that fails is parsed again with path tracking, to name the
    // offending field.
    let req = match serde_json::from_slice::<ChatRequest>(body) {
        Ok(req) => req,
        Err(_) => parse_with_path(body)?,
    };
    validate(&req, max_messages)?;
    Ok(req)
}

/// The slow path of [`parse_chat_request`]: an error that names the field (`messages[0].role`).
fn parse_with_path(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: ChatRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = strip_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("request body is not valid JSON: {msg}"))
        } else if path == "." || path.is_empty() {
            let field = msg.split('`').nth(1).unwrap_or("").to_owned();
            let mut err = ApiError::bad_request(format!("invalid request: {msg}"));
            if !field.is_empty() {
                err.param = Some(field);
            }
            err
        } else {
            ApiError::invalid_param(&path, format!("invalid value for `{path}`: {msg}"))
        }
    })?;
    // Strict: nothing but white space may follow the JSON object.
    de.end().map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid JSON: {}",
            strip_position(&e.to_string())
        ))
    })?;
    Ok(req)
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn validate(req: &ChatRequest, max_messages: usize) -> Result<(), ApiError> {
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid_param("model", "`model` must not be empty"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    if req.messages.len() > max_messages {
        return Err(ApiError::invalid_param(
            "messages",
            format!("too many messages: {} (limit {max_messages})", req.messages.len()),
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid_param(
                &format!("messages[{i}].role"),
                format!(
                    "unknown role `{}`; expected one of {}",
                    truncate(&m.role, 40),
                    ROLES.join(", ")
                ),
            ));
        }
    }
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid_param(
            "temperature",
            "`temperature` must be between 0 and 2",
        ));
    }
    if let Some(p) = req.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid_param("top_p", "`top_p` must be between 0 and 1"));
    }
    if let Some(n) = req.n
        && !(1..=MAX_CHOICES).contains(&n)
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}"),
        ));
    }
    if req.output_cap() == Some(0) {
        return Err(ApiError::invalid_param("max_tokens", "`max_tokens` must be at least 1"));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Request options from headers: request id, forced tier, Cache-Control.
fn ctx_from(headers: &HeaderMap, id: &RequestId, principal: Option<&Extension<Principal>>) -> RequestCtx {
    let (tenant, key) = crate::auth::tenant_of(principal.map(|p| &p.0));
    let cache_control = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let directives: Vec<&str> = cache_control.split(',').map(str::trim).collect();
    RequestCtx {
        request_id: id.0.clone(),
        forced_tier: headers
            .get(H_TIER)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        no_cache: directives.contains(&"no-cache"),
        no_store: directives.contains(&"no-store"),
        tenant,
        key,
    }
}

// Header names built at compile time (a `&'static str` key is parsed on every insert).
const H_PROVIDER: HeaderName = HeaderName::from_static("x-optiroute-provider");
const H_MODEL: HeaderName = HeaderName::from_static("x-optiroute-model");
const H_DEPLOYMENT: HeaderName = HeaderName::from_static("x-optiroute-deployment");
const H_TIER: HeaderName = HeaderName::from_static("x-optiroute-tier");
const H_ROUTE_REASON: HeaderName = HeaderName::from_static("x-optiroute-route-reason");
const H_CACHE: HeaderName = HeaderName::from_static("x-optiroute-cache");
const H_COST: HeaderName = HeaderName::from_static("x-optiroute-cost-usd");
const H_SAVED: HeaderName = HeaderName::from_static("x-optiroute-saved-usd");
const H_LATENCY: HeaderName = HeaderName::from_static("x-optiroute-latency-ms");

fn set_meta_headers(h: &mut HeaderMap, meta: &Meta, with_cost: bool) {
    h.reserve(9);
    let mut put = |k: HeaderName, v: Option<HeaderValue>| {
        // Header values come from config names and numbers; anything unprintable is dropped.
        if let Some(v) = v {
            h.insert(k, v);
        }
    };
    let text = |v: &str| HeaderValue::from_str(v).ok();
    put(H_PROVIDER, text(&meta.provider));
    put(H_MODEL, text(&meta.model));
    put(H_DEPLOYMENT, text(&meta.deployment));
    if let Some(t) = &meta.tier {
        put(H_TIER, text(t));
    }
    put(H_ROUTE_REASON, text(&meta.route_reason));
    put(H_CACHE, text(meta.cache.as_str()));
    if with_cost {
        put(H_COST, number(format_args!("{}", meta.cost_usd)));
        put(H_SAVED, number(format_args!("{}", meta.saved_usd)));
        let us = (meta.latency_ms * 1000.0).round().max(0.0) as u64;
        put(H_LATENCY, number(format_args!("{}.{:03}", us / 1000, us % 1000)));
    }
}

/// A header value of a formatted number, formatted on the stack (no String per header); None if it
/// does not fit in 32 bytes, which no number here reaches.
fn number(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    cursor.write_fmt(args).ok()?;
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

pub async fn chat_completions(
    State(st): State<SharedState>,
    Extension(id): Extension<RequestId>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let body = match read_body(body, st.cfg.server.body_limit_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = match parse_chat_request(&body, st.cfg.server.max_messages) {
        Ok(r) => r,
        Err(e) => {
            engine::access_log(&id.0, "", e.status.as_u16(), started, None, false);
            return e.into_response();
        }
    };
    drop(body);
    let ctx = ctx_from(&headers, &id, principal.as_ref());
    let model = req.model.clone();
    st.metrics.in_flight.inc();
    let _gauge = GaugeGuard(&st);
    if req.is_stream() {
        match engine::stream(&st, req, &ctx).await {
            Ok(reply) => {
                // A live stream logs its line when it ends (with its tokens and cost), so nothing
                // stands between the upstream's first token and the client's; a replay (cache hit,
                // buffered cascade) logs now.
                if reply.complete {
                    engine::access_log(&id.0, &model, 200, started, Some(&reply.meta), true);
                }
                let mut resp = Response::new(Body::from_stream(reply.body));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert("x-accel-buffering", HeaderValue::from_static("no"));
                set_meta_headers(h, &reply.meta, reply.complete);
                resp
            }
            Err(e) => {
                st.ledger
                    .record_request(started.elapsed().as_micros() as u64, Default::default(), false);
                engine::access_log(&id.0, &model, e.status.as_u16(), started, None, true);
                e.into_response()
            }
        }
    } else {
        complete_json(&st, &id, &req, &ctx, started, render_completion).await
    }
}

/// The OpenAI completion with the gateway's `optiroute` object added, serialized in one pass (no
/// intermediate `serde_json::Value`).
fn render_completion(completion: &ChatCompletion, meta: &Meta) -> serde_json::Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct WithMeta<'a> {
        #[serde(flatten)]
        completion: &'a ChatCompletion,
        optiroute: &'a Meta,
    }
    let own;
    let completion = if completion.extra.contains_key("optiroute") {
        // The upstream is itself a gateway that added this field: ours replaces it.
        let mut c = completion.clone();
        c.extra.remove("optiroute");
        own = c;
        &own
    } else {
        completion
    };
    let text = completion.choices.iter().map(|c| c.message.text_len()).sum();
    to_json_sized(
        &WithMeta {
            completion,
            optiroute: meta,
        },
        text,
        768,
    )
}

/// Runs a non-streaming completion, records it (log line; the ledger here for a failure, in the engine for
/// a success) and renders the body with `render`.
async fn complete_json(
    st: &SharedState,
    id: &RequestId,
    req: &ChatRequest,
    ctx: &RequestCtx,
    started: Instant,
    render: impl FnOnce(&ChatCompletion, &Meta) -> serde_json::Result<Vec<u8>>,
) -> Response {
    // A success is on the ledger already (see `engine::complete`).
    match engine::complete(st, req, ctx, started).await {
        Ok((completion, meta)) => {
            let body = match render(&completion, &meta) {
                Ok(b) => b,
                Err(e) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "api_error",
                        format!("cannot encode the response: {e}"),
                    )
                    .into_response();
                }
            };
            let mut resp = Response::new(Body::from(body));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            set_meta_headers(h, &meta, true);
            // The log line is written after the response: a task spawned here runs once this
            // connection's task has written the response and yields, so formatting the line and its
            // write(2) are not in the client's latency (and its latency_ms includes the response write).
            let (id, model) = (id.0.clone(), req.model.clone());
            tokio::spawn(async move { engine::access_log(&id, &model, 200, started, Some(&meta), false) });
            resp
        }
        Err(e) => {
            st.ledger
                .record_request(started.elapsed().as_micros() as u64, Default::default(), false);
            engine::access_log(&id.0, &req.model, e.status.as_u16(), started, None, false);
            e.into_response()
        }
    }
}

/// Keeps `llm_in_flight_requests` right on every exit path.
struct GaugeGuard<'a>(&'a SharedState);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
}

/// The simple interface of the system OptiRoute replaces: a prompt in, an answer and its cost out.
pub async fn generate(
    State(st): State<SharedState>,
    Extension(id): Extension<RequestId>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let body = match read_body(body, st.cfg.server.body_limit_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let g: GenerateRequest = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(e) => {
            let msg = strip_position(&e.to_string());
            let mut err = ApiError::bad_request(format!("invalid request: {msg}"));
            err.param = msg.split('`').nth(1).map(str::to_owned);
            return err.into_response();
        }
    };
    if g.prompt.trim().is_empty() {
        return ApiError::invalid_param("prompt", "`prompt` must not be empty").into_response();
    }
    let req = ChatRequest {
        model: g.model.unwrap_or_else(|| "auto".into()),
        messages: vec![Message::new("user", g.prompt)],
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        ..Default::default()
    };
    if let Err(e) = validate(&req, st.cfg.server.max_messages) {
        return e.into_response();
    }
    let ctx = ctx_from(&headers, &id, principal.as_ref());
    st.metrics.in_flight.inc();
    let _gauge = GaugeGuard(&st);
    complete_json(&st, &id, &req, &ctx, started, |completion, meta| {
        let text = completion.choices.first().map(|c| c.message.text()).unwrap_or_default();
        serde_json::to_vec(&json!({
            "response": text,
            "provider": meta.provider,
            "model": meta.model,
            "deployment": meta.deployment,
            "tier": meta.tier,
            "route_reason": meta.route_reason,
            "cached": meta.cache == engine::CacheStatus::Hit,
            "cost_usd": meta.cost_usd.as_usd(),
            "saved_usd": meta.saved_usd.as_usd(),
            "latency_ms": meta.latency_ms,
            "usage": meta.usage,
        }))
    })
    .await
}

/// Whether the caller may see `model`: everyone without auth and the master key; a virtual key only
/// the models it may use.
fn visible(st: &SharedState, principal: Option<&Extension<Principal>>, model: &str) -> bool {
    let (_, key) = crate::auth::tenant_of(principal.map(|p| &p.0));
    key.is_none_or(|rec| crate::auth::key_allows(st, &rec, model))
}

pub async fn list_models(State(st): State<SharedState>, principal: Option<Extension<Principal>>) -> Response {
    let data: Vec<_> = st
        .model_names()
        .into_iter()
        .filter(|n| visible(&st, principal.as_ref(), n))
        .map(|n| model_json(&st, n))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn get_model(
    State(st): State<SharedState>,
    principal: Option<Extension<Principal>>,
    PathParam(id): PathParam,
) -> Response {
    // A model the key may not use is "not found", as if it did not exist.
    if st.model_names().contains(&id.as_str()) && visible(&st, principal.as_ref(), &id) {
        axum::Json(model_json(&st, &id)).into_response()
    } else {
        ApiError::model_not_found(&id).into_response()
    }
}

fn model_json(st: &SharedState, name: &str) -> serde_json::Value {
    let kind = if name == "auto" {
        "router"
    } else if st.group_by_name.contains_key(name) {
        "group"
    } else {
        "deployment"
    };
    let tier = st.by_name.get(name).and_then(|&i| st.deployments[i].tier.clone());
    json!({"id": name, "object": "model", "created": 0, "owned_by": "optiroute", "optiroute": {"kind": kind, "tier": tier}})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rendering_adds_our_object_and_replaces_an_upstream_gateways() {
        let meta = Meta {
            provider: "p".into(),
            model: "m".into(),
            deployment: "d".into(),
            tier: None,
            route_reason: "r".into(),
            cache: engine::CacheStatus::Bypass,
            cost_usd: optiroute_protocol::pricing::Nanos(1_500_000_000),
            saved_usd: optiroute_protocol::pricing::Nanos(0),
            saved_by: None,
            latency_ms: 1.0,
            ttft_ms: None,
            usage_estimated: false,
            usage: None,
            features: None,
        };
        let upstream = r#"{"id":"c","model":"m","choices":[{"message":{"role":"assistant","content":"hi \"x\""}}],"system_fingerprint":"fp","optiroute":{"deployment":"theirs"}}"#;
        let completion: ChatCompletion = serde_json::from_str(upstream).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&render_completion(&completion, &meta).unwrap()).unwrap();
        assert_eq!(out["optiroute"]["deployment"], "d");
        assert_eq!(out["optiroute"]["cost_usd"], 1.5);
        assert_eq!(out["choices"][0]["message"]["content"], "hi \"x\"");
        assert_eq!(out["system_fingerprint"], "fp");
        // Exactly one `optiroute` key in the bytes, not theirs and ours.
        let raw = String::from_utf8(render_completion(&completion, &meta).unwrap()).unwrap();
        assert_eq!(raw.matches("\"optiroute\"").count(), 1, "{raw}");
    }

    #[test]
    fn numbers_formatted_on_the_stack_match_the_heap_formatting() {
        fn num(args: std::fmt::Arguments<'_>) -> String {
            number(args).unwrap().to_str().unwrap().to_owned()
        }
        for n in [0, 1, 999_999_999, 1_000_000_000, 12_345_678_901, u64::MAX] {
            let nanos = optiroute_protocol::pricing::Nanos(n);
            assert_eq!(num(format_args!("{nanos}")), nanos.to_string());
        }
        for us in [0u64, 7, 1_342, 1_000_000, u64::MAX / 1000] {
            assert_eq!(
                num(format_args!("{}.{:03}", us / 1000, us % 1000)),
                format!("{:.3}", us as f64 / 1000.0)
            );
        }
        // Longer than the buffer: no header, never a cut value or a panic.
        assert!(number(format_args!("{}", "1".repeat(33))).is_none());
        assert!(number(format_args!("{}", "1".repeat(32))).is_some());
    }

    #[test]
    fn n_is_bounded_like_openai() {
        let body = |n: u64| format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"n":{n}}}"#);
        for bad in [0, 129, u64::from(u32::MAX)] {
            let e = parse_chat_request(body(bad).as_bytes(), 10).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("n"), "n = {bad}");
        }
        for ok in [1, 128] {
            assert!(parse_chat_request(body(ok).as_bytes(), 10).is_ok(), "n = {ok}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_chat_request(br#"{"model":"m"}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat_request(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#,
            10,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_chat_request(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = parse_chat_request(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#, 10).unwrap_err();
        assert!(e.param.as_deref().unwrap().starts_with("messages[0]"), "{:?}", e.param);
        let e = parse_chat_request(b"{not json", 10).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_chat_request(br#"{"model":"m","messages":[]}"#, 10).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat_request(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
            10,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let ok = br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        assert!(parse_chat_request(ok, 10).is_ok());
        let mut bad = ok.to_vec();
        bad.extend_from_slice(b"\x01\0");
        assert_eq!(
            parse_chat_request(&bad, 10).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let twice = [&ok[..], &ok[..]].concat();
        assert!(parse_chat_request(&twice, 10).is_err());
        let mut spaced = ok.to_vec();
        spaced.extend_from_slice(b" \n");
        assert!(parse_chat_request(&spaced, 10).is_ok());
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_crash() {
        let deep = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x","x":{}1{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse_chat_request(deep.as_bytes(), 10).is_err());
    }
}
