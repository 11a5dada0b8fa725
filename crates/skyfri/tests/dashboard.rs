//! The dashboard in a real browser: starts skyfri with a deployed function and a secret,
//! then runs `tests/browser/dashboard.mjs` (headless Debian Chromium driven by
//! playwright-core): a wrong password is refused, the admin logs in, sees the function,
//! invokes it from the form and sees its answer, sees its logs (and the live tail), sees
//! the secret's name and not its value, and logs out. Needs `scripts/setup.sh --tests`
//! (chromium from apt, playwright-core from npm); without them this test fails, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, Platform, PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET_NAME: &str = "dash-api-key";
const SECRET_VALUE: &str = "dashboard-secret-value-5e1f07";

/// Where `scripts/setup.sh --tests` puts playwright-core.
fn playwright_core() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join("skyfri/node-tools/node_modules/playwright-core")
}

#[test]
fn the_dashboard_logs_in_lists_invokes_and_shows_logs_and_secret_names() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh --tests (it installs Debian's chromium)"
    );
    let playwright = playwright_core();
    assert!(
        playwright.join("package.json").exists(),
        "{} is missing: run scripts/setup.sh --tests (it installs playwright-core from npm)",
        playwright.display()
    );

    let p = Platform::start();
    let out = p.cli(
        &[
            "secret",
            "create",
            SECRET_NAME,
            "--from-literal",
            SECRET_VALUE,
        ],
        "",
    );
    assert!(out.ok, "secret create: {}", out.stderr);
    p.deploy_stack("dashboard");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let run = Command::new("node")
        .arg(&script)
        .current_dir(fixtures())
        .env("SKYFRI_URL", p.url())
        .env("SKYFRI_PASSWORD", PASSWORD)
        .env("FUNCTION", "dash-greeter")
        .env("SECRET_NAME", SECRET_NAME)
        .env("SECRET_VALUE", SECRET_VALUE)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node (scripts/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Chromium's complaints about the missing D-Bus are noise here.
    let stderr: Vec<&str> = stderr.lines().filter(|l| !l.contains("dbus")).collect();
    println!("{stdout}");
    assert!(
        run.status.success() && stdout.contains("dashboard: all checks passed"),
        "the browser test failed:\n{stdout}\n{}",
        stderr.join("\n")
    );

    // What the browser did is on the record: its failed login, then its login.
    let audit = p.admin("GET", "/system/audit?since=1h", "").json();
    let entries = audit.as_array().cloned().unwrap_or_default();
    let has = |action: &str, who: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["who"].as_str().is_some_and(|w| w.starts_with(who)))
    };
    assert!(has("login.failure", "dashboard:admin"), "{audit}");
    assert!(has("dashboard.login", "admin"), "{audit}");
    // The form's call went through the invoke path: counted like any other.
    let stats = p
        .admin("GET", "/system/stats?function=dash-greeter", "")
        .json();
    let calls = stats["functions"][0]["total"]["calls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        calls >= 2,
        "the form's call and the live-tail probe: {stats}"
    );
}
