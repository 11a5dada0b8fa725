//! skyfri-store: the embedded durable store (SQLite in WAL mode). Owns what must survive a
//! restart: deployed functions, the image names that point at built artefacts, secrets
//! (encrypted, see `secrets`), API tokens (hashed, see `tokens`), the audit log and metered
//! usage per function and month. The database and the secret key are readable by their owner
//! only.

mod audit;
mod schema;
mod secrets;
mod tokens;

pub use audit::{AuditEntry, NewAuditEntry};
pub use schema::SCHEMA_VERSION;
pub use tokens::{TokenRecord, TokenSecret};

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use skyfri_core::usage::{Month, Usage};
use skyfri_core::{Deployment, Template};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: corrupt record for {name}: {source}")]
    Corrupt {
        name: String,
        source: serde_json::Error,
    },
    #[error("store: the database has schema version {found}, written by a newer skyfri (this one knows up to {supported}); run that version or restore a backup")]
    NewerSchema { found: u32, supported: u32 },
    #[error("store: lock poisoned")]
    Poisoned,
    #[error("store: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: the secret key {path} {reason}")]
    SecretKey { path: PathBuf, reason: String },
    #[error("store: secret {name:?} cannot be decrypted: its stored record was altered or copied from another secret; set it again with `skyfri secret update {name}`")]
    SecretAltered { name: String },
    #[error("store: the SigV4 secret of token {name:?} cannot be decrypted: its stored record was altered; revoke the token and create a new one")]
    TokenAltered { name: String },
    #[error("store: {0}")]
    InvalidName(String),
    #[error("store: cannot encrypt a secret value")]
    Seal,
    #[error("store: no randomness from the OS: {0}")]
    Random(String),
}

/// A deployed function as stored.
#[derive(Debug, Clone)]
pub struct StoredFunction {
    pub deployment: Deployment,
    pub created_at: DateTime<Utc>,
}

/// An image name registered by a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub artefact: String,
    pub template: Template,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Callers waiting for `conn` now (counted only when they have to wait).
    waiting: AtomicUsize,
    secret_key: secrets::SecretKey,
}

/// The store's lock, held by [`Store::hold`]: every other use of the store waits until it is
/// dropped.
pub struct Hold<'a> {
    _conn: MutexGuard<'a, Connection>,
}

impl Store {
    /// Opens (or creates) the database at `path`. The secret key is `secret.key` beside it,
    /// made at the first open.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // SQLite gives the -wal and -shm files the database file's mode.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = OsString::from(path);
            p.push(suffix);
            restrict(Path::new(&p))?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut conn)?;
        let secret_key = secrets::SecretKey::open(&conn, &path.with_file_name(secrets::KEY_FILE))?;
        Ok(Store {
            conn: Mutex::new(conn),
            waiting: AtomicUsize::new(0),
            secret_key,
        })
    }

    /// Every method takes the one connection's lock, and may so wait behind a long write
    /// (an fsync, a big transaction): call them off async workers.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.lock()?;
        f(&conn)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        match self.conn.try_lock() {
            Ok(conn) => Ok(conn),
            Err(TryLockError::Poisoned(_)) => Err(StoreError::Poisoned),
            Err(TryLockError::WouldBlock) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let conn = self.conn.lock();
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                conn.map_err(|_| StoreError::Poisoned)
            }
        }
    }

    /// Takes the store's lock until the [`Hold`] is dropped, as a long write would: for tests
    /// of what must not wait for the store.
    pub fn hold(&self) -> Result<Hold<'_>, StoreError> {
        self.lock().map(|conn| Hold { _conn: conn })
    }

    /// How many callers wait for the store's lock now (for tests and diagnostics).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Inserts or replaces a function; keeps its original creation time.
    pub fn put_function(&self, d: &Deployment) -> Result<(), StoreError> {
        let json = serde_json::to_string(d).map_err(|source| StoreError::Corrupt {
            name: d.spec.name.clone(),
            source,
        })?;
        self.with(|c| {
            c.execute(
                "INSERT INTO functions (name, deployment, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET deployment = excluded.deployment",
                params![d.spec.name, json, Utc::now().to_rfc3339()],
            )?;
            Ok(())
        })
    }

    pub fn get_function(&self, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        let row = self.with(|c| {
            Ok(c.query_row(
                "SELECT name, deployment, created_at FROM functions WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })?;
        row.map(decode).transpose()
    }

    pub fn list_functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let rows: Vec<(String, String, String)> = self.with(|c| {
            let mut stmt =
                c.prepare("SELECT name, deployment, created_at FROM functions ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(decode).collect()
    }

    /// Removes a function; false if there was none.
    pub fn remove_function(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM functions WHERE name = ?1", [name])? > 0))
    }

    pub fn put_image(&self, image: &Image) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO images (name, artefact, template) VALUES (?1, ?2, ?3)",
                params![image.name, image.artefact, image.template.name()],
            )?;
            Ok(())
        })
    }

    pub fn get_image(&self, name: &str) -> Result<Option<Image>, StoreError> {
        let row: Option<(String, String, String)> = self.with(|c| {
            Ok(c.query_row(
                "SELECT name, artefact, template FROM images WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
        })?;
        Ok(row.and_then(|(name, artefact, template)| {
            Template::ALL
                .into_iter()
                .find(|t| t.name() == template)
                .map(|template| Image {
                    name,
                    artefact,
                    template,
                })
        }))
    }
}

/// Metered usage.
impl Store {
    /// Adds `rows` (function, month, usage) to the stored totals, in one transaction: all of
    /// them count or none does.
    pub fn add_usage(&self, rows: &[(String, Month, Usage)]) -> Result<(), StoreError> {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO usage (function, month, invocations, duration_ms, mib_ms, cpu_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(function, month) DO UPDATE SET
                        invocations = invocations + excluded.invocations,
                        duration_ms = duration_ms + excluded.duration_ms,
                        mib_ms = mib_ms + excluded.mib_ms,
                        cpu_us = cpu_us + excluded.cpu_us",
                )?;
                for (function, month, u) in rows {
                    stmt.execute(params![
                        function,
                        month.to_string(),
                        int(u.invocations),
                        int(u.duration_ms),
                        int(u.mib_ms),
                        int(u.cpu_us)
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Every function's usage in `month`, by name.
    pub fn usage(&self, month: Month) -> Result<Vec<(String, Usage)>, StoreError> {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT function, invocations, duration_ms, mib_ms, cpu_us FROM usage
                 WHERE month = ?1 ORDER BY function",
            )?;
            let rows = stmt
                .query_map([month.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Usage {
                            invocations: count(r.get(1)?),
                            duration_ms: count(r.get(2)?),
                            mib_ms: count(r.get(3)?),
                            cpu_us: count(r.get(4)?),
                        },
                    ))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }
}

/// Makes an existing file readable and writable by its owner only.
fn restrict(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// A time as stored: RFC3339 UTC with milliseconds, so that text order is time order.
pub(crate) fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn decode((name, json, created): (String, String, String)) -> Result<StoredFunction, StoreError> {
    let deployment =
        serde_json::from_str(&json).map_err(|source| StoreError::Corrupt { name, source })?;
    let created_at = DateTime::parse_from_rfc3339(&created)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    Ok(StoredFunction {
        deployment,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyfri_core::FunctionSpec;

    #[test]
    fn functions_and_images_survive_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
        let path = dir.path().join("skyfri.db");
        let d = Deployment {
            spec: FunctionSpec::new("echo", "echo:latest"),
            artefact: "sha256:00".into(),
            template: Template::Python3,
            replicas: 1,
        };
        {
            let s = Store::open(&path)?;
            s.put_function(&d)?;
            s.put_image(&Image {
                name: "echo:latest".into(),
                artefact: "sha256:00".into(),
                template: Template::Node,
            })?;
        }
        let s = Store::open(&path)?;
        let fns = s.list_functions()?;
        assert_eq!(fns.len(), 1);
        assert_eq!(fns[0].deployment, d);
        assert_eq!(
            s.get_image("echo:latest")?.map(|i| i.template),
            Some(Template::Node)
        );
        assert!(s.remove_function("echo")?);
        assert!(!s.remove_function("echo")?);
        assert!(s.get_function("echo")?.is_none());
        Ok(())
    }

    #[test]
    fn tokens_are_created_once_listed_touched_and_revoked() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
        let s = Store::open(&dir.path().join("skyfri.db"))?;
        let now = Utc::now();
        let t = TokenRecord {
            name: "ci".into(),
            hash: [7; 32],
            scopes: vec!["deploy".into(), "invoke:f".into()],
            created_at: now,
            expires_at: Some(now + chrono::Duration::days(30)),
            last_used: None,
            sigv4: false,
        };
        assert!(s.create_token(&t, None)?);
        assert!(
            !s.create_token(&t, None)?,
            "a second token with the same name"
        );
        let bad = TokenRecord {
            name: "../x".into(),
            ..t.clone()
        };
        assert!(s.create_token(&bad, None).is_err());
        let later = now + chrono::Duration::minutes(5);
        s.touch_token("ci", later)?;
        s.touch_token("ci", now)?;
        let listed = s.list_tokens()?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].scopes, t.scopes);
        assert_eq!(listed[0].hash, t.hash);
        assert_eq!(
            listed[0].last_used.map(time_text),
            Some(time_text(later)),
            "last use never goes back"
        );
        assert!(s.revoke_token("ci")?);
        assert!(!s.revoke_token("ci")?);
        assert!(s.get_token("ci")?.is_none());
        Ok(())
    }

    #[test]
    fn audit_lists_the_latest_since_oldest_first() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
        let s = Store::open(&dir.path().join("skyfri.db"))?;
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(s.append_audit(&NewAuditEntry {
                at: t0 + chrono::Duration::minutes(30 * i),
                who: "admin".into(),
                action: "function.deploy".into(),
                target: format!("f{i}"),
                client: "127.0.0.1".into(),
                outcome: "ok".into(),
            })?);
        }
        s.set_audit_count(ids[4], 9)?;
        let all = s.list_audit(None, 100)?;
        let targets: Vec<&str> = all.iter().map(|e| e.entry.target.as_str()).collect();
        assert_eq!(targets, ["f0", "f1", "f2", "f3", "f4"]);
        assert_eq!(all[4].count, 9);
        let recent = s.list_audit(Some(t0 + chrono::Duration::minutes(60)), 100)?;
        assert_eq!(recent.len(), 3);
        let last_two = s.list_audit(None, 2)?;
        let targets: Vec<&str> = last_two.iter().map(|e| e.entry.target.as_str()).collect();
        assert_eq!(targets, ["f3", "f4"]);
        Ok(())
    }

    fn month(s: &str) -> Month {
        s.parse().expect("a month")
    }

    #[test]
    fn usage_adds_up_per_function_and_month_and_survives_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|_| StoreError::Poisoned)?;
        let path = dir.path().join("skyfri.db");
        let (nov, dec) = (month("2026-11"), month("2026-12"));
        let call = |ms| Usage::call(128, ms);
        {
            let s = Store::open(&path)?;
            assert!(s.usage(dec)?.is_empty());
            s.add_usage(&[
                ("echo".into(), dec, call(10)),
                ("echo".into(), nov, call(7)),
                ("resize".into(), dec, call(3)),
            ])?;
            // A second flush adds to the first; CPU arrives on its own.
            s.add_usage(&[
                ("echo".into(), dec, call(5)),
                (
                    "echo".into(),
                    dec,
                    Usage {
                        cpu_us: 1_500,
                        ..Usage::default()
                    },
                ),
            ])?;
            s.add_usage(&[])?;
        }
        let s = Store::open(&path)?;
        let want_echo = Usage {
            invocations: 2,
            duration_ms: 15,
            mib_ms: 128 * 15,
            cpu_us: 1_500,
        };
        assert_eq!(
            s.usage(dec)?,
            vec![("echo".into(), want_echo), ("resize".into(), call(3))]
        );
        assert_eq!(s.usage(nov)?, vec![("echo".into(), call(7))]);
        assert!(s.usage(month("2027-01"))?.is_empty());
        Ok(())
    }
}
