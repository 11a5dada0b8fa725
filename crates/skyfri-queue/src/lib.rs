//! skyfri-queue: durable, at-least-once async invocations. [`Queue`] is what the gateway
//! talks to; `embedded` keeps calls in the data dir (the default), `jetstream` in NATS
//! JetStream (`skyfri up --queue nats://HOST:PORT`), so that several gateways share one queue.
//!
//! # The life of a call
//!
//! ```text
//! enqueue ──▶ queued ──next──▶ running ──finish(Done)──▶ done
//!               ▲                 │  └──finish(Dead)───▶ dead ──redrive──▶ queued
//!               └──(due again)── retrying ◀─finish(Retry)┘
//! queued / retrying ──cancel──▶ cancelled
//! running whose worker died (its lease lapsed) ──▶ queued again (at least once)
//! running handed back by its worker (release) ──▶ due again at once, attempt not counted
//! ```
//!
//! A call is accepted (the caller gets 202) only once [`Queue::enqueue`] has returned: by then
//! it is durable. Its id is the caller's `X-Call-Id` or a new one; enqueuing an id that is
//! already known adds nothing ([`Enqueued::Duplicate`]), so a retried POST runs once.

pub mod embedded;
pub mod jetstream;

pub use embedded::{Durability, EmbeddedOptions, EmbeddedQueue};
pub use jetstream::{JetStreamOptions, JetStreamQueue};

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One async invocation, as the caller made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncCall {
    pub id: String,
    pub function: String,
    pub method: String,
    /// The path after `/async-function/NAME`, starting with `/` (`/` when none).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// In arrival order; names as received.
    pub headers: Vec<(String, String)>,
    #[serde(with = "body_base64")]
    pub body: Bytes,
    /// `X-Callback-Url`: where the result is POSTed.
    pub callback_url: Option<String>,
    pub enqueued_at: DateTime<Utc>,
}

/// Where a call is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum CallState {
    Queued,
    /// A worker has it (attempt 1 is the first run).
    Running {
        attempt: u32,
    },
    /// Failed `attempt` times with a retryable outcome; runs again at `next_at`.
    Retrying {
        attempt: u32,
        next_at: DateTime<Utc>,
        last_status: u16,
        last_error: Option<String>,
    },
    /// Ran; `status` is the function's (a 4xx that is not retryable ends here too).
    Done {
        attempt: u32,
        status: u16,
        duration_ms: u64,
    },
    /// Out of attempts, or failed in a way retries cannot fix: the dead-letter list.
    Dead {
        attempt: u32,
        status: u16,
        reason: String,
    },
    Cancelled,
}

impl CallState {
    /// Every state's [`CallState::name`], in the order of a call's life.
    pub const NAMES: [&'static str; 6] =
        ["queued", "running", "retrying", "done", "dead", "cancelled"];

    /// The state's name as serialised (`"state": "retrying"`) and as [`ListFilter::state`]
    /// takes it.
    pub fn name(&self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running { .. } => "running",
            CallState::Retrying { .. } => "retrying",
            CallState::Done { .. } => "done",
            CallState::Dead { .. } => "dead",
            CallState::Cancelled => "cancelled",
        }
    }
}

/// A call and where it stands: what `GET /async-function/CALL-ID` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call: AsyncCall,
    #[serde(flatten)]
    pub state: CallState,
    pub updated_at: DateTime<Utc>,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    New,
    /// The id was known: nothing was added.
    Duplicate,
}

/// A call handed to a worker. The worker must report with [`Queue::finish`]; until then it
/// keeps the lease alive with [`Queue::heartbeat`] (a lease that lapses, because the worker
/// or the whole gateway died, makes the call due again).
#[derive(Debug)]
pub struct Delivery {
    pub call: AsyncCall,
    /// 1 for the first run.
    pub attempt: u32,
    /// Backend data identifying the lease (a row version, a JetStream message).
    pub token: DeliveryToken,
}

/// Opaque to callers.
#[derive(Debug)]
pub struct DeliveryToken(pub Box<dyn std::any::Any + Send + Sync>);

/// How a run ended, as the worker decided from the function's answer and the retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Done {
        status: u16,
        duration: Duration,
    },
    /// Run again after `after`.
    Retry {
        after: Duration,
        status: u16,
        error: Option<String>,
    },
    Dead {
        status: u16,
        reason: String,
    },
}

/// What [`Queue::cancel`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued or retrying and will not run (or it had been cancelled already:
    /// cancelling is idempotent, like the `DELETE` it serves).
    Cancelled,
    NotFound,
    /// Running or finished: too late to cancel.
    TooLate(CallState),
}

/// Which calls to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub function: Option<String>,
    /// One of [`CallState::NAMES`]; another name is [`QueueError::UnknownState`].
    pub state: Option<String>,
    /// At most this many; 0 means [`ListFilter::DEFAULT_LIMIT`].
    pub limit: usize,
}

impl ListFilter {
    pub const DEFAULT_LIMIT: usize = 100;
}

/// Per function: calls waiting (queued or retrying) and the age of the oldest (since its
/// `enqueued_at`), for metrics. Functions with no waiting call are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Depth {
    pub function: String,
    pub waiting: u64,
    pub oldest: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue: {0}")]
    Backend(String),
    #[error("queue: call {0:?} is not known")]
    NotFound(String),
    /// A heartbeat or finish for a delivery whose lease lapsed and whose call went to another
    /// worker (or was otherwise settled): nothing was changed. The worker should stop working
    /// on it and drop its result; the call's current holder reports instead.
    #[error("queue: the lease on call {0:?} was lost (it lapsed and the call was handed out again); this result is dropped")]
    LeaseLost(String),
    /// A [`ListFilter::state`] that is not one of [`CallState::NAMES`] (a caller's mistake: 400).
    #[error("queue: unknown call state {0:?}; use one of queued, running, retrying, done, dead, cancelled")]
    UnknownState(String),
    #[error("queue: the queue is shutting down")]
    Closed,
    /// A call larger than the backend can store in one record (a caller's mistake: 413).
    #[error("queue: {0}")]
    TooLarge(String),
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// `embedded` or `jetstream`, for logs and `/system/info`.
    fn backend(&self) -> &'static str;

    /// Stores `call` durably; returns once it would survive a crash.
    async fn enqueue(&self, call: AsyncCall) -> Result<Enqueued, QueueError>;

    /// Waits for the next due call of `function` and leases it to the caller for `lease`.
    /// A call whose lease lapsed (its worker died) is due again and comes back with the next
    /// attempt number. Returns [`QueueError::Closed`] once [`Queue::close`] was called.
    ///
    /// Cancel-safe: dropping the future (e.g. in a `select!` with a shutdown signal) loses no
    /// call; one it had just leased is handed out again.
    async fn next(&self, function: &str, lease: Duration) -> Result<Delivery, QueueError>;

    /// The worker is still on it: extends the lease by `lease` from now.
    /// [`QueueError::LeaseLost`] when the call went to another worker meanwhile.
    async fn heartbeat(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError>;

    /// Records how the run ended. [`QueueError::LeaseLost`] (and nothing recorded) when the
    /// lease lapsed and the call went to another worker meanwhile; a lapsed lease that nobody
    /// took over yet is still the worker's.
    async fn finish(&self, delivery: Delivery, finished: Finished) -> Result<(), QueueError>;

    /// Hands a running call back unfinished (its gateway is stopping): it is due again at
    /// once, for any worker, and the interrupted run does not count as an attempt (the next
    /// delivery carries the same attempt number as this one). [`QueueError::LeaseLost`]
    /// (and nothing changed) when the call went to another worker meanwhile.
    async fn release(&self, delivery: Delivery) -> Result<(), QueueError>;

    async fn cancel(&self, id: &str) -> Result<Cancelled, QueueError>;

    async fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError>;

    /// Newest first: with a state filter, the calls that entered that state most recently
    /// (the latest dead letters first); without, the calls enqueued most recently.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<CallRecord>, QueueError>;

    /// Puts a dead call back in the queue as new (attempt 1). `false` when it is not dead,
    /// [`QueueError::NotFound`] when it is not known.
    async fn redrive(&self, id: &str) -> Result<bool, QueueError>;

    /// Waiting calls per function.
    async fn depth(&self) -> Result<Vec<Depth>, QueueError>;

    /// Shutdown: [`Queue::next`] returns [`QueueError::Closed`] from now on (waiting ones
    /// wake). Everything else keeps working, so that workers still running a call can
    /// heartbeat and finish it, and late enqueues are still stored.
    fn close(&self);
}

/// Bodies travel as base64 in JSON (the embedded store's records, JetStream headers aside).
mod body_base64 {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}
