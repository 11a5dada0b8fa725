//! What the gateway's unit tests share: a provider with no processes behind it, a gateway
//! state over it, and a client.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use skyfri_core::Deployment;
use skyfri_queue::EmbeddedQueue;
use skyfri_runtime::{
    ArtefactStore, Endpoint, LogLine, LogQuery, LogRead, Provider, ReplicaStatus, RuntimeError,
};
use skyfri_store::Store;

use crate::state::{AppState, GatewayConfig, Locations};

/// A gateway state over `provider` (admin password `pw`), keeping its store, artefacts and
/// embedded queue in `dir`.
pub fn state(dir: &Path, provider: FakeProvider, max_body: usize) -> AppState {
    state_behind(dir, provider, max_body, Vec::new())
}

/// [`state`] behind the proxies `trusted` (`skyfri up --trusted-proxy`).
pub fn state_behind(
    dir: &Path,
    provider: FakeProvider,
    max_body: usize,
    trusted_proxies: Vec<ipnet::IpNet>,
) -> AppState {
    AppState::new(
        GatewayConfig {
            admin_password: "pw".into(),
            max_body,
            limits: Default::default(),
            tmp_dir: dir.join("tmp"),
            locations: Locations {
                data_dir: dir.to_path_buf(),
                ..Default::default()
            },
            trusted_proxies,
        },
        Arc::new(Store::open(&dir.join("skyfri.db")).unwrap()),
        Arc::new(provider),
        Arc::new(ArtefactStore::open(dir.join("artefacts")).unwrap()),
        EmbeddedQueue::open(&dir.join("queue.db")).unwrap(),
    )
}

/// Serves `state` on a port of 127.0.0.1 until the test ends; its address.
pub async fn serve(state: &AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::serve(
        listener,
        state.clone(),
        crate::server::ServerLimits::default(),
        None,
        None,
        std::future::pending(),
    ));
    addr
}

/// Serves `state` as [`serve`] does, with `workers` worker threads (each blocked worker
/// holds up every connection it serves: with one, the gateway stops answering).
pub async fn serve_with(state: &AppState, workers: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::server::serve(
        listener,
        crate::Gateway::new(state.clone(), None),
        crate::server::ServerLimits::default(),
        None,
        workers,
        std::future::pending(),
    ));
    addr
}

/// Holds the store's lock, from a thread of its own, until [`Gate::open`] (or drop): what a
/// long write (a big transaction, a slow fsync) does to everyone else.
pub struct Gate {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl Gate {
    /// Returns once the lock is held.
    pub fn close(store: &Arc<Store>) -> Gate {
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let store = Arc::clone(store);
        let holder = std::thread::spawn(move || {
            let _hold = store.hold().unwrap();
            held_tx.send(()).unwrap();
            let _ = wait.recv();
        });
        held.recv().unwrap();
        Gate {
            release: Some(release),
            holder: Some(holder),
        }
    }

    pub fn open(mut self) {
        self.release.take();
        if let Some(h) = self.holder.take() {
            h.join().unwrap();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.release.take();
    }
}

/// Waits (up to 10 s) until `n` callers wait for the store's lock.
pub async fn store_waiters(store: &Store, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.waiting() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} waiting for the store, not {n}",
            store.waiting()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves the dashboard's listener for `state` on a free port.
pub async fn serve_dashboard(state: &AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::serve_dashboard(
        listener,
        state.clone(),
        crate::server::ServerLimits::default(),
        None,
        std::future::pending(),
    ));
    addr
}

/// An answer, read whole.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends one request to the gateway at `gateway` and reads the answer.
pub async fn send(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let res = open(gateway, method, path, headers, body).await;
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Sends one request to the gateway at `gateway`; the answer's body is the caller's to read.
pub async fn open(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> hyper::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{gateway}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap()
}

/// A provider whose functions all have the replicas `endpoints` (servers the test runs, or
/// none), and whose CPU readings are whatever the test puts in `cpu`.
#[derive(Default)]
pub struct FakeProvider {
    pub endpoints: Vec<Endpoint>,
    pub cpu: Mutex<Option<Vec<(String, Duration)>>>,
    /// The stored log lines the next read of logs gets (none after that).
    pub stored_logs: Mutex<Option<Box<dyn Iterator<Item = LogLine> + Send>>>,
}

impl FakeProvider {
    /// Every function has one ready replica at `endpoint`.
    pub fn serving(endpoint: Endpoint) -> FakeProvider {
        FakeProvider {
            endpoints: vec![endpoint],
            ..FakeProvider::default()
        }
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    async fn deploy(&self, _: &Deployment) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn scale(&self, _: &str, _: u32) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn endpoints(&self, _: &str) -> Vec<Endpoint> {
        self.endpoints.clone()
    }
    fn status(&self, _: &str) -> Option<ReplicaStatus> {
        let n = u32::try_from(self.endpoints.len()).ok()?;
        (n > 0).then_some(ReplicaStatus {
            desired: n,
            available: n,
            oom_kills: 0,
        })
    }
    fn report_failure(&self, _: &str, _: &Endpoint) -> Option<String> {
        None
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn logs(&self, _: &str, _: &LogQuery) -> LogRead {
        let stored = self.stored_logs.lock().unwrap().take();
        LogRead {
            stored: stored.unwrap_or_else(|| Box::new(std::iter::empty())),
            live: None,
        }
    }
    fn follow_logs(&self, _: &str) -> tokio::sync::broadcast::Receiver<LogLine> {
        tokio::sync::broadcast::channel(1).1
    }
    fn take_cpu_usage(&self) -> Option<Vec<(String, Duration)>> {
        self.cpu
            .lock()
            .map(|mut c| c.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }
    async fn shutdown(&self) {}
}
