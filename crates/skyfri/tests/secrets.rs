//! Secrets end to end through the real binary: the CLI writes them, the API lists names
//! only, a deploy naming a missing secret is refused, and no value reaches the disk or the
//! logs in the clear.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{fixtures, Platform};

const LITERAL: &str = "literal-value-7f3a9c";
const FROM_FILE: &str = "file-value-2b8e41";
const FROM_STDIN: &str = "stdin-value-c05d6e";
const UPDATED: &str = "updated-value-91d4ab";
const VALUES: [&str; 4] = [LITERAL, FROM_FILE, FROM_STDIN, UPDATED];

/// No secret value in `text`.
fn assert_no_value(text: &str, what: &str) {
    for v in VALUES {
        assert!(!text.contains(v), "{what} shows the value {v:?}: {text}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_written_listed_and_removed_without_showing_values() {
    let p = Platform::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("db-password");
    std::fs::write(&file, FROM_FILE).expect("write value file");

    // Create: from a literal, a file and stdin.
    let file_arg = file.to_str().expect("utf-8 path");
    for (args, stdin) in [
        (
            vec!["secret", "create", "api-key", "--from-literal", LITERAL],
            String::new(),
        ),
        (
            vec!["secret", "create", "db.password", "--from-file", file_arg],
            String::new(),
        ),
        (vec!["secret", "create", "token"], format!("{FROM_STDIN}\n")),
    ] {
        let out = p.cli(&args, &stdin);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        assert!(out.stdout.contains("created secret"), "{}", out.stdout);
        assert_no_value(&out.stdout, "create");
        assert_no_value(&out.stderr, "create");
    }

    // ls: names only.
    let out = p.cli(&["secret", "ls"], "");
    assert!(out.ok, "{}", out.stderr);
    for name in ["api-key", "db.password", "token"] {
        assert!(
            out.stdout.contains(name),
            "ls misses {name}: {}",
            out.stdout
        );
    }
    assert_no_value(&out.stdout, "ls");
    let out = p.cli(&["secret", "ls", "--json"], "");
    assert!(out.ok, "{}", out.stderr);
    assert_no_value(&out.stdout, "ls --json");

    // The API as OpenFaaS clients see it: names and namespace, never values.
    let r = p.admin("GET", "/system/secrets", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_value(&r.text(), "GET /system/secrets");
    assert_eq!(
        r.json(),
        serde_json::json!([
            {"name": "api-key", "namespace": "openfaas-fn"},
            {"name": "db.password", "namespace": "openfaas-fn"},
            {"name": "token", "namespace": "openfaas-fn"},
        ])
    );
    let r = p.http("GET", "/system/secrets", &[], b"");
    assert_eq!(
        r.status, 401,
        "secrets are listed without the admin password"
    );
    let r = p.admin(
        "POST",
        "/system/secrets",
        r#"{"name": "raw", "rawValue": "AAEC/w=="}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = p.admin(
        "POST",
        "/system/secrets",
        r#"{"name": "../etc", "value": "x"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("DNS-1123")));

    // Create twice: a conflict that says what to do.
    let out = p.cli(&["secret", "create", "api-key", "--from-literal", "x"], "");
    assert!(!out.ok, "second create succeeded");
    assert!(
        out.stderr.contains("already exists")
            && out.stderr.contains("skyfri secret update api-key"),
        "{}",
        out.stderr
    );

    // Update: an existing secret yes, a missing one no.
    let out = p.cli(
        &["secret", "update", "api-key", "--from-literal", UPDATED],
        "",
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("updated secret api-key"),
        "{}",
        out.stdout
    );
    let out = p.cli(&["secret", "update", "nope", "--from-literal", "x"], "");
    assert!(!out.ok, "update of a missing secret succeeded");
    assert!(
        out.stderr.contains("not found") && out.stderr.contains("skyfri secret create nope"),
        "{}",
        out.stderr
    );

    // Remove, and remove again.
    let out = p.cli(&["secret", "rm", "token"], "");
    assert!(out.ok, "{}", out.stderr);
    let out = p.cli(&["secret", "rm", "token"], "");
    assert!(!out.ok, "removing a missing secret succeeded");
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let out = p.cli(&["secret", "ls"], "");
    assert!(!out.stdout.contains("token"), "{}", out.stdout);

    // Nothing in the clear on disk; the database and the key are the owner's alone.
    let mut on_disk = Vec::new();
    for f in ["skyfri.db", "skyfri.db-wal"] {
        let path = p.data_dir.join(f);
        if let Ok(bytes) = std::fs::read(&path) {
            on_disk.extend(bytes);
        }
    }
    assert!(
        !on_disk.is_empty(),
        "no database in {}",
        p.data_dir.display()
    );
    for v in VALUES {
        assert!(!contains(&on_disk, v.as_bytes()), "{v:?} is in skyfri.db");
    }
    assert!(
        contains(&on_disk, b"db.password"),
        "the database does not hold the secrets"
    );
    for f in ["skyfri.db", "secret.key"] {
        let mode = std::fs::metadata(p.data_dir.join(f))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(mode, 0o600, "{f} is readable by others");
    }
    assert_no_value(&p.logs(), "the platform's log");
}

#[test]
fn deploying_with_a_missing_secret_is_refused_before_anything_runs() {
    let p = Platform::start();
    let out = p.cli(
        &["secret", "create", "api-key", "--from-literal", LITERAL],
        "",
    );
    assert!(out.ok, "{}", out.stderr);

    let out = p.cli_in(
        &fixtures().join("secrets"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(
        !out.ok,
        "deploy with a missing secret succeeded: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("\"not-created\"")
            && out.stderr.contains("skyfri secret create not-created"),
        "the error does not name the secret and the fix: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("\"api-key\""),
        "api-key exists: {}",
        out.stderr
    );

    // The same through the API: a caller error in the gateway's JSON shape.
    let r = p.admin(
        "POST",
        "/system/functions",
        r#"{"service": "needs-secrets", "image": "skyfri-tests/needs-secrets:latest", "secrets": ["not-created"]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["source"], "caller");

    let r = p.admin("GET", "/system/functions", "");
    assert_eq!(r.json(), serde_json::json!([]), "something was deployed");
    let r = p.admin("GET", "/system/function/needs-secrets", "");
    assert_eq!(r.status, 404, "{}", r.text());
}
