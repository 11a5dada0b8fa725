use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::*;

/// Long enough that a test never sees a lease lapse it did not ask for.
const LEASE: Duration = Duration::from_secs(60);
/// How long a test waits for something that should happen; only a failing test waits it out.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a test waits to conclude that nothing is handed out.
const QUIET: Duration = Duration::from_millis(300);

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

fn open(dir: &tempfile::TempDir) -> Arc<EmbeddedQueue> {
    EmbeddedQueue::open(&dir.path().join("queue.db")).expect("open")
}

async fn next(q: &EmbeddedQueue, function: &str, lease: Duration) -> Delivery {
    tokio::time::timeout(PATIENCE, q.next(function, lease))
        .await
        .expect("a call is due but next() did not return it")
        .expect("next")
}

async fn nothing_due(q: &EmbeddedQueue, function: &str) {
    if let Ok(d) = tokio::time::timeout(QUIET, q.next(function, LEASE)).await {
        panic!("nothing should be due, got {d:?}");
    }
}

async fn state(q: &EmbeddedQueue, id: &str) -> CallState {
    q.get(id).await.expect("get").expect("known").state
}

fn done() -> Finished {
    Finished::Done {
        status: 200,
        duration: Duration::from_millis(42),
    }
}

#[tokio::test]
async fn a_call_goes_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    assert_eq!(q.backend(), "embedded");
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
    nothing_due(&q, "echo").await;
}

#[tokio::test]
async fn calls_of_a_function_come_in_order_and_only_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
    nothing_due(&q, "a").await;
    assert_eq!(next(&q, "b", LEASE).await.call.id, "b0");
}

#[tokio::test]
async fn a_waiting_worker_wakes_on_enqueue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { next(&q, "f", LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.enqueue(call("late", "f")).await.expect("enqueue");
    let d = waiting.await.expect("join");
    assert_eq!(d.call.id, "late");
}

#[tokio::test]
async fn the_same_id_twice_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    assert_eq!(q.enqueue(call("dup", "f")).await.expect("1"), Enqueued::New);
    let mut other = call("dup", "f");
    other.body = Bytes::from_static(b"second");
    assert_eq!(q.enqueue(other).await.expect("2"), Enqueued::Duplicate);

    // Concurrently too: the copies land in one batch.
    let copies = (0..10).map(|_| {
        let q = q.clone();
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
    nothing_due(&q, "f").await;

    // Still a duplicate once it has run.
    q.finish(first, done()).await.expect("finish");
    assert_eq!(
        q.enqueue(call("dup", "f")).await.expect("3"),
        Enqueued::Duplicate
    );
    nothing_due(&q, "f").await;
}

#[tokio::test]
async fn a_retry_waits_for_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
    let dead = q
        .list(&ListFilter {
            state: Some("dead".into()),
            ..ListFilter::default()
        })
        .await
        .expect("list");
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
    nothing_due(&q, "f").await;
}

#[tokio::test]
async fn a_redrive_wakes_a_waiting_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(q.redrive("x").await.expect("redrive"));
    assert_eq!(waiting.await.expect("join").call.id, "x");
}

#[tokio::test]
async fn cancel_takes_only_calls_that_did_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
    q.finish(
        d,
        Finished::Retry {
            after: Duration::from_secs(3600),
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
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        q.cancel("done").await.expect("cancel"),
        Cancelled::TooLate(CallState::Done { status: 200, .. })
    ));
    nothing_due(&q, "f").await;

    // The worker that had it when cancel came finishes normally.
    q.finish(running, done()).await.expect("finish");
}

#[tokio::test]
async fn a_lapsed_lease_hands_the_call_out_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("l", "f")).await.expect("enqueue");
    let first = next(&q, "f", Duration::from_millis(200)).await;
    assert_eq!(first.attempt, 1);

    // The first worker is silent; a second one gets the call when the lease lapses.
    let second = next(&q, "f", LEASE).await;
    assert_eq!((second.call.id.as_str(), second.attempt), ("l", 2));
    assert_eq!(state(&q, "l").await, CallState::Running { attempt: 2 });

    // The first worker comes back: refused, and nothing changes.
    assert!(matches!(
        q.heartbeat(&first, LEASE).await,
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
}

#[tokio::test]
async fn a_released_call_is_due_at_once_with_the_same_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let q = open(&dir);
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

        // A stopping gateway: closed for new work, it still hands its call back.
        q.close();
        q.release(d).await.expect("release after close");
    }
    // The next start runs it at once.
    let q = open(&dir);
    let d = next(&q, "f", LEASE).await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("r", 2));
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "r").await,
        CallState::Done { attempt: 2, .. }
    ));
}

#[tokio::test]
async fn releasing_a_lost_lease_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("x", "f")).await.expect("enqueue");
    let first = next(&q, "f", Duration::from_millis(100)).await;
    let second = next(&q, "f", LEASE).await;
    assert_eq!(second.attempt, 2);
    assert!(matches!(
        q.release(first).await,
        Err(QueueError::LeaseLost(id)) if id == "x"
    ));
    assert_eq!(state(&q, "x").await, CallState::Running { attempt: 2 });
    nothing_due(&q, "f").await;
    q.finish(second, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "x").await,
        CallState::Done { attempt: 2, .. }
    ));
}

#[tokio::test]
async fn a_stale_lease_stays_stale_after_a_redrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("s", "f")).await.expect("enqueue");
    let stale = next(&q, "f", Duration::from_millis(100)).await;
    let second = next(&q, "f", LEASE).await;
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
    let third = next(&q, "f", LEASE).await;
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

#[tokio::test]
async fn a_late_finish_counts_when_nobody_took_the_call_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("late", "f")).await.expect("enqueue");
    let d = next(&q, "f", Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.finish(d, done()).await.expect("finish");
    assert!(matches!(
        state(&q, "late").await,
        CallState::Done { attempt: 1, .. }
    ));
    nothing_due(&q, "f").await;
}

#[tokio::test]
async fn heartbeats_keep_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("h", "f")).await.expect("enqueue");
    let lease = Duration::from_millis(1500);
    let d = next(&q, "f", lease).await;
    let other = tokio::spawn({
        let q = q.clone();
        async move { tokio::time::timeout(Duration::from_secs(3), q.next("f", LEASE)).await }
    });
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        q.heartbeat(&d, lease).await.expect("heartbeat");
    }
    assert!(
        other.await.expect("join").is_err(),
        "handed out while its worker was heartbeating"
    );
    q.finish(d, done()).await.expect("finish");
}

#[tokio::test]
async fn depth_counts_waiting_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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
    assert_eq!(depth.len(), 2);
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

#[tokio::test]
async fn list_filters_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
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

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = ["running", "retrying", "done", "dead", "queued", "cancelled"];
    let before = {
        let q = open(&dir);
        for id in &ids[..4] {
            q.enqueue(call(id, "f")).await.expect("enqueue");
        }
        let running = next(&q, "f", LEASE).await;
        let retrying = next(&q, "f", LEASE).await;
        q.finish(
            retrying,
            Finished::Retry {
                after: Duration::from_secs(3600),
                status: 503,
                error: Some("later".into()),
            },
        )
        .await
        .expect("finish");
        let d = next(&q, "f", LEASE).await;
        q.finish(d, done()).await.expect("finish");
        let d = next(&q, "f", LEASE).await;
        q.finish(
            d,
            Finished::Dead {
                status: 500,
                reason: "no".into(),
            },
        )
        .await
        .expect("finish");
        q.enqueue(call("queued", "f")).await.expect("enqueue");
        q.enqueue(call("cancelled", "f")).await.expect("enqueue");
        q.cancel("cancelled").await.expect("cancel");
        drop(running); // its worker dies with the queue
        let mut records = Vec::new();
        for id in ids {
            let record = q.get(id).await.expect("get").expect("known");
            assert_eq!(record.state.name(), id);
            records.push(record);
        }
        records
    };

    let q = open(&dir);
    for record in &before {
        let after = q.get(&record.call.id).await.expect("get").expect("known");
        assert_eq!(&after, record);
    }
    assert_eq!(
        q.enqueue(call("done", "f")).await.expect("enqueue"),
        Enqueued::Duplicate
    );
    // The queued call is due; the running one comes back when its lease lapses.
    assert_eq!(next(&q, "f", LEASE).await.call.id, "queued");
}

#[tokio::test]
async fn queued_calls_are_due_after_the_clock_went_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    {
        let q = open(&dir);
        q.enqueue(call("future", "f")).await.expect("enqueue");
    }
    // As if the clock had been an hour fast when it was enqueued.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    // The dropped queue's threads may still be finishing.
    conn.busy_timeout(PATIENCE).expect("busy_timeout");
    conn.execute("UPDATE calls SET due_ms = due_ms + 3600000", [])
        .expect("update");
    drop(conn);
    let q = open(&dir);
    assert_eq!(next(&q, "f", LEASE).await.call.id, "future");
}

#[tokio::test]
async fn close_ends_next_but_not_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    q.enqueue(call("c", "f")).await.expect("enqueue");
    let d = next(&q, "f", LEASE).await;
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.next("f", LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.close();
    let woken = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("close wakes waiting workers")
        .expect("join");
    assert!(matches!(woken, Err(QueueError::Closed)));
    assert!(matches!(q.next("g", LEASE).await, Err(QueueError::Closed)));
    q.finish(d, done()).await.expect("finish after close");
    assert_eq!(
        q.enqueue(call("late", "f"))
            .await
            .expect("enqueue after close"),
        Enqueued::New
    );
}

#[tokio::test]
async fn a_dropped_next_loses_no_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = open(&dir);
    // Workers that give up at all sorts of moments, some in the middle of a lease.
    for i in 0..50 {
        q.enqueue(call(&format!("c{i}"), "f"))
            .await
            .expect("enqueue");
        let q2 = q.clone();
        let worker = tokio::spawn(async move { q2.next("f", LEASE).await });
        tokio::task::yield_now().await;
        if i % 2 == 1 {
            // Blocks this single-threaded runtime so that the answer arrives but the worker
            // is never polled again: given back by `next`'s guard, not by the writer.
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.abort();
        if let Ok(Ok(d)) = worker.await {
            q.finish(d, done()).await.expect("finish");
        }
    }
    // Every call not finished is still due, without waiting for a lease to lapse.
    while let Ok(d) = tokio::time::timeout(QUIET, q.next("f", LEASE)).await {
        let d = d.expect("next");
        assert_eq!(d.attempt, 1, "{} was counted as an attempt", d.call.id);
        q.finish(d, done()).await.expect("finish");
    }
    for i in 0..50 {
        assert!(
            matches!(state(&q, &format!("c{i}")).await, CallState::Done { .. }),
            "c{i}"
        );
    }
}

#[tokio::test]
async fn old_finished_calls_are_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = EmbeddedQueue::open_with(
        &dir.path().join("queue.db"),
        EmbeddedOptions {
            retention: Duration::ZERO,
            dead_retention: Duration::from_secs(3600),
            purge_every: Duration::from_millis(20),
            ..EmbeddedOptions::default()
        },
    )
    .expect("open");
    for id in ["done", "dead", "cancelled", "queued"] {
        q.enqueue(call(id, "f")).await.expect("enqueue");
    }
    q.cancel("cancelled").await.expect("cancel");
    let d = next(&q, "f", LEASE).await;
    q.finish(d, done()).await.expect("finish");
    let d = next(&q, "f", LEASE).await;
    q.finish(
        d,
        Finished::Dead {
            status: 500,
            reason: "x".into(),
        },
    )
    .await
    .expect("finish");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while q.get("done").await.expect("get").is_some()
        || q.get("cancelled").await.expect("get").is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "not purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        q.get("dead").await.expect("get").is_some(),
        "dead letters are kept longer"
    );
    assert_eq!(state(&q, "queued").await, CallState::Queued);
}

#[tokio::test]
async fn the_files_are_the_owners_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    std::fs::write(&path, b"").expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let q = EmbeddedQueue::open(&path).expect("open");
    q.enqueue(call("p", "f")).await.expect("enqueue");
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("queue.db{suffix}"));
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
}

#[test]
fn a_file_from_a_newer_skyfri_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.pragma_update(None, "user_version", 99)
        .expect("pragma");
    drop(conn);
    match EmbeddedQueue::open(&path) {
        Err(QueueError::Backend(e)) => assert!(e.contains("newer skyfri"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a format-99 file"),
    }
}

/// Set in the child of [`no_accepted_call_is_lost_to_kill_9`] to the database path.
const CRASH_CHILD: &str = "SKYFRI_QUEUE_CRASH_CHILD";
/// Which round of kills the child is in, so that each round enqueues new ids.
const CRASH_ROUND: &str = "SKYFRI_QUEUE_CRASH_ROUND";

/// The child half of [`no_accepted_call_is_lost_to_kill_9`]; does nothing when run alone.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD) else {
        return;
    };
    let round = std::env::var(CRASH_ROUND).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let q = EmbeddedQueue::open(Path::new(&path)).expect("open");
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let q = q.clone();
                let round = round.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let id = format!("r{round}-t{task}-{i}");
                        let mut c = call(&id, &format!("f{}", task % 3));
                        c.body = Bytes::from(vec![b'x'; 1024]);
                        q.enqueue(c.clone()).await.expect("enqueue");
                        // Accepted: only now may the parent count on it.
                        println!("accepted {} ok", c.id);
                        if i % 7 == 0 {
                            // Idempotent retries of accepted calls.
                            assert_eq!(q.enqueue(c).await.expect("enqueue"), Enqueued::Duplicate);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join");
        }
    });
}

#[test]
fn no_accepted_call_is_lost_to_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    let mut accepted = std::collections::HashSet::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "embedded::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD, &path)
            .env(CRASH_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut this_round = 0;
        // Kill it at a different point each round.
        let kill_after = 3000 + 2500 * round;
        while this_round < kill_after {
            let line = lines
                .next()
                .expect("the child stopped before it was killed")
                .expect("read");
            if let Some(id) = line
                .strip_prefix("accepted ")
                .and_then(|l| l.strip_suffix(" ok"))
            {
                assert!(accepted.insert(id.to_owned()), "{id} accepted twice");
                this_round += 1;
            }
        }
        child.kill().expect("SIGKILL"); // SIGKILL on Unix
                                        // Lines already written before the kill are accepted calls too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(id) = line
                .strip_prefix("accepted ")
                .and_then(|l| l.strip_suffix(" ok"))
            {
                accepted.insert(id.to_owned());
            }
        }
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the child was killed, not finished");
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let q = EmbeddedQueue::open(&path).expect("reopen");
        for id in &accepted {
            let record = q
                .get(id)
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("accepted call {id} was lost"));
            assert_eq!(record.call.body.len(), 1024, "{id}");
            assert_eq!(record.state, CallState::Queued, "{id}");
        }
    });
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    let (rows, distinct): (i64, i64) = conn
        .query_row("SELECT COUNT(*), COUNT(DISTINCT id) FROM calls", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count");
    assert_eq!(rows, distinct);
    assert!(
        rows >= i64::try_from(accepted.len()).unwrap_or(i64::MAX),
        "{rows} rows for {} accepted calls",
        accepted.len()
    );
    eprintln!(
        "{} accepted calls over 3 kill -9s, all present once ({rows} rows: the rest were committed but not yet printed)",
        accepted.len()
    );
}
