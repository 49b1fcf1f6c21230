//! `POST /v1/feedback`: a client rates an answer it got, by the `x-request-id` of the completion, with a
//! score in [0, 1] (1 = good) and an optional comment. Ratings go to the store next to the request log
//! and are exported with it (`optiroute router export`) to retrain the router on one's own traffic.
//!
//! Only the key that made a request may rate it (the master key, or anyone when auth is off, may rate
//! any); for any other key the request does not exist (404, nothing revealed). Rating again replaces
//! the rating. The request-log row may still be in the log's queue when the rating arrives: an id not
//! found in the store makes this replica flush its queue once (at most [`FLUSH_WAIT`]) and look again,
//! so a rating sent right after the answer, to the replica that served it, is never refused. A rating
//! that reaches another replica before the serving replica wrote its row gets 404 and can be retried.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::SharedState;
use crate::store::feedback::{self, MAX_COMMENT_BYTES};

/// Longest wait for this replica's request-log queue to be written when an id is not found.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Largest accepted body.
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    request_id: String,
    score: f64,
    #[serde(default)]
    comment: Option<String>,
}

fn parse(body: &[u8]) -> Result<FeedbackRequest, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("request body is empty; expected a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: FeedbackRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("request body is not valid JSON: {msg}"))
        } else if path == "." || path.is_empty() {
            let mut err = ApiError::bad_request(format!("invalid feedback: {msg}"));
            err.param = msg.split('`').nth(1).map(str::to_owned);
            err
        } else {
            ApiError::invalid_param(&path, format!("invalid value for `{path}`: {msg}"))
        }
    })?;
    de.end()
        .map_err(|_| ApiError::bad_request("request body is not valid JSON: trailing characters"))?;
    let id = &req.request_id;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_param(
            "request_id",
            "`request_id` must be the `x-request-id` of a completion (1 to 128 printable ASCII characters)",
        ));
    }
    if !(0.0..=1.0).contains(&req.score) {
        return Err(ApiError::invalid_param(
            "score",
            "`score` must be a number between 0 (bad answer) and 1 (good answer)",
        ));
    }
    if req.comment.as_ref().is_some_and(|c| c.len() > MAX_COMMENT_BYTES) {
        return Err(ApiError::invalid_param(
            "comment",
            format!("`comment` must be at most {MAX_COMMENT_BYTES} bytes"),
        ));
    }
    Ok(req)
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no request with this id was logged for your key",
    )
    .with_code("request_not_found")
}

fn store_down(e: &sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "feedback: store operation failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the store is unavailable; try again",
    )
    .with_code("store_unavailable")
}

pub async fn feedback(State(st): State<SharedState>, principal: Option<Extension<Principal>>, body: Body) -> Response {
    match rate(&st, principal.as_ref().map(|p| &p.0), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn rate(st: &SharedState, principal: Option<&Principal>, body: Body) -> Result<Response, ApiError> {
    let body = super::read_body(body, BODY_LIMIT).await?;
    let req = parse(&body)?;
    let Some(store) = st.request_log.store() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "feedback needs the request log: configure a store (`[store] database_url`) or auth",
        )
        .with_code("request_log_disabled"));
    };
    // The master key, or anyone when auth is off, may rate any request; a virtual key its own.
    let own = match principal {
        Some(Principal::Key(k)) if st.auth.enabled => Some(k.id.as_str()),
        _ => None,
    };
    let targets = |owners: Vec<String>| -> Vec<String> {
        match own {
            Some(id) => owners.into_iter().filter(|o| o == id).collect(),
            None => owners,
        }
    };
    let mut keys = targets(
        feedback::owners(store, &req.request_id)
            .await
            .map_err(|e| store_down(&e))?,
    );
    if keys.is_empty() && st.request_log.flush(FLUSH_WAIT).await {
        keys = targets(
            feedback::owners(store, &req.request_id)
                .await
                .map_err(|e| store_down(&e))?,
        );
    }
    if keys.is_empty() {
        return Err(not_found());
    }
    for k in &keys {
        feedback::upsert(store, k, &req.request_id, req.score, req.comment.as_deref())
            .await
            .map_err(|e| store_down(&e))?;
    }
    st.metrics.feedback.inc();
    tracing::info!(request_id = %req.request_id, score = req.score, "feedback recorded");
    Ok((
        StatusCode::OK,
        axum::Json(json!({
            "object": "feedback",
            "request_id": req.request_id,
            "score": req.score,
            "comment": req.comment,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let param = |b: &str| parse(b.as_bytes()).unwrap_err().param;
        assert_eq!(param(r#"{"score": 1}"#).as_deref(), Some("request_id"));
        assert_eq!(param(r#"{"request_id": "r"}"#).as_deref(), Some("score"));
        assert_eq!(param(r#"{"request_id": "r", "score": 1.5}"#).as_deref(), Some("score"));
        assert_eq!(param(r#"{"request_id": "r", "score": -0.1}"#).as_deref(), Some("score"));
        assert_eq!(
            param(r#"{"request_id": "r", "score": "good"}"#).as_deref(),
            Some("score")
        );
        assert_eq!(
            param(r#"{"request_id": "", "score": 1}"#).as_deref(),
            Some("request_id")
        );
        assert_eq!(
            param(r#"{"request_id": "a b", "score": 1}"#).as_deref(),
            Some("request_id")
        );
        let long = format!(
            r#"{{"request_id": "r", "score": 1, "comment": "{}"}}"#,
            "x".repeat(1025)
        );
        assert_eq!(param(&long).as_deref(), Some("comment"));
        assert_eq!(
            param(r#"{"request_id": "r", "score": 1, "stars": 5}"#).as_deref(),
            Some("stars")
        );
        assert!(parse(b"{").is_err() && parse(b"").is_err());
        let ok = parse(br#"{"request_id": "req_1", "score": 0, "comment": "wrong answer"}"#).unwrap();
        assert_eq!((ok.score, ok.comment.as_deref()), (0.0, Some("wrong answer")));
    }
}
