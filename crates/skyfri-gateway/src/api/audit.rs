//! `GET /system/audit?since=...&limit=...` (admin only): the latest audit entries, oldest
//! first. `since` is an RFC3339 time or a lifetime back from now (`90m`, `1h`, `7d`).

use axum::extract::State;

use crate::extract::Query;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use skyfri_core::auth::AuditRecord;

use crate::error::GatewayError;
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

#[derive(Deserialize)]
pub struct AuditQuery {
    since: Option<String>,
    limit: Option<u32>,
}

fn since(s: &str) -> Result<DateTime<Utc>, GatewayError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let secs = skyfri_core::auth::parse_lifetime(s).map_err(|_| {
        GatewayError::bad_request(format!(
            "since: {s:?} is neither an RFC3339 time nor a duration such as 1h"
        ))
    })?;
    Ok(Utc::now() - chrono::Duration::seconds(secs.min(i64::MAX as u64 / 2) as i64))
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<impl IntoResponse, GatewayError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(GatewayError::bad_request(format!(
            "limit: {limit} is not from 1 to {MAX_LIMIT}"
        )));
    }
    let since = q.since.as_deref().map(since).transpose()?;
    state.audit.flush().await;
    let entries = state
        .blocking(move |s| Ok(s.store.list_audit(since, limit)?))
        .await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditRecord {
                id: e.id,
                at: e.entry.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                who: e.entry.who,
                action: e.entry.action,
                target: e.entry.target,
                client: e.entry.client,
                outcome: e.entry.outcome,
                count: e.count,
            })
            .collect::<Vec<_>>(),
    ))
}
