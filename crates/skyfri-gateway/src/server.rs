//! The gateway's listener: accepts connections, terminates TLS when configured, and serves
//! HTTP with the bounds that make it safe to expose directly.
//!
//! - **Protocols.** Plain TCP speaks HTTP/1.1. With TLS (rustls), ALPN picks HTTP/2 (`h2`) or
//!   HTTP/1.1. The certificate and key are PEM files; [`Tls::reload`] (on SIGHUP, see `skyfri
//!   up`) swaps them for connections accepted afterwards, and connections already open keep
//!   the one they were made with: nothing is dropped.
//! - **Slow clients.** An HTTP/1.1 connection must deliver a complete request head within
//!   [`ServerLimits::header_timeout`] of being accepted or of its previous answer (hyper's
//!   header-read timer, which also runs while a keep-alive connection is idle, so an idle
//!   keep-alive connection is closed after the same time; it fires up to
//!   [`header_timer::TICK`] late, see there for why). A TLS handshake must finish within
//!   the same time. A slowloris client therefore holds a connection for at most that long.
//! - **Sizes.** A request head over [`ServerLimits::max_header_bytes`] or with more than
//!   [`ServerLimits::max_headers`] fields is answered 431 by hyper and the connection closed;
//!   HTTP/2 gets the same bound as `SETTINGS_MAX_HEADER_LIST_SIZE`. Bodies are bounded per
//!   route (the invoke body limit, see `invoke`).
//! - **Connections.** At most [`ServerLimits::max_connections`] are open at once; beyond that
//!   the gateway stops accepting until one closes (new clients wait in the kernel's backlog,
//!   as with nginx's `worker_connections`), and says so in its log once per minute.
//!
//! - **Threads.** The accept loop hands each connection to one of [`workers`] threads (one
//!   per CPU unless `SKYFRI_GATEWAY_WORKERS` says otherwise; 0 serves on the caller's
//!   runtime), round robin. Each worker runs a single-threaded tokio runtime, so a call's
//!   tasks (its connection, the replica connection it uses from that worker's pool, see
//!   `crate::upstream`) never hand work to another thread: a proxied call is served by one
//!   thread from accept to answer, as in nginx's workers, instead of bouncing between the
//!   threads of a work-stealing runtime (cross-thread wake-ups cost the most on a busy host).
//!   Tasks a handler starts (an activation, say) run on its worker's runtime, which lives as
//!   long as the process.
//!
//! The dashboard's listener (see `crate::serve_dashboard`) is served the same way, with the
//! same bounds and certificate, on the caller's runtime.
//!
//! Every request carries the peer's address as [`axum::extract::ConnectInfo`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

mod header_timer;
mod http1;
use header_timer::HeaderTimer;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bounds on what clients may hold of the gateway.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time to send a complete request head, from accept or from the previous answer.
    pub header_timeout: Duration,
    /// Bytes of one request head (request line and header fields).
    pub max_header_bytes: usize,
    /// Header fields of one request.
    pub max_headers: usize,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Defaults of [`ServerLimits`] (and of `skyfri up`'s flags).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 15;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The smallest request head worth allowing (hyper's own minimum read buffer).
const MIN_HEADER_BYTES: usize = 8192;
/// hyper's default bound on header fields (parsed on the stack).
const HYPER_MAX_HEADERS: usize = 100;

impl ServerLimits {
    /// Refuses bounds that cannot work, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.header_timeout.is_zero() {
            return Err("--header-timeout must be more than 0".into());
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!(
                "--max-header-bytes must be at least {MIN_HEADER_BYTES}"
            ));
        }
        if self.max_headers == 0 {
            return Err("--max-headers must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("TLS: {path} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate { path: PathBuf },
    #[error("TLS: {cert} and {key} do not go together: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate the gateway serves, reloadable.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Arc::new(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(config),
        }))
    }

    /// Reads the files again; on success new connections get the new certificate. On failure
    /// the old one stays in service and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = config;
        }
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::Config {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their calls (HTTP/1.1 closes after the answer in progress; HTTP/2 sends GOAWAY).
/// `workers` threads serve the connections (see [`workers`]; 0: the caller's runtime).
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: ServerLimits,
    tls: Option<Arc<Tls>>,
    workers: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: App,
{
    let graceful = GracefulShutdown::new();
    let timer = HeaderTimer::start()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let mut pool = Workers::start(workers)?;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        limit = limits.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                    last_full_warning = Some(Instant::now());
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers are small and latency matters: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        let conn = Connection {
            peer,
            app,
            limits,
            timer: timer.clone(),
            watcher: graceful.watcher(),
            stopping: stopping.clone(),
        };
        let Some(pool) = pool.as_mut() else {
            tokio::spawn(async move {
                let _permit = permit;
                conn.serve(tcp, tls).await;
            });
            continue;
        };
        // The stream leaves this runtime's reactor for the worker's.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        pool.run(Box::new(move || match TcpStream::from_std(std) {
            Ok(tcp) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    conn.serve(tcp, tls).await;
                });
            }
            Err(e) => tracing::warn!(%peer, error = %e, "worker cannot take the connection"),
        }));
    }
    drop(listener);
    // Connections on skyfri's own HTTP/1.1 path look at `stopping` when they wait for a
    // request (woken here) and after each answer; hyper's get the graceful signal. Both
    // hold a watcher, which `shutdown` waits for.
    stopping.store(true, Ordering::Release);
    timer.wake_all();
    graceful.shutdown().await;
    Ok(())
}

/// How many worker threads serve connections: `SKYFRI_GATEWAY_WORKERS`, else one per CPU.
pub fn workers() -> usize {
    std::env::var("SKYFRI_GATEWAY_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Work for a worker thread: run inside its runtime (so it may spawn there).
type Job = Box<dyn FnOnce() + Send>;

/// The connection workers (see the module's doc).
struct Workers {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<Job>>,
    next: usize,
}

impl Workers {
    /// `None` for 0 workers: connections are served on the caller's runtime.
    fn start(count: usize) -> io::Result<Option<Workers>> {
        if count == 0 {
            return Ok(None);
        }
        let mut queues = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("gateway-{i}"))
                .spawn(move || {
                    crate::upstream::use_pool(i + 1);
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                        // The server has stopped; what handlers started here keeps running.
                        std::future::pending::<()>().await;
                    });
                })?;
            queues.push(tx);
        }
        Ok(Some(Workers { queues, next: 0 }))
    }

    fn run(&mut self, job: Job) {
        self.next = (self.next + 1) % self.queues.len();
        if self.queues[self.next].send(job).is_err() {
            tracing::error!(worker = self.next, "a gateway worker thread has gone");
        }
    }
}

/// What the server serves: a service of requests, cloned per connection and per request.
pub trait App:
    tower::Service<
        Request<Body>,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// One accepted connection and what serving it needs.
struct Connection<S> {
    peer: SocketAddr,
    app: S,
    limits: Arc<ServerLimits>,
    timer: HeaderTimer,
    watcher: hyper_util::server::graceful::Watcher,
    stopping: Arc<AtomicBool>,
}

impl<S: App> Connection<S> {
    async fn serve(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let peer = self.peer;
        let result = match tls {
            None => self.http1(tcp).await,
            Some(acceptor) => {
                let handshake = acceptor.accept(tcp);
                let stream = match tokio::time::timeout(self.limits.header_timeout, handshake).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    self.http2(stream).await
                } else {
                    self.http1(stream).await
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// HTTP/1.1: skyfri's own path while the requests are calls it serves, then hyper.
    async fn http1<T>(self, io: T) -> hyper::Result<()>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shared = http1::Shared {
            peer: self.peer,
            app: &self.app,
            limits: &self.limits,
            timer: &self.timer,
            stopping: &self.stopping,
        };
        let Some((io, read)) = http1::serve(io, shared).await else {
            return Ok(());
        };
        let io = TokioIo::new(http1::Rewind::new(io, read));
        let conn = hyper_http1(&self.limits, self.timer)
            .serve_connection(io, service(self.peer, self.app));
        self.watcher.watch(conn).await
    }

    async fn http2<T>(self, io: T) -> hyper::Result<()>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(self.limits.header_timeout);
        let conn = builder.serve_connection(TokioIo::new(io), service(self.peer, self.app));
        self.watcher.watch(conn).await
    }
}

/// The app as hyper's service: each request carries the peer's address.
#[derive(Clone)]
struct Service<S> {
    peer: SocketAddr,
    app: S,
}

fn service<S: App>(peer: SocketAddr, app: S) -> Service<S> {
    Service { peer, app }
}

impl<S: App> hyper::service::Service<Request<Incoming>> for Service<S> {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<Body>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.clone().oneshot(req)
    }
}

fn hyper_http1(limits: &ServerLimits, timer: HeaderTimer) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(timer)
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes);
    // hyper parses up to 100 fields on the stack; another bound puts them on the heap.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid_and_silly_ones_are_named() {
        assert_eq!(ServerLimits::default().validate(), Ok(()));
        let bad = ServerLimits {
            max_header_bytes: 100,
            ..ServerLimits::default()
        };
        assert!(matches!(bad.validate(), Err(e) if e.contains("--max-header-bytes")));
        let bad = ServerLimits {
            max_connections: 0,
            ..ServerLimits::default()
        };
        assert!(matches!(bad.validate(), Err(e) if e.contains("--max-connections")));
    }

    #[test]
    fn a_missing_or_empty_certificate_is_a_clear_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing.pem");
        match Tls::load(&missing, &missing) {
            Err(TlsError::Read { path, .. }) => assert_eq!(path, missing),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a missing certificate loaded"),
        }
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n")?;
        match Tls::load(&empty, &empty) {
            Err(TlsError::NoCertificate { path }) => assert_eq!(path, empty),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("an empty certificate loaded"),
        }
        Ok(())
    }
}
