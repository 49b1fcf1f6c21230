//! Errors. Every failure records which side caused it (so a client disconnect never trips an upstream
//! breaker) and whether it may be retried; every client-facing error is OpenAI-shaped.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use optiroute_protocol::openai::{ErrorBody, ErrorDetail};

/// What went wrong talking to an upstream provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamKind {
    /// Could not connect (refused, DNS, TLS).
    Connect,
    /// No response, no first byte, or a stream went idle, within its timeout.
    Timeout,
    /// The upstream answered with an error status.
    Status(u16),
    /// The upstream's response could not be understood (bad JSON, broken stream).
    Protocol,
    /// The stream ended or broke before it was complete.
    Interrupted,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct UpstreamError {
    pub kind: UpstreamKind,
    /// Provider name (never a URL with credentials, never a key).
    pub provider: String,
    /// A message safe to show the client.
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamKind, provider: &str, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            provider: provider.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether another attempt (same or other deployment) may succeed.
    pub fn retryable(&self) -> bool {
        match self.kind {
            UpstreamKind::Connect | UpstreamKind::Timeout | UpstreamKind::Interrupted => true,
            UpstreamKind::Status(s) => s == 429 || s == 408 || s >= 500,
            UpstreamKind::Protocol => false,
        }
    }

    /// Whether this failure says something about the upstream's health (breakers count these).
    /// A 400 caused by the client's request does not.
    pub fn is_upstream_fault(&self) -> bool {
        match self.kind {
            UpstreamKind::Status(s) => s == 429 || s == 408 || s >= 500,
            _ => true,
        }
    }

    /// Low-cardinality outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            UpstreamKind::Timeout => "timeout",
            UpstreamKind::Status(429) => "rate_limited",
            _ => "error",
        }
    }
}

/// An error returned to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::bad_request(message);
        e.param = Some(param.to_owned());
        e
    }

    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist; GET /v1/models lists the available models"),
        );
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.clone(),
                code: self.code.map(str::to_owned),
            },
        }
    }
}

impl From<UpstreamError> for ApiError {
    /// Maps an upstream failure faithfully: 429 keeps Retry-After, 5xx becomes 502/503/504 with the
    /// upstream's message, a timeout is 504. Upstream auth failures become 502: the client cannot fix them.
    fn from(e: UpstreamError) -> Self {
        let msg = format!("upstream `{}`: {}", e.provider, e.message);
        let (status, kind, code) = match e.kind {
            UpstreamKind::Connect => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unreachable"),
            UpstreamKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_error", "upstream_timeout"),
            UpstreamKind::Protocol | UpstreamKind::Interrupted => {
                (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_bad_response")
            }
            UpstreamKind::Status(s) => match s {
                429 => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "upstream_rate_limited",
                ),
                400 | 404 | 413 | 422 => (
                    StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                    "invalid_request_error",
                    "upstream_rejected_request",
                ),
                401 | 403 => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_auth_failed"),
                503 => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_error",
                    "upstream_unavailable",
                ),
                504 | 408 => (StatusCode::GATEWAY_TIMEOUT, "upstream_error", "upstream_timeout"),
                _ => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error"),
            },
        };
        ApiError {
            status,
            kind,
            code: Some(code),
            param: None,
            message: msg,
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(ra) = self.retry_after {
            let secs = ra.as_secs().saturating_add(u64::from(ra.subsec_nanos() > 0));
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                h.insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Parses a `Retry-After` header: delay-seconds (the HTTP-date form is rare for LLM APIs and ignored).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            // Beyond Duration's range (`1e30`): as long as can be, never a panic.
            .map(|f| Duration::try_from_secs_f64(f).unwrap_or(Duration::from_secs(u64::MAX)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_status_mapping() {
        let map = |s| {
            ApiError::from(UpstreamError::new(UpstreamKind::Status(s), "p", "m"))
                .status
                .as_u16()
        };
        assert_eq!(map(429), 429);
        assert_eq!(map(500), 502);
        assert_eq!(map(503), 503);
        assert_eq!(map(504), 504);
        assert_eq!(map(401), 502);
        assert_eq!(map(400), 400);
        assert_eq!(
            ApiError::from(UpstreamError::new(UpstreamKind::Timeout, "p", "m"))
                .status
                .as_u16(),
            504
        );
    }

    #[test]
    fn client_faults_do_not_count_against_upstreams() {
        assert!(!UpstreamError::new(UpstreamKind::Status(400), "p", "").is_upstream_fault());
        assert!(UpstreamError::new(UpstreamKind::Status(503), "p", "").is_upstream_fault());
        assert!(UpstreamError::new(UpstreamKind::Status(429), "p", "").retryable());
        assert!(!UpstreamError::new(UpstreamKind::Status(404), "p", "").retryable());
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn retry_after_beyond_duration_range_does_not_panic() {
        let longest = Some(Duration::from_secs(u64::MAX));
        assert_eq!(parse_retry_after("1e30"), longest);
        assert_eq!(parse_retry_after("99999999999999999999999"), longest);
    }
}
