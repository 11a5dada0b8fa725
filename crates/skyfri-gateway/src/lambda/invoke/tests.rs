//! The Invoke API in one process: the real router and queue, and a replica that keeps the
//! gateway's contract with lambda templates (a raw event in, the result or a 502 with
//! `X-Skyfri-Function-Error` and the error JSON out).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::BodyExt;
use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_runtime::Endpoint;

use super::*;
use crate::testing::{Answer, FakeProvider};

/// What the replica was sent: the raw-event mark and the body.
type Seen = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

/// A lambda replica: answers the event back, or fails as a handler when it says `fail`.
async fn replica(seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = Arc::clone(&seen);
        async move {
            let mark = req
                .headers()
                .get(EVENT_HEADER)
                .map(|v| v.to_str().unwrap().to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push((mark, body.clone()));
            if body.windows(4).any(|w| w == b"fail") {
                let error = skyfri_core::lambda::error_json("ValueError", "asked to fail");
                return (
                    StatusCode::BAD_GATEWAY,
                    [(FUNCTION_ERROR_HEADER, "ValueError")],
                    error,
                )
                    .into_response();
            }
            (StatusCode::OK, body).into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Harness {
    state: AppState,
    gateway: SocketAddr,
    seen: Seen,
    _tmp: tempfile::TempDir,
}

async fn harness(template: Template) -> Harness {
    harness_with(template, &[]).await
}

async fn harness_with(template: Template, annotations: &[(&str, &str)]) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let addr = replica(Arc::clone(&seen)).await;
    let state = crate::testing::state(
        tmp.path(),
        FakeProvider::serving(Endpoint::Tcp(addr)),
        8 << 20,
    );
    let mut spec = FunctionSpec::new("f", "img");
    for (k, v) in annotations {
        spec.annotations.insert(k.to_string(), v.to_string());
    }
    state.set_live(Deployment {
        spec,
        artefact: "sha256:0".into(),
        template,
        replicas: 1,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(crate::serve(
        listener,
        state.clone(),
        crate::server::ServerLimits::default(),
        None,
        None,
        std::future::pending(),
    ));
    Harness {
        state,
        gateway,
        seen,
        _tmp: tmp,
    }
}

impl Harness {
    /// Invokes `f` as the admin (basic auth) with extra headers.
    async fn invoke(&self, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut all = vec![("authorization", "Basic YWRtaW46cHc=")]; // admin:pw
        all.extend_from_slice(headers);
        let path = "/2015-03-31/functions/f/invocations";
        crate::testing::send(self.gateway, "POST", path, &all, body).await
    }

    fn seen(&self) -> Vec<(Option<String>, Bytes)> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_lambda_function_gets_the_raw_event_and_its_errors_are_unhandled() {
    let h = harness(Template::LambdaPython).await;

    let ok = h.invoke(&[], b"{\"n\": 1}").await;
    assert_eq!(ok.status, 200);
    assert_eq!(&ok.body[..], b"{\"n\": 1}");
    assert_eq!(ok.header("x-amz-function-error"), "");
    assert_eq!(ok.header("x-amz-executed-version"), "$LATEST");
    assert!(!ok.header("x-amzn-requestid").is_empty());

    // No payload is an empty object; a payload that is not JSON is refused before any call.
    let empty = h.invoke(&[], b"").await;
    assert_eq!((empty.status, &empty.body[..]), (200, &b"{}"[..]));
    let bad = h.invoke(&[], b"not json").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.header("x-amzn-errortype"),
        "InvalidRequestContentException"
    );

    let failed = h.invoke(&[], b"{\"fail\": true}").await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.header("x-amz-function-error"), "Unhandled");
    assert_eq!(
        failed.header(FUNCTION_ERROR_HEADER),
        "",
        "the internal header stays in"
    );
    let error: serde_json::Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(
        (error["errorType"].as_str(), error["errorMessage"].as_str()),
        (Some("ValueError"), Some("asked to fail"))
    );

    let seen = h.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|(mark, _)| mark.as_deref() == Some(EVENT_RAW)));
    assert_eq!(&seen[1].1[..], b"{}");

    // A queued call carries the mark to the replica too.
    let queued = h
        .invoke(&[("x-amz-invocation-type", "Event")], b"{\"later\": 1}")
        .await;
    assert_eq!(queued.status, 202);
    let id = queued.header("x-amzn-requestid");
    let stored = h.state.queue.get(id).await.unwrap().unwrap();
    assert!(
        stored
            .call
            .headers
            .contains(&(EVENT_HEADER.to_string(), EVENT_RAW.to_string())),
        "{:?}",
        stored.call.headers
    );
    assert_eq!(
        (stored.call.method.as_str(), &stored.call.body[..]),
        ("POST", &b"{\"later\": 1}"[..])
    );

    // A dry run calls nothing.
    let dry = h.invoke(&[("x-amz-invocation-type", "DryRun")], b"").await;
    assert_eq!(dry.status, 204);
    assert_eq!(h.seen().len(), 3);
}

#[tokio::test]
async fn another_function_gets_the_payload_as_a_body_and_its_failures_are_function_errors() {
    let h = harness(Template::Http).await;
    let ok = h.invoke(&[], b"plain text").await;
    assert_eq!((ok.status, &ok.body[..]), (200, &b"plain text"[..]));
    // A 502 without the handler's mark is a failed answer, not a handler's error JSON.
    let failed = h.invoke(&[], b"fail").await;
    assert_eq!(failed.status, 200);
    assert_eq!(failed.header("x-amz-function-error"), "Unhandled");
    let error: serde_json::Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(error["errorType"], "Function.Status502", "{error}");
    assert!(h.seen().iter().all(|(mark, _)| mark.is_none()));
}

#[tokio::test]
async fn lambdas_payload_limits_and_the_functions_rate_apply() {
    let h = harness_with(
        Template::Http,
        &[("com.skyfri.rate", "0.01"), ("com.skyfri.burst", "2")],
    )
    .await;
    // Over Lambda's 1 MiB for Event (the gateway's limit is 8 MiB): refused, naming it.
    let big = vec![b'x'; (1 << 20) + 1];
    let refused = h.invoke(&[("x-amz-invocation-type", "Event")], &big).await;
    assert_eq!(refused.status, 413);
    assert_eq!(
        refused.header("x-amzn-errortype"),
        "RequestTooLargeException"
    );
    assert!(
        String::from_utf8_lossy(&refused.body).contains("Lambda Invoke API (Event: 1 MiB)"),
        "{:?}",
        refused.body
    );
    // The same body is within RequestResponse's 6 MiB.
    let ok = h.invoke(&[], &big).await;
    assert_eq!((ok.status, ok.body.len()), (200, big.len()));
    // The function's rate (a burst of 2, the first taken) holds for this API as for /function.
    let second = h.invoke(&[], b"x").await;
    assert_eq!(second.status, 200);
    let third = h.invoke(&[], b"x").await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("x-amzn-errortype"), "TooManyRequestsException");
    assert!(!third.header("retry-after").is_empty());
    assert_eq!(third.json()["Reason"], "CallerRateLimitExceeded");
}

#[test]
fn qualifiers_and_gateway_errors() {
    let t = Target {
        name: "f".into(),
        qualifier: Some("$LATEST".into()),
    };
    assert_eq!(
        qualifier(Some("Qualifier=%24LATEST"), &t).unwrap(),
        Some("$LATEST".into())
    );
    assert!(qualifier(Some("Qualifier=prod"), &t).is_err());

    let throttled = platform_error(crate::limits::body_too_large(
        "f",
        10,
        Limit {
            scope: "gateway",
            name: "Lambda Invoke API (Event: 1 MiB)",
            value: json!(10),
            unit: "bytes",
            burst: None,
            retry_after: None,
        },
    ));
    assert_eq!(
        (throttled.status, throttled.kind),
        (StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException")
    );
    assert!(
        throttled.message.contains("Lambda Invoke API"),
        "{}",
        throttled.message
    );

    let timed_out = function_failed(&GatewayError::Function {
        status: StatusCode::GATEWAY_TIMEOUT,
        message: "too slow".into(),
    });
    assert_eq!(timed_out.status(), StatusCode::OK);
}
