//! `/system/async/calls`: list async calls (`?function=&state=&limit=`), show one
//! (`/CALL-ID`), cancel a queued one (`DELETE /CALL-ID`: 200, 404, or 409 once it runs or
//! has ended) and re-drive a dead one (`POST /CALL-ID/redrive`: 200, 404, or 409 unless
//! dead). Views leave out the body in lists and redact credentials in headers.

use axum::extract::State;

use crate::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skyfri_queue::{CallRecord, CallState, Cancelled, ListFilter};

use crate::async_calls::queue_error;
use crate::error::GatewayError;
use crate::state::AppState;

/// The most calls one list answers.
pub const MAX_LIMIT: usize = 1000;

/// Headers whose values a view does not show.
const SECRET_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// One async call as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    pub id: String,
    pub function: String,
    /// `queued`, `running`, `retrying`, `done`, `dead` or `cancelled`.
    pub state: String,
    /// The run in progress or the last one; 0 before the first.
    pub attempt: u32,
    /// The function's last status, once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Retrying: the last failure; dead: why it was given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Retrying: when it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// Done: how long the run took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub body_bytes: usize,
    /// Base64; in single views only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub enqueued_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CallView {
    pub fn new(r: CallRecord, with_body: bool) -> CallView {
        let state = r.state.name().to_string();
        let (attempt, status, error, next_at, duration_ms) = match r.state {
            CallState::Queued | CallState::Cancelled => (0, None, None, None, None),
            CallState::Running { attempt } => (attempt, None, None, None, None),
            CallState::Retrying {
                attempt,
                next_at,
                last_status,
                last_error,
            } => (attempt, Some(last_status), last_error, Some(next_at), None),
            CallState::Done {
                attempt,
                status,
                duration_ms,
            } => (attempt, Some(status), None, None, Some(duration_ms)),
            CallState::Dead {
                attempt,
                status,
                reason,
            } => (attempt, Some(status), Some(reason), None, None),
        };
        let call = r.call;
        let headers = call
            .headers
            .into_iter()
            .map(|(k, v)| {
                if SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                    (k, "<redacted>".to_string())
                } else {
                    (k, v)
                }
            })
            .collect();
        CallView {
            id: call.id,
            function: call.function,
            state,
            attempt,
            status,
            error,
            next_at,
            duration_ms,
            method: call.method,
            path: call.path,
            query: call.query,
            headers,
            callback_url: call.callback_url,
            body_bytes: call.body.len(),
            body: with_body.then(|| base64::engine::general_purpose::STANDARD.encode(&call.body)),
            enqueued_at: call.enqueued_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    function: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, GatewayError> {
    let filter = ListFilter {
        function: q.function.filter(|f| !f.is_empty()),
        state: q.state.filter(|s| !s.is_empty()),
        limit: q.limit.unwrap_or(ListFilter::DEFAULT_LIMIT).min(MAX_LIMIT),
    };
    let calls = state.queue.list(&filter).await.map_err(queue_error)?;
    Ok(Json(
        calls
            .into_iter()
            .map(|r| CallView::new(r, false))
            .collect::<Vec<_>>(),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, GatewayError> {
    let record = state
        .queue
        .get(&id)
        .await
        .map_err(queue_error)?
        .ok_or_else(|| GatewayError::not_found(format!("no async call {id:?}")))?;
    Ok(Json(CallView::new(record, true)))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, GatewayError> {
    Ok(Json(cancel_call(&state, &id).await?))
}

/// Cancels a queued or retrying call; the JSON to answer with.
pub async fn cancel_call(state: &AppState, id: &str) -> Result<serde_json::Value, GatewayError> {
    match state.queue.cancel(id).await.map_err(queue_error)? {
        Cancelled::Cancelled => {
            tracing::info!(call_id = %id, "async call cancelled");
            Ok(serde_json::json!({ "id": id, "state": "cancelled" }))
        }
        Cancelled::NotFound => Err(GatewayError::not_found(format!("no async call {id:?}"))),
        Cancelled::TooLate(now) => Err(GatewayError::Caller {
            status: StatusCode::CONFLICT,
            message: format!(
                "async call {id:?} is {}: only queued or retrying calls can be cancelled",
                now.name()
            ),
        }),
    }
}

pub async fn redrive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, GatewayError> {
    if state.queue.redrive(&id).await.map_err(queue_error)? {
        tracing::info!(call_id = %id, "dead async call re-driven");
        return Ok(Json(serde_json::json!({ "id": id, "state": "queued" })));
    }
    let now = state
        .queue
        .get(&id)
        .await
        .map_err(queue_error)?
        .map_or("gone", |r| r.state.name());
    Err(GatewayError::Caller {
        status: StatusCode::CONFLICT,
        message: format!("async call {id:?} is {now}: only dead calls can be re-driven"),
    })
}
