//! Usage metering end to end through the real binary: sync, async and cron-triggered calls
//! are metered with their function's memory, written to the store by the periodic flush
//! (they survive a SIGKILL) and by the last flush at shutdown (a SIGTERM right after the
//! calls), and `skyfri cost --json` prices them as skyfri-core's maths says.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Platform;
use serde_json::Value;
use skyfri_core::usage::{self, Prices, Usage};

/// Calls of `metered` before the crash: sync ones, then async ones.
const SYNC: u64 = 5;
const ASYNC: u64 = 2;
/// Calls after the restart, lost unless the flush at shutdown writes them.
const LATER: u64 = 3;
/// What each call of `metered` does at least (its handler.py): 50 ms of CPU, then a
/// 100 ms sleep, holding its replica all the while.
const MIN_CALL_MS: u64 = 150;
const MIN_CALL_CPU_US: u64 = 50_000;
/// No call comes near this (the default exec timeout is 60 s): a bound for sanity.
const MAX_CALL_MS: u64 = 30_000;

/// `function`'s line of `/system/usage` (this month), if it has one.
fn line(report: &Value, function: &str) -> Option<Usage> {
    let line = report["functions"]
        .as_array()?
        .iter()
        .find(|l| l["function"] == function)?;
    serde_json::from_value(line.clone()).ok()
}

fn report(p: &Platform) -> Value {
    let r = p.admin("GET", "/system/usage", "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// `/system/usage` once the gateway has flushed since it started (the first flush, right
/// at the start, brings the CPU the restored replicas used while starting).
fn flushed_report(p: &Platform) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = report(p);
        if !r["flushedAt"].is_null() {
            return r;
        }
        assert!(Instant::now() < deadline, "no flush: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `/system/usage` until `function`'s line satisfies `done`.
fn wait_for(p: &Platform, function: &str, done: impl Fn(&Usage) -> bool) -> (Usage, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = report(p);
        if let Some(u) = line(&r, function).filter(|u| done(u)) {
            return (u, r);
        }
        assert!(
            Instant::now() < deadline,
            "usage of {function} never got there: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn invoke(p: &Platform) {
    let r = p.http("POST", "/function/metered", &[], b"x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "metered");
}

/// Runs `skyfri cost ARGS` and returns its stdout.
fn cost(p: &Platform, args: &[&str]) -> String {
    let mut all = vec!["cost", "--data-dir"];
    let data = p.data_dir.to_str().expect("utf-8 data dir");
    all.push(data);
    all.extend_from_slice(args);
    let out = p.cli(&all, "");
    assert!(out.ok, "skyfri {all:?}: {}", out.stderr);
    out.stdout
}

#[test]
fn usage_is_metered_flushed_and_survives_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let p = Platform::start_in(&data, &["--usage-flush", "1s"]);
    p.deploy_stack("usage");

    for _ in 0..SYNC {
        invoke(&p);
    }
    for i in 0..ASYNC {
        let id = format!("usage-{i}");
        let r = p.http(
            "POST",
            "/async-function/metered",
            &[("X-Call-Id", &id)],
            b"x",
        );
        assert_eq!(r.status, 202, "{}", r.text());
    }
    // The flush brings every call to the store.
    let n = SYNC + ASYNC;
    let (metered, r) = wait_for(&p, "metered", |u| u.invocations == n);
    assert!(metered.duration_ms >= n * MIN_CALL_MS, "{metered:?}");
    assert!(metered.duration_ms <= n * MAX_CALL_MS, "{metered:?}");
    assert_eq!(
        metered.mib_ms,
        128 * metered.duration_ms,
        "limits.memory 128Mi"
    );
    let gbs = r["functions"][0]["gbSeconds"].as_f64().expect("gbSeconds");
    assert!(
        (gbs - metered.mib_ms as f64 / 1_024_000.0).abs() < 1e-9,
        "{r}"
    );
    if r["cpuMetered"] == true {
        assert!(metered.cpu_us >= n * MIN_CALL_CPU_US, "{metered:?}");
    } else {
        eprintln!("WARNING: this host has no cgroup CPU accounting: CPU-seconds not checked");
    }
    // The cron trigger's calls count too, at the default 128 MiB.
    let (ticks, _) = wait_for(&p, "ticker", |u| u.invocations > 0);
    assert_eq!(ticks.mib_ms, 128 * ticks.duration_ms);

    // The API: admin only, a month as YYYY-MM, other months empty.
    assert_eq!(p.http("GET", "/system/usage", &[], b"").status, 401);
    let bad = p.admin("GET", "/system/usage?month=2026-13", "");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("YYYY-MM"), "{}", bad.text());
    let old = p.admin("GET", "/system/usage?month=2001-01", "").json();
    assert_eq!(old["functions"], serde_json::json!([]), "{old}");
    assert_eq!(old["total"]["invocations"], 0);

    // A crash loses nothing that was flushed.
    p.kill();
    let p = Platform::start_in(&data, &["--usage-flush", "1h"]);
    let after_crash = line(&flushed_report(&p), "metered").expect("usage after the crash");
    assert_eq!(after_crash.invocations, n);
    assert_eq!(after_crash.duration_ms, metered.duration_ms);

    // With an hour between flushes, only the flush at shutdown can keep these.
    for _ in 0..LATER {
        invoke(&p);
    }
    p.stop();
    let p = Platform::start_in(&data, &["--usage-flush", "1h"]);
    let r = flushed_report(&p);
    let kept = line(&r, "metered").expect("usage after the restart");
    assert_eq!(kept.invocations, n + LATER, "{r}");
    assert!(kept.duration_ms >= metered.duration_ms + LATER * MIN_CALL_MS);

    check_cost(&p, tmp.path(), &r);
}

/// `skyfri cost --json` agrees with `/system/usage` and with skyfri-core's maths; bad price
/// files are refused naming the key.
fn check_cost(p: &Platform, dir: &Path, report: &Value) {
    let price_file = dir.join("prices.yaml");
    std::fs::write(
        &price_file,
        "request_usd_per_million: 2.0\ngb_second_usd: 0.001\nfree_requests: 3\nfree_gb_seconds: 0.5\nserver_monthly_usd: 40\n",
    )
    .expect("write the price file");
    let prices = Prices::parse(
        &std::fs::read_to_string(&price_file).expect("read it back"),
        "prices.yaml",
    )
    .expect("a valid price file");
    let price_arg = price_file.to_str().expect("utf-8 path");
    let c: Value =
        serde_json::from_str(&cost(p, &["--json", "--prices", price_arg])).expect("JSON");

    // The same figures as the API (nothing was called in between: the flush is hourly).
    for f in ["metered", "ticker"] {
        assert_eq!(line(&c, f), line(report, f), "{f}: {c}");
    }
    let total: Usage = serde_json::from_value(c["total"].clone()).expect("total");
    assert_eq!(
        total.invocations,
        report["total"]["invocations"].as_u64().expect("n")
    );
    let bill = usage::with_free_tier(&total, &prices);
    assert!(bill.total() > 0, "past the small free tier: {c}");
    assert_eq!(
        c["requestsUsd"].as_f64(),
        Some(usage::usd(bill.requests)),
        "{c}"
    );
    assert_eq!(
        c["computeUsd"].as_f64(),
        Some(usage::usd(bill.compute)),
        "{c}"
    );
    assert_eq!(
        c["payPerRequestUsd"].as_f64(),
        Some(usage::usd(bill.total())),
        "{c}"
    );
    assert_eq!(
        c["breakEvenInvocations"].as_u64(),
        usage::break_even(&total, &prices),
        "{c}"
    );
    assert!(c["breakEvenInvocations"].as_u64().is_some(), "{c}");
    let metered = line(&c, "metered").expect("metered");
    let listed = c["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["function"] == "metered"))
        .and_then(|f| f["listPriceUsd"].as_f64());
    assert_eq!(
        listed,
        Some(usage::usd(usage::list_price(&metered, &prices).total()))
    );

    // The text report, priced from the data dir's prices.yaml when there is one.
    std::fs::copy(&price_file, p.data_dir.join("prices.yaml")).expect("copy the prices");
    let text = cost(p, &[]);
    for want in [
        "metered",
        "ticker",
        "TOTAL",
        "Servers:         $40.00 per month",
        "Break-even:",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }

    // Bad input: an unknown key, named; a month that is not one.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "server_monthly_usd: 40\nrequest_price: 1\n").expect("write");
    let out = p.cli(&["cost", "--prices", bad.to_str().expect("utf-8")], "");
    assert!(!out.ok);
    assert!(
        out.stderr.contains("request_price") && out.stderr.contains("bad.yaml"),
        "{}",
        out.stderr
    );
    let out = p.cli(&["cost", "--month", "12-2026"], "");
    assert!(!out.ok && out.stderr.contains("YYYY-MM"), "{}", out.stderr);
}
