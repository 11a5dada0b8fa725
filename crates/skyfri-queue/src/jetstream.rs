//! The NATS JetStream queue (`skyfri up --queue nats://HOST:PORT`): async calls in a NATS
//! server that several skyfri gateways share, each call running once. Works with nats-server
//! 2.9 (Debian's) and later; JetStream must be enabled (`nats-server -js`).
//!
//! # Layout
//!
//! - **Stream `SKYFRI_CALLS`**, subjects `skyfri.calls.<function>`, file storage, *work-queue*
//!   retention: a message is the work item for one call (its [`AsyncCall`] as JSON, the same
//!   shape as in the record below) and is removed from the stream once acknowledged, so the
//!   stream holds exactly the calls that may still run (queued, running, retrying) and does
//!   not grow with history. Messages are published with `Nats-Msg-Id` (see
//!   [`record::Stored::publish_id`]) so that a repeated publish within the stream's duplicate
//!   window (2 minutes) adds nothing.
//! - **One durable pull consumer per function**, `skyfri-<function>`, filtered on its subject,
//!   explicit acks, `ack_wait` = the lease that [`Queue::next`] is given (the function's
//!   timeout plus slack: the consumer is updated when it changes, so the lease is per
//!   function), no server-side delivery limit, up to 10,000 calls handed out at once. Every
//!   gateway pulls from the same consumer, so the server hands each message to one of them
//!   at a time: that is how they share the work.
//! - **KV bucket `skyfri_calls`**, key = the call id (see [`record::key`]), value = the
//!   [`CallRecord`] as JSON plus what this backend needs (see [`record::Stored`]); history 1,
//!   file storage, entries expire 30 days after their last change
//!   ([`JetStreamOptions::record_max_age`]). It is the truth about a call's state: `get`,
//!   `list`, `cancel`, `redrive`, dead letters, and idempotency of ids beyond the duplicate
//!   window. Every change is a compare-and-set on the entry's revision, so two gateways
//!   never clobber each other's change; the loser re-reads and decides again.
//!
//! # Invariants
//!
//! 1. **Record first, then message.** `enqueue` creates the record (failing if the id is
//!    known: [`Enqueued::Duplicate`]) and then publishes the message; it answers once the
//!    stream has acknowledged the message (stored on the server's disk: like the embedded
//!    queue's default, it survives any crash of skyfri or of nats-server's process; a power
//!    cut can take what nats-server had not yet synced, see its `sync_interval`). If the
//!    publish fails, the record is deleted again and the caller gets the error. A crash of
//!    the gateway between the two leaves a queued record without a message: the caller got
//!    no 202 and retries (with its `X-Call-Id`), and a duplicate enqueue of a *queued* call
//!    publishes its message again (a no-op if it exists, within the duplicate window), which
//!    repairs it. A call id the caller never learned stays listed as queued and never runs.
//! 2. **A message is the right to run the call once.** [`Queue::next`] pulls one message,
//!    reads the record and takes the call with a compare-and-set to `running` (attempt + 1,
//!    `seq` = the message's stream sequence). It acknowledges and skips a message whose call
//!    is done, dead or cancelled, or which is a *stray copy*: the record is running or
//!    retrying on another message (a repair publish beyond the duplicate window can make a
//!    second message for one call; whichever is taken first wins).
//! 3. **A lease is a record revision.** A [`Delivery`] holds the revision its `running` record
//!    was written at. `heartbeat` checks that the record is still at that revision and sends
//!    an in-progress ack (the server restarts the message's `ack_wait`); `finish` writes the
//!    outcome with a compare-and-set on that revision. When the revision moved on (the lease
//!    lapsed, the server handed the message to another worker, which took the call), both
//!    are [`QueueError::LeaseLost`] and change nothing. A lapsed lease that nobody took over
//!    is still the worker's, as in the embedded queue.
//! 4. **Outcome first, then ack.** `finish` records done/dead and then acknowledges (the
//!    message leaves the stream); a crash between the two redelivers the message after
//!    `ack_wait`, and `next` skips it (2). A retry records `retrying` and then NAKs the
//!    message with the retry delay: the server redelivers it when it is due (attempt from
//!    the record, so a NAK'd or lapsed delivery counts exactly like in the embedded queue).
//! 5. **Attempts and the backstop.** Attempts come from the record (hand-outs since enqueue
//!    or redrive, a lapsed lease counting as one, a hand-back not), so the worker's retry
//!    policy turns a call that keeps killing its gateway into a dead letter. As a backstop, a
//!    call that would start attempt [`JetStreamOptions::max_attempts`] + 1 is recorded dead by
//!    `next` itself. The server's delivery count is not used: a NAK at shutdown (a hand-back)
//!    or a pull for a `next` that was dropped is a delivery without an attempt.
//! 6. **Cancel-safe `next`, `release`.** The pull runs in a task of its own: if `next` is
//!    dropped (or the queue closed) while the task holds a call it just took, the task puts
//!    the record back as it was and NAKs the message, so it is due again at once with the
//!    same attempt number. A pull request is never abandoned while the server may still
//!    answer it; the task ends at most [`PULL_EXPIRY`] after `next` was dropped.
//!    [`Queue::release`] puts back a call a worker hands back unfinished the same way (a
//!    compare-and-set on its lease's revision: a lost lease changes nothing, no NAK).
//! 7. **Redrive** writes the dead record back as queued (attempt reset) with a new
//!    `publish_id`, then publishes a new message. A crash between the two leaves a queued
//!    record without a message; redriving it again (answering `false`) publishes it.
//! 8. **Cancel** only changes the record; the call's message stays in the stream until the
//!    server delivers it (at once for a queued call, when its retry is due for a retrying
//!    one) and `next` drops it. Until then [`Queue::depth`] counts it.
//!
//! # Limits
//!
//! - A call (its body as base64 and its headers) must fit in one NATS message: the server's
//!   `max_payload`, 1 MB by default (about 750 KB of body), 64 MB at most. A larger call is
//!   refused at enqueue with an error saying so.
//! - `list` reads the newest entry of every record (one ordered consumer over the bucket):
//!   its cost grows with the calls kept (see `record_max_age`).
//! - `depth` counts, per function, the messages in the stream minus the calls this gateway is
//!   running; calls running on other gateways count as waiting, and `oldest` is the age of
//!   the oldest call not finished (it may be running).

mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use async_nats::HeaderMap;
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::{oneshot, watch};

use crate::{
    AsyncCall, CallRecord, CallState, Cancelled, Delivery, DeliveryToken, Depth, Enqueued,
    Finished, ListFilter, Queue, QueueError,
};
use record::Stored;

/// How long one pull request waits on the server for a message. A dropped `next` leaves its
/// pull running at most this long; an idle function costs one request per this period.
pub const PULL_EXPIRY: Duration = Duration::from_secs(5);

/// Calls of one function handed out and not yet acknowledged, across all gateways.
const MAX_ACK_PENDING: i64 = 10_000;

/// Room for the message headers next to a call's JSON in one NATS message.
const HEADER_ROOM: usize = 1024;

/// Names and limits; the defaults are what `skyfri up --queue nats://...` uses.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// The stream holding the calls' messages.
    pub stream: String,
    /// Calls of function F are published on `<subject_prefix>.F`.
    pub subject_prefix: String,
    /// The KV bucket holding the calls' records.
    pub bucket: String,
    /// How long a record is kept after its last change (done, dead and cancelled calls stay
    /// visible, and their ids idempotent, this long).
    pub record_max_age: Duration,
    /// A call that ran this many attempts without a result (its leases lapsed: it killed its
    /// gateway, or the gateway died) is recorded dead by the queue itself, whatever the
    /// function's retry policy. Hand-backs do not count.
    pub max_attempts: u32,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            stream: "SKYFRI_CALLS".into(),
            subject_prefix: "skyfri.calls".into(),
            bucket: "skyfri_calls".into(),
            record_max_age: Duration::from_secs(30 * 24 * 3600),
            max_attempts: 100,
        }
    }
}

/// The JetStream backend of [`Queue`]. See the module documentation for its layout and
/// guarantees.
pub struct JetStreamQueue {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    kv: kv::Store,
    options: JetStreamOptions,
    /// Per function, its consumer and the `ack_wait` it was last seen with.
    consumers: Mutex<HashMap<String, (consumer::PullConsumer, Duration)>>,
    /// Per function, the calls this queue has handed out and that are not finished.
    running: Arc<Mutex<HashMap<String, u64>>>,
    closed: watch::Sender<bool>,
}

/// What a [`Delivery`] of this backend holds.
struct Lease {
    key: String,
    /// The record as this lease wrote it (`running`), and at which revision.
    stored: Stored,
    revision: u64,
    /// The record before it was taken, to put back if nobody receives the delivery.
    prior: Option<bytes::Bytes>,
    acker: jetstream::message::Acker,
    _running: Running,
}

/// Counts a handed-out call in [`Inner::running`] while it lives.
struct Running {
    running: Arc<Mutex<HashMap<String, u64>>>,
    function: String,
}

impl Running {
    fn new(running: &Arc<Mutex<HashMap<String, u64>>>, function: &str) -> Running {
        *lock(running).entry(function.to_owned()).or_default() += 1;
        Running {
            running: running.clone(),
            function: function.to_owned(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(n) = running.get_mut(&self.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.function);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl JetStreamQueue {
    /// Connects to the NATS server at `url` (`nats://HOST:PORT`) with the default names.
    pub async fn connect(url: &str) -> Result<Arc<JetStreamQueue>, QueueError> {
        JetStreamQueue::connect_with(url, JetStreamOptions::default()).await
    }

    /// Connects, checks that JetStream is enabled, and creates the stream and the bucket if
    /// they do not exist yet (any gateway may be the first).
    pub async fn connect_with(
        url: &str,
        options: JetStreamOptions,
    ) -> Result<Arc<JetStreamQueue>, QueueError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            QueueError::Backend(format!("{url}: {what}: {e}"))
        };
        let client = async_nats::ConnectOptions::new()
            .name("skyfri")
            .connect(url)
            .await
            .map_err(|e| fail("cannot connect to NATS", &e))?;
        let js = jetstream::new(client.clone());
        // A plain request, read loosely: the client's typed answer is the newest server's.
        let info = client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())
            .and_then(|m| {
                serde_json::from_slice::<serde_json::Value>(&m.payload).map_err(|e| e.to_string())
            })
            .and_then(|v| match v.get("error") {
                Some(e) => Err(e.to_string()),
                None => Ok(()),
            });
        info.map_err(|e| {
            fail(
                "JetStream is not available (start nats-server with -js, or add `jetstream {}` \
                 to its configuration)",
                &e,
            )
        })?;
        let stream = js
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                description: Some("skyfri async calls waiting or running".into()),
                subjects: vec![format!("{}.>", options.subject_prefix)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| fail(&format!("cannot create the stream {}", options.stream), &e))?;
        let retention = stream.cached_info().config.retention;
        if retention != stream::RetentionPolicy::WorkQueue {
            return Err(QueueError::Backend(format!(
                "{url}: the stream {} exists with {retention:?} retention; skyfri needs a \
                 work-queue stream: delete it (nats stream rm {}) or choose another name",
                options.stream, options.stream
            )));
        }
        let kv = open_bucket(
            &js,
            &options.bucket,
            "skyfri async call records",
            options.record_max_age,
        )
        .await
        .map_err(|e| fail(&format!("cannot open the KV bucket {}", options.bucket), &e))?;
        let (closed, _) = watch::channel(false);
        Ok(Arc::new(JetStreamQueue {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                client,
                js,
                stream,
                kv,
                options,
                consumers: Mutex::new(HashMap::new()),
                running: Arc::new(Mutex::new(HashMap::new())),
                closed,
            }),
        }))
    }
}

/// Opens the KV bucket `bucket` (history 1, file storage, entries expiring `max_age` after
/// their last change), creating it if there is none. Works with nats-server 2.9: the bucket's
/// stream is created directly, as the client's `create_key_value` would make it (that call
/// first asks for account info in a shape 2.9 does not answer with).
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    let created = js.get_or_create_stream(config).await;
    match (created, js.get_key_value(bucket).await) {
        (_, Ok(kv)) => Ok(kv),
        (Err(e), Err(_)) => Err(format!("creating it: {e}")),
        (Ok(_), Err(e)) => Err(e.to_string()),
    }
}

impl Inner {
    fn backend(&self, what: impl std::fmt::Display, e: impl std::fmt::Display) -> QueueError {
        QueueError::Backend(format!("{}: {what}: {e}", self.url))
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn subject(&self, function: &str) -> String {
        format!(
            "{}.{}",
            self.options.subject_prefix,
            record::token(function)
        )
    }

    /// The record of a call and its revision; `None` when there is none (or it was deleted).
    async fn entry(&self, key: &str) -> Result<Option<(Stored, u64)>, QueueError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| self.backend(format_args!("reading call {key:?}"), e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((Stored::decode(key, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Compare-and-set: `Ok(None)` when the record is no longer at `revision`.
    async fn update(
        &self,
        key: &str,
        stored: &Stored,
        revision: u64,
    ) -> Result<Option<u64>, QueueError> {
        match self.kv.update(key, stored.encode()?, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.backend(format_args!("updating call {key:?}"), e)),
        }
    }

    /// Publishes the message that carries a queued call (idempotent within the duplicate
    /// window, see the module documentation).
    async fn publish(&self, stored: &Stored) -> Result<(), QueueError> {
        let call = &stored.record.call;
        let payload = serde_json::to_vec(call)
            .map_err(|e| QueueError::Backend(format!("call {:?}: encoding: {e}", call.id)))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            stored.publish_id.as_str(),
        );
        let what = || format!("publishing call {:?}", call.id);
        self.js
            .publish_with_headers(self.subject(&call.function), headers, payload.into())
            .await
            .map_err(|e| self.backend(what(), e))?
            .await
            .map_err(|e| self.backend(what(), e))?;
        Ok(())
    }

    /// Refuses a call that cannot travel in one NATS message.
    fn check_size(&self, id: &str, len: usize) -> Result<(), QueueError> {
        let max = self.client.server_info().max_payload;
        if len + HEADER_ROOM > max {
            return Err(QueueError::TooLarge(format!(
                "call {id:?} is {len} bytes stored, more than the NATS server at {} takes in \
                 one message (max_payload {max} bytes); raise max_payload in nats-server's \
                 configuration (64 MB at most) or use the embedded queue",
                self.url
            )));
        }
        Ok(())
    }

    /// The function's consumer, created, or updated when the lease changed.
    async fn consumer(
        &self,
        function: &str,
        lease: Duration,
    ) -> Result<consumer::PullConsumer, QueueError> {
        if let Some((c, ack_wait)) = lock(&self.consumers).get(function) {
            if *ack_wait == lease {
                return Ok(c.clone());
            }
        }
        let name = format!("skyfri-{}", record::token(function));
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("skyfri async calls of {function}")),
            filter_subject: self.subject(function),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: lease,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let what = || format!("consumer {name} of stream {}", self.options.stream);
        // Create or update: a changed lease becomes the new `ack_wait`.
        let c = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| self.backend(what(), e))?;
        lock(&self.consumers).insert(function.to_owned(), (c.clone(), lease));
        Ok(c)
    }

    /// One pull request: a message, or `None` when none came within [`PULL_EXPIRY`].
    async fn pull(
        &self,
        consumer: &consumer::PullConsumer,
    ) -> Result<Option<jetstream::Message>, QueueError> {
        let what = "pulling the next call";
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRY)
            .messages()
            .await
            .map_err(|e| self.backend(what, e))?;
        match batch.next().await {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(self.backend(what, e)),
        }
    }

    /// Takes the call a message carries (invariant 2); `None` when the message was dropped.
    async fn claim(
        &self,
        function: &str,
        message: jetstream::Message,
    ) -> Result<Option<Delivery>, QueueError> {
        let seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => return Err(self.backend("reading a message's metadata", e)),
        };
        let (message, acker) = message.split();
        let call: AsyncCall = match serde_json::from_slice(&message.payload) {
            Ok(call) => call,
            Err(e) => {
                tracing::error!(subject = %message.subject, seq, error = %e, "a message in the async call stream is not a call; dropped");
                self.settle(&acker, AckKind::Term).await;
                return Ok(None);
            }
        };
        let key = record::key(&call.id);
        let result = self.take(function, &key, call, seq).await;
        match result {
            Ok(Some((stored, revision, prior))) => Ok(Some(Delivery {
                call: stored.record.call.clone(),
                attempt: match stored.record.state {
                    CallState::Running { attempt } => attempt,
                    _ => 1,
                },
                token: DeliveryToken(Box::new(Lease {
                    key,
                    stored,
                    revision,
                    prior: Some(prior),
                    acker,
                    _running: Running::new(&self.running, function),
                })),
            })),
            Ok(None) => {
                self.settle(&acker, AckKind::Ack).await;
                Ok(None)
            }
            Err(e) => {
                // Due again at once rather than after the lease.
                self.settle(&acker, AckKind::Nak(None)).await;
                Err(e)
            }
        }
    }

    /// The record side of [`Inner::claim`]: the record as taken, its revision and the record
    /// before, or `None` when the message is to be dropped.
    async fn take(
        &self,
        function: &str,
        key: &str,
        call: AsyncCall,
        seq: u64,
    ) -> Result<Option<(Stored, u64, bytes::Bytes)>, QueueError> {
        loop {
            let Some((mut stored, revision)) = self.entry(key).await? else {
                // The record expired (a call waiting longer than `record_max_age`) or was
                // removed by hand: the message is the call, so it is recorded again.
                tracing::warn!(function, call_id = %call.id, "async call without a record; recorded again from its message");
                let stored = Stored::new(call.clone(), Utc::now());
                match self.kv.create(key, stored.encode()?).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(self.backend(format_args!("recording call {key:?}"), e));
                    }
                }
                continue;
            };
            let prior = stored.encode()?;
            match &stored.record.state {
                CallState::Queued => {}
                CallState::Running { .. } | CallState::Retrying { .. }
                    if stored.seq == Some(seq) => {}
                CallState::Running { .. } | CallState::Retrying { .. } => {
                    tracing::debug!(function, call_id = %call.id, seq, "stray copy of an async call dropped");
                    return Ok(None);
                }
                CallState::Done { .. } | CallState::Dead { .. } | CallState::Cancelled => {
                    return Ok(None);
                }
            }
            let attempt = record::next_attempt(&stored.record.state);
            if attempt > self.options.max_attempts {
                let ran = attempt.saturating_sub(1);
                stored.set(CallState::Dead {
                    attempt: ran,
                    status: 503,
                    reason: format!(
                        "{ran} attempts ran, the queue's backstop allows {} (a lease that \
                         lapses counts, as when the call kills its gateway)",
                        self.options.max_attempts
                    ),
                });
                match self.update(key, &stored, revision).await? {
                    Some(_) => {
                        tracing::warn!(function, call_id = %call.id, attempts = ran, "async call dead: out of attempts without a result");
                        return Ok(None);
                    }
                    None => continue,
                }
            }
            stored.set(CallState::Running { attempt });
            stored.seq = Some(seq);
            if let Some(revision) = self.update(key, &stored, revision).await? {
                return Ok(Some((stored, revision, prior)));
            }
        }
    }

    /// Acks, NAKs or terminates a message; a failure only delays the call (the server
    /// redelivers it after `ack_wait`, and `next` sorts it out).
    async fn settle(&self, acker: &jetstream::message::Acker, kind: AckKind) {
        // An ack is confirmed by the server, so that the call has left the stream (and
        // `depth`) when `finish` answers; NAKs and terms need no confirmation.
        let acked = match kind {
            AckKind::Ack => acker.double_ack().await,
            kind => acker.ack_with(kind).await,
        };
        let result = match acked {
            Ok(()) => self.client.flush().await.map_err(Into::into),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(url = %self.url, error = %e, "message not acknowledged; the server will hand it out again");
        }
    }

    /// Puts back a call that was taken for a `next` that is gone (invariant 6).
    async fn give_back(&self, delivery: Delivery) {
        let id = delivery.call.id.clone();
        if let Err(e) = self.put_back(delivery).await {
            tracing::debug!(call_id = %id, error = %e, "taken call not given back; it runs with the next attempt number");
        }
    }

    /// Writes the record back as it was before `delivery` took it and NAKs the message, so
    /// that the call is due again at once with the same attempt number (invariant 6).
    /// [`QueueError::LeaseLost`] (and no NAK) when the record moved on meanwhile.
    async fn put_back(&self, delivery: Delivery) -> Result<(), QueueError> {
        let Ok(lease) = delivery.token.0.downcast::<Lease>() else {
            return Err(foreign(&delivery.call.id));
        };
        if let Some(prior) = &lease.prior {
            match self
                .kv
                .update(&lease.key, prior.clone(), lease.revision)
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Err(QueueError::LeaseLost(delivery.call.id));
                }
                Err(e) => {
                    return Err(self.backend(format_args!("handing back call {:?}", lease.key), e));
                }
            }
        }
        self.settle(&lease.acker, AckKind::Nak(None)).await;
        Ok(())
    }

    /// The task behind [`Queue::next`]: pulls until it has a call for `taker`, or `taker` is
    /// gone.
    async fn take_next(
        self: Arc<Self>,
        function: String,
        consumer: consumer::PullConsumer,
        taker: oneshot::Sender<Result<Delivery, QueueError>>,
    ) {
        loop {
            if taker.is_closed() || self.is_closed() {
                return;
            }
            let message = match self.pull(&consumer).await {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(e) => {
                    // Perhaps the consumer was deleted: the next `next` makes it again.
                    lock(&self.consumers).remove(&function);
                    let _ = taker.send(Err(e));
                    return;
                }
            };
            if taker.is_closed() {
                let (_, acker) = message.split();
                self.settle(&acker, AckKind::Nak(None)).await;
                return;
            }
            match self.claim(&function, message).await {
                Ok(Some(delivery)) => {
                    if let Err(Ok(delivery)) = taker.send(Ok(delivery)) {
                        self.give_back(delivery).await;
                    }
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = taker.send(Err(e));
                    return;
                }
            }
        }
    }

    /// Newest entry of every record.
    async fn all(&self) -> Result<Vec<Stored>, QueueError> {
        let what = "listing calls";
        let c = self
            .kv
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("skyfri list".into()),
                filter_subject: format!("{}>", self.kv.prefix),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| self.backend(what, e))?;
        let mut out = Vec::new();
        if c.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = c.messages().await.map_err(|e| self.backend(what, e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.backend(what, e))?;
            let pending = message.info().map_err(|e| self.backend(what, e))?.pending;
            let deleted = message.headers.as_ref().is_some_and(|h| {
                h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some()
            });
            if !deleted {
                let key = message
                    .subject
                    .strip_prefix(self.kv.prefix.as_str())
                    .unwrap_or(&message.subject);
                match Stored::decode(key, &message.payload) {
                    Ok(stored) => out.push(stored),
                    Err(e) => tracing::warn!(error = %e, "unreadable async call record skipped"),
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Queue for JetStreamQueue {
    fn backend(&self) -> &'static str {
        "jetstream"
    }

    async fn enqueue(&self, call: AsyncCall) -> Result<Enqueued, QueueError> {
        let inner = &self.inner;
        let key = record::key(&call.id);
        let stored = Stored::new(call, Utc::now());
        let value = stored.encode()?;
        inner.check_size(&stored.record.call.id, value.len())?;
        match inner.kv.create(&key, value).await {
            Ok(revision) => {
                if let Err(e) = inner.publish(&stored).await {
                    // Not accepted: forget it, so that the caller's retry adds it anew.
                    if let Err(d) = inner.kv.delete_expect_revision(&key, Some(revision)).await {
                        tracing::warn!(call_id = %stored.record.call.id, error = %d, "record of a call that was not accepted left queued; enqueuing the id again publishes it");
                    }
                    return Err(e);
                }
                Ok(Enqueued::New)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // A queued call may have lost its message to a crash (invariant 1).
                if let Some((existing, _)) = inner.entry(&key).await? {
                    if existing.record.state == CallState::Queued {
                        inner.publish(&existing).await?;
                    }
                }
                Ok(Enqueued::Duplicate)
            }
            Err(e) => Err(inner.backend(
                format_args!("recording call {:?}", stored.record.call.id),
                e,
            )),
        }
    }

    async fn next(&self, function: &str, lease: Duration) -> Result<Delivery, QueueError> {
        let inner = &self.inner;
        let mut closed = inner.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(QueueError::Closed);
        }
        let consumer = tokio::select! {
            c = inner.consumer(function, lease) => c?,
            _ = closed.wait_for(|c| *c) => return Err(QueueError::Closed),
        };
        let (taker, taken) = oneshot::channel();
        tokio::spawn(
            inner
                .clone()
                .take_next(function.to_owned(), consumer, taker),
        );
        tokio::select! {
            taken = taken => taken.unwrap_or_else(|_| Err(QueueError::Backend(format!(
                "{}: the task pulling calls of {function:?} stopped", inner.url
            )))),
            _ = closed.wait_for(|c| *c) => Err(QueueError::Closed),
        }
    }

    async fn heartbeat(&self, delivery: &Delivery, _lease: Duration) -> Result<(), QueueError> {
        let lease = lease_of(delivery)?;
        match self.inner.entry(&lease.key).await? {
            Some((_, revision)) if revision == lease.revision => {}
            _ => return Err(QueueError::LeaseLost(delivery.call.id.clone())),
        }
        lease
            .acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| self.inner.backend("renewing a lease", e))
    }

    async fn finish(&self, delivery: Delivery, finished: Finished) -> Result<(), QueueError> {
        lease_of(&delivery)?;
        let Delivery {
            call,
            attempt,
            token,
        } = delivery;
        let Ok(lease) = token.0.downcast::<Lease>() else {
            return Err(foreign(&call.id));
        };
        let mut stored = lease.stored.clone();
        let ack = match finished {
            Finished::Done { status, duration } => {
                stored.set(CallState::Done {
                    attempt,
                    status,
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                });
                AckKind::Ack
            }
            Finished::Dead { status, reason } => {
                stored.set(CallState::Dead {
                    attempt,
                    status,
                    reason,
                });
                AckKind::Ack
            }
            Finished::Retry {
                after,
                status,
                error,
            } => {
                let next_at =
                    Utc::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
                stored.set(CallState::Retrying {
                    attempt,
                    next_at,
                    last_status: status,
                    last_error: error,
                });
                AckKind::Nak((!after.is_zero()).then_some(after))
            }
        };
        match self
            .inner
            .update(&lease.key, &stored, lease.revision)
            .await?
        {
            Some(_) => {
                self.inner.settle(&lease.acker, ack).await;
                Ok(())
            }
            None => Err(QueueError::LeaseLost(call.id)),
        }
    }

    async fn release(&self, delivery: Delivery) -> Result<(), QueueError> {
        self.inner.put_back(delivery).await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, QueueError> {
        let key = record::key(id);
        loop {
            let Some((mut stored, revision)) = self.inner.entry(&key).await? else {
                return Ok(Cancelled::NotFound);
            };
            match &stored.record.state {
                CallState::Queued | CallState::Retrying { .. } => {
                    stored.set(CallState::Cancelled);
                    if self.inner.update(&key, &stored, revision).await?.is_some() {
                        return Ok(Cancelled::Cancelled);
                    }
                }
                CallState::Cancelled => return Ok(Cancelled::Cancelled),
                other => return Ok(Cancelled::TooLate(other.clone())),
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        Ok(self
            .inner
            .entry(&record::key(id))
            .await?
            .map(|(stored, _)| stored.record))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CallRecord>, QueueError> {
        if let Some(state) = &filter.state {
            if !CallState::NAMES.contains(&state.as_str()) {
                return Err(QueueError::UnknownState(state.clone()));
            }
        }
        let mut all: Vec<Stored> = self
            .inner
            .all()
            .await?
            .into_iter()
            .filter(|s| {
                filter
                    .function
                    .as_ref()
                    .is_none_or(|f| &s.record.call.function == f)
                    && filter
                        .state
                        .as_ref()
                        .is_none_or(|st| s.record.state.name() == st)
            })
            .collect();
        if filter.state.is_some() {
            all.sort_by(|a, b| {
                (b.record.updated_at, &b.record.call.id)
                    .cmp(&(a.record.updated_at, &a.record.call.id))
            });
        } else {
            all.sort_by(|a, b| {
                (b.accepted_at, &b.record.call.id).cmp(&(a.accepted_at, &a.record.call.id))
            });
        }
        let limit = match filter.limit {
            0 => ListFilter::DEFAULT_LIMIT,
            n => n,
        };
        Ok(all.into_iter().take(limit).map(|s| s.record).collect())
    }

    async fn redrive(&self, id: &str) -> Result<bool, QueueError> {
        let key = record::key(id);
        loop {
            let Some((mut stored, revision)) = self.inner.entry(&key).await? else {
                return Err(QueueError::NotFound(id.to_owned()));
            };
            match &stored.record.state {
                CallState::Dead { .. } => {
                    stored.set(CallState::Queued);
                    stored.seq = None;
                    stored.publish_id = format!("{key}.r{revision}");
                    if self.inner.update(&key, &stored, revision).await?.is_some() {
                        self.inner.publish(&stored).await?;
                        return Ok(true);
                    }
                }
                CallState::Queued => {
                    // Perhaps a redrive whose publish was lost (invariant 7).
                    self.inner.publish(&stored).await?;
                    return Ok(false);
                }
                _ => return Ok(false),
            }
        }
    }

    async fn depth(&self) -> Result<Vec<Depth>, QueueError> {
        let inner = &self.inner;
        let what = "reading the queue depth";
        let prefix = format!("{}.", inner.options.subject_prefix);
        let mut subjects = inner
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| inner.backend(what, e))?;
        let mut counts = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, count) = subject.map_err(|e| inner.backend(what, e))?;
            counts.push((subject, count));
        }
        let running = lock(&inner.running).clone();
        let now = Utc::now();
        let mut depth = Vec::new();
        for (subject, count) in counts {
            let Some(function) = subject.strip_prefix(&prefix).and_then(record::untoken) else {
                continue;
            };
            let waiting = u64::try_from(count)
                .unwrap_or(u64::MAX)
                .saturating_sub(running.get(&function).copied().unwrap_or(0));
            if waiting == 0 {
                continue;
            }
            let oldest = match inner
                .stream
                .get_first_raw_message_by_subject(&subject, 0)
                .await
            {
                Ok(m) => serde_json::from_slice::<AsyncCall>(&m.payload)
                    .ok()
                    .and_then(|c| (now - c.enqueued_at).to_std().ok()),
                Err(e) => {
                    tracing::debug!(subject, error = %e, "oldest async call not read");
                    None
                }
            };
            depth.push(Depth {
                function,
                waiting,
                oldest,
            });
        }
        depth.sort_by(|a, b| a.function.cmp(&b.function));
        Ok(depth)
    }

    fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}

fn lease_of(delivery: &Delivery) -> Result<&Lease, QueueError> {
    delivery
        .token
        .0
        .downcast_ref::<Lease>()
        .ok_or_else(|| foreign(&delivery.call.id))
}

fn foreign(id: &str) -> QueueError {
    QueueError::Backend(format!(
        "call {id:?}: the delivery was not made by the JetStream queue"
    ))
}
