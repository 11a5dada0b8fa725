//! Autoscaling end to end: a burst on a function at zero is served without errors while
//! replicas rise, they fall back to zero once it is idle, and a call at zero is a marked
//! cold start.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixtures, Platform};

fn replicas(p: &Platform) -> (u64, u64) {
    let v = p.admin("GET", "/system/function/sleeper", "").json();
    (
        v["replicas"].as_u64().unwrap_or(0),
        v["availableReplicas"].as_u64().unwrap_or(0),
    )
}

fn wait_for_zero(p: &Platform, within: Duration) {
    let deadline = Instant::now() + within;
    while replicas(p) != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "still {:?} replicas after {within:?}: {}",
            replicas(p),
            p.admin("GET", "/system/function/sleeper", "").text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_burst_from_zero_is_served_and_scales_back_to_zero() {
    let p = Arc::new(Platform::start());
    let out = p.cli_in(
        &fixtures().join("autoscale"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(replicas(&p), (0, 0), "initial-scale 0 starts at zero");

    // One call at zero: served, and marked as a cold start.
    let r = p.http("POST", "/function/sleeper", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "slept"));
    assert_eq!(r.header("x-skyfri-cold-start"), Some("true"));
    let metrics = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("gateway_function_cold_start_total{function_name=\"sleeper\"} 1"),
        "{metrics}"
    );
    let r = p.http("POST", "/function/sleeper", &[], b"");
    assert_eq!(
        r.header("x-skyfri-cold-start"),
        None,
        "a warm call is not cold"
    );
    wait_for_zero(&p, Duration::from_secs(60));

    // 200 concurrent calls of 50 ms each, at zero, at most 20 replicas.
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (p, peak, done) = (Arc::clone(&p), Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let (_, ready) = replicas(&p);
                peak.fetch_max(ready as u32, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                let r = p.http("POST", "/function/sleeper", &[], b"");
                (r.status, r.text())
            })
        })
        .collect();
    let mut failures = Vec::new();
    for call in calls {
        match call.join() {
            Ok((200, _)) => {}
            Ok(other) => failures.push(other),
            Err(_) => failures.push((0, "thread panicked".into())),
        }
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak > 1,
        "replicas did not rise (peak {peak}, burst took {took:?})"
    );
    assert!(peak <= 20, "more replicas than max-scale: {peak}");

    let said = p.http("POST", "/function/sleeper", &[], b"say");
    assert_eq!(said.status, 200, "{}", said.text());
    wait_for_zero(&p, Duration::from_secs(90));
    // Logs stay readable at zero.
    let logs = p.cli(&["logs", "sleeper"], "");
    assert!(
        logs.ok && logs.stdout.contains("said by sleeper-"),
        "logs at zero: {} {}",
        logs.stdout,
        logs.stderr
    );
    // The autoscaler explains itself: its last decision, and the policy it follows.
    let v = p.admin("GET", "/system/function/sleeper", "").json();
    let reason = v["scaling"]["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "no scaling decision: {v}");
    assert!(v["scaling"]["desired"].is_u64(), "{v}");
    assert_eq!(v["scalePolicy"]["max"], 20, "{v}");
    assert_eq!(v["scalePolicy"]["scaleToZero"], true, "{v}");
    assert_eq!(
        (v["inFlight"].as_u64(), v["queued"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    let described = p.cli(&["describe", "sleeper"], "").stdout;
    assert!(described.contains("Scaling:"), "{described}");
    assert!(described.contains("Last decision:"), "{described}");
    assert!(
        described.contains("In flight:   0 (queued 0)"),
        "{described}"
    );
}

fn scale(p: &Platform, replicas: u32) -> common::Response {
    p.admin(
        "POST",
        "/system/scale-function/sleeper",
        &format!(r#"{{"serviceName":"sleeper","replicas":{replicas}}}"#),
    )
}

/// A manual scale stays as set while the function is idle (the autoscaler would take an
/// idle function to zero within seconds), within the function's range or to 0; the first
/// call hands the function back to the autoscaler.
#[test]
fn a_manual_scale_holds_until_traffic_arrives() {
    let p = Platform::start();
    let out = p.cli_in(
        &fixtures().join("autoscale"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(replicas(&p), (0, 0));

    let r = scale(&p, 21);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("outside the range") && r.text().contains("to 20"),
        "{}",
        r.text()
    );
    let r = scale(&p, 2);
    assert_eq!(r.status, 202, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas(&p) != (2, 2) {
        assert!(Instant::now() < deadline, "not scaled: {:?}", replicas(&p));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Idle for longer than its zero-duration (3 s) and a few decisions: still two.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        replicas(&p),
        (2, 2),
        "the manual scale was undone while idle"
    );
    let v = p.admin("GET", "/system/function/sleeper", "").json();
    assert!(
        v["scaling"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("manual scale")),
        "{v}"
    );
    // Traffic: the autoscaler decides again, and takes the idle function to zero.
    let r = p.http("POST", "/function/sleeper", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for_zero(&p, Duration::from_secs(60));

    // 0 is always allowed.
    let r = scale(&p, 0);
    assert_eq!(r.status, 202, "{}", r.text());
}
