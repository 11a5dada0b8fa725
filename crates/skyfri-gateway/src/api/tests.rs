//! The admin API never holds up calls: its store and log reads run off the request workers,
//! so a call is answered while they wait. The gateway runs on one worker here: a worker that
//! waited would stop answering altogether.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use skyfri_core::{Deployment, FunctionSpec, Template};
use skyfri_runtime::Endpoint;

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
