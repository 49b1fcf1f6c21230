//! HTTP surface: router assembly and the middleware every request passes through.

mod admin;
mod chat;
mod feedback;
mod ops;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::SharedState;
use crate::telemetry::Http;

pub use chat::parse_chat_request;

const X_REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The request id of the current request (propagated from `x-request-id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the gateway's router. Kept outside `main` so tests can serve it in-process.
pub fn app(state: SharedState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(chat::list_models))
        .route("/v1/models/{id}", get(chat::get_model))
        .route("/generate", post(chat::generate))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/api/stats", get(ops::stats))
        .route("/admin/breakers", get(ops::breakers))
        .route("/admin/keys", get(admin::list_keys).post(admin::create_key))
        .route(
            "/admin/keys/{id}",
            get(admin::get_key).patch(admin::update_key).delete(admin::revoke_key),
        )
        .route("/", get(ops::ui_index))
        .route("/{file}", get(ops::ui_asset))
        // After every route: it applies to the routes added before it.
        .method_not_allowed_fallback(ops::method_not_allowed)
        .fallback(ops::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::guard))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_secs(
            state.cfg.server.client_body_timeout_secs,
        )))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(cors(&state.cfg.server.cors_origins))
        .with_state(state)
}

/// CORS: off (no headers) unless `[server] cors_origins` lists origins (`*` for any).
fn cors(origins: &[String]) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            axum::http::HeaderName::from_static("x-optiroute-tier"),
            axum::http::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            axum::http::HeaderName::from_static("x-request-id"),
            axum::http::HeaderName::from_static("x-ratelimit-remaining-requests"),
            axum::http::HeaderName::from_static("x-ratelimit-remaining-tokens"),
        ]);
    tower::util::Either::Left(layer)
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_owned())
}

/// Request id, HTTP metrics, security headers.
async fn observe(State(st): State<SharedState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(|| format!("req_{:016x}", rand::random::<u64>()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let endpoint: &'static str = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/v1/models") | Some("/v1/models/{id}") => "/v1/models",
        Some("/generate") => "/generate",
        Some("/v1/feedback") => "/v1/feedback",
        Some("/health") => "/health",
        Some("/ready") => "/ready",
        Some("/metrics") => "/metrics",
        Some("/api/stats") => "/api/stats",
        Some("/admin/breakers") => "/admin/breakers",
        Some("/admin/keys") | Some("/admin/keys/{id}") => "/admin/keys",
        Some("/") | Some("/{file}") => "/ui",
        _ => "other",
    };
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::PUT => "PUT",
        _ => "other",
    };
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(X_REQUEST_ID, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let labels = Http {
        method,
        endpoint,
        status: resp.status().as_u16(),
    };
    st.metrics.record_http(&labels, started.elapsed().as_secs_f64());
    resp
}

/// Reads a body up to `limit` bytes, in OpenAI's error shape: 408 when it arrives more slowly than
/// `[server] client_body_timeout_secs` allows, 413 when it is larger than `limit` (or cut off).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::limits::is_body_timeout(&e) {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body arrived too slowly",
            )
            .with_code("request_timeout");
        }
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than the limit of {limit} bytes (or was cut off)"),
        )
        .with_code("request_too_large")
    })
}

/// A route's one path parameter, like `Path<String>`, except that a segment that does not decode
/// (`%FF` is not UTF-8) is answered with an OpenAI-style 400 instead of axum's plain text.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(PathParam(p)),
            Err(e) => {
                let status = e.status();
                let kind = if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                Err(ApiError::new(status, kind, e.body_text()).with_code("invalid_path"))
            }
        }
    }
}

/// Adds the headers a browser page needs for safety.
pub(crate) fn ui_security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// How long the server lets in-flight requests finish after a shutdown signal.
pub fn grace(st: &SharedState) -> Duration {
    Duration::from_secs(st.cfg.server.shutdown_grace_secs)
}
