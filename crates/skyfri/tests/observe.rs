//! Observability end to end through the real binary: metrics that move with calls, cold
//! starts, scaling and OOM kills; the Grafana dashboard only queries metrics the gateway
//! exports; the access log; function logs that rotate within their cap and stay readable
//! (across rotated files, after scale to zero, per replica with `--instance`, followed).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixtures, Platform};

fn deploy(p: &Platform) {
    let out = p.cli_in(
        &fixtures().join("observe"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "deploy failed: {}\n{}", out.stderr, out.stdout);
}

/// The value of the series `name{labels}` in a scrape, 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn scrape(p: &Platform) -> String {
    let r = p.http("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    r.text()
}

/// Scrapes until `series` reaches at least `min`; panics with the scrape after `within`.
fn wait_metric(p: &Platform, series: &str, min: f64, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let m = scrape(p);
        if value(&m, series) >= min {
            return m;
        }
        assert!(Instant::now() < deadline, "{series} < {min}:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metric names the queries of a Grafana dashboard use.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut queries = Vec::new();
    collect_queries(dashboard, &mut queries);
    let mut names = BTreeSet::new();
    for q in queries {
        let bytes = q.as_bytes();
        for (i, _) in q.match_indices("gateway_") {
            let inside_word =
                i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if inside_word {
                continue;
            }
            let end = q[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(q.len(), |e| i + e);
            names.insert(q[i..end].to_string());
        }
    }
    names
}

fn collect_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// The access log lines (all rotated files) as JSON.
fn access_log(data_dir: &Path) -> Vec<serde_json::Value> {
    let logs = data_dir.join("logs");
    let mut files: Vec<_> = std::fs::read_dir(&logs)
        .expect("logs dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("access.log"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read access log")
                .lines()
                .map(|l| serde_json::from_str(l).expect("an access log line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits for the access log line of `call_id` (it is written after the response).
fn access_line(data_dir: &Path, call_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = access_log(data_dir)
            .into_iter()
            .find(|l| l["call_id"] == call_id)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {call_id}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_move_and_the_dashboard_uses_only_exported_ones() {
    let p = Platform::start();
    deploy(&p);
    let m = scrape(&p);
    assert_eq!(
        value(
            &m,
            "gateway_function_replicas_desired{function_name=\"greeter\"}"
        ),
        0.0,
        "initial-scale 0: {m}"
    );
    assert!(
        value(
            &m,
            "gateway_build_seconds_count{template=\"python3\",outcome=\"ok\"}"
        ) >= 3.0,
        "three builds: {m}"
    );

    // A call at zero: a cold start, an activation, a wait for the replica.
    let r = p.http("POST", "/function/greeter/sub/path?secret=1", &[], b"world");
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("x-skyfri-cold-start"), Some("true"));
    let m = scrape(&p);
    for (series, want) in [
        (
            "gateway_function_invocation_total{function_name=\"greeter\",code=\"200\"}",
            1.0,
        ),
        (
            "gateway_function_cold_start_total{function_name=\"greeter\"}",
            1.0,
        ),
        (
            "gateway_function_queue_wait_seconds_count{function_name=\"greeter\"}",
            1.0,
        ),
        (
            "gateway_function_replicas_desired{function_name=\"greeter\"}",
            1.0,
        ),
        (
            "gateway_function_replicas_ready{function_name=\"greeter\"}",
            1.0,
        ),
        ("gateway_function_in_flight{function_name=\"greeter\"}", 0.0),
        (
            "gateway_function_queue_depth{function_name=\"greeter\"}",
            0.0,
        ),
        (
            "gateway_function_oom_kills_total{function_name=\"greeter\"}",
            0.0,
        ),
    ] {
        assert_eq!(value(&m, series), want, "{series}:\n{m}");
    }
    // The activation, and maybe the autoscaler's own decision while the replica started.
    let ups = value(
        &m,
        "gateway_autoscaler_decisions_total{function_name=\"greeter\",direction=\"up\"}",
    );
    assert!(ups >= 1.0, "{m}");
    assert!(
        !m.contains("secret") && !m.contains(r.header("x-call-id").unwrap_or("?")),
        "no paths or call ids in labels:\n{m}"
    );

    // The access log has the call, without its query.
    let call_id = r.header("x-call-id").expect("x-call-id");
    let line = access_line(&p.data_dir, call_id);
    assert_eq!(line["function"], "greeter", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/function/greeter/sub/path", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["request_bytes"], 5, "{line}");
    assert_eq!(line["response_bytes"], 11, "{line}");
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    assert_eq!(line["cold_start"], true, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{line}"
    );
    let time = line["time"].as_str().unwrap_or("");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{line}");
    // A warm call is not cold.
    let r = p.http("POST", "/function/greeter", &[], b"again");
    let warm = access_line(&p.data_dir, r.header("x-call-id").expect("x-call-id"));
    assert_eq!(warm["cold_start"], false, "{warm}");

    // Every metric the dashboard queries is one the gateway exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/skyfri.json"),
        )
        .expect("deploy/grafana/skyfri.json"),
    )
    .expect("the dashboard is JSON");
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 15, "{used:?}");
    let exported: BTreeSet<String> = skyfri_gateway::metrics::series_names(&scrape(&p))
        .into_iter()
        .collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the gateway does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn an_oom_kill_is_counted() {
    let p = Platform::start();
    let info = p.admin("GET", "/system/info", "").json();
    if info["provider"]["runtime"]["isolation"]["enforced"]["memory"] != true {
        eprintln!("SKIPPED: this host cannot enforce memory limits: {info}");
        return;
    }
    deploy(&p);
    let r = p.http("POST", "/function/hog", &[], b"hog");
    assert_eq!(r.status, 502, "{}", r.text());
    wait_metric(
        &p,
        "gateway_function_oom_kills_total{function_name=\"hog\"}",
        1.0,
        Duration::from_secs(10),
    );
    let m = scrape(&p);
    assert_eq!(
        value(
            &m,
            "gateway_function_invocation_total{function_name=\"hog\",code=\"502\"}"
        ),
        1.0,
        "{m}"
    );
}

/// Lines `chatty N` that `skyfri logs chatty ARGS` prints, as numbers.
fn chatty_lines(p: &Platform, args: &[&str]) -> Vec<u32> {
    let mut all = vec!["logs", "chatty"];
    all.extend_from_slice(args);
    let out = p.cli(&all, "");
    assert!(out.ok, "{}", out.stderr);
    out.stdout
        .lines()
        .filter_map(|l| l.rsplit_once("chatty ").and_then(|(_, n)| n.parse().ok()))
        .collect()
}

#[test]
fn logs_rotate_within_their_cap_and_stay_readable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let p = Platform::start_in(&dir, &["--log-max-bytes", "2048", "--log-files", "3"]);
    deploy(&p);
    // 300 lines of ~130 bytes of JSON each: many times the cap of 3 x 2 KiB.
    let r = p.http("POST", "/function/chatty", &[], b"1 300");
    assert_eq!((r.status, r.text().as_str()), (200, "printed"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = chatty_lines(&p, &[]);
        if lines.last() == Some(&300) || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The newest lines, in order, from more than one file (one holds ~15).
    assert_eq!(lines.last(), Some(&300), "{lines:?}");
    assert!(lines.len() > 20, "{lines:?}");
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
    let tail = chatty_lines(&p, &["--tail", "4"]);
    assert_eq!(tail, [297, 298, 299, 300]);

    // On disk: at most 3 files of at most 2 KiB.
    let files: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .expect("logs dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("chatty.jsonl"))
        .map(|e| e.metadata().expect("metadata").len())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|&size| size <= 2048), "{files:?}");

    // Still there once the function is at zero.
    let out = p.cli(&["scale", "chatty", "--replicas", "0"], "");
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(chatty_lines(&p, &["--tail", "1"]), [300]);

    // The access log rotates the same way.
    for _ in 0..40 {
        assert_eq!(p.http("GET", "/function/greeter", &[], b"").status, 200);
    }
    let last = p.http("GET", "/function/greeter", &[], b"");
    access_line(&dir, last.header("x-call-id").expect("x-call-id"));
    let access: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .expect("logs dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("access.log"))
        .map(|e| e.metadata().expect("metadata").len())
        .collect();
    assert_eq!(access.len(), 3, "{access:?}");
    assert!(access.iter().all(|&size| size <= 2048), "{access:?}");
}

#[test]
fn logs_of_one_replica() {
    let p = Platform::start();
    deploy(&p);
    let out = p.cli(&["scale", "chatty", "--replicas", "2"], "");
    assert!(out.ok, "{}", out.stderr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.admin("GET", "/system/function/chatty", "").json()["availableReplicas"] != 2 {
        assert!(Instant::now() < deadline, "no second replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sequential calls take turns on the two replicas.
    for n in 1..=6 {
        let body = format!("{n} {n}");
        assert_eq!(
            p.http("POST", "/function/chatty", &[], body.as_bytes())
                .status,
            200
        );
    }
    let out = p.cli(&["logs", "chatty"], "");
    assert!(out.ok, "{}", out.stderr);
    let instances: BTreeSet<String> = out
        .stdout
        .lines()
        .filter(|l| l.contains("chatty 0"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    assert_eq!(instances.len(), 2, "{}", out.stdout);
    let one = instances.iter().next().expect("an instance");
    let out = p.cli(&["logs", "chatty", "--instance", one], "");
    assert!(out.ok, "{}", out.stderr);
    let mine: Vec<_> = out
        .stdout
        .lines()
        .filter(|l| l.contains("chatty 0"))
        .collect();
    assert!(!mine.is_empty() && mine.len() < 6, "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .all(|l| l.split_whitespace().nth(1) == Some(one.as_str())),
        "{}",
        out.stdout
    );
    let out = p.cli(&["logs", "chatty", "--instance", "Not/One"], "");
    assert!(
        !out.ok && out.stderr.contains("--instance"),
        "{}",
        out.stderr
    );
}

#[test]
fn logs_follow_prints_the_tail_then_new_lines() {
    let p = Platform::start();
    deploy(&p);
    let r = p.http("POST", "/function/chatty", &[], b"1 5");
    assert_eq!((r.status, r.text().as_str()), (200, "printed"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while chatty_lines(&p, &[]).last() != Some(&5) {
        assert!(Instant::now() < deadline, "lines 1-5 not logged");
        std::thread::sleep(Duration::from_millis(100));
    }

    let tail = p.cli(&["logs", "chatty", "--tail", "2"], "");
    assert!(tail.ok, "{}", tail.stderr);
    assert!(tail.stdout.ends_with("chatty 000005\n"), "{}", tail.stdout);

    let (_follow, lines) = p.cli_running(&["logs", "chatty", "--follow", "--tail", "2"]);
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from skyfri logs --follow")
    };
    let first_two = format!("{}\n{}\n", next(), next());
    assert_eq!(first_two, tail.stdout);
    // Lines printed from now on come as they are written, of every call.
    for n in 6..=7 {
        let body = format!("{n} {n}");
        let r = p.http("POST", "/function/chatty", &[], body.as_bytes());
        assert_eq!(r.status, 200);
        let wanted = format!("chatty {n:06}");
        while !next().ends_with(&wanted) {}
    }
}
