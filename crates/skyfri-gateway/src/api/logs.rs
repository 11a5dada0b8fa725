//! `/system/logs`: a function's persisted logs as NDJSON, optionally followed live.
//!
//! The stored lines are read on the blocking pool (file reads would stall a request worker
//! and every call it serves) and streamed to the client in batches of about [`BATCH`] bytes
//! as they are read, the reader waiting while the client is behind: a read of the whole
//! history holds a batch or two in memory, never the history. Followed lines come after
//! them, none missed or repeated between the two. A client that takes nothing for
//! [`STALLED`] has its answer cut, so that it cannot hold a thread of the blocking pool
//! (which also runs the store's reads) for as long as it keeps the connection open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;

use crate::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Deserialize;
use skyfri_runtime::{LogLine, LogQuery};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::GatewayError;
use crate::state::AppState;

/// Bytes of NDJSON sent to the client at a time.
pub const BATCH: usize = 64 * 1024;
/// Batches read ahead of the client.
const AHEAD: usize = 2;
/// How long a stored-lines read waits for a client that takes nothing.
const STALLED: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
pub struct LogsQuery {
    name: String,
    since: Option<String>,
    tail: Option<i64>,
    follow: Option<bool>,
    instance: Option<String>,
}

fn ndjson(line: &LogLine, out: &mut Vec<u8>) {
    let v = serde_json::json!({
        "name": line.name,
        "namespace": skyfri_core::function::DEFAULT_NAMESPACE,
        "instance": line.instance,
        "timestamp": line.timestamp.to_rfc3339(),
        "text": line.text,
    });
    // Writing JSON values to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
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
    let query = LogQuery {
        since,
        tail: q.tail.filter(|&t| t > 0).map(|t| t as usize),
        instance: q.instance.clone(),
        follow: q.follow.unwrap_or(false),
    };
    let (batches, stored) = mpsc::channel::<Bytes>(AHEAD);
    let (live_tx, live) = oneshot::channel();
    let provider = Arc::clone(&state.provider);
    let stalled = Arc::new(AtomicBool::new(false));
    let gave_up = Arc::clone(&stalled);
    tokio::task::spawn_blocking(move || {
        let read = provider.logs(&q.name, &query);
        let _ = live_tx.send(read.live);
        let mut batch = Vec::with_capacity(BATCH + 1024);
        for line in read.stored {
            ndjson(&line, &mut batch);
            // A client that went away, or takes nothing, ends the read.
            if batch.len() >= BATCH && !send_within(&batches, take(&mut batch), STALLED, &gave_up) {
                return;
            }
        }
        if !batch.is_empty() {
            send_within(&batches, take(&mut batch), STALLED, &gave_up);
        }
    });
    let stored = futures_util::stream::unfold(Some(stored), move |rx| {
        let stalled = Arc::clone(&stalled);
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(batch) => Some((Ok(batch), Some(rx))),
                // An error cuts the answer: the client must not take a partial history
                // for the whole (nor followed lines after a gap).
                None if stalled.load(Ordering::Acquire) => Some((
                    Err(std::io::Error::other(
                        "log read cut: the client took nothing",
                    )),
                    None,
                )),
                None => None,
            }
        }
    });
    let instance = q.instance;
    let live = futures_util::stream::once(live)
        .filter_map(|rx| std::future::ready(rx.ok().flatten()))
        .flat_map(move |rx| follow(rx, instance.clone()));
    let body = Body::from_stream(stored.chain(live));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Sends `batch` from a blocking thread, waiting up to `within` for room; false (and
/// `gave_up` set when it was the wait) when the read should end.
fn send_within(
    batches: &mpsc::Sender<Bytes>,
    batch: Bytes,
    within: Duration,
    gave_up: &AtomicBool,
) -> bool {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut batch = batch;
    loop {
        match batches.try_send(batch) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if started.elapsed() >= within {
                    gave_up.store(true, Ordering::Release);
                    return false;
                }
                batch = back;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

fn take(batch: &mut Vec<u8>) -> Bytes {
    Bytes::from(std::mem::replace(batch, Vec::with_capacity(BATCH + 1024)))
}

/// The lines to come (of `instance`, when given), one per chunk.
fn follow(
    rx: broadcast::Receiver<LogLine>,
    instance: Option<String>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, move |mut rx| {
        let instance = instance.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(line) if instance.as_ref().is_none_or(|i| &line.instance == i) => {
                        let mut out = Vec::new();
                        ndjson(&line, &mut out);
                        return Some((Ok(Bytes::from(out)), rx));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_takes_nothing_ends_the_read() {
        let (tx, mut rx) = mpsc::channel(1);
        let gave_up = AtomicBool::new(false);
        let within = Duration::from_millis(30);
        assert!(send_within(&tx, Bytes::from_static(b"a"), within, &gave_up));
        // Full, and nobody takes: the read ends, saying it gave up.
        assert!(!send_within(
            &tx,
            Bytes::from_static(b"b"),
            within,
            &gave_up
        ));
        assert!(gave_up.load(Ordering::Acquire));
        // Gone: ends at once, not a stall.
        let gave_up = AtomicBool::new(false);
        assert_eq!(rx.try_recv().ok(), Some(Bytes::from_static(b"a")));
        drop(rx);
        assert!(!send_within(
            &tx,
            Bytes::from_static(b"c"),
            within,
            &gave_up
        ));
        assert!(!gave_up.load(Ordering::Acquire));
    }
}
