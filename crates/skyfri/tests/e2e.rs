//! End-to-end: the real binary, real replicas, real HTTP.

mod common;

use common::{fixtures, Platform};

fn deploy_fixtures(p: &Platform) {
    p.deploy_stack("functions");
}

#[test]
fn templates_answer_through_the_gateway() {
    let p = Platform::start();
    deploy_fixtures(&p);

    // python3 (the vipps-processor example, unchanged).
    let r = p.http(
        "POST",
        "/function/vipps-processor",
        &[],
        br#"{"transaction_id":"T1"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["processed"], "T1");
    assert!(
        v["node"]
            .as_str()
            .is_some_and(|n| n.starts_with("vipps-processor-")),
        "{v}"
    );
    assert!(r.header("x-call-id").is_some());
    assert!(r.header("x-duration-seconds").is_some());
    assert!(r.header("x-start-time").is_some());
    let r = p.http("POST", "/function/vipps-processor", &[], b"{}");
    assert_eq!(r.json()["status"], "error");

    // node18 (the payment-processor example, unchanged).
    let r = p.http(
        "POST",
        "/function/payment-processor",
        &[("Content-Type", "application/json")],
        br#"{"order_id":"A1","amount":5}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["receipt"], "r-A1");
    assert_eq!(r.json()["amount"], 5);
    let r = p.http(
        "POST",
        "/function/payment-processor",
        &[("Content-Type", "application/json")],
        br#"{"amount":5}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // python3-http: method, path, query, headers, body and status pass through.
    let r = p.http(
        "PUT",
        "/function/echo-http/a/b?x=1",
        &[("X-Test", "yes")],
        b"payload",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-greeting"), Some("hello"));
    let v = r.json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["x"], "1");
    assert_eq!(v["body"], "payload");
    assert_eq!(v["header"], "yes");

    // exec: the classic watchdog, fprocess per request.
    let r = p.http("POST", "/function/word-count", &[], b"one two three");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "3");

    // http: the user's own server on $PORT.
    let r = p.http("DELETE", "/function/web-server/items/7?q=z", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["method"], "DELETE");
    assert_eq!(r.json()["path"], "/items/7?q=z");

    // CLI invoke with stdin, headers and query.
    let out = p.cli(
        &["invoke", "echo-http", "-H", "X-Test=cli", "--query", "k=v"],
        "from-stdin",
    );
    assert!(out.ok, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["body"], "from-stdin");
    assert_eq!(v["header"], "cli");
    assert_eq!(v["query"]["k"], "v");

    // ls / describe, text and JSON.
    let out = p.cli(&["ls", "--json"], "");
    assert!(out.ok, "{}", out.stderr);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(6), "{list}");
    let out = p.cli(&["describe", "payment-processor", "--json"], "");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["labels"]["com.openfaas.scale.max"], "20");
    assert_eq!(v["availableReplicas"], 1);
    assert!(v["invocationCount"].as_f64().unwrap_or(0.0) >= 2.0, "{v}");
    let out = p.cli(&["ls"], "");
    assert!(out.stdout.contains("vipps-processor"), "{}", out.stdout);

    // Metrics with OpenFaaS names.
    let m = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        m.contains(
            "gateway_function_invocation_total{function_name=\"vipps-processor\",code=\"200\"}"
        ),
        "{m}"
    );
    assert!(m.contains("gateway_functions_seconds"), "{m}");
    assert!(m.contains("gateway_service_count"), "{m}");

    // Logs of what the handler printed.
    let r = p.http("POST", "/function/crasher", &[], b"hello-logs");
    assert_eq!(r.text(), "alive");
    let mut found = false;
    for _ in 0..50 {
        let out = p.cli(&["logs", "crasher", "--tail", "5"], "");
        if out.stdout.contains("crasher got hello-logs") {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(found, "log line not found");
}

#[test]
fn errors_are_clear_json_with_the_right_code() {
    let p = Platform::start();
    deploy_fixtures(&p);

    let r = p.http("GET", "/function/nope", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("nope"));

    // The replica dies mid-call: 502, and it is restarted.
    let r = p.http("POST", "/function/crasher", &[], b"crash");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["source"], "function");
    let r = p.http("POST", "/function/crasher", &[], b"again");
    assert_eq!(r.status, 200, "replica not restarted: {}", r.text());

    // A handler exception is the function's 500.
    let r = p.http("POST", "/function/crasher", &[], b"raise");
    assert_eq!(r.status, 500, "{}", r.text());

    // Exec timeout (2s from exec_timeout): 504 naming the limit.
    let r = p.http("POST", "/function/crasher", &[], b"hang");
    assert_eq!(r.status, 504, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("2s") && msg.contains("timeout"), "{msg}");

    // Body over the limit: 413.
    let big = vec![b'x'; 50 * 1024 * 1024 + 1];
    let r = p.http("POST", "/function/vipps-processor", &[], &big);
    assert_eq!(r.status, 413, "{}", r.text());

    // /system needs auth; /function does not.
    assert_eq!(p.http("GET", "/system/functions", &[], b"").status, 401);
    assert_eq!(p.admin("GET", "/system/functions", "").status, 200);
    assert_eq!(p.http("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn bad_files_fail_before_anything_is_deployed() {
    let p = Platform::start();
    let bad = fixtures().join("bad");
    let cases = [
        ("unknown-key.yml", "lables"),
        ("bad-memory.yml", "128Mbb"),
        ("bad-name.yml", "Vipps_Processor"),
        ("missing-handler.yml", "no-such-folder"),
        ("malformed.yml", "malformed.yml:"),
    ];
    for (file, needle) in cases {
        let out = p.cli_in(&bad, &["deploy", "-f", file], "");
        assert!(!out.ok, "{file} was accepted");
        assert!(
            out.stderr.contains(file),
            "{file}: no file name in {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "{file}: {needle:?} not in {}",
            out.stderr
        );
    }
    for (file, needle) in [("unknown-key.yml", ":10:5"), ("bad-memory.yml", ":11:7")] {
        let out = p.cli_in(&bad, &["deploy", "-f", file], "");
        assert!(
            out.stderr.contains(needle),
            "{file}: no line {needle} in {}",
            out.stderr
        );
    }
    // A Knative Service naming an image that was never built.
    let out = p.cli_in(&bad, &["deploy", "-f", "knative-unbuilt.yaml"], "");
    assert!(!out.ok);
    assert!(
        out.stderr.contains("never-built") && out.stderr.contains("skyfri build"),
        "{}",
        out.stderr
    );

    let list = p.admin("GET", "/system/functions", "").json();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "something was deployed: {list}"
    );
}

#[test]
fn knative_update_remove_scale_and_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let stack = fixtures().join("functions/stack.yml");
    let p = Platform::start_in(&data, &["-f", stack.to_str().expect("utf8")]);
    let r = p.http(
        "POST",
        "/function/vipps-processor",
        &[],
        br#"{"transaction_id":"U"}"#,
    );
    assert_eq!(
        r.json()["processed"],
        "U",
        "up -f did not deploy: {}",
        p.logs()
    );

    // A Knative Service running the artefact built for vipps-processor.
    let out = p.cli(&["deploy", "-f", "knative-service.yaml"], "");
    assert!(out.ok, "{}", out.stderr);
    let r = p.http(
        "POST",
        "/function/image-processor",
        &[],
        br#"{"transaction_id":"K"}"#,
    );
    assert_eq!(r.json()["processed"], "K");
    let d = p
        .admin("GET", "/system/function/image-processor", "")
        .json();
    assert_eq!(d["annotations"]["autoscaling.knative.dev/target"], "10");
    assert_eq!(d["limits"]["memory"], (512u64 << 20).to_string());
    assert_eq!(d["envVars"]["STORAGE_BACKEND"], "local-nvme");

    // Scale to 2: two replicas, each its own HOSTNAME.
    let out = p.cli(&["scale", "vipps-processor", "--replicas", "2"], "");
    assert!(out.ok, "{}", out.stderr);
    let mut hosts = std::collections::BTreeSet::new();
    // The second replica starts in the background; a loaded machine may take a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let r = p.http(
            "POST",
            "/function/vipps-processor",
            &[],
            br#"{"transaction_id":"S"}"#,
        );
        hosts.insert(r.json()["node"].as_str().unwrap_or("").to_string());
        if hosts.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(hosts.len(), 2, "{hosts:?}");

    // Remove.
    let out = p.cli(&["rm", "image-processor"], "");
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        p.http("POST", "/function/image-processor", &[], b"{}")
            .status,
        404
    );
    let out = p.cli(&["rm", "image-processor"], "");
    assert!(!out.ok);

    // Restart on the same data dir: every function comes back, same password.
    p.stop();
    let p = Platform::start_in(&data, &[]);
    let r = p.http(
        "POST",
        "/function/vipps-processor",
        &[],
        br#"{"transaction_id":"R"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["processed"], "R");
    let r = p.http("POST", "/function/word-count", &[], b"a b");
    assert_eq!(r.text().trim(), "2");
    let d = p
        .admin("GET", "/system/function/vipps-processor", "")
        .json();
    assert_eq!(d["replicas"], 2);
    assert_eq!(
        p.http("POST", "/function/image-processor", &[], b"{}")
            .status,
        404
    );
}
