//! SIGTERM drains (issue 6, item 10): no new connection is accepted, calls in flight finish
//! (up to their timeout), async calls and topic messages still running after the grace
//! period are handed back (to the queue, to NATS) and run again at once after the restart
//! with the same attempt number, then skyfri exits. Against a real nats-server (Debian's).

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::nats::Nats;
use common::{http, lines_ending, Platform};

/// The stream the test makes for the `work` function's topic.
const STREAM: &str = "DRAIN";

fn start(data: &Path, nats: &Nats, queue: Option<&str>) -> Platform {
    let url = nats.url();
    let mut args = vec!["--nats", url.as_str()];
    if let Some(q) = queue {
        args.extend(["--queue", q]);
    }
    Platform::start_in(data, &args)
}

/// Lines of `work`'s log that end with `what` (like "start t1 attempt 1").
fn count(logs: &str, what: &str) -> usize {
    lines_ending(logs, &format!("work {what}"))
}

/// Waits until `work` has logged `what` at least `n` times; returns its logs.
fn wait_logged(p: &Platform, what: &str, n: usize, within: Duration) -> String {
    p.wait_function_logs("work", within, &format!("{what:?} {n} times"), |l| {
        count(l, what) >= n
    })
}

/// The config of the only consumer on [`STREAM`] (skyfri's durable), and its name.
fn consumer(nats: &Nats) -> (String, serde_json::Value) {
    let names: serde_json::Value =
        serde_json::from_str(&nats.request(&format!("$JS.API.CONSUMER.NAMES.{STREAM}"), b"{}"))
            .expect("consumer names");
    let name = names["consumers"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no consumer on {STREAM}: {names}"))
        .to_string();
    let info: serde_json::Value =
        serde_json::from_str(&nats.request(&format!("$JS.API.CONSUMER.INFO.{STREAM}.{name}"), b""))
            .expect("consumer info");
    (name, info["config"].clone())
}

/// A topic message whose call runs at SIGTERM is handed back: after the restart it runs at
/// once (not after its ack_wait of 90 s) and as attempt 1 again. The consumer is one an older
/// skyfri made, with the server counting deliveries (`max_deliver`): nats-server 2.10+ lets
/// skyfri lift that limit; 2.9 cannot update the consumer, which keeps working with it.
fn a_topic_message_running_at_sigterm_runs_again_at_once_as_the_same_attempt(nats: &Nats) {
    let reply = nats.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        format!(r#"{{"name":"{STREAM}","subjects":["jobs.slow"],"storage":"file","retention":"limits","num_replicas":1}}"#).as_bytes(),
    );
    assert!(!reply.contains("\"error\""), "stream not created: {reply}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let p = start(&data, nats, None);
    p.deploy_stack("drain");
    p.wait_output("topic trigger ready", 1, Duration::from_secs(60));
    p.stop();

    // The consumer as an older skyfri made it: the server delivers a message at most the
    // function's retry attempts.
    let (name, mut config) = consumer(nats);
    let reply = nats.request(&format!("$JS.API.CONSUMER.DELETE.{STREAM}.{name}"), b"");
    assert!(
        !reply.contains("\"error\""),
        "consumer not deleted: {reply}"
    );
    config["max_deliver"] = 2.into();
    let body = serde_json::json!({ "stream_name": STREAM, "config": config }).to_string();
    let reply = nats.request(
        &format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{name}"),
        body.as_bytes(),
    );
    assert!(
        !reply.contains("\"error\""),
        "consumer not created: {reply}"
    );
    let p = start(&data, nats, None);
    p.wait_output("topic trigger ready", 1, Duration::from_secs(60));
    let max_deliver = consumer(nats).1["max_deliver"].clone();
    if nats.version().starts_with("2.9.") {
        assert_eq!(max_deliver, 2);
        p.wait_output(
            "consumer made by an older skyfri",
            1,
            Duration::from_secs(5),
        );
    } else {
        assert_eq!(max_deliver, -1, "max_deliver kept on {}", nats.version());
    }

    nats.publish("jobs.slow", "t1 8");
    wait_logged(&p, "start t1 attempt 1", 1, Duration::from_secs(60));
    p.stop();

    let restarted = Instant::now();
    let p = start(&data, nats, None);
    wait_logged(&p, "start t1 attempt 1", 2, Duration::from_secs(60));
    let waited = restarted.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "the handed-back message came {waited:?} after the restart, as if left to its ack_wait"
    );
    let l = wait_logged(&p, "done t1 attempt 1", 1, Duration::from_secs(30));
    assert!(!l.contains("t1 attempt 2"), "attempt inflated:\n{l}");
    // Settled: not delivered again.
    std::thread::sleep(Duration::from_secs(1));
    let l = p.function_logs("work");
    assert_eq!(count(&l, "start t1 attempt 1"), 2, "{l}");
}

#[test]
fn a_topic_message_handed_back_runs_again_at_once_nats_2_9() {
    a_topic_message_running_at_sigterm_runs_again_at_once_as_the_same_attempt(&Nats::start());
}

#[test]
fn a_topic_message_handed_back_runs_again_at_once_nats_2_10_plus() {
    if let Some(nats) = Nats::start_new() {
        a_topic_message_running_at_sigterm_runs_again_at_once_as_the_same_attempt(&nats);
    }
}

/// An async call at its last attempt (2 of 2) running at SIGTERM is handed back: after the
/// restart it runs again as attempt 2, and is done, not dead.
fn an_async_call_handed_back_at_its_last_attempt_is_not_dead_letter(queue: Option<&str>) {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let queue = queue.map(|q| q.replace("NATS", &nats.url()));
    let p = start(&data, &nats, queue.as_deref());
    p.deploy_stack("drain");
    let r = p.http(
        "POST",
        "/async-function/work",
        &[("X-Call-Id", "a1")],
        b"a1 8 fail-first",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    wait_logged(&p, "start a1 attempt 2", 1, Duration::from_secs(60));
    p.stop();

    let p = start(&data, &nats, queue.as_deref());
    let call = p.wait_call_state("a1", "done", Duration::from_secs(40));
    assert_eq!(call["attempt"], 2, "{call}");
    // (The replica stopped at shutdown finished the interrupted run too: its answer went
    // nowhere.)
    let l = p.function_logs("work");
    assert_eq!(count(&l, "start a1 attempt 2"), 2, "{l}");
    assert!(!l.contains("a1 attempt 3"), "{l}");
}

#[test]
fn an_async_call_handed_back_at_its_last_attempt_runs_again_embedded() {
    an_async_call_handed_back_at_its_last_attempt_is_not_dead_letter(None);
}

#[test]
fn an_async_call_handed_back_at_its_last_attempt_runs_again_jetstream() {
    an_async_call_handed_back_at_its_last_attempt_is_not_dead_letter(Some("NATS"));
}

/// Calls in flight at SIGTERM finish (they take longer than the 5 s grace, less than their
/// timeout), also on a function whose server dies at once on SIGTERM: the replicas are
/// stopped only once the calls have ended. Meanwhile no new connection is accepted.
#[test]
fn calls_in_flight_at_sigterm_finish_and_new_connections_are_refused() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = start(&tmp.path().join("data"), &nats, None);
    p.deploy_stack("drain");
    let calls: Vec<_> = [("work", "s1 8"), ("web", "s2 8")]
        .into_iter()
        .map(|(function, body)| {
            let addr = p.addr.clone();
            std::thread::spawn(move || {
                http(
                    &addr,
                    "POST",
                    &format!("/function/{function}"),
                    &[],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    wait_logged(&p, "start s1 attempt 0", 1, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.cli(&["logs", "web"], "").stdout.contains("web start s2") {
        assert!(Instant::now() < deadline, "web did not start s2");
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = p.addr.clone();
    let probe = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        TcpStream::connect(&addr).is_ok()
    });
    p.stop();
    let answers: Vec<_> = calls
        .into_iter()
        .map(|c| {
            let r = c.join().expect("a call in flight was cut");
            (r.status, r.text())
        })
        .collect();
    assert_eq!(
        answers,
        [
            (200, "done s1 attempt 0".to_string()),
            (200, "web done s2".to_string())
        ]
    );
    assert!(
        !probe.join().expect("probe"),
        "a new connection was accepted while draining"
    );
}

/// A second SIGTERM (or Ctrl-C) while draining exits at once, with status 130: whoever sends
/// it will not wait for the calls in flight, which are cut.
#[test]
fn a_second_signal_while_draining_exits_at_once() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut p = start(&tmp.path().join("data"), &nats, None);
    p.deploy_stack("drain");
    let addr = p.addr.clone();
    let call =
        std::thread::spawn(move || http(&addr, "POST", "/function/work", &[], b"s3 30").status);
    wait_logged(&p, "start s3 attempt 0", 1, Duration::from_secs(60));
    p.signal(libc::SIGTERM);
    p.wait_output("draining", 1, Duration::from_secs(10));
    assert!(
        p.exits_within(Duration::from_secs(2)).is_none(),
        "one signal did not wait for the call in flight"
    );
    let second = Instant::now();
    p.signal(libc::SIGTERM);
    let status = p
        .exits_within(Duration::from_secs(5))
        .expect("a second signal did not exit at once");
    assert_eq!(status.code(), Some(130), "{status}");
    eprintln!("exited {:?} after the second signal", second.elapsed());
    // The call was cut: no answer, or not the function's.
    if let Ok(status) = call.join() {
        assert_ne!(status, 200, "the call in flight finished anyway");
    }
}
