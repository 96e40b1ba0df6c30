//! FleetLock (the protocol Zincati speaks to airlock): `POST /v1/pre-reboot` takes a slot
//! for `client_params.id` in `client_params.group`'s semaphore, `POST /v1/steady-state`
//! gives it back; both need the header `fleet-lock-protocol: true`. Served on locksmith's
//! own semaphores (group `default` is locksmith's default one), so FleetLock clients and
//! locksmithd take turns on one lock. Unlike locksmith's `lock`, a holder asking again
//! succeeds, and giving back a slot not held is not an error (FleetLock's semantics).
//! Errors are `{"kind": …, "value": …}` with airlock's kinds.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

use crate::etcd::{Error, LockClient};
use crate::semaphore::Refused;

/// Where the semaphores are.
#[derive(Debug, Clone)]
pub struct Service {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// How long an etcd request may take.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
struct Body {
    client_params: Params,
}

#[derive(Debug, Deserialize)]
struct Params {
    id: String,
    group: String,
}

fn error(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    let body = serde_json::json!({"kind": kind, "value": value.into()}).to_string();
    (status, [("content-type", "application/json")], body).into_response()
}

/// The request's (id, locksmith group), or the error to answer.
fn client(headers: &HeaderMap, body: &[u8]) -> Result<(String, String), Box<Response>> {
    let protocol = headers
        .get("fleet-lock-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !protocol {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "missing_protocol_header",
            "the fleet-lock-protocol header must be \"true\"",
        )));
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_parameters",
            format!("the body is not FleetLock's client_params: {e}"),
        ))
    })?;
    let Params { id, group } = b.client_params;
    if id.is_empty() || id.len() > 256 {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            "client_params.id must be 1 to 256 characters",
        )));
    }
    let group_ok = !group.is_empty()
        && group.len() <= 64
        && group
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    if !group_ok {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_client_group",
            format!("client_params.group {group:?} must match ^[a-zA-Z0-9.-]+$"),
        )));
    }
    let group = if group == "default" {
        String::new()
    } else {
        group
    };
    Ok((id, group))
}

async fn semaphore(svc: &Service, group: &str) -> Result<LockClient, Response> {
    LockClient::connect(&svc.endpoints, group, svc.timeout)
        .await
        .map_err(|e| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed_sem_init",
                e.to_string(),
            )
        })
}

/// The request's client and its group's semaphore, or the error to answer.
async fn open(
    svc: &Service,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, LockClient), Box<Response>> {
    let (id, group) = client(headers, body)?;
    let sem = semaphore(svc, &group).await.map_err(Box::new)?;
    Ok((id, sem))
}

async fn pre_reboot(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (id, mut sem) = match open(&svc, &headers, &body).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    // A holder asking again holds its slot already.
    if let Ok((s, _)) = sem.get().await {
        if s.holders().contains(&id) {
            return StatusCode::OK.into_response();
        }
    }
    match sem.lock(&id).await {
        Ok(()) | Err(Error::Refused(Refused::HolderExists)) => StatusCode::OK.into_response(),
        Err(Error::Refused(Refused::Full(n))) => error(
            StatusCode::CONFLICT,
            "failed_lock_semaphore_full",
            format!("semaphore is at {n}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_lock",
            e.to_string(),
        ),
    }
}

async fn steady_state(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (id, mut sem) = match open(&svc, &headers, &body).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    match sem.unlock(&id).await {
        Ok(()) | Err(Error::Refused(Refused::HolderNotExist)) => StatusCode::OK.into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_unlock",
            e.to_string(),
        ),
    }
}

/// The FleetLock routes on `svc`.
pub fn router(svc: Service) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(Arc::new(svc))
}
