//! `/system/logs`: a function's persisted logs as NDJSON, optionally followed live.

use axum::body::Body;
use axum::extract::State;

use crate::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use skyfri_runtime::LogLine;

use crate::error::GatewayError;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct LogsQuery {
    name: String,
    since: Option<String>,
    tail: Option<i64>,
    follow: Option<bool>,
    instance: Option<String>,
}

fn ndjson(line: &LogLine) -> Bytes {
    let mut v = serde_json::json!({
        "name": line.name,
        "namespace": skyfri_core::function::DEFAULT_NAMESPACE,
        "instance": line.instance,
        "timestamp": line.timestamp.to_rfc3339(),
        "text": line.text,
    })
    .to_string();
    v.push('\n');
    Bytes::from(v)
}

pub async fn logs(
    State(state): State<AppState>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, GatewayError> {
    let name = q.name.clone();
    if state
        .with_store(move |s| s.get_function(&name))
        .await?
        .is_none()
    {
        return Err(GatewayError::not_found(format!(
            "function {:?} not found",
            q.name
        )));
    }
    let since = q
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| GatewayError::bad_request(format!("since: {s:?} is not RFC3339: {e}")))
        })
        .transpose()?;
    let tail = q.tail.filter(|&t| t > 0).map(|t| t as usize);
    let instance = q.instance.clone();
    let keep = move |l: &LogLine| instance.as_ref().is_none_or(|i| &l.instance == i);
    // Subscribe before reading history so no line falls between the two.
    let live = q
        .follow
        .unwrap_or(false)
        .then(|| state.provider.follow_logs(&q.name));
    let history: Vec<Bytes> = state
        .provider
        .logs(&q.name, since, tail)
        .iter()
        .filter(|l| keep(l))
        .map(ndjson)
        .collect();
    let head = futures_util::stream::iter(history.into_iter().map(Ok::<_, std::io::Error>));
    let body = match live {
        None => Body::from_stream(head),
        Some(rx) => {
            let tail = futures_util::stream::unfold(rx, move |mut rx| {
                let keep = keep.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok(line) if keep(&line) => return Some((Ok(ndjson(&line)), rx)),
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return None,
                        }
                    }
                }
            });
            Body::from_stream(futures_util::StreamExt::chain(head, tail))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
