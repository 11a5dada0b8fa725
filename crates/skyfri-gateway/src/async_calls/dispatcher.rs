//! The dispatchers: one per deployed function, taking its due calls from the queue and
//! running up to `com.skyfri.async.concurrency` of them at once (default 10), each in a task
//! of its own ([`super::worker::run`]). They follow deploys, redeploys and removals: a
//! removed function's dispatcher stops taking calls (its waiting calls stay queued until it is
//! deployed again) and the calls it runs finish.
//!
//! One dispatcher waits on the queue per function, whatever its concurrency: a thousand idle
//! functions cost a thousand parked tasks, and an enqueue wakes one taker rather than every
//! idle worker. A call is taken only when a run slot is free, so a call that waits for a slot
//! stays in the queue (visible, cancellable) rather than in the gateway's memory.
//!
//! Runs do not bypass anything: they wait for a replica with room in the function's router
//! like sync calls do, so they count as load for the autoscaler and bring a function up from
//! zero.
//!
//! A redeploy that changes the concurrency starts a new dispatcher with the new limit; runs of
//! the old one finish meanwhile, so for the length of a call both limits may apply at once.
//!
//! On shutdown the queue is closed: dispatchers stop taking calls and the runs in progress
//! finish. [`run`] returns when all have ended and no callback is pending. The caller bounds
//! that with its grace period and then turns `hand_back` true: the runs still in progress
//! are abandoned and their calls handed back to the queue ([`skyfri_queue::Queue::release`]),
//! due again at once with the interrupted attempt not counted (another gateway sharing a
//! JetStream queue takes them at once; the embedded queue runs them after the restart), and
//! `run` returns without waiting for pending callbacks. A call whose hand-back fails, or
//! whose gateway dies, keeps its lease until it lapses, then runs again (at least once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skyfri_core::retry;
use skyfri_queue::QueueError;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::worker;
use crate::state::{AppState, Live};

/// How often deploys and removals are looked for.
const SYNC: Duration = Duration::from_millis(250);
/// The pause after a queue error other than shutdown, before the dispatcher asks again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The dispatcher of one function.
struct Dispatcher {
    live: Arc<Live>,
    concurrency: u32,
    stop: watch::Sender<bool>,
}

/// Calls a function runs at once.
fn concurrency(live: &Live) -> u32 {
    let spec = &live.deployment.spec;
    retry::async_concurrency(spec).unwrap_or_else(|e| {
        // Deploys validate it; a stored value that no longer parses gets the default.
        tracing::warn!(function = %spec.name, error = %e, "async concurrency not readable; using the default");
        retry::DEFAULT_ASYNC_CONCURRENCY
    })
}

/// Runs the dispatchers until `stop` turns true, then closes the queue and waits for the
/// runs in progress and their callbacks, or until `hand_back` turns true (see the module
/// documentation).
pub async fn run(
    state: AppState,
    mut stop: watch::Receiver<bool>,
    mut hand_back: watch::Receiver<bool>,
) {
    let mut dispatchers: HashMap<String, Dispatcher> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(SYNC);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
            true = worker::told(&mut hand_back) => break,
        }
        sync(&state, &mut dispatchers, &mut tasks, &hand_back);
        // Reap the dispatchers that ended.
        while tasks.try_join_next().is_some() {}
    }
    state.queue.close();
    for (_, d) in dispatchers.drain() {
        let _ = d.stop.send(true);
    }
    while tasks.join_next().await.is_some() {}
    // The results of the last runs are recorded; their callbacks get their chance too, until
    // the grace period is over.
    let pending = state.callbacks.pending();
    if pending > 0 {
        tracing::info!(callbacks = pending, "async callbacks being delivered");
    }
    tokio::select! {
        () = state.callbacks.drained() => {}
        true = worker::told(&mut hand_back) => {}
    }
}

/// Follows deploys, redeploys and removals.
fn sync(
    state: &AppState,
    dispatchers: &mut HashMap<String, Dispatcher>,
    tasks: &mut JoinSet<()>,
    hand_back: &watch::Receiver<bool>,
) {
    let live = state.all_live();
    dispatchers.retain(|name, d| {
        let keep = live.iter().any(|l| &l.deployment.spec.name == name);
        if !keep {
            tracing::debug!(function = %name, "async dispatcher stopped");
            let _ = d.stop.send(true);
        }
        keep
    });
    for l in live {
        let name = l.deployment.spec.name.clone();
        match dispatchers.get_mut(&name) {
            Some(d) if Arc::ptr_eq(&d.live, &l) => {}
            Some(d) if concurrency(&l) == d.concurrency => d.live = l,
            _ => {
                let d = start(state, tasks, l, hand_back.clone());
                if let Some(old) = dispatchers.insert(name, d) {
                    let _ = old.stop.send(true);
                }
            }
        }
    }
}

fn start(
    state: &AppState,
    tasks: &mut JoinSet<()>,
    live: Arc<Live>,
    hand_back: watch::Receiver<bool>,
) -> Dispatcher {
    let name = live.deployment.spec.name.clone();
    let limit = concurrency(&live);
    let (stop, stopped) = watch::channel(false);
    let span = tracing::info_span!("async", function = %name);
    tasks.spawn(dispatch(state.clone(), name, limit, stopped, hand_back).instrument(span));
    Dispatcher {
        live,
        concurrency: limit,
        stop,
    }
}

/// One function's dispatcher: whenever a run slot is free, takes the next due call and runs
/// it in a task of its own. Once stopped, waits for its runs to finish.
async fn dispatch(
    state: AppState,
    function: String,
    limit: u32,
    mut stop: watch::Receiver<bool>,
    hand_back: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limit as usize));
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => s,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(slot) = slot else { break };
        let timeout = state.live(&function).map_or(
            Duration::from_secs(skyfri_core::function::DEFAULT_TIMEOUT_SECS),
            |l| Duration::from_secs(l.deployment.spec.timeout_secs),
        );
        let lease = worker::lease_for(timeout);
        // `next` is cancel-safe: a stop while it waits loses no call.
        let delivery = tokio::select! {
            d = state.queue.next(&function, lease) => d,
            _ = stop.wait_for(|s| *s) => break,
        };
        match delivery {
            Ok(d) => {
                let (state, hand_back) = (state.clone(), hand_back.clone());
                let span = tracing::info_span!("run", call_id = %d.call.id, attempt = d.attempt);
                tokio::spawn(
                    async move {
                        worker::run(&state, d, lease, hand_back).await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Err(QueueError::Closed) => break,
            Err(e) => {
                tracing::error!(function = %function, error = %e, "could not take the next async call");
                drop(slot);
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    // Every slot back: every run has ended.
    let _ = slots.acquire_many(limit).await;
}
