//! `/admin/keys`: create, list, show, update and revoke virtual keys (master key only; the auth
//! middleware enforces that). The secret is returned once, by create.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{PathParam, read_body};
use crate::error::ApiError;
use crate::state::SharedState;
use crate::store::{KeySpec, Store, StoreError};

fn store(st: &SharedState) -> Result<&Store, ApiError> {
    st.auth.store.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "key management is off: auth is not enabled (set a master key, see [auth] in the README)",
        )
        .with_code("auth_disabled")
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::bad_request(m),
        StoreError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no key with id `{}`", id.chars().take(64).collect::<String>()),
        )
        .with_code("key_not_found"),
        StoreError::Db(e) => {
            tracing::error!(error = %e, "key store operation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the key store is unavailable; try again",
            )
            .with_code("key_store_unavailable")
        }
    }
}

fn parse_spec(body: &[u8]) -> Result<KeySpec, ApiError> {
    if body.is_empty() {
        return Ok(KeySpec::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        ApiError::bad_request(format!("invalid key request: {msg}"))
    })
}

fn reply(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

pub async fn create_key(State(st): State<SharedState>, body: Body) -> Response {
    reply(
        async {
            let store = store(&st)?;
            let body = read_body(body, st.cfg.server.body_limit_bytes).await?;
            let spec = parse_spec(&body)?;
            let (rec, secret) = store.create_key(&spec).await.map_err(store_error)?;
            tracing::info!(key_id = %rec.id, name = %rec.name, "virtual key created");
            let mut v = rec.to_json(0);
            v["key"] = json!(secret);
            Ok((StatusCode::CREATED, axum::Json(v)).into_response())
        }
        .await,
    )
}

pub async fn list_keys(State(st): State<SharedState>) -> Response {
    reply(
        async {
            let keys = store(&st)?.list_keys().await.map_err(store_error)?;
            let data: Vec<_> = keys.iter().map(|k| k.to_json(st.limits.spent(k))).collect();
            Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
        }
        .await,
    )
}

pub async fn get_key(State(st): State<SharedState>, PathParam(id): PathParam) -> Response {
    reply(
        async {
            let rec = store(&st)?.key(&id).await.map_err(store_error)?;
            Ok(axum::Json(rec.to_json(st.limits.spent(&rec))).into_response())
        }
        .await,
    )
}

pub async fn update_key(State(st): State<SharedState>, PathParam(id): PathParam, body: Body) -> Response {
    reply(
        async {
            let store = store(&st)?;
            let body = read_body(body, st.cfg.server.body_limit_bytes).await?;
            let spec = parse_spec(&body)?;
            let rec = store.update_key(&id, &spec).await.map_err(store_error)?;
            st.key_changed(&rec).await;
            tracing::info!(key_id = %rec.id, "virtual key updated");
            Ok(axum::Json(rec.to_json(st.limits.spent(&rec))).into_response())
        }
        .await,
    )
}

pub async fn revoke_key(State(st): State<SharedState>, PathParam(id): PathParam) -> Response {
    reply(
        async {
            let rec = store(&st)?.revoke_key(&id).await.map_err(store_error)?;
            st.key_changed(&rec).await;
            tracing::info!(key_id = %rec.id, "virtual key revoked");
            Ok(axum::Json(rec.to_json(st.limits.spent(&rec))).into_response())
        }
        .await,
    )
}
