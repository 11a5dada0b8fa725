//! The autoscaler loop: samples every function's load from its router, feeds the KPA
//! (`skyfri_core::scaling`) once a second, and applies its decision every two seconds
//! through the provider. Scale to zero happens here; scale from zero is the router's
//! activation (a waiting call must not wait for the next tick).
//!
//! A manual scale (`/system/scale-function`) is held: the autoscaler leaves the count as set
//! until traffic arrives (a call started or waiting), then decides again as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use skyfri_core::scaling::{Autoscaler, Metric, ScalePolicy};
use tokio::sync::watch;

use crate::state::{AppState, Live};

/// How often waiting calls are sampled (they are averaged over each second).
const SAMPLE: Duration = Duration::from_millis(100);
/// While calls wait for capacity, decisions come this often instead of every [`DECIDE`]:
/// a burst at zero or beyond the replicas gets its replicas now, not at the next tick (the
/// activator "pokes" Knative's autoscaler the same way).
const POKE: Duration = Duration::from_millis(250);
/// Knative's metric resolution.
const RECORD: Duration = Duration::from_secs(1);
/// Knative's decision interval.
const DECIDE: Duration = Duration::from_secs(2);

/// The last scaling decision of a function, for `describe`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LastDecision {
    pub desired: u32,
    pub panic: bool,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// Decisions by function, shared with the API, and the manual scales not yet taken up.
#[derive(Default)]
pub struct Decisions {
    last: Mutex<HashMap<String, LastDecision>>,
    holds: Mutex<HashMap<String, u32>>,
}

impl Decisions {
    pub fn get(&self, name: &str) -> Option<LastDecision> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn set(&self, name: &str, d: LastDecision) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), d);
    }

    pub fn forget(&self, name: &str) {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// A manual scale to `replicas`: the autoscaler keeps it until traffic arrives.
    pub fn hold(&self, name: &str, replicas: u32) {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), replicas);
    }

    /// Ends the hold of `name` (traffic arrived, or its scale was not applied): the count
    /// it held.
    pub fn release(&self, name: &str) -> Option<u32> {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
    }
}

/// One function's scaler: its KPA, the samples of the current second, and which
/// deployment it was made for.
struct Scaler {
    live: Arc<Live>,
    policy: ScalePolicy,
    kpa: Autoscaler,
    /// Calls waiting, sampled since the last record.
    waiting: Vec<f64>,
    started: u64,
    busy: f64,
    recorded: Instant,
    decided: Instant,
    /// A manual scale being held.
    hold: Option<Hold>,
}

/// A manual scale to `replicas`, held while no call has started since `started` calls.
struct Hold {
    replicas: u32,
    started: u64,
}

impl Scaler {
    fn new(live: Arc<Live>, now: Instant) -> Option<Scaler> {
        let d = &live.deployment;
        let policy = match ScalePolicy::from_spec(&d.spec, d.template) {
            Ok(p) => p,
            Err(e) => {
                // Deploys validate the policy; a stored one that no longer parses stays put.
                tracing::warn!(function = %d.spec.name, error = %e, "not autoscaled");
                return None;
            }
        };
        Some(Scaler {
            kpa: Autoscaler::new(policy.clone(), now),
            policy,
            waiting: Vec::with_capacity(10),
            started: live.router.started(),
            busy: live.router.busy_seconds(),
            recorded: now,
            decided: now,
            hold: None,
            live,
        })
    }

    /// The function was redeployed or scaled: same router, maybe a new policy.
    fn follow(&mut self, live: Arc<Live>) {
        let d = &live.deployment;
        match ScalePolicy::from_spec(&d.spec, d.template) {
            Ok(policy) if policy != self.policy => {
                self.kpa.update(policy.clone());
                self.policy = policy;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(function = %d.spec.name, error = %e, "policy unchanged"),
        }
        self.live = live;
    }

    fn sample(&mut self) {
        // Waiting calls are demand too: they are why a function at zero must come up.
        self.waiting.push(self.live.router.waiting() as f64);
    }

    /// Records the load since the last record: the average concurrency (calls in flight,
    /// time-weighted, plus calls waiting), or the requests per second.
    fn record(&mut self, now: Instant) {
        let r = &self.live.router;
        let elapsed = now.saturating_duration_since(self.recorded).as_secs_f64();
        let (started, busy) = (r.started(), r.busy_seconds());
        let calls = started.saturating_sub(self.started) as f64;
        let waiting = self.waiting.iter().sum::<f64>() / self.waiting.len().max(1) as f64;
        let value = match (self.policy.metric, elapsed > 0.0) {
            (_, false) => waiting,
            (Metric::Concurrency, true) => (busy - self.busy) / elapsed + waiting,
            (Metric::Rps, true) => calls / elapsed,
        };
        if calls > 0.0 {
            // A call shorter than a sample is still traffic.
            self.kpa.mark_active(now);
        }
        self.started = started;
        self.busy = busy;
        self.recorded = now;
        self.waiting.clear();
        self.kpa.record(now, value);
    }
}

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut scalers: HashMap<String, Scaler> = HashMap::new();
    let mut ticker = tokio::time::interval(SAMPLE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        sync(&state, &mut scalers, now);
        for (name, s) in &mut scalers {
            if let Some(replicas) = state.decisions.release(name) {
                s.hold = Some(Hold {
                    replicas,
                    started: s.live.router.started(),
                });
            }
            s.sample();
            let poked = s.live.router.waiting() > 0 && now.duration_since(s.decided) >= POKE;
            if now.duration_since(s.recorded) >= RECORD || poked {
                s.record(now);
            }
            if now.duration_since(s.decided) >= DECIDE || poked {
                s.decided = now;
                decide(&state, name, s, now);
            }
        }
    }
}

/// Follows deploys, scales and removals. A function keeps its scaler (and the load it has
/// seen) across updates of its deployment; only the policy is replaced.
fn sync(state: &AppState, scalers: &mut HashMap<String, Scaler>, now: Instant) {
    let live = state.all_live();
    scalers.retain(|name, _| live.iter().any(|l| &l.deployment.spec.name == name));
    for l in live {
        let name = &l.deployment.spec.name;
        match scalers.get_mut(name) {
            Some(s) if Arc::ptr_eq(&s.live, &l) => {}
            Some(s) => s.follow(l),
            None => {
                if let Some(s) = Scaler::new(Arc::clone(&l), now) {
                    scalers.insert(name.clone(), s);
                }
            }
        }
    }
}

fn decide(state: &AppState, name: &str, s: &mut Scaler, now: Instant) {
    let Some(status) = state.provider.status(name) else {
        return;
    };
    s.live.stats.replicas(now, status.available);
    let decision = s.kpa.decide(now, status.available);
    if let Some(hold) = &s.hold {
        let router = &s.live.router;
        if router.started() == hold.started && router.waiting() == 0 {
            state.metrics.set_replicas(name, status.desired);
            state.decisions.set(
                name,
                LastDecision {
                    desired: hold.replicas,
                    panic: false,
                    reason: format!(
                        "held at {} by a manual scale until traffic arrives",
                        hold.replicas
                    ),
                    at: Utc::now(),
                },
            );
            return;
        }
        tracing::info!(function = %name, replicas = hold.replicas, "traffic arrived: the manual scale is no longer held");
        s.hold = None;
    }
    let previous = state.decisions.get(name);
    if previous.as_ref().map(|p| (p.desired, p.panic)) != Some((decision.desired, decision.panic)) {
        tracing::info!(function = %name, desired = decision.desired, ready = status.available, reason = %decision.reason, "scaling decision");
    }
    state.decisions.set(
        name,
        LastDecision {
            desired: decision.desired,
            panic: decision.panic,
            reason: decision.reason,
            at: Utc::now(),
        },
    );
    // A call waiting at zero has already asked for a replica; never undo that here.
    if decision.desired == 0 && s.live.router.waiting() > 0 {
        return;
    }
    // Also when unchanged: a manual scale or an activation may have moved the count.
    state.metrics.set_replicas(name, decision.desired);
    if decision.desired == status.desired {
        return;
    }
    let direction = if decision.desired > status.desired {
        "up"
    } else {
        "down"
    };
    state.metrics.scaling_decision(name, direction);
    let provider = Arc::clone(&state.provider);
    let name = name.to_string();
    let desired = decision.desired;
    let router = Arc::clone(&s.live.router);
    tokio::spawn(async move {
        match provider.scale(&name, desired).await {
            // Replicas made from stem cells are ready now: let waiting calls take them.
            Ok(()) => router.wake(),
            Err(e) => tracing::error!(function = %name, desired, error = %e, "scaling failed"),
        }
    });
}
