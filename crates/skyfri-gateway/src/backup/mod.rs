//! Backups of a data dir, taken while skyfri runs, and their restore onto a fresh data dir.
//!
//! # The archive
//!
//! A gzip-compressed tar whose first entry is [`MANIFEST`] (a JSON [`Manifest`]: versions,
//! when, counts, what it holds), followed by the data dir's state with paths relative to it:
//!
//! - every SQLite database at the top of the data dir (`skyfri.db`: functions, images,
//!   encrypted secrets and whatever tables later versions add; `queue.db`: the embedded async
//!   queue), each as a consistent snapshot made with `VACUUM INTO` on a connection of its
//!   own, so writers are not held up and committed transactions are all in or all out. Their
//!   `-wal`, `-shm` and `-journal` files are not copied: the snapshot holds what they held.
//!   Each database is consistent in itself; two databases are snapshotted one after the
//!   other, not at one instant (an async call accepted in between is in the queue snapshot
//!   even if its function was deployed too late for the store's).
//! - `secret.key` and `admin-password`: whoever holds the archive can read every secret and
//!   administer the platform, so the archive is written mode 0600 and must be kept like the
//!   key itself.
//! - `artefacts/`: content-addressed and never modified once built, so a plain copy is
//!   consistent; the store is snapshotted first, so every artefact it names is there.
//!   Unfinished builds (`.staging-*`) and the packages kept for reuse (`.deps`, already inside
//!   each artefact that uses them) are left out.
//! - everything else in the data dir (`logs/`, files later versions add), except `run/`
//!   (sockets and mounts of running replicas) and `tmp/` (uploads in progress). Files are
//!   copied at the length they had when reached; sockets, fifos and devices are skipped, and
//!   so are links that would point outside the data dir (listed in `skipped`).
//!
//! Restoring is offline (`skyfri restore`), into an empty data dir, and treats the archive as
//! untrusted input: see `restore`.

mod create;
mod paths;
mod restore;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use create::Snapshot;
pub use restore::{inspect, restore};

/// The manifest's name in the archive: always its first entry.
pub const MANIFEST: &str = "skyfri-backup.json";
/// The archive format this code writes; restore refuses a newer one.
pub const FORMAT: u32 = 1;
/// The store database, whose schema version decides whether this skyfri can restore it.
pub const STORE_DB: &str = "skyfri.db";
/// The embedded queue's database.
pub const QUEUE_DB: &str = "queue.db";
/// Files that hold the keys to everything else.
pub const SECRET_KEY: &str = "secret.key";
/// Top-level folders that only hold what running processes use.
const NOT_STATE: [&str; 2] = ["run", "tmp"];

/// What a backup holds, as its first entry says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub skyfri_version: String,
    /// `PRAGMA user_version` of the backed-up `skyfri.db`.
    pub store_schema: u32,
    pub created_at: DateTime<Utc>,
    /// The queue backend of the platform backed up; only `embedded` calls are in the archive.
    pub queue: String,
    pub functions: u64,
    pub secrets: u64,
    /// Async calls that had still to run (queued, retrying or running); `None` when the
    /// calls lived outside the data dir (JetStream).
    pub queued_calls: Option<u64>,
    /// Built artefacts (folders under `artefacts/`).
    pub artefacts: u64,
    /// Per top-level entry of the data dir.
    pub contents: Vec<Content>,
    /// Bytes of all files, uncompressed.
    pub bytes: u64,
    /// What was in the data dir but is not in the archive, and why.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub path: String,
    /// `sqlite` (a snapshot), `file` or `dir`.
    pub kind: String,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The archive is not a backup this skyfri can restore, or has an entry it refuses.
    #[error("{0}")]
    Invalid(String),
    /// The restore target is not fit (not empty, not a folder).
    #[error("{0}")]
    Refused(String),
}

impl BackupError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}

impl From<BackupError> for crate::GatewayError {
    fn from(e: BackupError) -> crate::GatewayError {
        crate::GatewayError::internal(format!("backup: {e}"))
    }
}
