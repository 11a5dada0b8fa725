//! Readiness probes: a tiny HTTP/1.1 GET over the replica's endpoint.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use super::launch::Probe;
use crate::provider::Endpoint;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const SHIM_HEALTH_PATH: &str = "/_/health";

/// Whether the replica at `endpoint` is ready to serve.
pub async fn is_ready(endpoint: &Endpoint, probe: &Probe) -> bool {
    timeout(PROBE_TIMEOUT, check(endpoint, probe))
        .await
        .unwrap_or(false)
}

async fn check(endpoint: &Endpoint, probe: &Probe) -> bool {
    let (path, any_status) = match probe {
        Probe::Shim => (SHIM_HEALTH_PATH, false),
        Probe::Http {
            health_path: Some(path),
        } => (path.as_str(), true),
        Probe::Http { health_path: None } => {
            // Listening is all we can ask of an arbitrary server without a health path.
            return match endpoint {
                Endpoint::Tcp(addr) => TcpStream::connect(addr).await.is_ok(),
                Endpoint::Unix(path) => UnixStream::connect(path).await.is_ok(),
            };
        }
    };
    let status = match endpoint {
        Endpoint::Unix(p) => match UnixStream::connect(p).await {
            Ok(s) => get_status(s, path).await,
            Err(_) => None,
        },
        Endpoint::Tcp(addr) => match TcpStream::connect(addr).await {
            Ok(s) => get_status(s, path).await,
            Err(_) => None,
        },
    };
    match status {
        Some(code) => any_status || code == 200,
        None => false,
    }
}

/// Sends `GET path` and returns the status code of the answer.
async fn get_status<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    // "HTTP/1.1 200" is 12 bytes; read until we have them.
    while len < 12 {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = std::str::from_utf8(&buf[..len]).ok()?;
    let mut parts = head.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}
