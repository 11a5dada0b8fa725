//! The connection pool to replicas. Endpoints are encoded into the request URI's host so
//! hyper's pool keeps keep-alive connections per replica, over unix sockets or TCP.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skyfri_runtime::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub type UpstreamClient = Client<ReplicaConnector, Full<Bytes>>;

pub fn client() -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(ReplicaConnector)
}

/// The URI authority that names an endpoint: `u<hex of socket path>` or `host:port`.
pub fn authority(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(path) => {
            let mut s = String::with_capacity(1 + path.as_os_str().len() * 2);
            s.push('u');
            for b in path.as_os_str().as_encoded_bytes() {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
        Endpoint::Tcp(addr) => addr.to_string(),
    }
}

fn unix_path(host: &str) -> Option<PathBuf> {
    let hex = host.strip_prefix('u')?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(PathBuf::from(String::from_utf8(bytes).ok()?))
}

#[derive(Clone)]
pub struct ReplicaConnector;

impl tower::Service<Uri> for ReplicaConnector {
    type Response = TokioIo<ReplicaStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let stream = match unix_path(host) {
                Some(path) => ReplicaStream::Unix(UnixStream::connect(path).await?),
                None => {
                    let port = uri.port_u16().unwrap_or(80);
                    let tcp = TcpStream::connect((host, port)).await?;
                    tcp.set_nodelay(true)?;
                    ReplicaStream::Tcp(tcp)
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

pub enum ReplicaStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection for ReplicaStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
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
    fn unix_authority_roundtrips() {
        let p = PathBuf::from("/var/lib/skyfri/run/echo-1.sock");
        let a = authority(&Endpoint::Unix(p.clone()));
        assert!(a.parse::<http::uri::Authority>().is_ok());
        assert_eq!(unix_path(&a), Some(p));
        assert_eq!(unix_path("127.0.0.1"), None);
    }
}
