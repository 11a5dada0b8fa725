//! The dashboard in a real browser: starts skyfri with a deployed function and a secret,
//! then runs `tests/browser/dashboard.mjs` (headless Debian Chromium driven by
//! playwright-core): a wrong password is refused, the admin logs in, sees the function,
//! invokes it from the form and sees its answer, sees its logs (and the live tail), sees
//! the secret's name and not its value, and logs out; and `tests/browser/attack.mjs`: a
//! function's page on the gateway's port, opened by a logged-in admin, can neither read the
//! dashboard's session nor act through its API nor plant its cookie. The dashboard has a
//! listener of its own; the gateway's answers `/ui` with a 404 naming it. Needs
//! `scripts/setup.sh --tests` (chromium from apt, playwright-core from npm); without them
//! the browser tests fail, saying so.

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

/// Runs `tests/browser/SCRIPT` in node against `p` (gateway and dashboard URLs, the
/// password, and `env`); fails unless it prints "PREFIX: all checks passed".
fn run_browser(p: &Platform, script: &str, env: &[(&str, &str)]) {
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let run = Command::new("node")
        .arg(&path)
        .current_dir(fixtures())
        .env("SKYFRI_URL", p.url())
        .env("SKYFRI_UI_URL", p.ui_url())
        .env("SKYFRI_PASSWORD", PASSWORD)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().copied())
        .output()
        .expect("run node (scripts/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Chromium's complaints about the missing D-Bus are noise here.
    let stderr: Vec<&str> = stderr.lines().filter(|l| !l.contains("dbus")).collect();
    println!("{stdout}");
    let prefix = script.trim_end_matches(".mjs");
    assert!(
        run.status.success() && stdout.contains(&format!("{prefix}: all checks passed")),
        "the browser test {script} failed:\n{stdout}\n{}",
        stderr.join("\n")
    );
}

#[test]
fn the_dashboard_logs_in_lists_invokes_and_shows_logs_and_secret_names() {
    let p = start();
    run_browser(
        &p,
        "dashboard.mjs",
        &[
            ("FUNCTION", "dash-greeter"),
            ("SECRET_NAME", SECRET_NAME),
            ("SECRET_VALUE", SECRET_VALUE),
        ],
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
    let r = p.ui_http(
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
    let r = p.ui_http("POST", "/ui/login", &[], b"{}");
    assert_eq!(r.status, 415, "{}", r.text());
    let from_elsewhere = [
        ("Content-Type", "application/json"),
        ("Origin", "http://evil.example"),
    ];
    let body = format!(r#"{{"token":"{token}"}}"#);
    let r = p.ui_http("POST", "/ui/login", &from_elsewhere, body.as_bytes());
    assert_eq!(r.status, 403, "{}", r.text());

    let r = p.ui_http("POST", "/ui/login", &json, body.as_bytes());
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
    let r = p.ui_http(
        "GET",
        "/ui/api/system/functions",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let wrong = [("Cookie", cookie.as_str()), ("X-Skyfri-Csrf", "nope")];
    let r = p.ui_http("GET", "/ui/api/system/functions", &wrong, b"");
    assert_eq!(r.status, 403, "{}", r.text());
    // Nor does it open /system itself.
    let r = p.http("GET", "/system/functions", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // With both: what the token's read scope allows, and no more.
    let r = p.ui_http("GET", "/ui/api/system/functions", &with, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = p.ui_http("GET", "/ui/api/system/stats", &with, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = p.ui_http("GET", "/ui/api/system/audit", &with, b"");
    assert_eq!(r.status, 403, "audit needs admin: {}", r.text());
    let r = p.ui_http("DELETE", "/ui/api/system/async/calls/some-id", &with, b"");
    assert_eq!(r.status, 403, "cancel needs admin: {}", r.text());

    // The invoke form: a private function needs invoke rights, which a read token lacks
    // and the admin has; the answer comes back whole, as JSON.
    let form =
        br#"{"method":"POST","path":"/","headers":[["Content-Type","text/plain"]],"body":"form"}"#;
    let r = p.ui_http("POST", "/ui/api/invoke/dash-private", &with, form);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], 403, "{}", r.text());
    let r = p.http("POST", "/function/dash-private", &[], b"direct");
    assert_eq!(r.status, 401, "private without credentials: {}", r.text());
    let (admin_cookie, admin_csrf) = login(&p, &format!(r#"{{"password":"{PASSWORD}"}}"#));
    let admin = [
        ("Cookie", admin_cookie.as_str()),
        ("X-Skyfri-Csrf", admin_csrf.as_str()),
    ];
    let r = p.ui_http("POST", "/ui/api/invoke/dash-private", &admin, form);
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
    let r = p.ui_http(
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
    let r = p.ui_http("GET", "/ui/api/system/stats", &gzip, b"");
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
    let r = p.ui_http("GET", "/ui/api/system/cost", &admin, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pricesFrom"], "defaults", "{}", r.text());

    // Revoking the token ends the session at once.
    let out = p.cli(&["token", "revoke", "viewer"], "");
    assert!(out.ok, "revoke: {}", out.stderr);
    let r = p.ui_http("GET", "/ui/api/system/functions", &with, b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = p.ui_http("GET", "/ui/session", &[("Cookie", &cookie)], b"");
    assert_eq!(r.status, 401, "{}", r.text());

    // Guessing: a few attempts, then 429 with Retry-After (whatever the password).
    let guess = br#"{"password":"guess"}"#;
    let mut answers = Vec::new();
    for _ in 0..12 {
        let r = p.ui_http("POST", "/ui/login", &json, guess);
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

#[test]
fn a_functions_page_cannot_act_on_the_dashboard() {
    let p = start();
    run_browser(&p, "attack.mjs", &[]);
    let tokens = p.admin("GET", "/system/tokens", "").json();
    assert_eq!(tokens, serde_json::json!([]), "no token was created");
}

#[test]
fn the_dashboard_is_on_its_own_port_and_refuses_other_origins() {
    let p = start();
    // The gateway's port: a 404 naming the dashboard's, for every dashboard path.
    let ui_port = p.ui().rsplit(':').next().expect("port").to_string();
    for path in ["/ui", "/ui/", "/ui/session", "/ui/api/system/functions"] {
        let r = p.http("GET", path, &[], b"");
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        let message = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains(&format!("its own port, {ui_port}: http://{}/ui", p.ui())),
            "{path}: {message}"
        );
    }
    let r = p.http(
        "POST",
        "/ui/login",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // The dashboard's port serves the dashboard only.
    let r = p.ui_http("POST", "/function/dash-greeter", &[], b"x");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("gateway's port"), "{}", r.text());
    let r = p.ui_http("GET", "/ui", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );

    // A function cannot set the session cookie: Set-Cookie of skyfri_session is dropped.
    let r = p.http("GET", "/function/dash-attack/plant", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "planted");
    assert!(
        !r.headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.contains("skyfri_session")),
        "{:?}",
        r.headers
    );

    // With the admin's cookie and CSRF token, but from the gateway's origin (a function's
    // page): refused, and nothing created. Reading needs no Origin check (no CORS).
    let (cookie, csrf) = login(&p, &format!(r#"{{"password":"{PASSWORD}"}}"#));
    let gateway_origin = p.url();
    let body = br#"{"name":"from-a-function","scopes":["admin"]}"#;
    for origin in [gateway_origin.as_str(), "null"] {
        let from = [
            ("Cookie", cookie.as_str()),
            ("X-Skyfri-Csrf", csrf.as_str()),
            ("Content-Type", "application/json"),
            ("Origin", origin),
        ];
        let r = p.ui_http("POST", "/ui/api/system/tokens", &from, body);
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
        assert!(r.text().contains("may not change anything"), "{}", r.text());
        let r = p.ui_http("POST", "/ui/logout", &from, b"");
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
    }
    let same_site = [
        ("Cookie", cookie.as_str()),
        ("X-Skyfri-Csrf", csrf.as_str()),
        ("Sec-Fetch-Site", "same-site"),
    ];
    let r = p.ui_http("POST", "/ui/api/system/tokens", &same_site, body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        p.admin("GET", "/system/tokens", "").json(),
        serde_json::json!([])
    );
    // From the dashboard's own origin it works.
    let own_origin = p.ui_url();
    let own = [
        ("Cookie", cookie.as_str()),
        ("X-Skyfri-Csrf", csrf.as_str()),
        ("Content-Type", "application/json"),
        ("Origin", own_origin.as_str()),
    ];
    let r = p.ui_http("POST", "/ui/api/system/tokens", &own, body);
    assert_eq!(r.status, 201, "{}", r.text());

    // The invoke form cannot say where the call came from.
    let form = br#"{"method":"POST","headers":[["X-Forwarded-For","203.0.113.9"]],"body":"x"}"#;
    let r = p.ui_http("POST", "/ui/api/invoke/dash-greeter", &own, form);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("X-Forwarded-For"), "{}", r.text());
}
