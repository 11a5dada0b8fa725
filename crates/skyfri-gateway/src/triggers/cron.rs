//! Cron triggers (`schedule` annotation, as OpenFaaS's cron-connector): at each tick of each
//! schedule, an async call of the function is enqueued: `POST /`, empty body, header
//! `X-Skyfri-Schedule` with the expression. It then runs like any async call (retries per
//! the function's retry policy, visible with `skyfri async ls`).
//!
//! # Once per tick
//!
//! The call's id is `cron-FUNCTION-INDEX-UNIXTIME` (the schedule's position in the
//! annotation and the tick's time in seconds). Every gateway computes the same ticks from the
//! same wall clock, and the queue adds a known id only once, so several gateways sharing one
//! queue run each tick once.
//!
//! # Late and missed ticks
//!
//! Ticks are looked for every quarter second and fired at most that late. A tick older than
//! [`CATCH_UP`] (the gateway was stopped, or stalled) is skipped, as cron skips the ticks
//! of a machine that was off; the skip is logged. A schedule starts with its first tick
//! after the deploy (or the gateway's start).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use skyfri_core::triggers::{self, Schedule};
use skyfri_queue::{AsyncCall, Enqueued};
use tokio::sync::watch;

use crate::state::{AppState, Live};

/// How often deploys and ticks are looked for.
const SYNC: Duration = Duration::from_millis(250);
/// Ticks older than this are skipped rather than fired late.
pub const CATCH_UP: Duration = Duration::from_secs(60);
/// The header that carries the schedule that fired.
pub const SCHEDULE_HEADER: &str = "x-skyfri-schedule";

/// One schedule and its next tick.
struct Next {
    schedule: Schedule,
    at: Option<DateTime<Utc>>,
}

/// The schedules of one function, for the deployment they were read from.
struct Plan {
    live: Arc<Live>,
    schedules: Vec<Next>,
}

/// The id of the call made by tick `at` of schedule `index` of `function`.
pub fn call_id(function: &str, index: usize, at: DateTime<Utc>) -> String {
    format!("cron-{function}-{index}-{}", at.timestamp())
}

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut plans: HashMap<String, Plan> = HashMap::new();
    let mut ticker = tokio::time::interval(SYNC);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Utc::now();
        sync(&state, &mut plans, now);
        for (function, plan) in &mut plans {
            for next in &mut plan.schedules {
                fire_due(&state, function, next, now);
            }
        }
    }
}

/// Follows deploys, redeploys and removals. A redeploy keeps the next tick of every schedule
/// it did not change.
fn sync(state: &AppState, plans: &mut HashMap<String, Plan>, now: DateTime<Utc>) {
    let live = state.all_live();
    plans.retain(|name, _| live.iter().any(|l| &l.deployment.spec.name == name));
    for l in live {
        let name = &l.deployment.spec.name;
        if plans.get(name).is_some_and(|p| Arc::ptr_eq(&p.live, &l)) {
            continue;
        }
        let schedules = match triggers::schedules(&l.deployment.spec) {
            Ok(s) => s,
            Err(e) => {
                // Deploys validate it; a stored value that no longer parses runs nothing.
                tracing::warn!(function = %name, error = %e, "schedule not readable; not run");
                Vec::new()
            }
        };
        let old = plans.remove(name);
        if schedules.is_empty() {
            if old.is_some_and(|p| !p.schedules.is_empty()) {
                tracing::info!(function = %name, "cron trigger stopped");
            }
            plans.insert(
                name.clone(),
                Plan {
                    live: l,
                    schedules: Vec::new(),
                },
            );
            continue;
        }
        let schedules = schedules
            .into_iter()
            .map(|schedule| {
                let kept = old.as_ref().and_then(|p| {
                    p.schedules.iter().find(|n| n.schedule == schedule).map(|n| n.at)
                });
                let at = kept.unwrap_or_else(|| {
                    let at = schedule.next_after(now);
                    match at {
                        Some(at) => tracing::info!(function = %name, schedule = %schedule.expression, next = %at.to_rfc3339(), "cron trigger ready"),
                        None => tracing::warn!(function = %name, schedule = %schedule.expression, "schedule never fires"),
                    }
                    at
                });
                Next { schedule, at }
            })
            .collect();
        plans.insert(name.clone(), Plan { live: l, schedules });
    }
}

/// Fires the ticks of `next` that are due, skipping those older than [`CATCH_UP`].
fn fire_due(state: &AppState, function: &str, next: &mut Next, now: DateTime<Utc>) {
    let catch_up = chrono::Duration::from_std(CATCH_UP).unwrap_or(chrono::Duration::MAX);
    let mut skipped = 0u64;
    while let Some(at) = next.at.filter(|at| *at <= now) {
        if now - at > catch_up {
            skipped += 1;
        } else {
            enqueue(state, function, &next.schedule, at);
        }
        next.at = next.schedule.next_after(at);
    }
    if skipped > 0 {
        tracing::warn!(function = %function, schedule = %next.schedule.expression, skipped, "cron ticks older than {}s skipped", CATCH_UP.as_secs());
    }
}

/// Enqueues the call of one tick, in a task of its own (a slow disk must not delay the next
/// schedule).
fn enqueue(state: &AppState, function: &str, schedule: &Schedule, at: DateTime<Utc>) {
    let id = call_id(function, schedule.index, at);
    let call = AsyncCall {
        id: id.clone(),
        function: function.to_string(),
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![(SCHEDULE_HEADER.into(), schedule.expression.clone())],
        body: Bytes::new(),
        callback_url: None,
        enqueued_at: Utc::now(),
    };
    let state = state.clone();
    let function = function.to_string();
    tokio::spawn(async move {
        match state.queue.enqueue(call).await {
            Ok(Enqueued::New) => {
                state.metrics.async_accepted(&function);
                tracing::debug!(function = %function, call_id = %id, "cron tick enqueued");
            }
            Ok(Enqueued::Duplicate) => {
                tracing::debug!(function = %function, call_id = %id, "cron tick already enqueued (by another gateway)");
            }
            Err(e) => {
                tracing::error!(function = %function, call_id = %id, error = %e, "cron tick not enqueued; this tick does not run");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::TimeZone;
    use skyfri_core::{Deployment, FunctionSpec, Template};
    use skyfri_queue::{EmbeddedQueue, ListFilter, Queue};
    use skyfri_runtime::ArtefactStore;

    /// A gateway on `queue` with one function invoked every second.
    fn gateway(dir: &std::path::Path, queue: Arc<dyn Queue>) -> AppState {
        std::fs::create_dir_all(dir).unwrap();
        let state = AppState::new(
            crate::state::GatewayConfig {
                admin_password: "pw".into(),
                max_body: 1024,
                limits: Default::default(),
                tmp_dir: dir.join("tmp"),
                locations: crate::state::Locations {
                    data_dir: dir.to_path_buf(),
                    ..Default::default()
                },
                trusted_proxies: Vec::new(),
            },
            Arc::new(skyfri_store::Store::open(&dir.join("skyfri.db")).unwrap()),
            Arc::new(crate::testing::FakeProvider::default()),
            Arc::new(ArtefactStore::open(dir.join("artefacts")).unwrap()),
            queue,
        );
        let mut spec = FunctionSpec::new("report", "img");
        spec.annotations
            .insert(triggers::SCHEDULE.into(), "* * * * * *".into());
        state.set_live(Deployment {
            spec,
            artefact: "sha256:0".into(),
            template: Template::Http,
            replicas: 0,
        });
        state
    }

    #[tokio::test]
    async fn two_gateways_on_one_queue_enqueue_each_tick_once() {
        let tmp = tempfile::tempdir().unwrap();
        let queue: Arc<dyn Queue> = EmbeddedQueue::open(&tmp.path().join("queue.db")).unwrap();
        let a = gateway(&tmp.path().join("a"), Arc::clone(&queue));
        let b = gateway(&tmp.path().join("b"), Arc::clone(&queue));
        let (stop, stopped) = watch::channel(false);
        let runs = [
            tokio::spawn(run(a, stopped.clone())),
            tokio::spawn(run(b, stopped)),
        ];
        tokio::time::sleep(Duration::from_millis(3300)).await;
        stop.send(true).unwrap();
        for r in runs {
            r.await.unwrap();
        }
        // Enqueues run in tasks of their own: give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = queue
            .list(&ListFilter {
                function: Some("report".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ticks: Vec<i64> = calls
            .iter()
            .map(|c| {
                let t = c.call.id.strip_prefix("cron-report-0-").unwrap();
                assert_eq!(c.call.method, "POST");
                assert_eq!(
                    c.call.headers,
                    [(SCHEDULE_HEADER.to_string(), "* * * * * *".to_string())]
                );
                t.parse().unwrap()
            })
            .collect();
        ticks.sort_unstable();
        let n = ticks.len();
        ticks.dedup();
        assert_eq!(ticks.len(), n, "a tick enqueued twice: {ticks:?}");
        assert!((2..=5).contains(&n), "{n} ticks in 3.3 s: {ticks:?}");
        assert!(
            ticks.windows(2).all(|w| w[1] - w[0] == 1),
            "a tick missed: {ticks:?}"
        );
    }

    #[test]
    fn ids_are_the_same_on_every_gateway() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 5, 0)
            .single()
            .expect("time");
        assert_eq!(call_id("report", 1, at), "cron-report-1-1767225900");
        assert!(crate::async_calls::validate_call_id(&call_id(&"f".repeat(63), 99, at)).is_ok());
    }
}
