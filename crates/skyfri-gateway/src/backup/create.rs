//! Taking a backup: snapshot the databases, list the rest, then write the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use flate2::write::GzEncoder;
use flate2::Compression;
use rusqlite::{Connection, OpenFlags};

use super::paths::check_link;
use super::{
    BackupError, Content, Manifest, Skipped, FORMAT, MANIFEST, NOT_STATE, QUEUE_DB, STORE_DB,
};

/// How long a snapshot waits for a lock another connection holds (a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// A SQLite database file starts with these bytes.
pub(super) const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Files SQLite keeps beside a database, whose content a snapshot already holds.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A backup ready to be written: database snapshots in a private staging folder (removed
/// when this is dropped) and the list of everything else to copy.
pub struct Snapshot {
    manifest: Manifest,
    items: Vec<Item>,
    _staging: tempfile::TempDir,
}

enum Item {
    Dir {
        rel: PathBuf,
        mode: u32,
        mtime: u64,
    },
    File {
        rel: PathBuf,
        src: PathBuf,
        mode: u32,
        mtime: u64,
        len: u64,
    },
    Link {
        rel: PathBuf,
        target: PathBuf,
    },
}

impl Item {
    fn rel(&self) -> &Path {
        match self {
            Item::Dir { rel, .. } | Item::File { rel, .. } | Item::Link { rel, .. } => rel,
        }
    }
}

impl Snapshot {
    /// Snapshots the databases of `data_dir` into a folder under `tmp_dir` and lists the rest.
    /// `queue` is the platform's queue backend. Blocking.
    pub fn take(data_dir: &Path, tmp_dir: &Path, queue: &str) -> Result<Snapshot, BackupError> {
        fs::create_dir_all(tmp_dir)
            .map_err(BackupError::io(format!("creating {}", tmp_dir.display())))?;
        let staging = tempfile::Builder::new()
            .prefix("backup-")
            .tempdir_in(tmp_dir)
            .map_err(BackupError::io(format!(
                "creating a staging folder in {}",
                tmp_dir.display()
            )))?;
        // The databases first: every artefact the store names then exists when they are
        // listed, since artefacts are built before they are named and never removed.
        let mut items = Vec::new();
        let mut databases = BTreeSet::new();
        for name in top_level_files(data_dir)? {
            let src = data_dir.join(&name);
            if !is_sqlite(&src)? {
                continue;
            }
            let dest = staging.path().join(&name);
            snapshot(&src, &dest)?;
            let len = fs::metadata(&dest)
                .map_err(BackupError::io(format!("reading {}", dest.display())))?
                .len();
            items.push(Item::File {
                rel: PathBuf::from(&name),
                src: dest,
                mode: 0o600,
                mtime: now_secs(),
                len,
            });
            databases.insert(name);
        }
        let mut skipped = Vec::new();
        list(data_dir, &databases, &mut items, &mut skipped)?;

        let store = staging.path().join(STORE_DB);
        if !databases.contains(&OsString::from(STORE_DB)) {
            return Err(BackupError::Refused(format!(
                "{} has no {STORE_DB}: not a skyfri data dir",
                data_dir.display()
            )));
        }
        let (store_schema, functions, secrets) = store_counts(&store)?;
        let queued_calls = match queue {
            "embedded" if databases.contains(&OsString::from(QUEUE_DB)) => {
                Some(queued_calls(&staging.path().join(QUEUE_DB))?)
            }
            "embedded" => Some(0),
            _ => None,
        };
        let manifest = Manifest {
            format: FORMAT,
            skyfri_version: env!("CARGO_PKG_VERSION").to_string(),
            store_schema,
            created_at: Utc::now(),
            queue: queue.to_string(),
            functions,
            secrets,
            queued_calls,
            artefacts: items
                .iter()
                .filter(|i| matches!(i, Item::Dir { .. }))
                .filter(|i| i.rel().parent() == Some(Path::new("artefacts")))
                .count() as u64,
            contents: contents(&items, &databases),
            bytes: items
                .iter()
                .map(|i| match i {
                    Item::File { len, .. } => *len,
                    _ => 0,
                })
                .sum(),
            skipped,
        };
        Ok(Snapshot {
            manifest,
            items,
            _staging: staging,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Writes the archive (tar.gz) to `out` and returns it. Blocking.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, BackupError> {
        let err = BackupError::io("writing the backup");
        let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
        let manifest = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| BackupError::Invalid(format!("manifest: {e}")))?;
        let mut h = header(tar::EntryType::Regular, 0o600, now_secs());
        h.set_size(manifest.len() as u64);
        tar.append_data(&mut h, MANIFEST, manifest.as_slice())
            .map_err(BackupError::io("writing the backup manifest"))?;
        for item in &self.items {
            let written = match item {
                Item::Dir { rel, mode, mtime } => {
                    let mut h = header(tar::EntryType::Directory, *mode, *mtime);
                    tar.append_data(&mut h, rel, io::empty())
                }
                Item::Link { rel, target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, now_secs());
                    tar.append_link(&mut h, rel, target)
                }
                Item::File {
                    rel,
                    src,
                    mode,
                    mtime,
                    ..
                } => {
                    let file = match File::open(src) {
                        Ok(f) => f,
                        // Gone since it was listed (a rotated log): nothing to keep.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(BackupError::io(format!("reading {}", src.display()))(e))
                        }
                    };
                    let len = file
                        .metadata()
                        .map_err(BackupError::io(format!("reading {}", src.display())))?
                        .len();
                    let mut h = header(tar::EntryType::Regular, *mode, *mtime);
                    h.set_size(len);
                    // Exactly `len` bytes whatever the file does meanwhile: a log that grows
                    // is cut at the length it had, one that shrinks is padded.
                    let body = file.take(len).chain(io::repeat(0)).take(len);
                    tar.append_data(&mut h, rel, body)
                }
            };
            written.map_err(BackupError::io(format!(
                "adding {} to the backup",
                item.rel().display()
            )))?;
        }
        tar.into_inner().and_then(GzEncoder::finish).map_err(err)
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

fn now_secs() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

/// Names of the regular files at the top of the data dir, sorted.
fn top_level_files(data_dir: &Path) -> Result<Vec<OsString>, BackupError> {
    let read = BackupError::io(format!("reading {}", data_dir.display()));
    let mut names = Vec::new();
    for entry in fs::read_dir(data_dir).map_err(read)? {
        let entry = entry.map_err(BackupError::io(format!("reading {}", data_dir.display())))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            names.push(entry.file_name());
        }
    }
    names.sort();
    Ok(names)
}

pub(super) fn is_sqlite(path: &Path) -> Result<bool, BackupError> {
    let mut magic = [0u8; 16];
    let mut file =
        File::open(path).map_err(BackupError::io(format!("reading {}", path.display())))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == SQLITE_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(BackupError::io(format!("reading {}", path.display()))(e)),
    }
}

/// A consistent copy of a live database: `VACUUM INTO` reads it in one read transaction, on
/// a connection of its own, while its writers go on.
fn snapshot(src: &Path, dest: &Path) -> Result<(), BackupError> {
    let sqlite = |source| BackupError::Sqlite {
        path: src.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    let dest_text = dest
        .to_str()
        .ok_or_else(|| BackupError::Refused(format!("{}: not a UTF-8 path", dest.display())))?;
    conn.execute("VACUUM INTO ?1", [dest_text])
        .map_err(sqlite)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o600))
        .map_err(BackupError::io(format!("protecting {}", dest.display())))
}

/// Everything but the databases, `run/`, `tmp/` and unfinished artefacts, in walk order
/// (a folder before what it holds).
fn list(
    data_dir: &Path,
    databases: &BTreeSet<OsString>,
    items: &mut Vec<Item>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), BackupError> {
    let leave_out = |entry: &walkdir::DirEntry| {
        let name = entry.file_name();
        match entry.depth() {
            1 => {
                NOT_STATE.iter().any(|n| name == *n)
                    || name == MANIFEST
                    || databases.contains(name)
                    || databases.iter().any(|db| {
                        SIDECARS.iter().any(|s| {
                            let mut sidecar = db.clone();
                            sidecar.push(s);
                            sidecar == name
                        })
                    })
            }
            2 => {
                entry.path().parent().and_then(Path::file_name) == Some("artefacts".as_ref())
                    && (name.to_string_lossy().starts_with(".staging-")
                        || name == skyfri_runtime::artefact::LAYERS_DIR)
            }
            _ => false,
        }
    };
    let walker = walkdir::WalkDir::new(data_dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !leave_out(e));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            // Removed while walking (a finished build's staging folder, a rotated log).
            Err(e)
                if e.io_error()
                    .is_some_and(|e| e.kind() == io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(e) => {
                return Err(BackupError::io(format!("reading {}", data_dir.display()))(
                    io::Error::other(e.to_string()),
                ))
            }
        };
        let rel = match entry.path().strip_prefix(data_dir) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => continue,
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        let mode = meta.permissions().mode() & 0o777;
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let kind = entry.file_type();
        if kind.is_dir() {
            items.push(Item::Dir { rel, mode, mtime });
        } else if kind.is_file() {
            items.push(Item::File {
                src: entry.path().to_path_buf(),
                rel,
                mode,
                mtime,
                len: meta.len(),
            });
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(BackupError::io(format!(
                "reading {}",
                entry.path().display()
            )))?;
            match check_link(&rel, &target) {
                Ok(()) => items.push(Item::Link { rel, target }),
                Err(reason) => skipped.push(Skipped {
                    path: rel.display().to_string(),
                    reason,
                }),
            }
        } else {
            skipped.push(Skipped {
                path: rel.display().to_string(),
                reason: "not a file, folder or link (a socket, fifo or device)".into(),
            });
        }
    }
    Ok(())
}

/// The store snapshot's schema version, functions and secrets.
fn store_counts(path: &Path) -> Result<(u32, u64, u64), BackupError> {
    let sqlite = |source| BackupError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(sqlite)?;
    let schema: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite)?;
    let count = |table: &str| -> Result<u64, BackupError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(sqlite)
    };
    Ok((schema, count("functions")?, count("secrets")?))
}

/// Calls in the queue snapshot that have still to run: those with a due time (see the
/// embedded queue's invariant 4).
fn queued_calls(path: &Path) -> Result<u64, BackupError> {
    let sqlite = |source| BackupError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(sqlite)?;
    conn.query_row(
        "SELECT count(*) FROM calls WHERE due_ms IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .map_err(sqlite)
}

/// Per top-level entry: what it is, how many files and bytes.
fn contents(items: &[Item], databases: &BTreeSet<OsString>) -> Vec<Content> {
    let mut by_top: BTreeMap<String, Content> = BTreeMap::new();
    for item in items {
        let Some(top) = item.rel().components().next() else {
            continue;
        };
        let top = top.as_os_str();
        let kind = if databases.contains(top) {
            "sqlite"
        } else if item.rel().components().count() > 1 || matches!(item, Item::Dir { .. }) {
            "dir"
        } else {
            "file"
        };
        let c = by_top
            .entry(top.to_string_lossy().into_owned())
            .or_insert_with(|| Content {
                path: top.to_string_lossy().into_owned(),
                kind: kind.to_string(),
                files: 0,
                bytes: 0,
            });
        if let Item::File { len, .. } = item {
            c.files += 1;
            c.bytes += len;
        }
    }
    by_top.into_values().collect()
}
