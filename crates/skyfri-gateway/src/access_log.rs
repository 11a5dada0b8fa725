//! The access log: one JSON line per call of `/function/*`, `/async-function/*` and the Lambda
//! Invoke API (call id,
//! function, method, path without its query, status, duration, bytes in and out, client IP,
//! cold start, time), written when the response has been sent (or abandoned).
//!
//! Calls never wait for the disk: a line goes into a bounded channel, and a writer thread
//! appends it to `<data-dir>/logs/access.log` (rotated by size, as function logs are) and/or
//! prints it on stdout, in batches. When the channel is full the line is dropped and counted in
//! `gateway_access_log_dropped_total`.
//!
//! The call's side does as little as it can, since it runs once per call on the invoke path:
//! it takes the clock and keeps the raw facts (no formatting); a request body is counted only
//! when there is one; the writer thread formats the time and the JSON.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::body::Body as _;
use skyfri_runtime::local::{LogRotation, RotatingFile};
use tokio::sync::mpsc;

use prometheus_client::metrics::counter::Counter;

use crate::invoke::{function_name, split_under};
use crate::state::AppState;

/// Lines that may wait for the writer before new ones are dropped.
const BUFFER: usize = 8192;
/// Largest single write.
const MAX_CHUNK: usize = 64 << 10;
/// The writer's pause after each batch.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Where the writer thread puts lines.
struct Output {
    file: Option<RotatingFile>,
    stdout: bool,
    path: PathBuf,
}

impl Output {
    fn write(&mut self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.append(lines) {
                tracing::warn!(path = %self.path.display(), error = %e, "access log not written");
            }
        }
        if self.stdout {
            let _ = std::io::stdout().lock().write_all(lines);
        }
    }
}

/// Where access log lines go: `file` (`<data-dir>/logs/access.log`, rotated), `stdout`,
/// `both` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    File,
    Stdout,
    Both,
    Off,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s {
            "file" => Ok(Target::File),
            "stdout" => Ok(Target::Stdout),
            "both" => Ok(Target::Both),
            "off" => Ok(Target::Off),
            _ => Err(format!("{s:?}: use file, stdout, both or off")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub target: Target,
    pub path: PathBuf,
    pub rotation: LogRotation,
}

/// One call, as the call's side leaves it for the writer.
struct Entry {
    time: SystemTime,
    /// Shared with the answer's `X-Call-Id`, not copied.
    call_id: Option<HeaderValue>,
    method: Method,
    /// The request's; the function's name is read from its path by the writer.
    uri: Uri,
    status: u16,
    duration: Duration,
    request_bytes: u64,
    response_bytes: u64,
    client: Option<IpAddr>,
    cold_start: bool,
}

impl Entry {
    /// Appends the entry's JSON line to `out`: `{"time", "call_id", "function", "method",
    /// "path", "status", "duration_ms", "request_bytes", "response_bytes", "client",
    /// "cold_start"}` and a newline. Written by hand: serde's generic path cost the writer
    /// thread as much as the rest of the call's logging.
    fn write(&self, clock: &mut Clock, out: &mut Vec<u8>) {
        let mut int = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(clock.rfc3339(self.time).as_bytes());
        out.extend_from_slice(b"\",\"call_id\":");
        let call_id = self.call_id.as_ref().and_then(|v| v.to_str().ok());
        json_string(out, call_id.unwrap_or_default());
        let path = self.uri.path();
        out.extend_from_slice(b",\"function\":");
        match split_under("/function/", path).or_else(|| split_under("/async-function/", path)) {
            Some((name, _)) => json_string(out, function_name(name)),
            None => json_string(
                out,
                &crate::lambda::function_in_path(path).unwrap_or_default(),
            ),
        }
        out.extend_from_slice(b",\"method\":");
        json_string(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_string(out, path);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(int.format(self.status).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        // Milliseconds with three decimals (microseconds), by integer formatting.
        let micros = self.duration.as_micros();
        out.extend_from_slice(int.format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        out.extend_from_slice(b",\"request_bytes\":");
        out.extend_from_slice(int.format(self.request_bytes).as_bytes());
        out.extend_from_slice(b",\"response_bytes\":");
        out.extend_from_slice(int.format(self.response_bytes).as_bytes());
        out.extend_from_slice(b",\"client\":");
        match self.client {
            Some(IpAddr::V4(ip)) => {
                // By hand: `Display` for an address costs more than the rest of the line.
                out.push(b'"');
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.extend_from_slice(int.format(octet).as_bytes());
                }
                out.push(b'"');
            }
            Some(ip) => {
                out.push(b'"');
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{ip}");
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(if self.cold_start {
            b",\"cold_start\":true}\n"
        } else {
            b",\"cold_start\":false}\n"
        });
    }
}

/// `s` as a JSON string: copied as is when nothing in it needs escaping (the usual case),
/// else escaped by serde_json.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// RFC 3339 UTC times with milliseconds (`2026-12-06T04:35:12.345Z`), the date and time of
/// day formatted once per second.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    text: String,
}

impl Clock {
    fn rfc3339(&mut self, t: SystemTime) -> &str {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let at: DateTime<Utc> = t.into();
            self.text = at.format("%Y-%m-%dT%H:%M:%S.000Z").to_string();
            self.second = Some(since.as_secs());
        }
        let millis = since.subsec_millis().min(999);
        let at = self.text.len() - 4;
        let digits = [
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
        ];
        // ASCII digits over ASCII digits: still UTF-8.
        self.text
            .replace_range(at..at + 3, std::str::from_utf8(&digits).unwrap_or("000"));
        &self.text
    }
}

/// The sending side of the access log.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
}

impl AccessLog {
    /// Starts the writer thread; `None` when the log is off. The thread ends once every
    /// sender is gone.
    pub fn start(config: AccessLogConfig) -> std::io::Result<Option<AccessLog>> {
        if config.target == Target::Off {
            return Ok(None);
        }
        let file = match config.target {
            Target::File | Target::Both => {
                if let Some(dir) = config.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(RotatingFile::new(config.path.clone(), config.rotation))
            }
            _ => None,
        };
        let stdout = matches!(config.target, Target::Stdout | Target::Both);
        let (tx, mut rx) = mpsc::channel::<Entry>(BUFFER);
        // Whole lines, at most one file's worth, go out in one write.
        let chunk = usize::try_from(config.rotation.max_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_CHUNK);
        let mut out = Output {
            file,
            stdout,
            path: config.path,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(chunk);
                let mut line = Vec::with_capacity(512);
                let mut clock = Clock::default();
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(entry) = next {
                        next = rx.try_recv().ok();
                        line.clear();
                        entry.write(&mut clock, &mut line);
                        if !buf.is_empty() && buf.len() + line.len() > chunk {
                            out.write(&buf);
                            buf.clear();
                        }
                        buf.extend_from_slice(&line);
                    }
                    out.write(&buf);
                    buf.clear();
                    // Lines that come meanwhile wait for the next batch, so that a busy
                    // gateway does not wake this thread for every call.
                    std::thread::sleep(BATCH_PAUSE);
                }
            })?;
        Ok(Some(AccessLog { tx }))
    }
}

/// Middleware of the invoke routes: measures the call and logs it when its response body is
/// done.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    around(&state, req, |req| next.run(req)).await
}

/// Runs `call` on `req`, measures it and logs it when its response body is done: what
/// [`record`] does for the router, and the server's direct path to the invoke handler does
/// without it (see `crate::Gateway`).
pub async fn around<F, Fut>(state: &AppState, req: Request, call: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let Some(log) = state.access_log.get() else {
        return call(req).await;
    };
    let log = log.clone();
    let start = Instant::now();
    let time = SystemTime::now();
    let uri = req.uri().clone();
    let method = req.method().clone();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // A request without a body (most GETs) is not wrapped: it has nothing to count.
    let (req, request_bytes) = if req.body().is_end_stream() {
        (req, None)
    } else {
        let (parts, body) = req.into_parts();
        let (counted, bytes) = Counted::request(body);
        (Request::from_parts(parts, Body::new(counted)), Some(bytes))
    };
    let response = call(req).await;
    let headers = response.headers();
    let call_id = headers.get(X_CALL_ID).cloned();
    let cold_start = headers.contains_key(X_SKYFRI_COLD_START);
    let pending = Pending {
        entry: Entry {
            time,
            call_id,
            method,
            uri,
            status: response.status().as_u16(),
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: 0,
            client,
            cold_start,
        },
        start,
        request_bytes,
        log,
        dropped: state.metrics.access_log_dropped(),
    };
    response.map(|body| Body::new(Counted::response(body, pending)))
}

const X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
const X_SKYFRI_COLD_START: HeaderName = HeaderName::from_static("x-skyfri-cold-start");

/// A line waiting for its call to end.
struct Pending {
    entry: Entry,
    start: Instant,
    /// The request body's count; `None`: the request had no body.
    request_bytes: Option<Arc<AtomicU64>>,
    log: AccessLog,
    dropped: Counter<u64, AtomicU64>,
}

impl Pending {
    fn send(mut self, response_bytes: u64) {
        self.entry.duration = self.start.elapsed();
        self.entry.request_bytes = self
            .request_bytes
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        self.entry.response_bytes = response_bytes;
        if let Err(mpsc::error::TrySendError::Full(_)) = self.log.tx.try_send(self.entry) {
            self.dropped.inc();
        }
    }
}

/// A body that counts the bytes that pass through it: into `shared` as they pass (the
/// request's, read by the response side), and, when it is dropped (after the last byte, or
/// when the client went away), into its call's line, which it then sends (the response's).
struct Counted {
    body: Body,
    bytes: u64,
    shared: Option<Arc<AtomicU64>>,
    pending: Option<Pending>,
}

impl Counted {
    /// The request body, and the count the call's line reads.
    fn request(body: Body) -> (Counted, Arc<AtomicU64>) {
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            body,
            bytes: 0,
            shared: Some(Arc::clone(&bytes)),
            pending: None,
        };
        (counted, bytes)
    }

    /// The response body, which sends `pending` when it is done.
    fn response(body: Body, pending: Pending) -> Counted {
        Counted {
            body,
            bytes: 0,
            shared: None,
            pending: Some(pending),
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.bytes += n;
                if let Some(shared) = &self.shared {
                    shared.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.send(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(log: &AccessLog, dropped: &Counter<u64, AtomicU64>) -> Pending {
        Pending {
            entry: Entry {
                time: SystemTime::now(),
                call_id: Some(HeaderValue::from_static("c")),
                method: Method::GET,
                uri: Uri::from_static("/function/f"),
                status: 200,
                duration: Duration::ZERO,
                request_bytes: 0,
                response_bytes: 0,
                client: None,
                cold_start: false,
            },
            start: Instant::now(),
            request_bytes: None,
            log: log.clone(),
            dropped: dropped.clone(),
        }
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        // A writer that has not taken anything yet, with room for one line.
        let (tx, mut rx) = mpsc::channel(1);
        let log = AccessLog { tx };
        let dropped = Counter::<u64, AtomicU64>::default();
        pending(&log, &dropped).send(10);
        pending(&log, &dropped).send(20);
        assert_eq!(dropped.get(), 1);
        let first = rx.try_recv().ok().map(|e| e.response_bytes);
        assert_eq!(first, Some(10));
    }

    #[test]
    fn lines_are_json_with_the_time_in_rfc3339() -> Result<(), Box<dyn std::error::Error>> {
        let (tx, _rx) = mpsc::channel(1);
        let log = AccessLog { tx };
        let dropped = Counter::<u64, AtomicU64>::default();
        let mut clock = Clock::default();
        let mut out = Vec::new();
        let at = |ms| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        for (ms, want) in [
            (1_765_000_000_007, "2025-12-06T05:46:40.007Z"),
            (1_765_000_000_999, "2025-12-06T05:46:40.999Z"),
            (1_765_000_001_050, "2025-12-06T05:46:41.050Z"),
        ] {
            let mut p = pending(&log, &dropped);
            p.entry.time = at(ms);
            p.entry.uri = Uri::try_from("/function/f.openfaas-fn/\"q\"?x=1")?;
            p.entry.duration = Duration::from_micros(1_250);
            p.entry.client = Some(IpAddr::from([127, 0, 0, 1]));
            out.clear();
            p.entry.write(&mut clock, &mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            let line: serde_json::Value = serde_json::from_slice(&out)?;
            assert_eq!(line["time"], want, "{line}");
            assert_eq!(line["method"], "GET");
            assert_eq!(line["path"], "/function/f.openfaas-fn/\"q\"");
            assert_eq!(line["function"], "f");
            assert_eq!(line["call_id"], "c");
            assert_eq!(line["duration_ms"], 1.25);
            assert_eq!(line["cold_start"], false);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(line["client"], "127.0.0.1");
            assert_eq!(line["status"], 200);
        }
        Ok(())
    }

    #[test]
    fn targets() {
        assert_eq!("both".parse(), Ok(Target::Both));
        assert!("syslog"
            .parse::<Target>()
            .is_err_and(|e| e.contains("file, stdout")));
    }
}
