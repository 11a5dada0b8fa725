//! The gateway's side of the shim, on the replica's unix socket: `GET /_/health` (ready once
//! the runtime client has asked for its first event), and calls, each handed to the runtime
//! client as one event. An HTTP call becomes an API Gateway HTTP API (2.0) event and the
//! result is mapped back as API Gateway does; under `X-Skyfri-Lambda-Event: raw` (the
//! gateway's Invoke API) the body is the event and the result the answer, verbatim. A handler
//! error is a 502 carrying `X-Skyfri-Function-Error: TYPE` and the runtime's error JSON.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skyfri_core::lambda::{
    self as mapping, EVENT_HEADER, EVENT_RAW, FUNCTION_ERROR_HEADER, SOURCE_IP_HEADER,
};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::{Invocation, Outcome, Shared};

/// How much later than the gateway this side gives up on an event (see `deadline`).
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Calls larger than this are refused here too (the gateway has its own, lower, limit).
const MAX_EVENT_BYTES: usize = 64 << 20;

pub(super) async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// The platform's error shape for what the function got wrong.
fn function_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body =
        serde_json::json!({"error": message, "source": "function", "status": status.as_u16()});
    json(status, body.to_string().into_bytes())
}

/// Counts a call in flight for draining, until dropped.
struct Busy<'a>(&'a Shared);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.uri().path() == "/_/health" {
        return if shared.ready.load(Ordering::Acquire) {
            json(StatusCode::OK, b"{\"status\":\"ok\"}".to_vec())
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                b"{\"status\":\"starting\"}".to_vec(),
            )
        };
    }
    shared.busy.fetch_add(1, Ordering::AcqRel);
    let _busy = Busy(shared);
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_EVENT_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                br#"{"error":"the event is too large","source":"caller","status":413}"#.to_vec(),
            )
        }
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let raw = header(EVENT_HEADER).is_some_and(|v| v.eq_ignore_ascii_case(EVENT_RAW));
    let request_id = header("x-call-id")
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .map_or_else(random_id, str::to_string);
    let now = Utc::now();
    let event = if raw {
        body
    } else {
        let headers: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .filter(|(name, _)| !is_internal(name) && *name != hyper::header::HOST)
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            // The caller's Host: the gateway names the replica's socket in its own.
            .chain(
                parts
                    .headers
                    .get("x-forwarded-host")
                    .or(parts.headers.get(hyper::header::HOST))
                    .map(|h| ("host".to_string(), h.as_bytes().to_vec())),
            )
            .collect();
        // The gateway's word only (it drops a caller's): a handler may trust sourceIp.
        let source_ip = header(SOURCE_IP_HEADER).unwrap_or("127.0.0.1");
        let protocol = format!("{:?}", parts.version);
        let call = mapping::HttpCall {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            protocol: &protocol,
            headers: &headers,
            body: &body,
            source_ip,
            request_id: &request_id,
            time: now,
        };
        Bytes::from(mapping::http_event(&call).to_string())
    };
    // Lambda passes the client context decoded.
    let client_context = header("x-amz-client-context").and_then(|c| {
        base64::engine::general_purpose::STANDARD
            .decode(c)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
    });
    let timeout = shared.config.timeout;
    let deadline_ms =
        now.timestamp_millis() + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
    let (reply, outcome) = oneshot::channel();
    // The handler's deadline (`deadline_ms`) is the function's timeout; this side waits a
    // little longer, so that through the gateway its own deadline answers first (a 504 naming
    // the limit) rather than both timers racing.
    let deadline = tokio::time::Instant::now() + timeout + DEADLINE_GRACE;
    let invocation = Invocation {
        request_id,
        event,
        deadline_ms,
        deadline,
        trace_id: header("x-amzn-trace-id").map_or_else(trace_id, str::to_string),
        client_context,
        cognito_identity: None,
        reply,
    };
    if shared.queue.send(invocation).is_err() {
        return function_error(StatusCode::BAD_GATEWAY, "the runtime client is gone");
    }
    // The runtime's side ends every taken event by its deadline (`watch_deadline`); this
    // bounds the wait of one still queued.
    let outcome = match tokio::time::timeout(timeout + DEADLINE_GRACE, outcome).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => {
            return function_error(
                StatusCode::BAD_GATEWAY,
                "the runtime client stopped before it answered",
            )
        }
        Err(_) => {
            let message = format!(
                "the event waited {:.2} seconds for the runtime client",
                timeout.as_secs_f64()
            );
            return handler_error(
                "Sandbox.Timedout",
                Bytes::from(mapping::error_json("Sandbox.Timedout", &message)),
            );
        }
    };
    match outcome {
        Outcome::Error(error_type, body) => handler_error(&error_type, body),
        Outcome::Response(result) if raw => json(StatusCode::OK, result.to_vec()),
        Outcome::Response(result) => match mapping::http_answer(&result) {
            Ok(answer) => {
                let mut res = Response::new(Full::new(Bytes::from(answer.body)));
                *res.status_mut() =
                    StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                for (name, value) in answer.headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        res.headers_mut().append(n, v);
                    }
                }
                res
            }
            Err(e) => function_error(StatusCode::BAD_GATEWAY, &e.to_string()),
        },
    }
}

/// A 502 naming the error type, with the runtime's error JSON (made into one if the runtime
/// posted something else).
fn handler_error(error_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let body = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => body.to_vec(),
        _ => mapping::error_json(error_type, &String::from_utf8_lossy(&body)),
    };
    let mut res = json(StatusCode::BAD_GATEWAY, body);
    if let Ok(v) = HeaderValue::from_str(error_type) {
        res.headers_mut().insert(FUNCTION_ERROR_HEADER, v);
    }
    res
}

/// Headers the gateway adds for the platform, not part of the caller's request.
fn is_internal(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        EVENT_HEADER
            | SOURCE_IP_HEADER
            | "x-start-time"
            | "x-call-id"
            | "x-forwarded-host"
            | "x-amz-client-context"
    )
}

fn random_id() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// An X-Ray trace header, `Root=1-{epoch hex}-{96 random bits};Sampled=0`.
fn trace_id() -> String {
    let r: u128 = rand::random();
    format!(
        "Root=1-{:08x}-{:024x};Sampled=0",
        Utc::now().timestamp(),
        r >> 32
    )
}
