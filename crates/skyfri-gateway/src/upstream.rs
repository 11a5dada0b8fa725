//! The connections to replicas: HTTP/1.1 keep-alive connections per endpoint (unix socket or
//! TCP), kept idle between calls and handed to one call at a time.
//!
//! This is the invoke path's hop, so it does per call only what it must: one lookup of the
//! endpoint's [`Slot`] (found by a fast hash; the slot keeps the endpoint's `Host` value), a
//! pop and a push under the slot's lock, and hyper's own client connection, whose task is
//! spawned once per connection. A connection goes back to its slot when the answer's body
//! has been read to its end ([`Pooled::reuse`]); one dropped before (a caller that went away,
//! a cut answer) is closed, since the replica may still be sending on it.
//!
//! A call whose idle connection turns out to be closed before the request went out (the
//! replica closed it meanwhile) is sent once more on a new connection, as hyper-util's pool
//! does. Connections idle for longer than [`IDLE_TIMEOUT`] are closed when next looked at;
//! slots of endpoints that have gone (a replica stopped) are dropped when a new endpoint is
//! added.
//!
//! Each gateway worker thread (see `crate::server`) has a pool of its own ([`use_pool`]), so a
//! call uses connections whose tasks run on its own thread; other threads (async workers,
//! triggers) share pool 0.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::HeaderValue;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use skyfri_runtime::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long a connection may stay idle in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Sender = SendRequest<Full<Bytes>>;

/// Pools: one per gateway worker thread, and pool 0 for the others.
const POOLS: usize = 64;

thread_local! {
    static POOL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Calls made on this thread use pool `n` (modulo the number of pools).
pub fn use_pool(n: usize) {
    POOL.with(|p| p.set(n % POOLS));
}

/// One pool: the endpoints' slots, hashed fast (the keys are the gateway's own addresses).
type Pool = Mutex<HashMap<Endpoint, Arc<Slot>, foldhash::fast::RandomState>>;

/// Every endpoint's idle connections, per pool.
pub struct Upstream {
    pools: Box<[Pool]>,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            pools: (0..POOLS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// One endpoint's idle connections, newest last.
pub struct Slot {
    host: HeaderValue,
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Slot {
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
            || self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|(s, _)| !s.is_closed())
    }
}

/// A connection lent to one call; [`Pooled::reuse`] gives it back.
pub struct Pooled {
    sender: Sender,
    slot: Arc<Slot>,
}

impl Pooled {
    /// The answer has been read to its end: the connection may take another call.
    pub fn reuse(self) {
        if self.sender.is_closed() {
            return;
        }
        self.slot
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.sender, Instant::now()));
    }
}

impl Upstream {
    fn slot(&self, endpoint: &Endpoint) -> Arc<Slot> {
        let pool = &self.pools[POOL.with(std::cell::Cell::get)];
        let mut slots = pool.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(endpoint) {
            return Arc::clone(slot);
        }
        // A new endpoint: forget the ones nobody uses any more first.
        slots.retain(|_, slot| slot.in_use());
        let slot = Arc::new(Slot {
            host: HeaderValue::from_str(&authority(endpoint))
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
        });
        slots.insert(endpoint.clone(), Arc::clone(&slot));
        slot
    }

    /// Sends `req` (origin-form URI; its `Host` is set here) to `endpoint` on an idle
    /// connection, or a new one; returns the answer's head and the connection, which the
    /// caller gives back with [`Pooled::reuse`] once the body has been read.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        let slot = self.slot(endpoint);
        req.headers_mut().insert(HOST, slot.host.clone());
        if let Some(mut sender) = slot.take() {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(res) => return Ok((res, Pooled { sender, slot })),
                    // Not sent: the connection closed meanwhile. Once more on a new one.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
        }
        let mut sender = connect(endpoint).await?;
        let res = sender.send_request(req).await?;
        Ok((res, Pooled { sender, slot }))
    }
}

/// Why a call could not be sent to a replica, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(#[from] io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A new HTTP/1.1 connection to `endpoint`, its task spawned.
async fn connect(endpoint: &Endpoint) -> Result<Sender, SendError> {
    let stream = match endpoint {
        Endpoint::Unix(path) => ReplicaStream::Unix(UnixStream::connect(path).await?),
        Endpoint::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            ReplicaStream::Tcp(tcp)
        }
    };
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "replica connection ended with an error");
        }
    });
    Ok(sender)
}

/// The `Host` a replica is called with: `u<hex of socket path>` or `host:port` (what the
/// gateway has always sent).
pub fn authority(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(path) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let bytes = path.as_os_str().as_encoded_bytes();
            let mut s = String::with_capacity(1 + bytes.len() * 2);
            s.push('u');
            for b in bytes {
                s.push(char::from(HEX[usize::from(b >> 4)]));
                s.push(char::from(HEX[usize::from(b & 15)]));
            }
            s
        }
        Endpoint::Tcp(addr) => addr.to_string(),
    }
}

pub enum ReplicaStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl AsyncRead for ReplicaStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ReplicaStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReplicaStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ReplicaStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_valid_hosts() {
        let a = authority(&Endpoint::Unix("/run/e-1.sock".into()));
        assert_eq!(a, "u2f72756e2f652d312e736f636b");
        assert!(a.parse::<http::uri::Authority>().is_ok());
        let tcp = authority(&Endpoint::Tcp(([127, 0, 0, 1], 8080).into()));
        assert_eq!(tcp, "127.0.0.1:8080");
    }

    /// A replica that answers `n` calls on each connection, then closes it.
    async fn replica(answers_per_connection: usize) -> std::io::Result<Endpoint> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..answers_per_connection {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let host = String::from_utf8_lossy(&head)
                            .lines()
                            .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
                            .unwrap_or_default();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{host}",
                            host.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Endpoint::Tcp(addr))
    }

    async fn call(up: &Upstream, e: &Endpoint) -> Result<String, Box<dyn std::error::Error>> {
        use http_body_util::BodyExt;
        let req = Request::builder().uri("/").body(Full::default())?;
        let (res, conn) = up.send(e, req).await?;
        let body = res.into_body().collect().await?.to_bytes();
        conn.reuse();
        Ok(String::from_utf8(body.to_vec())?)
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_closed_one_is_replaced(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let up = Upstream::default();
        // Kept alive: one connection serves every call, with the endpoint as its Host.
        let e = replica(usize::MAX).await?;
        for _ in 0..3 {
            assert_eq!(call(&up, &e).await?, authority(&e));
        }
        assert_eq!(up.slot(&e).idle.lock().map(|i| i.len()).unwrap_or(0), 1);
        // Closed after each answer: the next call goes out on a new connection, no error.
        let once = replica(1).await?;
        for _ in 0..3 {
            assert_eq!(call(&up, &once).await?, authority(&once));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing listens: an error, not a hang.
        let gone = Endpoint::Unix("/nonexistent/skyfri-test.sock".into());
        assert!(
            matches!(call(&up, &gone).await, Err(e) if e.to_string().contains("cannot connect"))
        );
        Ok(())
    }
}
