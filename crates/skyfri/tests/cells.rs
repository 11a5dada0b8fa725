//! Stem cells end to end through the real binary: a function at zero is served by a
//! pre-started interpreter specialised into its replica, with the function's environment,
//! artefact (read-only, nothing else), limits and log, exactly as a replica started from
//! scratch would have them.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Platform};

/// Idle cells per interpreter from /system/info; `None` where this host cannot have them.
fn idle_cells(p: &Platform) -> Option<serde_json::Value> {
    let info = p.admin("GET", "/system/info", "").json();
    let cells = info["provider"]["runtime"]["stemCells"].clone();
    cells.is_object().then_some(cells)
}

fn wait_for_cells(p: &Platform) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(cells) = idle_cells(p) else {
            eprintln!(
                "SKIPPED: no stem cells on this host (they need root and the sandbox): {}",
                p.logs()
            );
            return false;
        };
        if cells["python"].as_u64() >= Some(1) && cells["node"].as_u64() >= Some(1) {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "the stem-cell pool did not fill: {cells}\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn functions_at_zero_start_from_stem_cells_with_their_own_environment() {
    let p = Platform::start();
    if !wait_for_cells(&p) {
        return;
    }
    let out = p.cli_in(
        &fixtures().join("cells"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "deploy failed: {}\n{}", out.stderr, out.stdout);

    // Python: the cell became the function's replica.
    let r = p.http("POST", "/function/inspector", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    assert_eq!(r.header("x-skyfri-cold-start"), Some("true"));
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap_or_default();
    let hostname = v["hostname"].as_str().unwrap_or("");
    assert!(hostname.starts_with("inspector-"), "{v}");
    assert_eq!(v["uname"], hostname, "the kernel's hostname too: {v}");
    assert_eq!(v["greeting"], "hej", "the function's environment: {v}");
    assert_eq!(
        v["cell"],
        serde_json::Value::Null,
        "cell variables left: {v}"
    );
    assert_eq!(v["cwd"], "/home/app/function", "{v}");
    assert_eq!(
        v["app"],
        serde_json::json!(["function", "skyfri_shim.py"]),
        "its own artefact and nothing else: {v}"
    );
    assert_eq!(v["run"], serde_json::json!(["sock"]), "{v}");
    assert_eq!(v["uid"], 65534, "{v}");
    assert_eq!(v["write_app"], "OSError", "the artefact is read-only: {v}");
    assert_eq!(v["write_tmp"], "yes", "{v}");
    assert_eq!(
        v["policies"],
        serde_json::json!([0]),
        "the cell booted in SCHED_IDLE; its replica runs in SCHED_OTHER: {v}"
    );

    // Its output reaches the function's log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = p.cli(&["logs", "inspector"], "").stdout;
        if logs.contains(&format!("inspected by {hostname}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no handler output in the log: {logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The function's memory limit holds for a replica made from a cell.
    let r = p.http("POST", "/function/inspector", &[], b"hog");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("exceeded its memory limit of 64Mi"),
        "{}",
        r.text()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = p.http("POST", "/function/inspector", &[], b"");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica after the OOM kill: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let info = p.admin("GET", "/system/info", "").json();
    assert!(
        info["provider"]["runtime"]["stemCellsUsed"].as_u64() >= Some(1),
        "the replica did not come from a stem cell: {info}\n{}",
        p.logs()
    );

    // Node, the same way.
    let r = p.http("POST", "/function/greeter", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.logs());
    assert_eq!(r.header("x-skyfri-cold-start"), Some("true"));
    let text = r.text();
    assert!(
        text.starts_with("greeter-") && text.ends_with(" in /home/app/function"),
        "{text}"
    );
    let info = p.admin("GET", "/system/info", "").json();
    assert!(
        info["provider"]["runtime"]["stemCellsUsed"].as_u64() >= Some(2),
        "the node replica did not come from a stem cell: {info}\n{}",
        p.logs()
    );
}

#[test]
fn a_handler_that_cannot_load_fails_its_deploy_even_at_zero() {
    let p = Platform::start();
    let out = p.cli_in(
        &fixtures().join("cells"),
        &["deploy", "-f", "broken.yml"],
        "",
    );
    assert!(!out.ok, "a broken handler deployed: {}", out.stdout);
    assert!(
        out.stderr.contains("no_such_module_anywhere"),
        "the deploy error does not show the import error: {}",
        out.stderr
    );
    let r = p.admin("GET", "/system/function/broken", "");
    assert_eq!(r.status, 404, "half-deployed: {}", r.text());
}
