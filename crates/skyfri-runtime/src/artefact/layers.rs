//! Installed dependencies kept by what they were installed from, so that a rebuild whose
//! dependency files did not change (a new handler, the same `requirements.txt`) links the
//! packages installed last time into the new artefact instead of running pip or npm again:
//! the layer cache OpenFaaS users get from Docker, without its staleness rule being any
//! different (an unpinned requirement stays at the version first installed until its
//! file changes).
//!
//! A layer is keyed by the installer, the interpreter it installed for and the bytes of the
//! files that drove it ([`LayerKey`]); it lives under `artefacts/.deps/<key>/` as a sealed
//! tree and is linked (hard links; links kept as links) into each artefact that uses it, so
//! it costs its disk space once. Artefacts are immutable, so sharing their files is safe. A
//! dependency file that points at other files (`-r other.txt`, `./local-package`,
//! `file:../lib`) is not keyed by its own bytes alone: such folders install every time.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::provider::RuntimeError;

/// The folder under the artefact root that holds the layers; not an artefact itself.
pub const LAYERS_DIR: &str = ".deps";

/// What an install depends on, hashed field by field.
pub struct LayerKey(Sha256);

impl LayerKey {
    /// A key for `installer` (its flags are part of skyfri's version of the key).
    pub fn new(installer: &str) -> LayerKey {
        let mut key = LayerKey(Sha256::new());
        key.field(b"skyfri-deps-v1");
        key.field(installer.as_bytes());
        key
    }

    /// Adds one field, length-prefixed so that no two different inputs hash alike.
    pub fn field(&mut self, bytes: &[u8]) -> &mut LayerKey {
        length_prefixed(&mut self.0, bytes);
        self
    }

    /// Adds the interpreter (or installer) at `path` by its resolved file, so that an upgrade
    /// that moves `python3` to another minor version gets fresh packages.
    pub fn program(&mut self, path: &Path) -> &mut LayerKey {
        let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.field(real.as_os_str().as_encoded_bytes())
    }

    /// Adds the values of the environment variables `names` (where packages come from).
    pub fn env(&mut self, names: &[&str]) -> &mut LayerKey {
        for name in names {
            let value = std::env::var_os(name).unwrap_or_default();
            self.field(name.as_bytes()).field(value.as_encoded_bytes());
        }
        self
    }

    /// Adds the contents of `file` under its name (an absent file counts as absent).
    pub fn file(&mut self, file: &Path) -> Result<&mut LayerKey, RuntimeError> {
        let name = file.file_name().unwrap_or_default().as_encoded_bytes();
        match fs::read(file) {
            Ok(bytes) => Ok(self.field(name).field(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(self.field(name).field(b"-")),
            Err(e) => Err(RuntimeError::io(format!("reading {}", file.display()), e)),
        }
    }

    fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Adds `bytes` to `hasher` after their length, as artefact and layer hashes do.
pub fn length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// `bytes` as lower-case hex, as artefact and layer names are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The layers kept beside the artefacts of one store.
#[derive(Debug, Clone)]
pub struct Layers {
    root: PathBuf,
}

impl Layers {
    /// The layers of the artefact store at `artefacts`.
    pub fn of(artefacts: &Path) -> Layers {
        Layers {
            root: artefacts.join(LAYERS_DIR),
        }
    }

    /// Installs into `dest` (absent) by linking the layer kept for `key`, or by running
    /// `install` (which must fill `dest`) and keeping what it installed for next time.
    /// Returns whether the layer was reused.
    pub fn install(
        &self,
        key: Option<LayerKey>,
        dest: &Path,
        install: impl FnOnce() -> Result<(), RuntimeError>,
    ) -> Result<bool, RuntimeError> {
        // Something already there (a `node_modules/` uploaded with the handler) is part of
        // what gets installed, and not in the key: neither reused nor kept.
        let Some(key) = key.filter(|_| !dest.exists()) else {
            install()?;
            return Ok(false);
        };
        let hex = key.hex();
        let kept = self.root.join(&hex);
        if kept.is_dir() {
            match link_tree(&kept, dest) {
                Ok(()) => {
                    tracing::info!(layer = %hex, "dependencies unchanged: installed packages reused");
                    return Ok(true);
                }
                // A damaged layer: install afresh and replace it below.
                Err(e) => {
                    tracing::warn!(layer = %kept.display(), error = %e, "cannot reuse installed packages");
                    let _ = fs::remove_dir_all(dest);
                    let _ = fs::remove_dir_all(&kept);
                }
            }
        }
        install()?;
        if dest.is_dir() {
            // Losing the layer only costs the next build an install.
            if let Err(e) = self.keep(&hex, dest) {
                tracing::warn!(layer = %kept.display(), error = %e, "installed packages not kept for reuse");
            }
        }
        Ok(false)
    }

    /// Links `installed` into the layer `hex`, through a private name renamed into place, so
    /// that a crash or a concurrent build never leaves half a layer under its name.
    fn keep(&self, hex: &str, installed: &Path) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let staging = self
            .root
            .join(format!(".staging-{hex}-{}", rand::random::<u32>()));
        let kept =
            link_tree(installed, &staging).and_then(|()| fs::rename(&staging, self.root.join(hex)));
        if kept.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        // Another build kept the same layer first: theirs is identical.
        if self.root.join(hex).is_dir() {
            return Ok(());
        }
        kept
    }
}

/// Recreates the tree at `from` as `to` (absent): folders with their modes, files as hard
/// links to the same inodes, symbolic links as links with the same target.
fn link_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let relative = entry.path().strip_prefix(from).map_err(io::Error::other)?;
        let dest = to.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            fs::create_dir(&dest)?;
            let mode = entry
                .metadata()
                .map_err(io::Error::other)?
                .permissions()
                .mode();
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode & 0o7777))?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(entry.path())?, &dest)?;
        } else if kind.is_file() {
            fs::hard_link(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn key(requirements: &str) -> LayerKey {
        let mut k = LayerKey::new("pip");
        k.field(requirements.as_bytes());
        k
    }

    #[test]
    fn an_unchanged_key_links_the_kept_packages() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let layers = Layers::of(&dir.path().join("artefacts"));
        let install = |dest: PathBuf| {
            move || -> Result<(), RuntimeError> {
                let io = |e| RuntimeError::io("test install", e);
                fs::create_dir_all(dest.join("pkg/bin")).map_err(io)?;
                fs::write(dest.join("pkg/__init__.py"), "x = 1\n").map_err(io)?;
                symlink("../__init__.py", dest.join("pkg/bin/link")).map_err(io)?;
                fs::set_permissions(dest.join("pkg"), fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
                Ok(())
            }
        };
        let a = dir.path().join("a/python_packages");
        fs::create_dir_all(dir.path().join("a"))?;
        assert!(!layers.install(Some(key("six")), &a, install(a.clone()))?);

        let b = dir.path().join("b/python_packages");
        fs::create_dir_all(dir.path().join("b"))?;
        let reused = layers.install(Some(key("six")), &b, || {
            Err(RuntimeError::Invalid("the installer ran again".into()))
        })?;
        assert!(reused);
        let inode = |p: &Path| fs::metadata(p).map(|m| m.ino());
        assert_eq!(
            inode(&a.join("pkg/__init__.py"))?,
            inode(&b.join("pkg/__init__.py"))?,
            "shared, not copied"
        );
        assert_eq!(
            fs::read_link(b.join("pkg/bin/link"))?,
            PathBuf::from("../__init__.py")
        );

        // Other requirements: the installer runs.
        let c = dir.path().join("c/python_packages");
        fs::create_dir_all(dir.path().join("c"))?;
        assert!(!layers.install(Some(key("six==1.17.0")), &c, install(c.clone()))?);
        // No key (a requirements file that names other files): always installs.
        let d = dir.path().join("d/python_packages");
        fs::create_dir_all(dir.path().join("d"))?;
        assert!(!layers.install(None, &d, install(d.clone()))?);
        Ok(())
    }

    #[test]
    fn something_already_there_is_installed_over() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let layers = Layers::of(dir.path());
        let a = dir.path().join("a");
        layers.install(Some(key("six")), &a, || {
            fs::create_dir_all(&a).map_err(|e| RuntimeError::io("test", e))
        })?;
        // Something already sits where the layer would be linked to: installed over, and
        // the kept layer left as it is.
        let b = dir.path().join("b");
        fs::create_dir_all(&b)?;
        let mut ran = false;
        let reused = layers.install(Some(key("six")), &b, || {
            ran = true;
            Ok(())
        })?;
        assert!(!reused && ran);
        assert!(
            layers.root.read_dir()?.count() == 1,
            "the kept layer was dropped"
        );

        Ok(())
    }
}
