//! Restoring a backup into an empty data dir, offline.
//!
//! The archive is read twice. The first pass checks everything before anything is written:
//! the manifest comes first and is a format this skyfri knows; the store's schema is not
//! newer than this skyfri's (an older one is migrated when `skyfri up` opens it); every entry
//! is a file, folder or link with a relative path of plain names, links stay inside the data
//! dir and no entry lies beneath a link; no path comes twice. The second pass unpacks, gives
//! the top-level files (keys, databases) mode 0600 and top-level folders 0700, and removes
//! what it wrote if anything fails.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use skyfri_store::SCHEMA_VERSION;

use super::create::SQLITE_MAGIC;
use super::paths::{check_link, check_path};
use super::{BackupError, Manifest, FORMAT, MANIFEST, SECRET_KEY, STORE_DB};

/// The largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

/// Reads a backup through, checking every entry as [`restore`] would, and returns its
/// manifest. Writes nothing.
pub fn inspect(archive: &Path) -> Result<Manifest, BackupError> {
    scan(archive)
}

/// Restores `archive` into `data_dir`, which must be empty or not exist yet.
pub fn restore(archive: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let manifest = scan(archive)?;
    let created = prepare(data_dir)?;
    if let Err(e) = unpack(archive, data_dir) {
        clear(data_dir, created);
        return Err(e);
    }
    Ok(manifest)
}

fn open(archive: &Path) -> Result<tar::Archive<GzDecoder<File>>, BackupError> {
    let file = File::open(archive).map_err(BackupError::io(format!(
        "cannot open the backup {}",
        archive.display()
    )))?;
    Ok(tar::Archive::new(GzDecoder::new(file)))
}

/// The first pass: see the module documentation.
fn scan(archive: &Path) -> Result<Manifest, BackupError> {
    let name = archive.display().to_string();
    let unreadable = |e: io::Error| {
        BackupError::Invalid(format!(
            "{name}: not a readable skyfri backup (a gzip-compressed tar): {e}"
        ))
    };
    let mut tar = open(archive)?;
    let mut entries = tar.entries().map_err(unreadable)?;
    let manifest = match entries.next() {
        Some(entry) => read_manifest(&name, entry.map_err(unreadable)?)?,
        None => {
            return Err(BackupError::Invalid(format!(
                "{name}: an empty archive, not a skyfri backup"
            )))
        }
    };
    let mut paths = BTreeSet::new();
    let mut links = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.into_owned();
        let refuse = |reason: String| {
            BackupError::Invalid(format!(
                "{name}: entry {:?} is refused: {reason}",
                path.display().to_string()
            ))
        };
        check_path(&path).map_err(refuse)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(unreadable)?
                .ok_or_else(|| refuse("a link without a target".into()))?;
            check_link(&path, &target).map_err(refuse)?;
            links.insert(path.clone());
        } else if !(kind.is_file() || kind.is_dir()) {
            return Err(refuse(format!(
                "a {kind:?} entry: a backup holds only files, folders and links"
            )));
        }
        if path == Path::new(STORE_DB) {
            check_store(&name, &mut entry)?;
        }
        if path == Path::new(MANIFEST) || !paths.insert(path.clone()) {
            return Err(refuse("it comes twice".into()));
        }
    }
    if let Some((path, link)) = paths.iter().find_map(|p| {
        p.ancestors()
            .skip(1)
            .find(|a| links.contains(*a))
            .map(|a| (p, a))
    }) {
        return Err(BackupError::Invalid(format!(
            "{name}: entry {:?} is refused: it lies beneath the link {:?}",
            path.display().to_string(),
            link.display().to_string()
        )));
    }
    if !paths.contains(Path::new(STORE_DB)) {
        return Err(BackupError::Invalid(format!(
            "{name}: holds no {STORE_DB}: not a skyfri backup"
        )));
    }
    if manifest.secrets > 0 && !paths.contains(Path::new(SECRET_KEY)) {
        return Err(BackupError::Invalid(format!(
            "{name}: holds {} secret(s) but not the key they are encrypted with ({SECRET_KEY})",
            manifest.secrets
        )));
    }
    Ok(manifest)
}

fn read_manifest(
    name: &str,
    mut entry: tar::Entry<'_, GzDecoder<File>>,
) -> Result<Manifest, BackupError> {
    let not_backup =
        |why: String| BackupError::Invalid(format!("{name}: not a skyfri backup: {why}"));
    let path = entry
        .path()
        .map_err(|e| not_backup(e.to_string()))?
        .into_owned();
    if path != Path::new(MANIFEST) || !entry.header().entry_type().is_file() {
        return Err(not_backup(format!(
            "its first entry is {:?}, not {MANIFEST}",
            path.display().to_string()
        )));
    }
    let mut json = Vec::new();
    (&mut entry)
        .take(MAX_MANIFEST)
        .read_to_end(&mut json)
        .map_err(|e| not_backup(e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| not_backup(format!("{MANIFEST}: {e}")))?;
    if manifest.format > FORMAT {
        return Err(BackupError::Invalid(format!(
            "{name}: archive format {} was written by a newer skyfri ({}); this one ({}) reads format {FORMAT}: restore it with skyfri {} or newer",
            manifest.format, manifest.skyfri_version, env!("CARGO_PKG_VERSION"), manifest.skyfri_version
        )));
    }
    if manifest.store_schema > SCHEMA_VERSION {
        return Err(newer_schema(
            name,
            manifest.store_schema,
            &manifest.skyfri_version,
        ));
    }
    Ok(manifest)
}

fn newer_schema(name: &str, found: u32, by: &str) -> BackupError {
    BackupError::Invalid(format!(
        "{name}: its store has schema version {found}, from a newer skyfri ({by}); this one ({}) knows up to {SCHEMA_VERSION}: restore it with skyfri {by} or newer",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The store database's own header, whatever the manifest says: a SQLite file whose
/// `user_version` (bytes 60..64, big-endian) this skyfri can migrate from.
fn check_store(name: &str, entry: &mut impl Read) -> Result<(), BackupError> {
    let mut head = [0u8; 64];
    entry.read_exact(&mut head).map_err(|e| {
        BackupError::Invalid(format!("{name}: {STORE_DB} is not a SQLite database: {e}"))
    })?;
    if &head[..16] != SQLITE_MAGIC {
        return Err(BackupError::Invalid(format!(
            "{name}: {STORE_DB} is not a SQLite database"
        )));
    }
    let version = u32::from_be_bytes([head[60], head[61], head[62], head[63]]);
    if version > SCHEMA_VERSION {
        return Err(newer_schema(name, version, "that wrote it"));
    }
    Ok(())
}

/// Makes sure `data_dir` is an empty folder; true if it was created now.
fn prepare(data_dir: &Path) -> Result<bool, BackupError> {
    match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty: restore into a new or empty data dir (restoring over an install would mix the two); move its contents away or pick another --data-dir",
                    data_dir.display()
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(BackupError::io(format!(
                    "cannot create {}",
                    data_dir.display()
                )))?;
            Ok(true)
        }
        Err(e) => Err(BackupError::Refused(format!(
            "{} cannot be used as the data dir: {e}",
            data_dir.display()
        ))),
    }
}

/// The second pass: unpacks what the first checked.
fn unpack(archive: &Path, data_dir: &Path) -> Result<(), BackupError> {
    let name = archive.display().to_string();
    let failed = |e: io::Error| BackupError::Io {
        what: format!("restoring {name} into {}", data_dir.display()),
        source: e,
    };
    let mut tar = open(archive)?;
    tar.set_preserve_mtime(true);
    for entry in tar.entries().map_err(failed)?.skip(1) {
        let mut entry = entry.map_err(failed)?;
        let path: PathBuf = entry.path().map_err(failed)?.into_owned();
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(failed)?;
        // `unpack_in` also refuses a path that would land outside `data_dir`.
        if !entry.unpack_in(data_dir).map_err(failed)? {
            return Err(BackupError::Invalid(format!(
                "{name}: entry {:?} would land outside the data dir",
                path.display().to_string()
            )));
        }
        if kind.is_symlink() {
            continue;
        }
        let top = path.components().count() == 1;
        let mode = match (top, kind.is_dir()) {
            (true, true) => 0o700,
            (true, false) => 0o600,
            (false, true) => (mode & 0o755) | 0o700,
            (false, false) => mode & 0o755,
        };
        let target = data_dir.join(&path);
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(BackupError::io(
            format!("setting the mode of {}", target.display()),
        ))?;
    }
    Ok(())
}

/// Takes back a failed restore: the folder was empty (or absent) before.
fn clear(data_dir: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(data_dir);
        return;
    }
    if let Ok(entries) = fs::read_dir(data_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
        }
    }
}
