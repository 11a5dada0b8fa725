//! The store's schema and its migrations.
//!
//! `PRAGMA user_version` holds how many migrations a database has had. `migrate` applies the
//! missing ones in order, each in its own transaction, so a database written by any earlier
//! skyfri opens with a newer one, and one written by a newer skyfri is refused instead of
//! being misread. Migrations are append-only: never edit one that has shipped; add the next.
//!
//! Migration 1 is the layout of the first releases, which did not set `user_version`; its
//! statements use `IF NOT EXISTS` so those databases (at version 0, with the tables present)
//! take it as a no-op.

use rusqlite::Connection;

use crate::StoreError;

/// Every migration, in order. The database's `user_version` is the count applied.
const MIGRATIONS: &[&str] = &[
    // 1: functions, image names, encrypted secrets and the key check.
    "
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
",
    // 2: API tokens (SHA-256 of the token, never the token) and the audit log.
    "
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    last_used TEXT
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    client TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX audit_at ON audit (at);
",
    // 3: metered usage per function and month (see skyfri_core::usage).
    "
CREATE TABLE usage (
    function TEXT NOT NULL,
    month TEXT NOT NULL,
    invocations INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    mib_ms INTEGER NOT NULL,
    cpu_us INTEGER NOT NULL,
    PRIMARY KEY (function, month)
) WITHOUT ROWID;
",
    // 4: a token's SigV4 signing secret (the token itself, for AWS SDK callers of the Lambda
    // Invoke API), sealed under secret.key like secrets; NULL for tokens without one.
    "
ALTER TABLE tokens ADD COLUMN sigv4_nonce BLOB;
ALTER TABLE tokens ADD COLUMN sigv4_secret BLOB;
",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database up to `SCHEMA_VERSION`.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_from_before_versioning_is_taken_as_is() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        // The first releases' layout, without user_version.
        conn.execute_batch(MIGRATIONS[0])?;
        conn.execute(
            "INSERT INTO functions VALUES ('hello', '{}', '2026-11-01T00:00:00Z')",
            [],
        )?;
        migrate(&mut conn)?;
        let v: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v, SCHEMA_VERSION);
        let n: u32 = conn.query_row("SELECT count(*) FROM functions", [], |r| r.get(0))?;
        assert_eq!(n, 1, "rows written before versioning are kept");
        Ok(())
    }

    #[test]
    fn a_newer_database_is_refused() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
        match migrate(&mut conn) {
            Err(err) => assert!(err.to_string().contains("newer skyfri"), "{err}"),
            Ok(()) => panic!("a database from a newer skyfri was opened"),
        }
        Ok(())
    }

    #[test]
    fn migrating_twice_changes_nothing() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        migrate(&mut conn)?;
        let v: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v, SCHEMA_VERSION);
        Ok(())
    }
}
