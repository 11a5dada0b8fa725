//! The content-addressed artefact store: a function's handler folder plus its template's shim,
//! copied once into `root/<sha256>/` and never modified afterwards, so every replica of a
//! given artefact runs exactly the same files.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skyfri_core::Template;

use crate::provider::RuntimeError;
use crate::templates;

mod dependencies;
mod layers;

use layers::Layers;
pub use layers::LAYERS_DIR;

pub use dependencies::PYTHON_PACKAGES;

const PREFIX: &str = "sha256:";
/// Where the user's files go inside an artefact.
pub const FUNCTION_DIR: &str = "function";
/// AWS's Node runtime client in a lambda-node artefact, beside the function.
pub const LAMBDA_NODE_CLIENT: &str = "lambda_runtime/node_modules/aws-lambda-ric/bin/index.mjs";

/// Builds and finds artefacts under one root directory.
#[derive(Debug, Clone)]
pub struct ArtefactStore {
    root: PathBuf,
}

/// A regular file of the handler folder, as hashed and copied.
struct SourceFile {
    relative: String,
    absolute: PathBuf,
    executable: bool,
}

impl ArtefactStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: PathBuf) -> Result<ArtefactStore, RuntimeError> {
        fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io(format!("creating {}", root.display()), e))?;
        Ok(ArtefactStore { root })
    }

    /// Copies the handler folder into an immutable content-addressed dir
    /// `root/<hex>/function/`, writes the template's embedded shim files into `root/<hex>/`
    /// and installs the dependencies the folder declares (the hash covers the template name
    /// and every file's relative path, mode and contents, so an unchanged folder is found
    /// without running an installer; a changed handler with unchanged dependency files links
    /// the packages installed before, see [`layers`]). Idempotent. Returns `"sha256:<hex>"`.
    pub fn build(&self, template: Template, handler_dir: &Path) -> Result<String, RuntimeError> {
        let files = list_files(handler_dir)?;
        let hex = digest(template, &files)?;
        let id = format!("{PREFIX}{hex}");
        let target = self.root.join(&hex);
        if target.is_dir() {
            return Ok(id);
        }

        // Assemble in a private staging dir and rename it into place, so a crash or a
        // concurrent build never leaves a half-written artefact under its final name.
        let staging = self
            .root
            .join(format!(".staging-{hex}-{}", rand::random::<u32>()));
        let result = assemble(template, &files, &staging)
            .and_then(|()| dependencies::install(template, &staging, &Layers::of(&self.root)))
            .and_then(|()| precompile(template, &staging));
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if let Err(e) = fs::rename(&staging, &target) {
            let _ = fs::remove_dir_all(&staging);
            // Someone else built the same artefact meanwhile: theirs is identical.
            if !target.is_dir() {
                return Err(RuntimeError::io(
                    format!("moving artefact into {}", target.display()),
                    e,
                ));
            }
        }
        Ok(id)
    }

    /// The directory of a built artefact; `None` if the id is malformed or unknown.
    /// The directory all artefacts live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, artefact: &str) -> Option<PathBuf> {
        let hex = artefact.strip_prefix(PREFIX)?;
        // Only a 64-digit lower-case hex name can be ours, which also rules out `..` and `/`.
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return None;
        }
        let dir = self.root.join(hex);
        dir.is_dir().then_some(dir)
    }
}

/// Regular files under `dir`, sorted by relative path so the hash does not depend on the
/// order the file system lists them in.
fn list_files(dir: &Path) -> Result<Vec<SourceFile>, RuntimeError> {
    if !dir.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "handler folder {} does not exist",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        // VCS metadata is not part of a function and would make the hash change on every commit.
        .filter_entry(|e| e.file_name() != ".git");
    for entry in walker {
        let entry = entry.map_err(|e| {
            RuntimeError::io(
                format!("reading {}", dir.display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
        if entry.file_type().is_symlink() {
            // A link could point anywhere on the building host (its secrets included).
            return Err(RuntimeError::Invalid(format!(
                "{} is a symbolic link: an artefact holds only files and folders",
                entry.path().display()
            )));
        }
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let relative = relative
            .to_str()
            .ok_or_else(|| {
                RuntimeError::Invalid(format!("file name {} is not UTF-8", relative.display()))
            })?
            .to_string();
        let meta = entry.metadata().map_err(|e| {
            RuntimeError::io(relative.clone(), std::io::Error::other(e.to_string()))
        })?;
        files.push(SourceFile {
            relative,
            absolute: entry.path().to_path_buf(),
            executable: meta.permissions().mode() & 0o111 != 0,
        });
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// The artefact hash. Every field is length-prefixed so no two different inputs concatenate
/// to the same byte stream.
fn digest(template: Template, files: &[SourceFile]) -> Result<String, RuntimeError> {
    use layers::length_prefixed as field;
    let mut h = Sha256::new();
    field(&mut h, b"skyfri-artefact-v1");
    field(&mut h, template.name().as_bytes());
    // The shim is part of what runs, so a changed shim must give a new artefact.
    for (name, contents) in templates::shim_files(template) {
        field(&mut h, name.as_bytes());
        field(&mut h, contents.as_bytes());
    }
    let mut buf = vec![0u8; 64 * 1024];
    for f in files {
        field(&mut h, f.relative.as_bytes());
        field(&mut h, if f.executable { b"x" } else { b"-" });
        let mut file = fs::File::open(&f.absolute)
            .map_err(|e| RuntimeError::io(format!("reading {}", f.absolute.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| RuntimeError::io(format!("reading {}", f.absolute.display()), e))?
            .len();
        h.update(len.to_le_bytes());
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| RuntimeError::io(format!("reading {}", f.absolute.display()), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(layers::hex(&h.finalize()))
}

/// Writes the function files and the shim into `staging`.
fn assemble(template: Template, files: &[SourceFile], staging: &Path) -> Result<(), RuntimeError> {
    let function_dir = staging.join(FUNCTION_DIR);
    fs::create_dir_all(&function_dir)
        .map_err(|e| RuntimeError::io(format!("creating {}", function_dir.display()), e))?;
    for f in files {
        let dest = function_dir.join(&f.relative);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| RuntimeError::io(format!("creating {}", parent.display()), e))?;
        }
        fs::copy(&f.absolute, &dest)
            .map_err(|e| RuntimeError::io(format!("copying {}", f.absolute.display()), e))?;
        // Read-only, because artefacts are shared by every replica and must stay identical
        // to what was hashed; keep the executable bit that exec/http commands rely on.
        let mode = if f.executable { 0o555 } else { 0o444 };
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(|e| RuntimeError::io(format!("chmod {}", dest.display()), e))?;
    }
    for (name, contents) in templates::shim_files(template) {
        let dest = staging.join(name);
        fs::write(&dest, contents)
            .map_err(|e| RuntimeError::io(format!("writing {}", dest.display()), e))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o444))
            .map_err(|e| RuntimeError::io(format!("chmod {}", dest.display()), e))?;
    }
    Ok(())
}

/// Compiles a Python handler (and whatever Python sits beside it) to bytecode at build,
/// which takes the compile off every cold start. `unchecked-hash` pycs are used without
/// comparing them to their source: the artefact never changes. A file that does not compile
/// fails the build, naming it.
fn precompile(template: Template, staging: &Path) -> Result<(), RuntimeError> {
    if !matches!(
        template,
        Template::Python3 | Template::Python3Http | Template::LambdaPython
    ) {
        return Ok(());
    }
    let Some(python) = crate::local::Interpreters::resolve().python else {
        return Ok(());
    };
    let dir = staging.join(FUNCTION_DIR);
    let out = std::process::Command::new(&python)
        .args([
            "-m",
            "compileall",
            "-q",
            "--invalidation-mode",
            "unchecked-hash",
        ])
        .arg(&dir)
        .env_clear()
        .output()
        .map_err(|e| RuntimeError::io(format!("running {}", python.display()), e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{}/", dir.display());
    Err(RuntimeError::Invalid(format!(
        "the handler does not compile:\n{}",
        text.replace(&prefix, "").trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_is_idempotent_and_content_addressed() -> Result<(), Box<dyn std::error::Error>> {
        let store_dir = tempfile::tempdir()?;
        let src = tempfile::tempdir()?;
        fs::write(
            src.path().join("handler.py"),
            "def handle(req):\n    return req\n",
        )?;
        let store = ArtefactStore::open(store_dir.path().join("a"))?;
        let a = store.build(Template::Python3, src.path())?;
        let b = store.build(Template::Python3, src.path())?;
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:"));
        let dir = store.path(&a).ok_or("artefact missing")?;
        assert!(dir.join("function/handler.py").is_file());
        assert!(dir.join(templates::PYTHON_SHIM).is_file());

        let other = store.build(Template::Python3Http, src.path())?;
        assert_ne!(a, other, "template is part of the hash");
        fs::write(
            src.path().join("handler.py"),
            "def handle(req):\n    return 1\n",
        )?;
        assert_ne!(a, store.build(Template::Python3, src.path())?);

        assert!(store.path("sha256:../../etc").is_none());
        assert!(store.path(&a.replace("sha256:", "md5:")).is_none());
        assert!(store.path(&format!("sha256:{}", "0".repeat(64))).is_none());
        Ok(())
    }

    #[test]
    fn python_is_compiled_at_build_and_a_syntax_error_fails_it(
    ) -> Result<(), Box<dyn std::error::Error>> {
        if crate::local::Interpreters::resolve().python.is_none() {
            eprintln!("SKIPPED: no python3 on this host");
            return Ok(());
        }
        let store_dir = tempfile::tempdir()?;
        let src = tempfile::tempdir()?;
        fs::write(
            src.path().join("handler.py"),
            "def handle(req):\n    return req\n",
        )?;
        let store = ArtefactStore::open(store_dir.path().join("a"))?;
        let id = store.build(Template::Python3, src.path())?;
        let cache = store
            .path(&id)
            .ok_or("artefact missing")?
            .join("function/__pycache__");
        assert!(
            fs::read_dir(&cache)?.count() > 0,
            "no bytecode in {}",
            cache.display()
        );

        fs::write(
            src.path().join("handler.py"),
            "def handle(req)\n    return req\n",
        )?;
        let err = store
            .build(Template::Python3, src.path())
            .err()
            .ok_or("built")?;
        let text = err.to_string();
        assert!(
            text.contains("does not compile") && text.contains("handler.py"),
            "{text}"
        );
        assert!(!text.contains(".staging"), "staging paths leak: {text}");
        Ok(())
    }
}
