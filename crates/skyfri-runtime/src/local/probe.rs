//! Readiness and health probes: a tiny HTTP/1.1 GET over the replica's endpoint.

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
    check_health(endpoint, probe).await.is_ok()
}

/// The path `probe` asks for (`/` when it only connects), for messages.
pub fn path(probe: &Probe) -> &str {
    match probe {
        Probe::Shim => SHIM_HEALTH_PATH,
        Probe::Http {
            health_path: Some(path),
        } => path,
        Probe::Http { health_path: None } => "/",
    }
}

/// Probes the replica once; the error says what went wrong, for the log.
pub async fn check_health(endpoint: &Endpoint, probe: &Probe) -> Result<(), String> {
    timeout(PROBE_TIMEOUT, check(endpoint, probe))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())))
}

async fn check(endpoint: &Endpoint, probe: &Probe) -> Result<(), String> {
    let (path, healthy): (&str, fn(u16) -> bool) = match probe {
        Probe::Shim => (SHIM_HEALTH_PATH, |code| code == 200),
        // As a Kubernetes httpGet probe.
        Probe::Http {
            health_path: Some(path),
        } => (path.as_str(), |code| (200..400).contains(&code)),
        Probe::Http { health_path: None } => {
            // Listening is all we can ask of an arbitrary server without a health path.
            let connected = match endpoint {
                Endpoint::Tcp(addr) => TcpStream::connect(addr).await.map(drop),
                Endpoint::Unix(path) => UnixStream::connect(path).await.map(drop),
            };
            return connected.map_err(|e| format!("cannot connect: {e}"));
        }
    };
    let status = match endpoint {
        Endpoint::Unix(p) => match UnixStream::connect(p).await {
            Ok(s) => get_status(s, path).await,
            Err(e) => return Err(format!("cannot connect: {e}")),
        },
        Endpoint::Tcp(addr) => match TcpStream::connect(addr).await {
            Ok(s) => get_status(s, path).await,
            Err(e) => return Err(format!("cannot connect: {e}")),
        },
    };
    match status {
        Some(code) if healthy(code) => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None => Err("no HTTP answer".into()),
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
