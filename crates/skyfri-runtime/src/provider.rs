//! The provider abstraction: what the gateway needs from whatever runs function replicas.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skyfri_core::Deployment;

/// Everything that can go wrong while building or running functions.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown artefact {0}")]
    UnknownArtefact(String),
    #[error("function {0} not found")]
    NotFound(String),
    #[error("invalid deployment: {0}")]
    Invalid(String),
    #[error("interpreter {0} not found (looked for it in /usr/bin and on PATH)")]
    MissingInterpreter(&'static str),
    /// Not enough of the node left (admission by `requests`).
    #[error("not enough memory: {0}")]
    Insufficient(String),
    #[error("function {name} failed to start: {reason}\n{output}")]
    StartFailed {
        name: String,
        reason: String,
        /// The last lines the replica printed, usually the interesting part (a traceback).
        output: String,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with what we were doing, since bare `io::Error`s name no file.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Where a ready replica answers HTTP/1.1.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Replica counts of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub desired: u32,
    pub available: u32,
    /// Replicas of the function the kernel killed for exceeding their memory limit, since
    /// the provider started (a counter).
    pub oom_kills: u64,
}

/// One line a replica wrote to stdout or stderr.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    pub name: String,
    pub instance: String,
    pub timestamp: DateTime<Utc>,
    pub text: String,
}

/// What to read of a function's stored logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only the last `tail` of the lines the other filters keep.
    pub tail: Option<usize>,
    /// Only the lines of this replica.
    pub instance: Option<String>,
    /// Also follow the lines written from now on ([`LogRead::live`]).
    pub follow: bool,
}

/// A read of a function's logs.
pub struct LogRead {
    /// The stored lines the query asks for, oldest first, read from disk as they are
    /// iterated: iterate on a thread that may block (`spawn_blocking`), never on an async
    /// worker.
    pub stored: Box<dyn Iterator<Item = LogLine> + Send>,
    /// With [`LogQuery::follow`]: the lines written after `stored` was taken (of every
    /// replica), none of them in `stored` too. A follower that falls more than a buffer's
    /// worth of lines behind misses some (`RecvError::Lagged`).
    pub live: Option<tokio::sync::broadcast::Receiver<LogLine>>,
}

/// Where a provider reads the secret values a function declares. The values go to the
/// replica as files under `/var/openfaas/secrets/`, never through its environment.
pub trait SecretSource: Send + Sync + 'static {
    /// The decrypted value of a secret, `Ok(None)` when there is no such secret.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, String>;
}

/// What the gateway knows of the calls it sends to replicas: a replica that left the
/// rotation (scaled down, replaced by a deploy) is stopped only once no call holds it.
pub trait CallTracker: Send + Sync + 'static {
    /// Calls of `function` that hold `endpoint` now: on their way to it, running there, or
    /// having their answer streamed back.
    fn calls_on(&self, function: &str, endpoint: &Endpoint) -> usize;
}

/// Runs function replicas and tells the gateway where to reach them.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Creates or replaces the function's replicas, from d.artefact: d.replicas of them, or
    /// as many as the function runs now when that is more. A replacement switches without a
    /// failed call: the new replicas start beside the old ones, which serve until the new
    /// ones are ready (all of them, or at least one when the others are not ready within
    /// ~10 s); then the old ones leave the rotation and stop once the calls they hold are
    /// done (see [`Provider::track_calls`]). Returns an error, the old replicas untouched,
    /// if no new replica gets ready within ~10 s (with the last lines of its output in the
    /// message), e.g. a handler import error.
    async fn deploy(&self, d: &Deployment) -> Result<(), RuntimeError>;
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    async fn scale(&self, name: &str, replicas: u32) -> Result<(), RuntimeError>;
    /// Ready replicas, cheap (called on every request).
    fn endpoints(&self, name: &str) -> Vec<Endpoint>;
    fn status(&self, name: &str) -> Option<ReplicaStatus>;
    /// The gateway saw a connection failure to this endpoint mid-call: check the replica; if
    /// its process died, it is restarted. Returns what is known of the cause (the replica
    /// exceeded its memory limit, say) for the caller's error message.
    fn report_failure(&self, name: &str, endpoint: &Endpoint) -> Option<String>;
    /// Provider facts for `/system/info` (the local provider: its isolation).
    fn info(&self) -> serde_json::Value;
    /// Persisted logs (survive replica restarts and skyfri restarts), and with
    /// [`LogQuery::follow`] the lines to come. May block (it opens files, and reading them
    /// is the iteration of [`LogRead::stored`]): call it on the blocking pool.
    fn logs(&self, name: &str, query: &LogQuery) -> LogRead;
    fn follow_logs(&self, name: &str) -> tokio::sync::broadcast::Receiver<LogLine>;
    /// The CPU time each function's replicas used since the last call (stopped replicas
    /// included), for metering; `None` where the provider cannot measure it.
    fn take_cpu_usage(&self) -> Option<Vec<(String, Duration)>> {
        None
    }
    /// Where the provider asks whether calls still hold a replica it retires. Without a
    /// tracker, a retired replica gets a fixed grace period.
    fn track_calls(&self, _tracker: std::sync::Weak<dyn CallTracker>) {}
    /// Stops every replica (kill process groups) and waits for them.
    async fn shutdown(&self);
}
