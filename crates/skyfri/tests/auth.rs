//! Auth and audit end to end through the real binary: basic auth and scoped API tokens on
//! `/system`, private functions, tokens shown once and stored hashed, and the audit log of
//! who did what from where.

mod common;

use base64::Engine;
use common::{Platform, Response};

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `skyfri token create NAME ARGS...` as the admin; returns the token it printed.
fn create_token(p: &Platform, name: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "create", name];
    all.extend_from_slice(args);
    let out = p.cli(&all, "");
    assert!(out.ok, "token create {name}: {}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert!(
        token.starts_with("sky_") && !token.contains('\n'),
        "stdout is the token alone: {:?}",
        out.stdout
    );
    token
}

fn get_as(p: &Platform, auth: &str, path: &str) -> Response {
    p.http("GET", path, &[("Authorization", auth)], b"")
}

fn assert_forbidden(r: &Response, needed: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["needed"], needed, "{}", r.text());
}

fn assert_unauthorized(r: &Response) {
    assert_eq!(r.status, 401, "{}", r.text());
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic"))
            && challenges.iter().any(|c| c.starts_with("Bearer")),
        "401 without both challenges: {challenges:?}"
    );
}

/// What the whoami fixture saw in `Authorization`.
fn seen_authorization(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["authorization"].clone()
}

#[test]
fn auth_matrix_private_functions_and_audit() {
    let p = Platform::start();

    // No credentials, a wrong password, a made-up token: 401 with both challenges.
    assert_unauthorized(&p.http("GET", "/system/functions", &[], b""));
    assert_unauthorized(&get_as(&p, &basic("admin:wrong"), "/system/functions"));
    assert_unauthorized(&get_as(&p, &bearer("sky_madeup"), "/system/info"));
    assert_eq!(p.admin("GET", "/system/functions", "").status, 200);

    let reader = create_token(&p, "reader", &["--scope", "read"]);
    let ci = create_token(&p, "ci", &["--scope", "deploy", "--expires", "30d"]);
    let root = create_token(&p, "root", &["--scope", "admin"]);
    let caller = create_token(&p, "caller", &["--function", "private-echo"]);
    let elsewhere = create_token(&p, "elsewhere", &["--scope", "invoke:public-echo"]);
    let all_tokens = [&reader, &ci, &root, &caller, &elsewhere];

    // read: GET yes, deploy and secrets no (403 naming the scope).
    assert_eq!(
        get_as(&p, &bearer(&reader), "/system/functions").status,
        200
    );
    let deploy_body = br#"{"service": "x", "image": "skyfri-tests/whoami:latest"}"#;
    assert_forbidden(
        &p.http(
            "POST",
            "/system/functions",
            &[("Authorization", &bearer(&reader))],
            deploy_body,
        ),
        "deploy",
    );
    assert_forbidden(&get_as(&p, &bearer(&reader), "/system/tokens"), "admin");
    assert_forbidden(&get_as(&p, &bearer(&reader), "/system/audit"), "admin");

    // deploy: the CLI deploys and scales with the token, but may not create secrets.
    let out = p.cli_with_token(&ci, &["deploy", "-f", "auth/stack.yml"], "");
    assert!(out.ok, "deploy with a deploy token: {}", out.stderr);
    let out = p.cli_with_token(&ci, &["scale", "public-echo", "--replicas", "2"], "");
    assert!(out.ok, "scale with a deploy token: {}", out.stderr);
    let out = p.cli_with_token(&ci, &["secret", "create", "db", "--from-literal", "v"], "");
    assert!(!out.ok, "a deploy token created a secret");
    assert!(
        out.stderr.contains("403") && out.stderr.contains("needs scope admin"),
        "{}",
        out.stderr
    );
    let out = p.cli_with_token(&ci, &["token", "ls"], "");
    assert!(!out.ok, "a deploy token listed tokens");

    // admin token: secrets and tokens.
    let out = p.cli_with_token(
        &root,
        &["secret", "create", "db", "--from-literal", "v"],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli_with_token(&root, &["token", "ls"], "");
    assert!(out.ok, "{}", out.stderr);

    // A bad access mode is refused at deploy, naming the annotation.
    let bad = r#"{"service": "bad-auth", "image": "skyfri-tests/whoami:latest",
                  "annotations": {"com.skyfri.auth": "basic"}}"#;
    let r = p.admin("POST", "/system/functions", bad);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("com.skyfri.auth"), "{}", r.text());

    // The private function: no token 401, a token without the right 403, with it 200, and
    // the function never sees the credentials.
    assert_unauthorized(&p.http("POST", "/function/private-echo", &[], b"hi"));
    assert_unauthorized(&p.http("POST", "/async-function/private-echo", &[], b"hi"));
    for (token, what) in [
        (&reader, "read"),
        (&ci, "deploy"),
        (&elsewhere, "another function's"),
    ] {
        let r = p.http(
            "POST",
            "/function/private-echo",
            &[("Authorization", &bearer(token))],
            b"hi",
        );
        assert_eq!(r.status, 403, "a {what} token: {}", r.text());
        assert_eq!(r.json()["needed"], "invoke:private-echo");
    }
    for auth in [
        bearer(&caller),
        bearer(&root),
        basic(&format!("admin:{}", common::PASSWORD)),
    ] {
        let r = p.http(
            "POST",
            "/function/private-echo",
            &[("Authorization", &auth)],
            b"hi",
        );
        assert_eq!(seen_authorization(&r), serde_json::Value::Null, "{auth}");
        assert_eq!(r.json()["body"], "hi");
    }
    let r = p.http(
        "POST",
        "/async-function/private-echo",
        &[("Authorization", &bearer(&caller))],
        b"hi",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let out = p.cli_with_token(&caller, &["invoke", "private-echo"], "from the cli");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("from the cli"), "{}", out.stdout);

    // The public function stays open; a skyfri token is not passed on, other credentials are.
    let r = p.http("POST", "/function/public-echo", &[], b"hi");
    assert_eq!(seen_authorization(&r), serde_json::Value::Null);
    let r = p.http(
        "POST",
        "/function/public-echo",
        &[("Authorization", &bearer(&caller))],
        b"hi",
    );
    assert_eq!(seen_authorization(&r), serde_json::Value::Null);
    let r = p.http(
        "POST",
        "/function/public-echo",
        &[("Authorization", "Bearer the-functions-own")],
        b"hi",
    );
    assert_eq!(seen_authorization(&r), "Bearer the-functions-own");

    // ls shows names, scopes and use, never a token.
    let out = p.cli(&["token", "ls"], "");
    assert!(out.ok, "{}", out.stderr);
    for name in ["reader", "ci", "root", "caller", "elsewhere"] {
        assert!(out.stdout.contains(name), "{}", out.stdout);
    }
    assert!(out.stdout.contains("invoke:private-echo"), "{}", out.stdout);
    let json = p.cli(&["token", "ls", "--json"], "");
    assert!(json.ok, "{}", json.stderr);
    for t in all_tokens {
        assert!(!out.stdout.contains(t.as_str()), "token ls shows a token");
        assert!(
            !json.stdout.contains(t.as_str()),
            "token ls --json shows a token"
        );
    }
    let listed: serde_json::Value = serde_json::from_str(&json.stdout).expect("ls --json");
    let ci_row = listed
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "ci"))
        .cloned()
        .expect("ci listed");
    assert!(ci_row["lastUsed"].is_string(), "{ci_row}");
    assert!(ci_row["expiresAt"].is_string(), "{ci_row}");

    // The deploy token removes what it deployed; a revoked token is refused at once.
    let out = p.cli_with_token(&ci, &["rm", "public-echo"], "");
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli(&["token", "revoke", "reader"], "");
    assert!(out.ok, "{}", out.stderr);
    assert_unauthorized(&get_as(&p, &bearer(&reader), "/system/functions"));
    let out = p.cli(&["token", "revoke", "reader"], "");
    assert!(
        !out.ok && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );

    // The audit log: who, what, from where, and the outcome.
    let out = p.cli(&["audit", "--since", "1h", "--json"], "");
    assert!(out.ok, "{}", out.stderr);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("audit json");
    let find = |action: &str, who: &str, target: &str| {
        entries.iter().find(|e| {
            e["action"] == action
                && e["who"] == who
                && e["target"].as_str().is_some_and(|t| t.starts_with(target))
        })
    };
    for (action, who, target) in [
        ("function.deploy", "token:ci", "private-echo"),
        ("function.deploy", "token:ci", "public-echo"),
        ("function.scale", "token:ci", "public-echo replicas=2"),
        ("function.remove", "token:ci", "public-echo"),
        ("secret.create", "token:root", "db"),
        ("token.create", "admin", "ci"),
        ("token.revoke", "admin", "reader"),
        ("login.failure", "basic:admin", "GET /system/functions"),
        ("login.failure", "token", "GET /system/info"),
        ("access.denied", "token:ci", "POST /system/secrets"),
    ] {
        let e = find(action, who, target)
            .unwrap_or_else(|| panic!("no {action} by {who} on {target}: {}", out.stdout));
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(e["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    assert!(
        find("function.deploy", "token:ci", "private-echo").is_some_and(|e| e["outcome"] == "ok")
    );
    let failed = entries.iter().any(|e| {
        e["action"] == "token.revoke"
            && e["target"] == "reader"
            && e["outcome"].as_str().is_some_and(|o| o.starts_with("404"))
    });
    assert!(
        failed,
        "the second revoke is recorded as failed: {}",
        out.stdout
    );
    let denied = find("access.denied", "token:ci", "POST /system/secrets").expect("denied");
    assert!(
        denied["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("admin")),
        "{denied}"
    );
    let table = p.cli(&["audit"], "");
    assert!(
        table.ok && table.stdout.contains("login.failure"),
        "{}",
        table.stdout
    );

    // Nothing on disk holds a token in the clear.
    let mut on_disk = Vec::new();
    for f in ["skyfri.db", "skyfri.db-wal"] {
        if let Ok(bytes) = std::fs::read(p.data_dir.join(f)) {
            on_disk.extend(bytes);
        }
    }
    assert!(!on_disk.is_empty(), "no database found");
    for t in all_tokens {
        assert!(
            !on_disk.windows(t.len()).any(|w| w == t.as_bytes()),
            "a token is stored in the clear"
        );
    }
    let logs = p.logs();
    for t in all_tokens {
        assert!(
            !logs.contains(t.as_str()),
            "a token is in the gateway's logs"
        );
    }
}
