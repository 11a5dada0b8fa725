//! Event triggers end to end against a real nats-server with JetStream (started by the test
//! on a free port: Debian's `nats-server`, 2.9): topic messages invoke their
//! function once each, across a restart of skyfri; failures are redelivered; cron schedules
//! fire; a bad schedule is refused at deploy. Invocations are observed in the functions' logs
//! (`skyfri logs`).
//!
//! The orders example's ingest function publishes with nats-py; these tests publish from the
//! test itself (a plain NATS `PUB` with a reply inbox, which JetStream acknowledges), so that
//! they do not depend on installing Python packages at build time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::nats::Nats;
use common::{fixtures, free_port, lines_ending, Platform};

/// The examples' ORDERS stream: `orders.>`, file storage, limits, a year, 64 KiB.
fn create_orders_stream(nats: &Nats) {
    let config = r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file","retention":"limits","max_age":31536000000000000,"max_msg_size":65536,"num_replicas":1}"#;
    let reply = nats.request("$JS.API.STREAM.CREATE.ORDERS", config.as_bytes());
    assert!(!reply.contains("\"error\""), "stream not created: {reply}");
}

fn deploy(p: &Platform, dir: &Path, file: &str, filter: Option<&str>) {
    let mut args = vec!["deploy", "-f", file];
    if let Some(f) = filter {
        args.extend(["--filter", f]);
    }
    let out = p.cli_in(dir, &args, "");
    assert!(out.ok, "deploy failed: {}\n{}", out.stderr, out.stdout);
}

/// How many log lines say this order was processed.
fn processed(logs: &str, id: &str) -> usize {
    lines_ending(logs, &format!("processed order {id}"))
}

fn orders_dir() -> PathBuf {
    fixtures().join("triggers/orders")
}

#[test]
fn each_topic_message_is_processed_once_across_a_restart() {
    let nats = Nats::start();
    create_orders_stream(&nats);
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let url = nats.url();
    let p = Platform::start_in(&data, &["--nats", &url]);
    // The example as users have it; its ingest function needs nats-py, so only the processor
    // is deployed and the test publishes the orders.
    deploy(&p, &orders_dir(), "stack.yml", Some("order-processor"));
    p.wait_output("topic trigger ready", 1, Duration::from_secs(30));

    let first: Vec<String> = (1..=5).map(|i| format!("order-{i:02}")).collect();
    for id in &first {
        nats.publish("orders.created", &format!(r#"{{"order_id":"{id}"}}"#));
    }
    p.wait_function_logs(
        "order-processor",
        Duration::from_secs(60),
        "the first five orders",
        |l| first.iter().all(|id| processed(l, id) >= 1),
    );
    p.stop();

    // Published while skyfri is down: delivered after the restart.
    let second: Vec<String> = (6..=8).map(|i| format!("order-{i:02}")).collect();
    for id in &second {
        nats.publish("orders.created", &format!(r#"{{"order_id":"{id}"}}"#));
    }
    let p = Platform::start_in(&data, &["--nats", &url]);
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    p.wait_function_logs(
        "order-processor",
        Duration::from_secs(60),
        "the orders published while skyfri was down",
        |l| second.iter().all(|id| processed(l, id) >= 1),
    );
    // Give a wrong redelivery of the acked ones a chance to show.
    std::thread::sleep(Duration::from_secs(2));
    let l = p.function_logs("order-processor");
    for id in &all {
        assert_eq!(processed(&l, id), 1, "{id} processed other than once:\n{l}");
    }
    // Removal stops the trigger and deletes its durable consumer.
    let out = p.cli(&["rm", "order-processor"], "");
    assert!(out.ok, "rm: {}", out.stderr);
    p.wait_output("durable consumer deleted", 1, Duration::from_secs(30));
}

/// The orders example unchanged: order-ingest (python3-http with nats-py, installed at build)
/// publishes each accepted order to the ORDERS stream; order-processor is invoked once per
/// message through its `topic` annotation.
#[test]
fn the_orders_example_processes_each_accepted_order_once() {
    let nats = Nats::start();
    create_orders_stream(&nats);
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = Platform::start_in(&tmp.path().join("data"), &["--nats", &nats.url()]);
    // The stack reads NATS_URL when it is deployed, as faas-cli's envsubst does.
    let out = Command::new(env!("CARGO_BIN_EXE_skyfri"))
        .args(["deploy", "-f", "stack.yml"])
        .current_dir(orders_dir())
        .env("SKYFRI_URL", p.url())
        .env("SKYFRI_PASSWORD", common::PASSWORD)
        .env("NATS_URL", nats.url())
        .env_remove("OPENFAAS_URL")
        .output()
        .expect("run skyfri deploy");
    assert!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_output("topic trigger ready", 1, Duration::from_secs(30));
    let ids = ["A-1", "A-2", "A-3"];
    for id in ids {
        let body = format!(r#"{{"order_id":"{id}","amount":5}}"#);
        let r = p.http("POST", "/function/order-ingest", &[], body.as_bytes());
        assert_eq!(r.status, 202, "{id}: {}", r.text());
        assert_eq!(r.json()["accepted"], id);
    }
    let refused = p.http("POST", "/function/order-ingest", &[], b"{}");
    assert_eq!(refused.status, 400, "{}", refused.text());
    let l = p.wait_function_logs(
        "order-processor",
        Duration::from_secs(60),
        "every accepted order",
        |l| ids.iter().all(|id| processed(l, id) >= 1),
    );
    for id in ids {
        assert_eq!(processed(&l, id), 1, "{id}:\n{l}");
    }
}

#[test]
fn failed_topic_messages_are_redelivered_and_cron_ticks_fire() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = Platform::start_in(&tmp.path().join("data"), &["--nats", &nats.url()]);
    deploy(&p, &fixtures().join("triggers"), "stack.yml", None);
    p.wait_output("topic trigger ready", 1, Duration::from_secs(30));
    // No stream captured jobs.flaky: skyfri made one, and said so.
    assert!(
        p.logs().contains("created one (file storage"),
        "{}",
        p.logs()
    );
    nats.publish("jobs.flaky", "job-1");
    let l = p.wait_function_logs(
        "flaky-topic",
        Duration::from_secs(60),
        "the third delivery",
        |l| l.contains("flaky-topic done job-1 on attempt 3 via jobs.flaky"),
    );
    assert!(
        l.contains("failed job-1 on attempt 1") && l.contains("failed job-1 on attempt 2"),
        "{l}"
    );

    // Every second, POST with the schedule in a header, as async calls with cron ids.
    p.wait_function_logs("ticker", Duration::from_secs(30), "three ticks", |l| {
        l.matches("tick POST * * * * * *").count() >= 3
    });
    let calls = p
        .admin("GET", "/system/async/calls?function=ticker", "")
        .json();
    let ids: Vec<String> = calls
        .as_array()
        .or_else(|| calls["calls"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|c| c["call"]["id"].as_str().or(c["id"].as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        ids.len() >= 3 && ids.iter().all(|id| id.starts_with("cron-ticker-0-")),
        "{calls}"
    );
}

#[test]
fn topic_functions_deploy_while_nats_is_down_and_get_messages_once_it_is_up() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = Platform::start_in(&tmp.path().join("data"), &["--nats", &url]);
    deploy(
        &p,
        &fixtures().join("triggers"),
        "stack.yml",
        Some("flaky-topic"),
    );
    // Deployed and callable over HTTP; NATS's absence is said loudly, and tried again.
    let r = p.http(
        "POST",
        "/function/flaky-topic",
        &[("X-Skyfri-Attempt", "3")],
        b"direct",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    p.wait_output("NATS is unreachable", 2, Duration::from_secs(30));
    let nats = Nats::start_on(port);
    p.wait_output("topic trigger ready", 1, Duration::from_secs(60));
    nats.publish("jobs.flaky", "job-late");
    p.wait_function_logs(
        "flaky-topic",
        Duration::from_secs(60),
        "the message published once NATS was up",
        |l| l.contains("flaky-topic done job-late on attempt 3"),
    );
}

#[test]
fn a_bad_schedule_fails_the_deploy() {
    let p = Platform::start();
    let out = p.cli_in(
        &fixtures().join("triggers"),
        &["deploy", "-f", "bad-schedule.yml"],
        "",
    );
    assert!(!out.ok, "deployed: {}", out.stdout);
    assert!(
        out.stderr.contains("annotations.schedule") && out.stderr.contains("every monday"),
        "{}",
        out.stderr
    );
}

/// Every line of a function's logs that starts with `prefix`, then an id: the ids, in order.
fn ids_after(logs: &str, prefix: &str) -> Vec<String> {
    logs.lines()
        .filter_map(|l| l.split_once(prefix))
        .filter_map(|(_, rest)| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Two gateways pointed at one NATS (`--queue nats://`) share the async calls: each call runs
/// once, whichever gateway accepted it (an id sent to both is the same call), both gateways do
/// some of the work, and a cron schedule deployed on both fires once per tick.
#[test]
fn two_gateways_on_one_nats_share_async_calls_and_cron_ticks() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = nats.url();
    let a = Platform::start_in(&tmp.path().join("a"), &["--queue", &url]);
    let b = Platform::start_in(&tmp.path().join("b"), &["--queue", &url]);
    for p in [&a, &b] {
        deploy(p, &fixtures().join("triggers"), "shared.yml", None);
    }

    let calls = 200;
    let ids: Vec<String> = (0..calls).map(|i| format!("shared-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (first, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = first.http("POST", "/async-function/count", &[("X-Call-Id", id)], b"x");
        assert_eq!(r.status, 202, "{}", r.text());
        if i % 10 == 0 {
            // The same call again, at the other gateway: accepted, not run twice.
            let r = other.http("POST", "/async-function/count", &[("X-Call-Id", id)], b"x");
            assert_eq!(r.status, 202, "{}", r.text());
        }
    }
    let ran = |p: &Platform| ids_after(&p.function_logs("count"), "ran ");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = ran(&a);
        all.extend(ran(&b));
        if ids.iter().all(|id| all.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every call ran within 120 s ({} runs seen)\nA:\n{}\nB:\n{}",
            all.len(),
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Give a duplicate delivery a chance to show.
    std::thread::sleep(Duration::from_secs(2));
    let (on_a, on_b) = (ran(&a), ran(&b));
    for id in &ids {
        let n = on_a.iter().chain(&on_b).filter(|r| *r == id).count();
        assert_eq!(n, 1, "{id} ran {n} times");
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "one gateway did all the work: A ran {}, B ran {}",
        on_a.len(),
        on_b.len()
    );

    // The ticker is deployed on both: each tick's call (one id per tick) runs once.
    let ticks = |p: &Platform| ids_after(&p.function_logs("ticker"), "id=");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<String> = ticks(&a).into_iter().chain(ticks(&b)).collect();
        if all.len() >= 4 {
            let mut distinct = all.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), all.len(), "a tick ran twice: {all:?}");
            assert!(
                all.iter().all(|id| id.starts_with("cron-ticker-0-")),
                "{all:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "four ticks not seen within 60 s: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
