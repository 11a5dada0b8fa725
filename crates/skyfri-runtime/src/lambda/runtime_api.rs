//! The Lambda Runtime API (2018-06-01) the runtime client polls: `GET
//! /runtime/invocation/next` (blocks until an event), `POST
//! /runtime/invocation/{id}/response|error`, `POST /runtime/init/error`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{peer, Outcome, Shared};

const PREFIX: &str = "/2018-06-01/runtime/";
/// Lambda's limit for a synchronous response, with room for the error JSON's stack traces.
const MAX_POST_BYTES: usize = 6 << 20;

/// Accepts the runtime client's connections until the shim exits.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let guard = peer::Guard::new(local);
    loop {
        let Ok((stream, peer_addr)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            if let Err(in_a_row) = guard.admit(peer_addr).await {
                // One line per power of two, so a connection loop does not flood the log.
                if in_a_row.is_power_of_two() {
                    eprintln!(
                        "skyfri: refused a Runtime API connection from {peer_addr}: it is not a process of this replica ({in_a_row} refused in a row)"
                    );
                }
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(req, shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(route) = path.strip_prefix(PREFIX) else {
        return reply(
            StatusCode::NOT_FOUND,
            r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
        );
    };
    let method = req.method().clone();
    match (method, route) {
        (Method::GET, "invocation/next") => next(&shared).await,
        (Method::POST, "init/error") => {
            let (error_type, body) = match error_of(req).await {
                Ok(e) => e,
                Err(res) => return res,
            };
            shared.fail(&format!(
                "the function failed to initialise: {error_type}: {}",
                skyfri_core::lambda::error_message(&body)
            ));
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        (Method::POST, route) => {
            let Some(rest) = route.strip_prefix("invocation/") else {
                return reply(
                    StatusCode::NOT_FOUND,
                    r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
                );
            };
            let Some((id, what)) = rest.split_once('/') else {
                return reply(
                    StatusCode::NOT_FOUND,
                    r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
                );
            };
            let id = id.to_string();
            let outcome = match what {
                "response" => match read(req).await {
                    Ok(body) => Outcome::Response(body),
                    Err(res) => return res,
                },
                "error" => match error_of(req).await {
                    Ok((error_type, body)) => Outcome::Error(error_type, body),
                    Err(res) => return res,
                },
                _ => {
                    return reply(
                        StatusCode::NOT_FOUND,
                        r#"{"errorMessage":"unknown path","errorType":"InvalidRequest"}"#,
                    )
                }
            };
            let Some(waiting) = shared.inflight().remove(&id) else {
                // Lambda's answer for an id it does not know (or one already answered).
                return reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"errorMessage":"unknown or already answered request id","errorType":"InvalidRequestID"}"#,
                );
            };
            // The caller may have gone (a deadline passed): nothing more to do then.
            let _ = waiting.send(outcome);
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"errorMessage":"method not allowed","errorType":"InvalidRequest"}"#,
        ),
    }
}

/// Blocks until an event whose caller still waits, and hands it over.
async fn next(shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    shared.ready.store(true, Ordering::Release);
    let invocation = {
        let mut queue = shared.next.lock().await;
        loop {
            match queue.recv().await {
                Some(inv) if inv.reply.is_closed() => continue,
                Some(inv) => break inv,
                None => {
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"errorMessage":"shutting down","errorType":"ServiceException"}"#,
                    )
                }
            }
        }
    };
    let mut res = Response::new(Full::new(invocation.event));
    let headers = res.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &invocation.request_id);
    set(
        "lambda-runtime-deadline-ms",
        &invocation.deadline_ms.to_string(),
    );
    set(
        "lambda-runtime-invoked-function-arn",
        &shared.config.function_arn,
    );
    set("lambda-runtime-trace-id", &invocation.trace_id);
    if let Some(context) = &invocation.client_context {
        set("lambda-runtime-client-context", context);
    }
    if let Some(identity) = &invocation.cognito_identity {
        set("lambda-runtime-cognito-identity", identity);
    }
    set("content-type", "application/json");
    let id = invocation.request_id;
    shared.inflight().insert(id.clone(), invocation.reply);
    tokio::spawn(watch_deadline(Arc::clone(shared), id, invocation.deadline));
    res
}

/// At the deadline of an event still unanswered, as Lambda: the call fails with
/// `Sandbox.Timedout` and the environment is discarded (the replica restarts), since the
/// runtime client is stuck in the handler.
async fn watch_deadline(shared: Arc<Shared>, id: String, deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline).await;
    let Some(waiting) = shared.inflight().remove(&id) else {
        return;
    };
    let timeout = shared.config.timeout.as_secs_f64();
    let message = format!("Task timed out after {timeout:.2} seconds");
    let _ = waiting.send(Outcome::Error(
        "Sandbox.Timedout".into(),
        Bytes::from(skyfri_core::lambda::error_json(
            "Sandbox.Timedout",
            &message,
        )),
    ));
    shared.fail(&format!("{id}: {message}"));
}

async fn read(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    Limited::new(req.into_body(), MAX_POST_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| {
            reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"errorMessage":"the payload is larger than 6 MB","errorType":"RequestEntityTooLarge"}"#,
            )
        })
}

/// The error type (from the body, else the `Lambda-Runtime-Function-Error-Type` header) and
/// the error JSON.
async fn error_of(req: Request<Incoming>) -> Result<(String, Bytes), Response<Full<Bytes>>> {
    let header = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read(req).await?;
    let error_type = skyfri_core::lambda::error_type(&body, header.as_deref());
    Ok((error_type, body))
}
