//! One run of an async call: send it through the invoke path ([`crate::invoke::forward`]),
//! keep its lease alive meanwhile, decide from the answer and the function's retry policy
//! whether it is done, to be retried or dead, record that in the queue, and only then post
//! the callback.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use skyfri_core::retry::{self, RetryPolicy, Verdict, ATTEMPTS};
use skyfri_queue::{AsyncCall, Delivery, Finished, QueueError};
use tokio::sync::watch;

use super::callback::{self, Report};
use crate::error::GatewayError;
use crate::invoke::{self, header_value, Outgoing};
use crate::state::{AppState, Live};

/// Room on top of the function's timeout before a lease lapses (it is renewed every third
/// of its length while the call runs, so this only matters when the gateway dies).
pub const LEASE_SLACK: Duration = Duration::from_secs(30);

/// How long a worker holds a call of a function whose timeout is `timeout`.
pub fn lease_for(timeout: Duration) -> Duration {
    timeout + LEASE_SLACK
}

/// Waits until `signal` turns true: `true` then, `false` (at once) when nobody can turn it
/// any more, which disables a `true = told(..)` branch of a `select!`.
pub(crate) async fn told(signal: &mut watch::Receiver<bool>) -> bool {
    signal.wait_for(|s| *s).await.is_ok()
}

/// Why a run ended without a result.
enum Unfinished {
    LeaseLost,
    HandBack,
}

/// What one run gave.
#[derive(Debug)]
pub struct Ran {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Why the platform could not run the call (the function's own failures are statuses).
    pub error: Option<String>,
    pub duration: Duration,
    pub retry_after: Option<Duration>,
}

impl Ran {
    fn failed(e: GatewayError, duration: Duration) -> Ran {
        let status = e.status().as_u16();
        let message = e.to_string();
        let body = serde_json::json!({
            "error": message,
            "status": status,
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ran {
            status,
            headers,
            body: Bytes::from(body.to_string()),
            error: Some(message),
            duration,
            retry_after: None,
        }
    }

    /// What went wrong, for the queue's record: the platform's reason, else the start of the
    /// function's answer.
    pub(crate) fn describe(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        let mut cut: String = text.chars().take(200).collect();
        if cut.len() < text.len() {
            cut.push_str("...");
        }
        match cut.is_empty() {
            true => format!("the function answered {}", self.status),
            false => format!("the function answered {}: {cut}", self.status),
        }
    }
}

/// Runs one delivered call to its end (or until its lease is lost), and reports it. When
/// `hand_back` turns true first (the gateway is stopping and its grace period is over), the
/// run is abandoned and the call handed back to the queue, due again at once.
pub async fn run(
    state: &AppState,
    delivery: Delivery,
    lease: Duration,
    mut hand_back: watch::Receiver<bool>,
) {
    let function = delivery.call.function.clone();
    let call_id = delivery.call.id.clone();
    let attempt = delivery.attempt;

    let Some(live) = state.live(&function) else {
        // Removed between the hand-out and now: try again later, it may come back.
        let finished = Finished::Retry {
            after: retry::DEFAULT_MIN_WAIT,
            status: StatusCode::NOT_FOUND.as_u16(),
            error: Some(format!("function {function:?} is not deployed")),
        };
        report(state, delivery, finished, None).await;
        return;
    };
    let policy = RetryPolicy::from_spec(&live.deployment.spec).unwrap_or_else(|e| {
        // Deploys validate the policy; a stored one that no longer parses gets the defaults.
        tracing::warn!(function = %function, error = %e, "retry policy not readable; using the defaults");
        RetryPolicy::default()
    });

    let ran = {
        let once = run_once(state, &live, &delivery.call, attempt);
        tokio::pin!(once);
        let every = (lease / 3).max(Duration::from_millis(100));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ran = &mut once => break Ok(ran),
                _ = beat.tick() => match state.queue.heartbeat(&delivery, lease).await {
                    Ok(()) => {}
                    Err(QueueError::LeaseLost(_)) => break Err(Unfinished::LeaseLost),
                    Err(e) => tracing::warn!(function = %function, call_id = %call_id, error = %e, "lease not renewed"),
                },
                true = told(&mut hand_back) => break Err(Unfinished::HandBack),
            }
        }
    };
    let ran = match ran {
        Ok(ran) => ran,
        Err(Unfinished::LeaseLost) => {
            tracing::warn!(function = %function, call_id = %call_id, attempt, "lease lost while the call ran; another worker has it, this run's result is dropped");
            state.metrics.async_outcome(&function, "lost");
            return;
        }
        Err(Unfinished::HandBack) => {
            match state.queue.release(delivery).await {
                Ok(()) => {
                    tracing::info!(function = %function, call_id = %call_id, attempt, "async call unfinished when the gateway stopped; handed back to the queue, due again at once");
                    state.metrics.async_outcome(&function, "released");
                }
                Err(QueueError::LeaseLost(_)) => {
                    state.metrics.async_outcome(&function, "lost");
                }
                Err(e) => {
                    tracing::warn!(function = %function, call_id = %call_id, attempt, error = %e, "async call not handed back; it runs again when its lease lapses");
                }
            }
            return;
        }
    };

    let verdict = policy.decide(attempt, ran.status, ran.retry_after, &mut rand::rng());
    let (finished, end) = match verdict {
        Verdict::Done => (
            Finished::Done {
                status: ran.status,
                duration: ran.duration,
            },
            Some("done"),
        ),
        Verdict::Retry(after) => (
            Finished::Retry {
                after,
                status: ran.status,
                error: Some(ran.describe()),
            },
            None,
        ),
        Verdict::OutOfAttempts => (
            Finished::Dead {
                status: ran.status,
                reason: format!(
                    "{}; out of attempts ({attempt} of {} allowed by {ATTEMPTS})",
                    ran.describe(),
                    policy.attempts,
                ),
            },
            Some("dead"),
        ),
    };
    let callback = match (end, &delivery.call.callback_url) {
        (Some(end), Some(url)) => Some(Report {
            url: url.clone(),
            call_id: call_id.clone(),
            function: function.clone(),
            status: ran.status,
            headers: ran.headers,
            body: ran.body,
            duration: ran.duration,
            attempt,
            attempts: policy.attempts,
            state: end,
        }),
        _ => None,
    };
    report(state, delivery, finished, callback).await;
}

/// Records how the run ended, then (only once that is durable) posts the callback.
async fn report(
    state: &AppState,
    delivery: Delivery,
    finished: Finished,
    callback: Option<Report>,
) {
    let (function, call_id, attempt) = (
        delivery.call.function.clone(),
        delivery.call.id.clone(),
        delivery.attempt,
    );
    let outcome = match &finished {
        Finished::Done { .. } => "done",
        Finished::Retry { .. } => "retried",
        Finished::Dead { .. } => "dead",
    };
    match state.queue.finish(delivery, finished.clone()).await {
        Ok(()) => {
            state.metrics.async_outcome(&function, outcome);
            match &finished {
                Finished::Done { status, duration } => {
                    tracing::debug!(function = %function, call_id = %call_id, attempt, status, seconds = duration.as_secs_f64(), "async call done")
                }
                Finished::Retry {
                    after,
                    status,
                    error,
                } => {
                    tracing::info!(function = %function, call_id = %call_id, attempt, status, retry_in = ?after, error = error.as_deref().unwrap_or(""), "async call failed; will retry")
                }
                Finished::Dead { status, reason } => {
                    tracing::warn!(function = %function, call_id = %call_id, attempt, status, reason = %reason, "async call dead")
                }
            }
            if let Some(report) = callback {
                callback::spawn(state, report);
            }
        }
        Err(QueueError::LeaseLost(_)) => {
            state.metrics.async_outcome(&function, "lost");
            tracing::warn!(function = %function, call_id = %call_id, attempt, "lease lost before the result was recorded; another worker has the call, this result is dropped");
        }
        Err(e) => {
            // Its lease will lapse and the call run again: at least once.
            tracing::error!(function = %function, call_id = %call_id, attempt, error = %e, "async result not recorded; the call will run again");
        }
    }
}

/// The stored call as the request sent to a replica, marked with its attempt.
fn outgoing(call: &AsyncCall, attempt: u32) -> Result<Outgoing, GatewayError> {
    let method = Method::from_bytes(call.method.as_bytes()).map_err(|_| {
        GatewayError::bad_request(format!("{:?} is not an HTTP method", call.method))
    })?;
    let mut headers = HeaderMap::with_capacity(call.headers.len() + 1);
    for (k, v) in &call.headers {
        // They were valid when the call was accepted.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    headers.insert(
        HeaderName::from_static(super::ATTEMPT_HEADER),
        HeaderValue::from(attempt),
    );
    let suffix = if call.path.starts_with('/') {
        call.path.clone()
    } else {
        format!("/{}", call.path)
    };
    Ok(Outgoing {
        method,
        suffix,
        query: (!call.query.is_empty()).then(|| call.query.clone()),
        headers,
        body: call.body.clone(),
    })
}

/// Sends the call once and reads the whole answer (bounded in size by the gateway's body
/// limit and in time by the function's timeout).
pub(crate) async fn run_once(
    state: &AppState,
    live: &Arc<Live>,
    call: &AsyncCall,
    attempt: u32,
) -> Ran {
    let start = Instant::now();
    let result = match outgoing(call, attempt) {
        Ok(out) => {
            let id = header_value(&call.id);
            invoke::forward(state, live, out, &id, &invoke::start_time()).await
        }
        Err(e) => Err(e),
    };
    let ran = match result {
        Ok(response) => read(state, live, response).await,
        Err(e) => Ran::failed(e, start.elapsed()),
    };
    let ran = Ran {
        duration: start.elapsed(),
        ..ran
    };
    invoke::record(state, live, ran.status, start);
    ran
}

/// The 504 a body ended with when the deadline cut it, found in the error's chain.
fn cut_at_deadline<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a GatewayError> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(cut) = e.downcast_ref::<GatewayError>() {
            return Some(cut);
        }
        next = e.source();
    }
    None
}

async fn read(state: &AppState, live: &Live, response: Response) -> Ran {
    let spec = &live.deployment.spec;
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let retry_after = parts
        .headers
        .get(axum::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    // The body ends at the call's deadline (see `invoke::forward`).
    let read = Limited::new(body, state.max_body).collect().await;
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            tracing::warn!(function = %spec.name, limit = state.max_body, "async answer larger than the body limit: its body is dropped");
            Bytes::new()
        }
        Err(e) => {
            let error = match cut_at_deadline(e.as_ref()) {
                Some(cut) => GatewayError::Function {
                    status: cut.status(),
                    message: cut.to_string(),
                },
                None => GatewayError::Function {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "function {:?} failed while sending its answer: {e}",
                        spec.name
                    ),
                },
            };
            return Ran::failed(error, Duration::ZERO);
        }
    };
    Ran {
        status,
        headers: parts.headers,
        body,
        error: None,
        duration: Duration::ZERO,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str, query: &str) -> AsyncCall {
        AsyncCall {
            id: "c".into(),
            function: "f".into(),
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: vec![
                ("x-a".into(), "1".into()),
                ("x-a".into(), "2".into()),
                (super::super::ATTEMPT_HEADER.into(), "99".into()),
            ],
            body: Bytes::from_static(b"b"),
            callback_url: None,
            enqueued_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_body_cut_at_the_deadline_is_known_by_its_error() {
        // As `invoke::forward`'s body ends at the deadline: a chunk, then the 504.
        let cut = GatewayError::Function {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: "function \"f\" did not answer within its timeout of 1s".into(),
        };
        let frames: Vec<Result<Bytes, axum::BoxError>> =
            vec![Ok(Bytes::from_static(b"data: 1\n\n")), Err(Box::new(cut))];
        let body = axum::body::Body::from_stream(futures_util::stream::iter(frames));
        let e = Limited::new(body, 1024)
            .collect()
            .await
            .expect_err("the body fails");
        let found = cut_at_deadline(e.as_ref()).expect("the 504 in the chain");
        assert_eq!(found.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(found.to_string().contains("timeout of 1s"), "{found}");
        // Another failure is not mistaken for it.
        let other: Vec<Result<Bytes, std::io::Error>> =
            vec![Err(std::io::Error::other("connection reset"))];
        let body = axum::body::Body::from_stream(futures_util::stream::iter(other));
        let e = Limited::new(body, 1024).collect().await.expect_err("fails");
        assert!(cut_at_deadline(e.as_ref()).is_none());
    }

    #[test]
    fn stored_calls_go_out_as_they_came_in() {
        let out = outgoing(&call("PUT", "/a/b", "x=1"), 2).expect("valid");
        assert_eq!(out.method, Method::PUT);
        assert_eq!(out.suffix, "/a/b");
        assert_eq!(out.query.as_deref(), Some("x=1"));
        let a: Vec<_> = out.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        // The attempt is the gateway's, whatever the caller sent.
        assert_eq!(
            out.headers
                .get_all(super::super::ATTEMPT_HEADER)
                .iter()
                .collect::<Vec<_>>(),
            ["2"]
        );
        let out = outgoing(&call("GET", "", ""), 1).expect("valid");
        assert_eq!((out.suffix.as_str(), out.query), ("/", None));
        assert!(outgoing(&call("NOT A METHOD", "/", ""), 1).is_err());
    }

    #[test]
    fn descriptions() {
        let ran = |status, body: &'static [u8], error: Option<&str>| Ran {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            error: error.map(str::to_string),
            duration: Duration::ZERO,
            retry_after: None,
        };
        assert_eq!(
            ran(500, b" boom\n", None).describe(),
            "the function answered 500: boom"
        );
        assert_eq!(ran(503, b"", None).describe(), "the function answered 503");
        assert_eq!(
            ran(502, b"x", Some("replica crashed")).describe(),
            "replica crashed"
        );
        let long = ran(500, &[b'x'; 300], None).describe();
        assert!(long.ends_with("...") && long.len() < 260, "{long}");
        assert_eq!(lease_for(Duration::from_secs(60)), Duration::from_secs(90));
    }
}
