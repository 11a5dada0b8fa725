//! Topic triggers (`topic` annotation): each message published on one of a function's NATS
//! JetStream subjects invokes the function once, through the router like an async call:
//! `POST /`, the message's data as body, its headers as request headers, plus
//! `X-Skyfri-Topic` (the subject it was published on), `X-Skyfri-Attempt` (its attempt: the
//! deliveries that ran, see [Attempts](#attempts)) and `X-Call-Id` (`nats-STREAM-SEQUENCE`,
//! the same on every delivery).
//!
//! # Consumers
//!
//! Per function and subject, one durable pull consumer (nats-server 2.9 allows one filter
//! subject per consumer), named `skyfri_FUNCTION_SUBJECT_HASH` ([`durable_name`]):
//!
//! - ack explicit; `ack_wait` = the function's timeout + 30 s, kept alive with in-progress
//!   acks every third of it while the call runs;
//! - no server-side `max_deliver`: skyfri counts attempts itself (below). A consumer made by
//!   an older skyfri with `max_deliver` = the retry attempts is updated to none on attach;
//!   nats-server before 2.10 cannot update a consumer with a start time, so there it keeps
//!   its limit (logged), which hand-backs then count against;
//! - `max_ack_pending` = its `com.skyfri.async.concurrency` (default 10): the messages of one
//!   subject that run at once;
//! - it starts with the messages published after the function was first deployed (its
//!   `createdAt`), so a message published while NATS or skyfri was down is still delivered.
//!
//! After the call, the function's answer and its [`RetryPolicy`] decide: a 2xx is acked
//! (and the ack confirmed by the server); a retryable status is NAKed with the policy's
//! backoff as the redelivery delay; a status that is not retryable, or the last attempt, is
//! terminated (logged as dead: JetStream does not deliver it again).
//!
//! # Attempts
//!
//! A message's attempt is its delivery count minus its hand-backs. At shutdown, the calls
//! still running when the grace period ends are handed back: the hand-back is counted in the
//! KV bucket `skyfri_topic_handbacks` (key: the consumer, the stream and the sequence, see
//! [`handback_key`]), then the message is NAKed, so that another skyfri sharing the NATS
//! server (or this one once restarted) gets it at once instead of after `ack_wait`, and
//! runs it with the same attempt number. That is why the consumer has no `max_deliver`: the
//! server would count the hand-back as a delivery. A delivery past the last attempt (the
//! previous one's gateway died, so its `ack_wait` lapsed) is terminated without running. A
//! message's count is removed once it is acked or terminated; counts are kept 30 days.
//!
//! # Guarantees
//!
//! At least once. A message whose call finished with a 2xx is acked before the next step;
//! the durable consumer remembers that across restarts of skyfri and of NATS, so such a
//! message is not run again. A message whose call was running when skyfri died (or whose ack
//! was lost) is delivered again once `ack_wait` lapses, and one handed back at shutdown at
//! once: those are the only cases of a second run, the first seen by the function as the
//! next `X-Skyfri-Attempt`, the second with the same one, both with the same `X-Call-Id`.
//! With that caveat, a message is processed exactly once.
//!
//! # Streams
//!
//! A subject that no stream captures gets one, created by skyfri and logged: named
//! `SKYFRI_` + the subject ([`stream_name`]), capturing exactly that subject, file storage,
//! limits retention, messages kept for a year ([`STREAM_MAX_AGE`]), older ones discarded
//! first, one replica. Operators who want other limits create the stream themselves (as the
//! `ORDERS` stream of the examples: `orders.>`, a year, 64 KiB messages) before deploying.
//!
//! # Removal
//!
//! A function that is removed (or whose redeploy drops a subject) stops consuming at once;
//! the calls it runs finish and settle their messages, then its durable consumer is deleted
//! from the server, so that nothing is kept for a function that no longer exists and a later
//! deploy of the same name starts afresh from its own deploy time. Stopping skyfri keeps the
//! consumers: a restart resumes where it left off (with the calls handed back first).
//!
//! # NATS down
//!
//! NATS is dialled once a function with a topic is deployed (`skyfri up --nats URL`). While
//! it cannot be reached, those functions are deployed and serve HTTP as usual; skyfri logs
//! an error naming them and tries again with a growing pause (up to 30 s). Once connected,
//! the client reconnects by itself, and each consumer re-attaches after an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use skyfri_core::retry::{self, RetryPolicy, Verdict};
use skyfri_core::triggers;
use skyfri_queue::AsyncCall;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::async_calls::worker::{self, LEASE_SLACK};
use crate::state::AppState;

/// How often deploys and removals are looked for.
const SYNC: Duration = Duration::from_millis(250);
/// The longest pause between two tries at NATS or at a consumer.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// How long streams created by skyfri keep messages.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);
/// The header that tells the function which subject the message was published on.
pub const TOPIC_HEADER: &str = "x-skyfri-topic";
/// The KV bucket counting the hand-backs of messages (see the module documentation).
pub const HANDBACKS_BUCKET: &str = "skyfri_topic_handbacks";
/// How long a hand-back count is kept after its last change.
const HANDBACKS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a consumer is made with; a redeploy that changes it re-creates the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    ack_wait: Duration,
    concurrency: u32,
}

struct Running {
    settings: Settings,
    stop: watch::Sender<bool>,
}

/// Runs until `stop` turns true, then waits for the messages being handled, or hands them
/// back once `hand_back` turns true.
pub async fn run(
    state: AppState,
    url: String,
    mut stop: watch::Receiver<bool>,
    hand_back: watch::Receiver<bool>,
) {
    let mut client: Option<async_nats::Client> = None;
    let mut handbacks = Handbacks(None);
    let mut pause = Duration::from_secs(1);
    let mut next_try = tokio::time::Instant::now();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(SYNC);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        while tasks.try_join_next().is_some() {}
        let wanted = wanted(&state);
        let Some(js) = client.as_ref().map(|c| jetstream::new(c.clone())) else {
            if wanted.is_empty() || tokio::time::Instant::now() < next_try {
                continue;
            }
            match connect(&url).await {
                Ok(c) => {
                    tracing::info!(url = %url, "connected to NATS for topic triggers");
                    handbacks = Handbacks::open(&jetstream::new(c.clone())).await;
                    client = Some(c);
                    pause = Duration::from_secs(1);
                }
                Err(e) => {
                    let mut functions: Vec<&str> = wanted.keys().map(|(f, _)| f.as_str()).collect();
                    functions.sort_unstable();
                    functions.dedup();
                    tracing::error!(url = %url, functions = ?functions, error = %e, retry_in = ?pause, "NATS is unreachable: these functions get no topic messages until it is");
                    next_try = tokio::time::Instant::now() + pause;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
            continue;
        };
        // Stop what is no longer wanted (or wanted with other settings).
        let gone: Vec<(String, String)> = running
            .iter()
            .filter(|(k, r)| wanted.get(*k) != Some(&r.settings))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(r) = running.remove(&key) {
                let _ = r.stop.send(true);
                if !wanted.contains_key(&key) {
                    let (function, subject) = key;
                    tracing::info!(function = %function, subject = %subject, "topic trigger stopped");
                    tasks.spawn(delete_consumer(js.clone(), function, subject, r.stop));
                }
            }
        }
        for (key, settings) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let (function, subject) = key.clone();
            let span = tracing::info_span!("topic", function = %function, subject = %subject);
            tasks.spawn(
                consume(
                    Ctx {
                        state: state.clone(),
                        js: js.clone(),
                        handbacks: handbacks.clone(),
                        hand_back: hand_back.clone(),
                    },
                    function,
                    subject,
                    settings.clone(),
                    stop_rx,
                )
                .instrument(span),
            );
            running.insert(
                key,
                Running {
                    settings,
                    stop: stop_tx,
                },
            );
        }
    }
    for (_, r) in running.drain() {
        let _ = r.stop.send(true);
    }
    while tasks.join_next().await.is_some() {}
    if let Some(c) = client {
        let _ = c.flush().await;
    }
}

/// Every (function, subject) that should have a consumer, with its settings.
fn wanted(state: &AppState) -> HashMap<(String, String), Settings> {
    let mut out = HashMap::new();
    for live in state.all_live() {
        let spec = &live.deployment.spec;
        let subjects = match triggers::topics(spec) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(function = %spec.name, error = %e, "topic not readable; not subscribed");
                continue;
            }
        };
        if subjects.is_empty() {
            continue;
        }
        let concurrency =
            retry::async_concurrency(spec).unwrap_or(retry::DEFAULT_ASYNC_CONCURRENCY);
        let settings = Settings {
            ack_wait: Duration::from_secs(spec.timeout_secs) + LEASE_SLACK,
            concurrency,
        };
        for subject in subjects {
            out.insert((spec.name.clone(), subject), settings.clone());
        }
    }
    out
}

async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("skyfri")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::error!(
                    "NATS connection lost: topic triggers wait until it is back (reconnecting)"
                ),
                async_nats::Event::Connected => {
                    tracing::info!("NATS connected: topic triggers running")
                }
                // Each failed reconnect attempt: the loss itself was logged above.
                async_nats::Event::ClientError(e) => tracing::debug!(error = %e, "NATS"),
                // Skyfri's own shutdown.
                async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                other => tracing::warn!(event = %other, "NATS"),
            }
        })
        .connect(url)
        .await
}

/// The durable consumer of `function` on `subject`: readable, unique per subject, and free of
/// the characters NATS forbids in names (`.`, `*`, `>`, spaces).
pub fn durable_name(function: &str, subject: &str) -> String {
    let readable: String = subject
        .chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            '*' => '+',
            '>' => '#',
            _ => '_',
        })
        .collect();
    // `+` and `#` are allowed in names but not pretty; the hash keeps `a.b` and `a_b` apart.
    let readable = readable.replace('+', "star").replace('#', "all");
    format!("skyfri_{function}_{readable}_{:08x}", fnv1a(subject) as u32)
}

/// The name of the stream skyfri creates for a subject no stream captures.
pub fn stream_name(subject: &str) -> String {
    let readable: String = subject
        .chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect();
    format!("SKYFRI_{readable}_{:08X}", fnv1a(subject) as u32)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The stream that captures `subject`, created if there is none.
async fn stream_for(js: &Context, subject: &str) -> Result<String, String> {
    match js.stream_by_subject(subject).await {
        Ok(name) => return Ok(name),
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot look up the stream of {subject:?}: {e}")),
    }
    let name = stream_name(subject);
    let config = stream::Config {
        name: name.clone(),
        description: Some(format!(
            "created by skyfri for the topic trigger on {subject}"
        )),
        subjects: vec![subject.to_string()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: STREAM_MAX_AGE,
        num_replicas: 1,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| format!("no stream captures {subject:?} and creating {name} failed: {e}"))?;
    tracing::warn!(stream = %name, subject = %subject, "no JetStream stream captured this subject: created one (file storage, limits retention, messages kept 365 days); create your own before deploying for other limits");
    Ok(name)
}

/// Creates (or updates) the durable consumer; returns it and its stream's name.
async fn attach(
    state: &AppState,
    js: &Context,
    function: &str,
    subject: &str,
    settings: &Settings,
) -> Result<(pull::Stream, String), String> {
    let stream = stream_for(js, subject).await?;
    // The function's first deploy: messages published since then are its own.
    let name = function.to_string();
    let since = state
        .with_store(move |s| s.get_function(&name))
        .await
        .ok()
        .flatten()
        .and_then(|f| time::OffsetDateTime::from_unix_timestamp(f.created_at.timestamp()).ok());
    let deliver_policy = match since {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::New,
    };
    let name = durable_name(function, subject);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!(
            "skyfri: invokes {function} per message on {subject}"
        )),
        filter_subject: subject.to_string(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Attempts are skyfri's to count (hand-backs are deliveries); an older consumer with
        // a limit is updated to none.
        max_deliver: -1,
        max_ack_pending: i64::from(settings.concurrency),
        deliver_policy,
        ..Default::default()
    };
    let consumer = match js.create_consumer_on_stream(config, &stream).await {
        Ok(c) => c,
        Err(e) => {
            // An existing consumer whose fixed settings differ (its start): use it as it is.
            let existing: Consumer<pull::Config> = js
                .get_consumer_from_stream(&name, &stream)
                .await
                .map_err(|_| format!("cannot create consumer {name} on stream {stream}: {e}"))?;
            let max_deliver = existing.cached_info().config.max_deliver;
            if max_deliver > 0 {
                // Made by an older skyfri, on a server that cannot update a consumer with a
                // start time (before 2.10): the server still counts deliveries.
                tracing::warn!(consumer = %name, stream = %stream, max_deliver, error = %e, "consumer made by an older skyfri: the server delivers a message at most max_deliver times, hand-backs at shutdown included (a message handed back on its last delivery is not delivered again); nats-server 2.10 or later lets skyfri lift that limit");
            } else {
                tracing::warn!(consumer = %name, stream = %stream, error = %e, "consumer exists with other settings; using it as it is");
            }
            existing
        }
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.concurrency as usize)
        .messages()
        .await
        .map_err(|e| format!("cannot pull from consumer {name}: {e}"))?;
    Ok((messages, stream))
}

/// What every consumer shares.
#[derive(Clone)]
struct Ctx {
    state: AppState,
    js: Context,
    handbacks: Handbacks,
    /// Turns true when the runs still going are to be handed back (shutdown, grace over).
    hand_back: watch::Receiver<bool>,
}

/// One function's consumer on one subject: attaches, then runs each message in a task of its
/// own, up to the concurrency at once. Once stopped, waits for its runs to finish (or be
/// handed back).
async fn consume(
    ctx: Ctx,
    function: String,
    subject: String,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let limit = settings.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(limit as usize));
    let (state, js) = (&ctx.state, &ctx.js);
    let mut pause = Duration::from_secs(1);
    'attach: loop {
        let attached = tokio::select! {
            a = attach(state, js, &function, &subject, &settings) => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (mut messages, stream) = match attached {
            Ok(m) => {
                tracing::info!(stream = %m.1, consumer = %durable_name(&function, &subject), "topic trigger ready");
                pause = Duration::from_secs(1);
                m
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?pause, "topic trigger not attached");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
        };
        loop {
            let slot = tokio::select! {
                s = Arc::clone(&slots).acquire_owned() => s,
                _ = stop.wait_for(|s| *s) => break 'attach,
            };
            let Ok(slot) = slot else { break 'attach };
            let next = tokio::select! {
                n = messages.next() => n,
                _ = stop.wait_for(|s| *s) => break 'attach,
            };
            match next {
                Some(Ok(message)) => {
                    let ctx = ctx.clone();
                    let (function, stream) = (function.clone(), stream.clone());
                    tokio::spawn(
                        async move {
                            handle(ctx, &function, &stream, message).await;
                            drop(slot);
                        }
                        .in_current_span(),
                    );
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling messages failed; re-attaching");
                    tokio::time::sleep(pause).await;
                    continue 'attach;
                }
                None => {
                    tracing::warn!("message stream ended; re-attaching");
                    tokio::time::sleep(pause).await;
                    continue 'attach;
                }
            }
        }
    }
    // Every slot back: every run has ended and settled its message.
    let _ = slots.acquire_many(limit).await;
}

/// Deletes the consumer of a function that no longer listens on `subject`, once its runs
/// have ended (`stopped` is dropped by then: its receiver lives in the consumer task).
async fn delete_consumer(
    js: Context,
    function: String,
    subject: String,
    stopped: watch::Sender<bool>,
) {
    stopped.closed().await;
    let name = durable_name(&function, &subject);
    let Ok(stream) = js.stream_by_subject(subject.as_str()).await else {
        return;
    };
    match js.delete_consumer_from_stream(&name, &stream).await {
        Ok(_) => {
            tracing::info!(function = %function, consumer = %name, stream = %stream, "durable consumer deleted")
        }
        Err(e) => {
            tracing::warn!(function = %function, consumer = %name, stream = %stream, error = %e, "durable consumer not deleted")
        }
    }
}

/// Runs one message through the function and settles it, or hands it back.
async fn handle(ctx: Ctx, function: &str, stream: &str, message: jetstream::Message) {
    let Ctx {
        state,
        handbacks,
        mut hand_back,
        ..
    } = ctx;
    let state = &state;
    let (delivered, sequence, consumer) = match message.info() {
        Ok(i) => (
            u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX),
            i.stream_sequence,
            i.consumer.to_string(),
        ),
        Err(_) => (1, 0, String::new()),
    };
    let call_id = format!("nats-{stream}-{sequence}");
    let Some(live) = state.live(function) else {
        // Removed meanwhile: leave it to the server (its consumer is about to go too).
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let spec = &live.deployment.spec;
    let policy = RetryPolicy::from_spec(spec).unwrap_or_default();
    let key = handback_key(&consumer, stream, sequence);
    // A first delivery cannot have been handed back: no lookup on the common path.
    let handed_back = match delivered {
        1 => 0,
        _ => handbacks.count(&key).await,
    };
    let attempt = delivered.saturating_sub(handed_back).max(1);
    if attempt > policy.attempts {
        // The last attempt's gateway died (its ack_wait lapsed): no attempt is left.
        tracing::warn!(call_id = %call_id, attempt, "topic message dead: out of attempts ({}); the last one ended without a result", policy.attempts);
        if let Err(e) = message.ack_with(AckKind::Term).await {
            tracing::error!(call_id = %call_id, error = %e, "topic message not settled; it will be delivered again");
        }
        handbacks.forget(&key, handed_back).await;
        return;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(h) = &message.headers {
        // Only the gateway marks raw Lambda events and says where a call came from.
        let gateways = [
            skyfri_core::lambda::EVENT_HEADER,
            skyfri_core::lambda::SOURCE_IP_HEADER,
        ];
        for (name, values) in h.iter() {
            if gateways
                .iter()
                .any(|g| name.to_string().eq_ignore_ascii_case(g))
            {
                continue;
            }
            for v in values {
                headers.push((name.to_string(), v.as_str().to_string()));
            }
        }
    }
    headers.push((TOPIC_HEADER.into(), message.subject.to_string()));
    let call = AsyncCall {
        id: call_id.clone(),
        function: function.to_string(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers,
        body: Bytes::clone(&message.payload),
        callback_url: None,
        enqueued_at: Utc::now(),
    };
    let ack_wait = Duration::from_secs(spec.timeout_secs) + LEASE_SLACK;
    let ran = {
        let once = worker::run_once(state, &live, &call, attempt);
        tokio::pin!(once);
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                ran = &mut once => break Some(ran),
                _ = beat.tick() => {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(call_id = %call_id, error = %e, "in-progress ack not sent");
                    }
                }
                true = worker::told(&mut hand_back) => break None,
            }
        }
    };
    let Some(ran) = ran else {
        // Counted first: whoever gets the message next must see this delivery as no attempt.
        if let Err(e) = handbacks.add(&key).await {
            tracing::warn!(call_id = %call_id, attempt, error = %e, "hand-back not counted: the next delivery counts as one more attempt");
        }
        match message.ack_with(AckKind::Nak(None)).await {
            Ok(()) => {
                tracing::info!(call_id = %call_id, attempt, "topic message unfinished when the gateway stopped; handed back, due again at once");
            }
            Err(e) => {
                tracing::warn!(call_id = %call_id, attempt, error = %e, "topic message not handed back; it is delivered again once its ack_wait lapses");
            }
        }
        return;
    };
    let verdict = policy.decide(attempt, ran.status, ran.retry_after, &mut rand::rng());
    let settled = match verdict {
        Verdict::Done if (200..300).contains(&ran.status) => {
            let acked = message.double_ack().await;
            tracing::debug!(call_id = %call_id, attempt, status = ran.status, "topic message processed");
            acked
        }
        Verdict::Done => {
            tracing::warn!(call_id = %call_id, attempt, status = ran.status, error = %ran.describe(), "topic message failed with a status that is not retried: dropped");
            message.ack_with(AckKind::Term).await
        }
        Verdict::Retry(after) => {
            tracing::info!(call_id = %call_id, attempt, status = ran.status, retry_in = ?after, error = %ran.describe(), "topic message failed; redelivered later");
            message.ack_with(AckKind::Nak(Some(after))).await
        }
        Verdict::OutOfAttempts => {
            tracing::warn!(call_id = %call_id, attempt, status = ran.status, error = %ran.describe(), "topic message dead: out of attempts ({})", policy.attempts);
            message.ack_with(AckKind::Term).await
        }
    };
    match settled {
        Err(e) => {
            // Not settled: JetStream delivers it again once its ack_wait lapses.
            tracing::error!(call_id = %call_id, attempt, error = %e, "topic message not settled; it will be delivered again");
        }
        Ok(()) if !matches!(verdict, Verdict::Retry(_)) => {
            handbacks.forget(&key, handed_back).await;
        }
        Ok(()) => {}
    }
}

/// The key of a message's hand-back count: the consumer that got it (one per function and
/// subject: two functions on one stream count their hand-backs apart), its stream and
/// sequence. Names may hold characters KV keys may not; those are written `=XX` (hex).
fn handback_key(consumer: &str, stream: &str, sequence: u64) -> String {
    let mut key = String::with_capacity(consumer.len() + stream.len() + 22);
    for name in [consumer, stream] {
        for b in name.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => key.push(char::from(b)),
                _ => key.push_str(&format!("={b:02X}")),
            }
        }
        key.push('.');
    }
    key.push_str(&sequence.to_string());
    key
}

/// The hand-back counts (see the module documentation); without the bucket (it could not be
/// opened) every count is 0 and a hand-back counts as an attempt.
#[derive(Clone)]
struct Handbacks(Option<kv::Store>);

impl Handbacks {
    async fn open(js: &Context) -> Handbacks {
        let opened = skyfri_queue::jetstream::open_bucket(
            js,
            HANDBACKS_BUCKET,
            "skyfri: topic messages handed back at shutdown, which are no attempt",
            HANDBACKS_MAX_AGE,
        )
        .await;
        match opened {
            Ok(kv) => Handbacks(Some(kv)),
            Err(e) => {
                tracing::warn!(bucket = HANDBACKS_BUCKET, error = %e, "KV bucket not opened: a topic message handed back at shutdown will count as an attempt");
                Handbacks(None)
            }
        }
    }

    /// How often the message was handed back (0 when unknown).
    async fn count(&self, key: &str) -> u32 {
        let Some(kv) = &self.0 else { return 0 };
        match kv.entry(key).await {
            Ok(e) => e.as_ref().map_or(0, counted),
            Err(e) => {
                tracing::warn!(key, error = %e, "hand-back count not read; taken as 0");
                0
            }
        }
    }

    /// Counts one more hand-back (a compare-and-set, so two gateways never lose one).
    async fn add(&self, key: &str) -> Result<(), String> {
        let Some(kv) = &self.0 else {
            return Err(format!("the KV bucket {HANDBACKS_BUCKET} is not open"));
        };
        for _ in 0..5 {
            let entry = kv.entry(key).await.map_err(|e| e.to_string())?;
            let written = match entry {
                // A delete marker is a revision too: updated like a count of 0.
                Some(e) => {
                    let value = Bytes::from(counted(&e).saturating_add(1).to_string());
                    match kv.update(key, value, e.revision).await {
                        Ok(_) => true,
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                None => match kv.create(key, Bytes::from_static(b"1")).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(e.to_string()),
                },
            };
            if written {
                return Ok(());
            }
        }
        Err("the count kept changing under it".into())
    }

    /// The message is settled for good: its count is no longer needed.
    async fn forget(&self, key: &str, count: u32) {
        let Some(kv) = &self.0 else { return };
        if count == 0 {
            return;
        }
        if let Err(e) = kv.purge(key).await {
            tracing::debug!(key, error = %e, "hand-back count not removed; it expires");
        }
    }
}

/// The hand-backs an entry counts: its number, 0 for a deleted one.
fn counted(entry: &kv::Entry) -> u32 {
    if entry.operation != kv::Operation::Put {
        return 0;
    }
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        let a = durable_name("order-processor", "orders.created");
        assert!(
            a.starts_with("skyfri_order-processor_orders_created_"),
            "{a}"
        );
        assert_ne!(a, durable_name("order-processor", "orders_created"));
        let w = durable_name("f", "a.*.>");
        assert!(!w.contains(['.', '*', '>', ' ']), "{w}");
        assert!(w.contains("star") && w.contains("all"), "{w}");
        assert_eq!(
            handback_key("skyfri_f_a", "ORDERS", 42),
            "skyfri_f_a.ORDERS.42"
        );
        assert_eq!(handback_key("c", "my.stream@x", 7), "c.my=2Estream=40x.7");
        assert_ne!(
            handback_key("skyfri_a_jobs", "JOBS", 7),
            handback_key("skyfri_b_jobs", "JOBS", 7),
            "two functions on one stream share a count"
        );
        let s = stream_name("orders.*");
        assert!(
            s.starts_with("SKYFRI_ORDERS__") && !s.contains(['.', '*', '>']),
            "{s}"
        );
    }
}
