//! The async path inside one process: the real router and embedded queue, the dispatchers,
//! a provider whose one "replica" is an HTTP server run by the test, and a callback receiver.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_queue::CallState;
use skyfri_runtime::Endpoint;
use tokio::sync::watch;

use super::validate_call_id;
use crate::state::AppState;
use crate::testing::{Answer, FakeProvider};

/// One request a test server saw.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTP server that records what it is sent and answers as told.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(behaviour: Behaviour) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |req: Request| {
            let (log, behaviour) = (Arc::clone(&log), Arc::clone(&behaviour));
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let s = Seen {
                    at: Instant::now(),
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                };
                let r = behaviour(&s);
                log.lock().unwrap().push(s);
                tokio::time::sleep(r.delay).await;
                let mut res: Response =
                    (StatusCode::from_u16(r.status).unwrap(), r.body).into_response();
                for (k, v) in r.headers {
                    res.headers_mut().insert(k, v.parse().unwrap());
                }
                res
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} requests after {within:?}, wanted {n}: {seen:#?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A provider with one ready replica: the test's function server.
struct Harness {
    state: AppState,
    gateway: SocketAddr,
    function: Recorder,
    callbacks: Recorder,
    stop: watch::Sender<bool>,
    /// The end of the grace period.
    hand_back: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

const FAST_RETRIES: [(&str, &str); 3] = [
    ("com.openfaas.retry.min_wait", "100ms"),
    ("com.openfaas.retry.max_wait", "1s"),
    ("com.openfaas.retry.attempts", "3"),
];

async fn harness(annotations: &[(&str, &str)], behaviour: Behaviour) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let function = Recorder::start(behaviour).await;
    let callbacks = Recorder::start(Arc::new(|_| reply(200, "thanks"))).await;
    let state = crate::testing::state(
        tmp.path(),
        FakeProvider::serving(Endpoint::Tcp(function.addr)),
        1024,
    );
    let mut spec = FunctionSpec::new("f", "img");
    spec.timeout_secs = 5;
    for (k, v) in annotations {
        spec.annotations.insert(k.to_string(), v.to_string());
    }
    state.set_live(Deployment {
        spec,
        artefact: "sha256:0".into(),
        template: Template::Http,
        replicas: 1,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let mut graceful = stopped.clone();
    tokio::spawn(crate::serve(
        listener,
        state.clone(),
        crate::server::ServerLimits::default(),
        None,
        None,
        async move {
            let _ = graceful.wait_for(|s| *s).await;
        },
    ));
    let (hand_back, hand_back_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(super::dispatcher::run(state.clone(), stopped, hand_back_rx));
    Harness {
        state,
        gateway,
        function,
        callbacks,
        stop,
        hand_back,
        dispatcher,
        _tmp: tmp,
    }
}

impl Harness {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut all = headers.to_vec();
        if path.starts_with("/system/") {
            all.push(("authorization", "Basic YWRtaW46cHc=")); // admin:pw
        }
        crate::testing::send(self.gateway, method, path, &all, body).await
    }

    /// Posts an async call with a callback to the test's receiver; returns its id.
    async fn call(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
        let cb = format!("http://{}/cb", self.callbacks.addr);
        let mut all = vec![("X-Callback-Url", cb.as_str())];
        all.extend_from_slice(headers);
        let a = self.send("POST", path, &all, body).await;
        assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
        a.header("x-call-id").to_string()
    }

    async fn wait_state(&self, id: &str, want: &str, within: Duration) -> CallState {
        let deadline = Instant::now() + within;
        loop {
            let r = self.state.queue.get(id).await.unwrap();
            if let Some(r) = &r {
                if r.state.name() == want {
                    return r.state.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{id} is not {want} after {within:?}: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.dispatcher)
            .await
            .expect("the dispatchers stop")
            .unwrap();
    }
}

fn attempt_of(s: &Seen) -> u32 {
    s.header(super::ATTEMPT_HEADER).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_method_path_query_headers_and_body_then_calls_back() {
    let h = harness(
        &[],
        Arc::new(|_| {
            let mut r = reply(201, "made it");
            r.headers.push(("x-from-function", "yes".into()));
            r
        }),
    )
    .await;
    let id = h
        .call(
            "/async-function/f.openfaas-fn/a/b?x=1&y=2",
            &[("X-Test", "kept"), ("Content-Type", "text/plain")],
            b"payload",
        )
        .await;
    assert_eq!(uuid::Uuid::parse_str(&id).map(|_| ()), Ok(()), "{id}");
    let cb = h.callbacks.wait_for(1, Duration::from_secs(10)).await;
    let ran = &h.function.seen()[0];
    assert_eq!(ran.method, "POST");
    assert_eq!(ran.uri, "/a/b?x=1&y=2");
    assert_eq!(ran.header("x-test"), "kept");
    assert_eq!(ran.header("x-call-id"), id);
    assert_eq!(ran.header("x-skyfri-attempt"), "1");
    assert_eq!(&ran.body[..], b"payload");

    let cb = &cb[0];
    assert_eq!((cb.method.as_str(), cb.uri.as_str()), ("POST", "/cb"));
    assert_eq!(&cb.body[..], b"made it");
    assert_eq!(cb.header("x-call-id"), id);
    assert_eq!(cb.header("x-function-name"), "f");
    assert_eq!(cb.header("x-function-status"), "201");
    assert_eq!(cb.header("x-from-function"), "yes");
    assert_eq!((cb.header("x-retry"), cb.header("x-retry-max")), ("0", "9"));
    assert_eq!(cb.header("x-skyfri-call-state"), "done");
    assert!(cb.header("x-duration-seconds").parse::<f64>().is_ok());
    let state = h.wait_state(&id, "done", Duration::from_secs(5)).await;
    assert!(
        matches!(
            state,
            CallState::Done {
                attempt: 1,
                status: 201,
                ..
            }
        ),
        "{state:?}"
    );

    // The admin API shows it, with its body.
    let a = h
        .send("GET", &format!("/system/async/calls/{id}"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(
        (v["state"].as_str(), v["status"].as_u64()),
        (Some("done"), Some(201))
    );
    assert_eq!(v["body"], "cGF5bG9hZA==");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=2");
    let a = h
        .send("GET", "/system/async/calls?state=done&function=f", &[], b"")
        .await;
    let list = a.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(list[0].get("body").is_none());
    assert_eq!(
        h.send("GET", "/system/async/calls", &[], b"").await.status,
        200
    );
    // Without credentials: 401.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client
        .get(
            format!("http://{}/system/async/calls", h.gateway)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_until_done() {
    let h = harness(
        &FAST_RETRIES,
        Arc::new(|s| match attempt_of(s) {
            1 => reply(500, "first failure"),
            2 => reply(502, "second failure"),
            _ => reply(200, "third time lucky"),
        }),
    )
    .await;
    let id = h.call("/async-function/f", &[], b"x").await;
    let cb = h.callbacks.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(&cb[0].body[..], b"third time lucky");
    assert_eq!(cb[0].header("x-function-status"), "200");
    assert_eq!(
        (cb[0].header("x-retry"), cb[0].header("x-retry-max")),
        ("2", "2")
    );
    assert_eq!(cb[0].header("x-skyfri-attempt"), "3");
    let runs = h.function.seen();
    assert_eq!(runs.iter().map(attempt_of).collect::<Vec<_>>(), [1, 2, 3]);
    // min_wait 100 ms, then 200 ms with equal jitter: at least 100 ms each.
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(95)),
        "{gaps:?}"
    );
    let state = h.wait_state(&id, "done", Duration::from_secs(5)).await;
    assert!(
        matches!(
            state,
            CallState::Done {
                attempt: 3,
                status: 200,
                ..
            }
        ),
        "{state:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_attempts_is_dead_until_redriven_and_non_retryable_is_done() {
    let h = harness(
        &FAST_RETRIES,
        Arc::new(|s| match s.uri.as_str() {
            "/teapot" => reply(418, "no"),
            _ => reply(503, "down"),
        }),
    )
    .await;
    let id = h
        .call("/async-function/f", &[("X-Call-Id", "order-1")], b"")
        .await;
    assert_eq!(id, "order-1");
    let cb = h.callbacks.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(cb[0].header("x-skyfri-call-state"), "dead");
    assert_eq!(cb[0].header("x-function-status"), "503");
    assert_eq!(&cb[0].body[..], b"down");
    let state = h.wait_state(&id, "dead", Duration::from_secs(5)).await;
    let CallState::Dead {
        attempt,
        status,
        reason,
    } = state
    else {
        panic!("{state:?}")
    };
    assert_eq!((attempt, status), (3, 503));
    assert!(
        reason.contains("out of attempts") && reason.contains("down"),
        "{reason}"
    );
    assert_eq!(h.function.seen().len(), 3);

    // Listed as dead; cancel is too late; re-drive runs it again from attempt 1.
    let dead = h
        .send("GET", "/system/async/calls?state=dead", &[], b"")
        .await
        .json();
    assert_eq!(dead[0]["id"], "order-1");
    assert_eq!(
        dead[0]["error"]
            .as_str()
            .map(|e| e.contains("out of attempts")),
        Some(true)
    );
    let a = h
        .send("DELETE", "/system/async/calls/order-1", &[], b"")
        .await;
    assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    let a = h
        .send("POST", "/system/async/calls/order-1/redrive", &[], b"")
        .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    h.callbacks.wait_for(2, Duration::from_secs(10)).await;
    let runs = h.function.seen();
    assert_eq!(
        runs.iter().map(attempt_of).collect::<Vec<_>>(),
        [1, 2, 3, 1, 2, 3]
    );
    // Re-driving a call that is not dead: 409; unknown: 404.
    h.wait_state(&id, "dead", Duration::from_secs(5)).await;
    let id2 = h.call("/async-function/f/teapot", &[], b"").await;
    h.wait_state(&id2, "done", Duration::from_secs(5)).await;
    let a = h
        .send(
            "POST",
            &format!("/system/async/calls/{id2}/redrive"),
            &[],
            b"",
        )
        .await;
    assert_eq!(a.status, 409);
    let a = h
        .send("POST", "/system/async/calls/nope/redrive", &[], b"")
        .await;
    assert_eq!(a.status, 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let h = harness(
        &[("com.openfaas.retry.min_wait", "10ms")],
        Arc::new(|s| match attempt_of(s) {
            1 => {
                let mut r = reply(429, "busy");
                r.headers.push(("retry-after", "1".into()));
                r
            }
            _ => reply(200, "ok"),
        }),
    )
    .await;
    h.call("/async-function/f", &[], b"").await;
    h.callbacks.wait_for(1, Duration::from_secs(10)).await;
    let runs = h.function.seen();
    assert_eq!(runs.len(), 2);
    assert!(
        runs[1].at - runs[0].at >= Duration::from_millis(990),
        "{:?}",
        runs[1].at - runs[0].at
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_id_runs_once() {
    let h = harness(&[], Arc::new(|_| reply(200, "once"))).await;
    let first = h
        .send("POST", "/async-function/f", &[("X-Call-Id", "same")], b"1")
        .await;
    let second = h
        .send("POST", "/async-function/f", &[("X-Call-Id", "same")], b"2")
        .await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(
        (first.header("x-call-id"), second.header("x-call-id")),
        ("same", "same")
    );
    assert_eq!(second.header("x-skyfri-duplicate"), "true");
    h.wait_state("same", "done", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = h.function.seen();
    assert_eq!(runs.len(), 1);
    assert_eq!(&runs[0].body[..], b"1");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_before_they_are_stored() {
    let h = harness(&[], Arc::new(|_| reply(200, ""))).await;
    let long = "x".repeat(129);
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let cases: [(&str, Headers, &[u8], u16); 7] = [
        ("/async-function/nope", vec![], b"", 404),
        (
            "/async-function/f",
            vec![("X-Call-Id", "has space")],
            b"",
            400,
        ),
        (
            "/async-function/f",
            vec![("X-Call-Id", long.as_str())],
            b"",
            400,
        ),
        ("/async-function/f", vec![("X-Call-Id", "")], b"", 400),
        (
            "/async-function/f",
            vec![("X-Callback-Url", "https://example.com/cb")],
            b"",
            400,
        ),
        (
            "/async-function/f",
            vec![("X-Callback-Url", "/relative")],
            b"",
            400,
        ),
        ("/async-function/f", vec![], &[b'x'; 1025], 413),
    ];
    for (path, headers, body, want) in cases {
        let a = h.send("POST", path, &headers, body).await;
        assert_eq!(
            a.status,
            want,
            "{path} {headers:?}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(a.json()["error"].is_string());
    }
    let all = h.state.queue.list(&Default::default()).await.unwrap();
    assert!(all.is_empty(), "{all:?}");
    // A 128-character id of printable characters is fine.
    let ok = "a!~".repeat(42) + "zz";
    let a = h
        .send(
            "POST",
            "/async-function/f",
            &[("X-Call-Id", ok.as_str())],
            b"",
        )
        .await;
    assert_eq!((a.status, a.header("x-call-id")), (202, ok.as_str()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_can_be_cancelled() {
    let h = harness(
        &[("com.skyfri.async.concurrency", "1")],
        Arc::new(|s| {
            let mut r = reply(200, "slow");
            if s.uri == "/slow" {
                r.delay = Duration::from_millis(1500);
            }
            r
        }),
    )
    .await;
    let slow = h.call("/async-function/f/slow", &[], b"").await;
    h.function.wait_for(1, Duration::from_secs(5)).await;
    let queued = h.call("/async-function/f/next", &[], b"").await;
    // Running: too late.
    let a = h
        .send("DELETE", &format!("/async-function/{slow}"), &[], b"")
        .await;
    assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    // Queued behind it: cancelled (OpenFaaS Pro answers 202), and again (idempotent).
    let a = h
        .send("DELETE", &format!("/async-function/{queued}"), &[], b"")
        .await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["state"], "cancelled");
    let a = h
        .send("DELETE", &format!("/system/async/calls/{queued}"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    let a = h
        .send("DELETE", "/system/async/calls/unknown", &[], b"")
        .await;
    assert_eq!(a.status, 404);
    let a = h.send("DELETE", "/async-function/unknown", &[], b"").await;
    assert_eq!(a.status, 404);
    h.wait_state(&slow, "done", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.function.seen().len(), 1, "the cancelled call ran");
    assert_eq!(h.callbacks.seen().len(), 1);
    // A DELETE to a function's name is an async call of it, not a cancel.
    let a = h.send("DELETE", "/async-function/f/item", &[], b"").await;
    assert_eq!(a.status, 202);
    h.function.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(h.function.seen()[1].method, "DELETE");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_running_when_the_grace_period_ends_is_handed_back() {
    let mut h = harness(
        &[],
        Arc::new(|_| {
            let mut r = reply(200, "too late");
            r.delay = Duration::from_secs(600);
            r
        }),
    )
    .await;
    let id = h.call("/async-function/f", &[], b"").await;
    h.function.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        h.wait_state(&id, "running", Duration::from_secs(5)).await,
        CallState::Running { attempt: 1 }
    );
    let _ = h.stop.send(true);
    let _ = h.hand_back.send(true);
    tokio::time::timeout(Duration::from_secs(10), &mut h.dispatcher)
        .await
        .expect("the dispatchers stop once told to hand back")
        .unwrap();
    // Due again at once, and the interrupted run is not an attempt.
    let record = h.state.queue.get(&id).await.unwrap().unwrap();
    assert_eq!(record.state, CallState::Queued);
    let text = h.state.metrics.render();
    assert!(text.contains("outcome=\"released\"} 1"), "{text}");
    assert!(h.callbacks.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_callback_is_retried() {
    let h = harness(&[], Arc::new(|_| reply(200, "result"))).await;
    let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = Arc::clone(&tries);
    let flaky = Recorder::start(Arc::new(move |_| {
        match t.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            0 => reply(503, "not yet"),
            _ => reply(204, ""),
        }
    }))
    .await;
    let cb = format!("http://{}/flaky", flaky.addr);
    let a = h
        .send(
            "POST",
            "/async-function/f",
            &[("X-Callback-Url", cb.as_str())],
            b"",
        )
        .await;
    assert_eq!(a.status, 202);
    let seen = flaky.wait_for(2, Duration::from_secs(10)).await;
    assert!(seen[1].at - seen[0].at >= super::callback::FIRST_WAIT);
    assert_eq!(&seen[1].body[..], b"result");
    let metrics = h.send("GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("gateway_async_calls_total{function_name=\"f\",outcome=\"done\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_async_calls_accepted_total{function_name=\"f\"} 1"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_show_in_the_metrics_and_info() {
    // Ten-second waits keep the call waiting.
    let h = harness(
        &[("com.openfaas.retry.min_wait", "10s")],
        Arc::new(|_| reply(500, "")),
    )
    .await;
    let id = h.call("/async-function/f", &[], b"").await;
    h.wait_state(&id, "retrying", Duration::from_secs(5)).await;
    let metrics = h.send("GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("gateway_async_queue_depth{function_name=\"f\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_async_queue_oldest_seconds{function_name=\"f\"}"),
        "{text}"
    );
    let v = h
        .send("GET", "/system/async/calls?state=retrying", &[], b"")
        .await
        .json();
    assert_eq!(v[0]["status"], 500);
    assert!(v[0]["nextAt"].is_string(), "{v}");
    let a = h
        .send("GET", "/system/async/calls?state=sleeping", &[], b"")
        .await;
    assert_eq!(a.status, 400);
    let info = h.send("GET", "/system/info", &[], b"").await.json();
    assert_eq!(info["provider"]["queue"]["backend"], "embedded");
    // A retrying call can be cancelled.
    let a = h
        .send("DELETE", &format!("/system/async/calls/{id}"), &[], b"")
        .await;
    assert_eq!(a.status, 200);
    let metrics = h.send("GET", "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        !text.contains("gateway_async_queue_depth{function_name=\"f\"}"),
        "{text}"
    );
    h.stop().await;
}

#[test]
fn call_ids() {
    for good in [
        "a",
        "550e8400-e29b-41d4-a716-446655440000",
        "order/1?x",
        &"x".repeat(128),
    ] {
        assert_eq!(validate_call_id(good), Ok(()), "{good}");
    }
    for bad in ["", " ", "a b", "tab\t", "é", &"x".repeat(129)] {
        assert!(validate_call_id(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_a_limit_and_removed_functions_keep_their_calls() {
    let h = harness(
        &[("com.skyfri.async.concurrency", "2")],
        Arc::new(|_| {
            let mut r = reply(200, "");
            r.delay = Duration::from_millis(300);
            r
        }),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(h.call("/async-function/f", &[], b"").await);
    }
    // Never more than two at once, and two at some point.
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = h
            .state
            .queue
            .list(&skyfri_queue::ListFilter {
                state: Some("running".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(running.len() <= 2, "{running:?}");
        most = most.max(running.len());
        let done = h
            .state
            .queue
            .list(&skyfri_queue::ListFilter {
                state: Some("done".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if done.len() == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "not all done: {done:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, 2);

    // Removed: its calls wait in the queue; deployed again: they run.
    let live = h.state.live("f").unwrap();
    h.state.remove_live("f");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let call = skyfri_queue::AsyncCall {
        id: "while-away".into(),
        function: "f".into(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: Vec::new(),
        body: Bytes::new(),
        callback_url: None,
        enqueued_at: Utc::now(),
    };
    h.state.queue.enqueue(call).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.wait_state("while-away", "queued", Duration::ZERO).await;
    h.state.set_live(live.deployment.clone());
    h.wait_state("while-away", "done", Duration::from_secs(5))
        .await;
    h.stop().await;
}
