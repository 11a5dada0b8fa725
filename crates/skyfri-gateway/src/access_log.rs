//! The access log: one JSON line per call of `/function/*`, `/async-function/*` and the Lambda
//! Invoke API (call id,
//! function, method, path without its query, status, duration, bytes in and out, client IP,
//! cold start, time), written when the response has been sent (or abandoned).
//!
//! Calls never wait for the disk: a line goes into a bounded channel, and a writer thread
//! appends it to `<data-dir>/logs/access.log` (rotated by size, as function logs are) and/or
//! prints it on stdout, in batches. When the channel is full the line is dropped and counted in
//! `gateway_access_log_dropped_total`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
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

/// One call, as logged.
#[derive(Serialize)]
struct Entry {
    time: String,
    call_id: String,
    function: String,
    method: String,
    path: String,
    status: u16,
    duration_ms: f64,
    request_bytes: u64,
    response_bytes: u64,
    client: Option<IpAddr>,
    cold_start: bool,
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
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(entry) = next {
                        let Ok(mut line) = serde_json::to_vec(&entry) else {
                            next = rx.try_recv().ok();
                            continue;
                        };
                        line.push(b'\n');
                        if !buf.is_empty() && buf.len() + line.len() > chunk {
                            out.write(&buf);
                            buf.clear();
                        }
                        buf.extend_from_slice(&line);
                        next = rx.try_recv().ok();
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
    let Some(log) = state.access_log.get().cloned() else {
        return next.run(req).await;
    };
    let start = Instant::now();
    let time = Utc::now();
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let (counted, request_bytes) = Counted::request(body);
    let response = next
        .run(Request::from_parts(parts, Body::new(counted)))
        .await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let function = split_under("/function/", &path)
        .or_else(|| split_under("/async-function/", &path))
        .map(|(name, _)| function_name(name).to_string())
        .or_else(|| crate::lambda::function_in_path(&path))
        .unwrap_or_default();
    let pending = Pending {
        entry: Entry {
            time: timestamp(time),
            call_id: header("x-call-id").unwrap_or_default(),
            function,
            method,
            path,
            status: response.status().as_u16(),
            duration_ms: 0.0,
            request_bytes: 0,
            response_bytes: 0,
            client,
            cold_start: header("x-skyfri-cold-start").is_some(),
        },
        start,
        request_bytes,
        log,
        dropped: state.metrics.access_log_dropped(),
    };
    response.map(|body| Body::new(Counted::response(body, pending)))
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A line waiting for its call to end.
struct Pending {
    entry: Entry,
    start: Instant,
    request_bytes: Arc<AtomicU64>,
    log: AccessLog,
    dropped: Counter<u64, AtomicU64>,
}

impl Pending {
    fn send(mut self, response_bytes: u64) {
        self.entry.duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.entry.request_bytes = self.request_bytes.load(Ordering::Relaxed);
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
                time: timestamp(Utc::now()),
                call_id: "c".into(),
                function: "f".into(),
                method: "GET".into(),
                path: "/function/f".into(),
                status: 200,
                duration_ms: 0.0,
                request_bytes: 0,
                response_bytes: 0,
                client: None,
                cold_start: false,
            },
            start: Instant::now(),
            request_bytes: Arc::default(),
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
    fn targets() {
        assert_eq!("both".parse(), Ok(Target::Both));
        assert!("syslog"
            .parse::<Target>()
            .is_err_and(|e| e.contains("file, stdout")));
    }
}
