//! Health, readiness, metrics, stats, admin views and the embedded web UI.

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use serde_json::json;

use super::PathParam;
use crate::error::ApiError;
use crate::state::SharedState;

#[derive(RustEmbed)]
#[folder = "ui/"]
struct Assets;

pub async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(st): State<SharedState>) -> Response {
    if st.is_ready() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "reason": "every deployment's circuit breaker is open"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(st): State<SharedState>) -> Response {
    // An open breaker turns half-open when its cooldown passes, not on a call: with no traffic no
    // transition would update its gauge, so each scrape reads the state.
    for d in &st.deployments {
        st.metrics
            .breaker_state
            .get_or_create(&d.dep_label)
            .set(d.breaker.state().gauge());
    }
    let mut resp = st.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

pub async fn stats(State(st): State<SharedState>) -> Response {
    axum::Json(st.ledger.stats_json(&st)).into_response()
}

pub async fn breakers(State(st): State<SharedState>) -> Response {
    let list: Vec<_> = st
        .deployments
        .iter()
        .map(|d| {
            json!({
                "deployment": d.name,
                "state": d.breaker.state().as_str(),
                "consecutive_failures": d.breaker.consecutive_failures(),
                "retry_in_ms": d.breaker.retry_in().as_millis() as u64,
                "in_flight": d.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    axum::Json(json!({"breakers": list})).into_response()
}

fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mime = match path.rsplit('.').next() {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                _ => "application/octet-stream",
            };
            let mut resp = file.data.into_owned().into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            super::ui_security_headers(&mut resp);
            resp
        }
        None => not_found_response(),
    }
}

pub async fn ui_index() -> Response {
    asset("index.html")
}

pub async fn ui_asset(PathParam(file): PathParam) -> Response {
    asset(&file)
}

fn not_found_response() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such endpoint")
        .with_code("not_found")
        .into_response()
}

pub async fn not_found() -> Response {
    not_found_response()
}

/// A known endpoint asked with a method it does not serve (axum adds the `Allow` header).
pub async fn method_not_allowed(method: Method) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("method {method} is not allowed on this endpoint"),
    )
    .with_code("method_not_allowed")
    .into_response()
}
