//! Isolation end to end through the real binary: the isolation report, a memory limit that
//! kills only the offender, admission by requests.memory, and secrets read inside a function.

mod common;

use common::{fixtures, Platform};

fn deploy_isolation_stack(p: &Platform) {
    p.deploy_stack("isolation");
}

/// The isolation this host gives, as /system/info reports it; `None` (with a loud message)
/// where the kernel has no sandbox or limits. The machines this runs on have both.
fn isolated(p: &Platform) -> Option<serde_json::Value> {
    let info = p.admin("GET", "/system/info", "").json();
    let isolation = info["provider"]["runtime"]["isolation"].clone();
    assert!(
        isolation.is_object(),
        "no isolation in /system/info: {info}"
    );
    let complete = isolation["namespaces"] == true
        && ["memory", "cpu", "pids"]
            .iter()
            .all(|c| isolation["enforced"][c] == true);
    if complete {
        Some(isolation)
    } else {
        eprintln!("SKIPPED: this host cannot isolate replicas: {isolation}");
        None
    }
}

#[test]
fn memory_limit_gives_a_clear_502_and_spares_the_others() {
    let p = Platform::start();
    assert!(
        p.logs().contains("isolation: namespaces"),
        "skyfri up does not say what isolation it has: {}",
        p.logs()
    );
    let Some(_) = isolated(&p) else {
        return;
    };
    let out = p.cli(&["secret", "create", "api-key", "--from-literal", "k1"], "");
    assert!(out.ok, "{}", out.stderr);
    deploy_isolation_stack(&p);

    let r = p.http("POST", "/function/hog", &[], b"hog");
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["source"], "function", "{v}");
    let msg = v["error"].as_str().unwrap_or("");
    assert!(
        msg.contains("exceeded its memory limit of 64Mi"),
        "502 does not say why: {msg}"
    );
    // Every other function keeps serving meanwhile.
    let r = p.http("POST", "/function/bystander", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "still here"));
    // The log says it too.
    let mut logged = false;
    for _ in 0..50 {
        let out = p.cli(&["logs", "hog"], "");
        if out.stdout.contains("exceeded its memory limit of 64Mi") {
            logged = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(logged, "the log does not show the OOM kill");
    // The next call is served by a fresh replica (the gateway waits for it).
    let r = p.http("POST", "/function/hog", &[], b"small");
    assert_eq!((r.status, r.text().as_str()), (200, "fine"));
}

#[test]
fn admission_refuses_what_the_node_cannot_hold() {
    let p = Platform::start();
    let out = p.cli_in(
        &fixtures().join("isolation"),
        &["deploy", "-f", "greedy.yml"],
        "",
    );
    assert!(!out.ok, "a 100000Gi request was accepted");
    assert!(
        out.stderr.contains("greedy") && out.stderr.contains("requests.memory"),
        "{}",
        out.stderr
    );
    let list = p.admin("GET", "/system/functions", "").json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

#[test]
fn secrets_reach_only_the_functions_that_declare_them() {
    let p = Platform::start();
    let Some(_) = isolated(&p) else {
        return;
    };
    let value = "s3cr3t-v1-7f3a";
    let out = p.cli(
        &["secret", "create", "api-key", "--from-literal", value],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli(&["secret", "create", "other-key"], "not-for-you-9c2e");
    assert!(out.ok, "{}", out.stderr);
    deploy_isolation_stack(&p);

    let r = p.http("POST", "/function/secret-reader", &[], b"api-key");
    assert_eq!((r.status, r.text().as_str()), (200, value));
    let r = p.http("POST", "/function/secret-reader", &[], b"other-key");
    assert!(r.text().starts_with("unreadable"), "{}", r.text());
    let r = p.http("POST", "/function/bystander", &[], b"");
    assert_eq!(r.status, 200);

    // Never in the API, the logs, or any process's command line or environment.
    let listed = p.admin("GET", "/system/secrets", "").text();
    assert!(
        listed.contains("api-key") && !listed.contains(value),
        "{listed}"
    );
    let described = p.cli(&["describe", "secret-reader", "--json"], "").stdout;
    assert!(!described.contains(value), "{described}");
    assert!(!p.logs().contains(value));
    assert!(!p.cli(&["logs", "secret-reader"], "").stdout.contains(value));
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(entry.path().join(file)) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(value),
                    "the secret is in {}/{file}",
                    entry.path().display()
                );
            }
        }
    }

    // Update, redeploy: the function sees the new value.
    let out = p.cli(&["secret", "update", "api-key", "--from-literal", "v2"], "");
    assert!(out.ok, "{}", out.stderr);
    deploy_isolation_stack(&p);
    let r = p.http("POST", "/function/secret-reader", &[], b"api-key");
    assert_eq!(r.text(), "v2");

    // A secret in use can be removed; a function naming a missing one cannot be deployed.
    let out = p.cli(&["secret", "rm", "api-key"], "");
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli_in(
        &fixtures().join("isolation"),
        &["deploy", "-f", "stack.yml", "--filter", "secret-reader"],
        "",
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("api-key"), "{}", out.stderr);
}
