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

/// skyfri with the secret and the `dashboard` fixture's functions (public and private).
fn start() -> Platform {
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
    p
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

    let p = start();

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

/// The session cookie `Set-Cookie` gave, as a `Cookie` header value.
fn session_cookie(r: &common::Response) -> String {
    let set = r.header("set-cookie").expect("Set-Cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui"),
        "{set}"
    );
    set.split(';').next().expect("name=value").to_string()
}

/// Logs in with `body`; the session's cookie and CSRF token.
fn login(p: &Platform, body: &str) -> (String, String) {
    let r = p.http(
        "POST",
        "/ui/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let csrf = r.json()["csrf"].as_str().expect("csrf").to_string();
    (session_cookie(&r), csrf)
}

#[test]
fn a_token_session_has_the_tokens_scopes_and_ends_with_it() {
    let p = start();
    let out = p.cli(&["token", "create", "viewer", "--scope", "read"], "");
    assert!(out.ok, "token create: {}", out.stderr);
    let token = out.stdout.trim().to_string();
    let json = [("Content-Type", "application/json")];

    // Not JSON, or from another site: refused before any credential is looked at.
    let r = p.http("POST", "/ui/login", &[], b"{}");
    assert_eq!(r.status, 415, "{}", r.text());
    let from_elsewhere = [
        ("Content-Type", "application/json"),
        ("Origin", "http://evil.example"),
    ];
    let body = format!(r#"{{"token":"{token}"}}"#);
    let r = p.http("POST", "/ui/login", &from_elsewhere, body.as_bytes());
    assert_eq!(r.status, 403, "{}", r.text());

    let r = p.http("POST", "/ui/login", &json, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = session_cookie(&r);
    let info = r.json();
    assert_eq!(info["who"], "token:viewer");
    assert_eq!(info["scopes"], serde_json::json!(["read"]));
    let csrf = info["csrf"].as_str().expect("csrf").to_string();
    let with = [
        ("Cookie", cookie.as_str()),
        ("X-Skyfri-Csrf", csrf.as_str()),
    ];

    // The cookie alone, or with a wrong CSRF token, authorises nothing.
    let r = p.http(
        "GET",
        "/ui/api/system/functions",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let wrong = [("Cookie", cookie.as_str()), ("X-Skyfri-Csrf", "nope")];
    let r = p.http("GET", "/ui/api/system/functions", &wrong, b"");
    assert_eq!(r.status, 403, "{}", r.text());
    // Nor does it open /system itself.
    let r = p.http("GET", "/system/functions", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // With both: what the token's read scope allows, and no more.
    let r = p.http("GET", "/ui/api/system/functions", &with, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = p.http("GET", "/ui/api/system/stats", &with, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = p.http("GET", "/ui/api/system/audit", &with, b"");
    assert_eq!(r.status, 403, "audit needs admin: {}", r.text());
    let r = p.http("DELETE", "/ui/api/system/async/calls/some-id", &with, b"");
    assert_eq!(r.status, 403, "cancel needs admin: {}", r.text());

    // The invoke form: a private function needs invoke rights, which a read token lacks
    // and the admin has; the answer comes back whole, as JSON.
    let form =
        br#"{"method":"POST","path":"/","headers":[["Content-Type","text/plain"]],"body":"form"}"#;
    let r = p.http("POST", "/ui/api/invoke/dash-private", &with, form);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], 403, "{}", r.text());
    let r = p.http("POST", "/function/dash-private", &[], b"direct");
    assert_eq!(r.status, 401, "private without credentials: {}", r.text());
    let (admin_cookie, admin_csrf) = login(&p, &format!(r#"{{"password":"{PASSWORD}"}}"#));
    let admin = [
        ("Cookie", admin_cookie.as_str()),
        ("X-Skyfri-Csrf", admin_csrf.as_str()),
    ];
    let r = p.http("POST", "/ui/api/invoke/dash-private", &admin, form);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(
        answer["body"], "Hello from the dashboard, form!",
        "{answer}"
    );
    assert!(
        answer["durationMs"].as_f64().is_some_and(|d| d > 0.0),
        "{answer}"
    );
    let r = p.http(
        "POST",
        "/ui/api/invoke/dash-private",
        &admin,
        br#"{"method":"BAD METHOD"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // JSON answers go gzipped to a browser that takes it (the charts' numbers, mostly).
    let gzip = [
        ("Cookie", admin_cookie.as_str()),
        ("X-Skyfri-Csrf", admin_csrf.as_str()),
        ("Accept-Encoding", "gzip, deflate"),
    ];
    let r = p.http("GET", "/ui/api/system/stats", &gzip, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut unpacked = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&r.body[..]),
        &mut unpacked,
    )
    .expect("gzip");
    let stats: serde_json::Value = serde_json::from_str(&unpacked).expect("JSON");
    let private = stats["functions"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "dash-private"))
        .expect("dash-private in the stats");
    assert_eq!(
        private["total"]["calls"], 1,
        "the admin's call from the form (refused calls never reach the function): {private}"
    );
    // The usage panel's figures are `skyfri cost`'s.
    let r = p.http("GET", "/ui/api/system/cost", &admin, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pricesFrom"], "defaults", "{}", r.text());

    // Revoking the token ends the session at once.
    let out = p.cli(&["token", "revoke", "viewer"], "");
    assert!(out.ok, "revoke: {}", out.stderr);
    let r = p.http("GET", "/ui/api/system/functions", &with, b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = p.http("GET", "/ui/session", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // Guessing: a few attempts, then 429 with Retry-After (whatever the password).
    let guess = br#"{"password":"guess"}"#;
    let mut answers = Vec::new();
    for _ in 0..12 {
        let r = p.http("POST", "/ui/login", &json, guess);
        answers.push(r.status);
        if r.status == 429 {
            let wait = r.header("retry-after").and_then(|v| v.parse::<u64>().ok());
            assert!(wait.is_some_and(|w| w >= 1), "{:?}", r.headers);
            break;
        }
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    assert!(
        answers[..answers.len() - 1].iter().all(|&s| s == 401),
        "{answers:?}"
    );
}
