//! Upgrades keep the data dir: a store written by the releases before the schema was
//! versioned (no `user_version`) opens with this binary, is migrated, and its function comes
//! back. The old databases are made here from the SQL those releases ran, kept verbatim
//! below: never derive them from the current schema, or the test proves nothing.

mod common;

use std::path::Path;

use common::{fixtures, Platform};

/// The first releases: functions and the image names of built artefacts.
const FIRST_LAYOUT: &str = "
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    deployment TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    artefact TEXT NOT NULL,
    template TEXT NOT NULL
);
";

/// The release just before versioning added encrypted secrets.
const SECRETS_LAYOUT: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS secret_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
";

/// A function record as those releases wrote it (`ARTEFACT` is filled in).
const DEPLOYMENT: &str = r#"{"spec":{"name":"legacy","namespace":"openfaas-fn","image":"skyfri-tests/backup-slow:latest","env_process":null,"env_vars":{},"labels":{},"annotations":{},"secrets":[],"constraints":[],"limits":{"memory":null,"cpu_millis":null},"requests":{"memory":null,"cpu_millis":null},"read_only_root_filesystem":false,"timeout_secs":60,"concurrency":0},"artefact":"ARTEFACT","template":"python3-http","replicas":1}"#;

/// Replaces the store in `data` by one in an old layout holding the function `legacy`.
fn write_old_store(data: &Path, layout: &str, artefact: &str) {
    for f in ["skyfri.db", "skyfri.db-wal", "skyfri.db-shm", "secret.key"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let conn = rusqlite::Connection::open(data.join("skyfri.db")).expect("create old store");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL, as those releases set it");
    conn.execute_batch(layout).expect("old layout");
    conn.execute(
        "INSERT INTO functions VALUES ('legacy', ?1, '2026-10-01T12:00:00+00:00')",
        [DEPLOYMENT.replace("ARTEFACT", artefact)],
    )
    .expect("old function row");
    conn.execute(
        "INSERT INTO images VALUES ('skyfri-tests/backup-slow:latest', ?1, 'python3-http')",
        [artefact],
    )
    .expect("old image row");
}

fn user_version(data: &Path) -> u32 {
    rusqlite::Connection::open(data.join("skyfri.db"))
        .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
        .expect("read user_version")
}

#[test]
fn a_store_from_before_schema_versions_is_migrated_and_its_functions_come_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // A build with this binary, for an artefact the old record can name.
    let p = Platform::start_in(&data, &[]);
    let out = p.cli_in(
        &fixtures().join("backup"),
        &["build", "-f", "stack.yml", "--filter", "slow"],
        "",
    );
    assert!(out.ok, "build: {}\n{}", out.stderr, out.stdout);
    p.stop();
    let artefact: String = rusqlite::Connection::open(data.join("skyfri.db"))
        .and_then(|c| {
            c.query_row(
                "SELECT artefact FROM images WHERE name = 'skyfri-tests/backup-slow:latest'",
                [],
                |r| r.get(0),
            )
        })
        .expect("the built artefact");

    for layout in [
        FIRST_LAYOUT.to_string(),
        format!("{FIRST_LAYOUT}{SECRETS_LAYOUT}"),
    ] {
        write_old_store(&data, &layout, &artefact);
        assert_eq!(user_version(&data), 0);
        let p = Platform::start_in(&data, &[]);
        assert!(p.logs().contains("restored 1 function(s)"), "{}", p.logs());
        let r = p.http("POST", "/function/legacy", &[], b"0");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "slept 0"),
            "{}",
            p.logs()
        );
        let r = p.admin("GET", "/system/function/legacy", "");
        assert_eq!(
            r.json()["createdAt"],
            "2026-10-01T12:00:00+00:00",
            "{}",
            r.text()
        );
        // The migrated store takes the newer features: a secret can be stored.
        let out = p.cli(
            &["secret", "create", "after-upgrade", "--from-literal", "x"],
            "",
        );
        assert!(out.ok, "{}", out.stderr);
        p.stop();
        assert_eq!(user_version(&data), skyfri_store::SCHEMA_VERSION);
    }
}
