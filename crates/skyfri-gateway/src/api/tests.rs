//! The admin API never holds up calls: its store and log reads run off the request workers,
//! so a call is answered while they wait. The gateway runs on one worker here: a worker that
//! waited would stop answering altogether.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_runtime::{Endpoint, LogLine};

use super::logs;
use crate::state::AppState;
use crate::testing::{self, Answer, FakeProvider, Gate};

const ADMIN: (&str, &str) = ("authorization", "Basic YWRtaW46cHc="); // admin:pw

/// A replica that answers every request `hi`.
async fn replica() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "hi" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A gateway on one worker with the function `f` deployed (stored and live).
async fn gateway(tmp: &std::path::Path, provider: FakeProvider) -> (AppState, SocketAddr) {
    let state = testing::state(tmp, provider, 1 << 20);
    let d = Deployment {
        spec: FunctionSpec::new("f", "img"),
        artefact: "sha256:0".into(),
        template: Template::Python3,
        replicas: 1,
    };
    state.store.put_function(&d).unwrap();
    state.set_live(d);
    let addr = testing::serve_with(&state, 1).await;
    (state, addr)
}

/// Calls `f`, failing the test when no answer comes within 10 s.
async fn call(gateway: SocketAddr) -> Answer {
    let answer = testing::send(gateway, "POST", "/function/f", &[], b"");
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the call was not answered")
}

#[tokio::test]
async fn a_call_is_answered_while_an_admin_read_waits_for_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = FakeProvider::serving(Endpoint::Tcp(replica().await));
    let (state, gateway) = gateway(tmp.path(), provider).await;
    assert_eq!(call(gateway).await.status, 200);

    let gate = Gate::close(&state.store);
    let list = tokio::spawn(testing::send(
        gateway,
        "GET",
        "/system/functions",
        &[ADMIN],
        b"",
    ));
    testing::store_waiters(&state.store, 1).await;
    let answer = call(gateway).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"hi"[..]));
    assert!(!list.is_finished(), "the list did not wait for the store");

    gate.open();
    let list = list.await.unwrap();
    assert_eq!(list.status, 200);
    assert_eq!(list.json()[0]["name"], "f");
}

/// Log lines `from..to` of `f`, of about 1 KiB each.
fn log_lines(from: usize, to: usize) -> impl Iterator<Item = LogLine> {
    (from..to).map(|i| LogLine {
        name: "f".into(),
        instance: "f-1".into(),
        timestamp: chrono::Utc::now(),
        text: format!("{i:05} {}", "x".repeat(1000)),
    })
}

#[tokio::test]
async fn a_call_is_answered_while_a_log_read_is_in_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = FakeProvider::serving(Endpoint::Tcp(replica().await));
    // A history whose reading stalls (a slow disk) after more than a batch, until the test
    // lets it go on.
    let (stalled_tx, stalled) = std::sync::mpsc::channel();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let stall = std::iter::from_fn(move || {
        stalled_tx.send(()).unwrap();
        let _ = wait.recv();
        None
    });
    let history = log_lines(0, 100).chain(stall).chain(log_lines(100, 300));
    *provider.stored_logs.lock().unwrap() = Some(Box::new(history));
    let (_state, gateway) = gateway(tmp.path(), provider).await;

    let res = testing::open(gateway, "GET", "/system/logs?name=f", &[ADMIN], b"");
    let mut res = tokio::time::timeout(Duration::from_secs(10), res)
        .await
        .expect("no answer while the read goes on");
    assert_eq!(res.status(), 200);
    // The first batch comes while the rest is being read.
    let mut first = Vec::new();
    while first.len() < logs::BATCH {
        let frame = tokio::time::timeout(Duration::from_secs(10), res.body_mut().frame())
            .await
            .expect("nothing sent while the read goes on")
            .unwrap()
            .unwrap();
        first.extend_from_slice(&frame.into_data().unwrap());
    }
    tokio::task::spawn_blocking(move || stalled.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the read did not reach the stall");
    let answer = call(gateway).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"hi"[..]));

    go.send(()).unwrap();
    let rest = res.into_body().collect().await.unwrap().to_bytes();
    let all = [&first[..], &rest[..]].concat();
    let numbers: Vec<usize> = all
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v["text"].as_str().unwrap()[..5].parse().unwrap()
        })
        .collect();
    assert_eq!(numbers, (0..300).collect::<Vec<_>>());
}
