//! Which files of a handler folder count as the function's source for `up --watch`: not
//! what builds and editors leave beside it (dependencies installed locally, bytecode,
//! swap and backup files, dot files), and which folders must be watched to see the rest.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// Folders that hold what a build or a local run produced, never the function's source.
const BUILD_OUTPUTS: &[&str] = &["node_modules", "python_packages", "__pycache__"];

/// Whether a change at `relative` (a path inside a handler folder) is noise: a dot file or
/// folder (`.git`, `.handler.py.swp`, `.#handler.py`), a build output, or an editor's
/// temporary or backup file.
pub fn ignored(relative: &Path) -> bool {
    relative.components().any(|c| match c {
        Component::Normal(name) => ignored_name(name),
        _ => false,
    })
}

fn ignored_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.')
        || BUILD_OUTPUTS.contains(&name.as_ref())
        // vim's backups and its write test; emacs' autosaves; JetBrains' safe writes.
        || name.ends_with('~')
        || name == "4913"
        || (name.starts_with('#') && name.ends_with('#'))
        || name.ends_with("___jb_tmp___")
        || name.ends_with("___jb_old___")
        || [".swp", ".swx", ".tmp", ".pyc", ".pyo", ".crswap"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// `folder` and the folders under it that are not [`ignored`]: each is watched on its own,
/// so that a large `node_modules` costs no watches.
pub fn folders(folder: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(folder)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !ignored_name(e.file_name()))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// `path` with its folder resolved (links, `..`), its file name kept: a file an editor
/// replaces keeps its name, not its inode. `None` when the folder does not exist.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_ignored() {
        for noise in [
            ".handler.py.swp",
            "handler.py~",
            "4913",
            "#handler.py#",
            ".#handler.py",
            ".git/index",
            "node_modules/left-pad/index.js",
            "python_packages/requests/api.py",
            "__pycache__/handler.cpython-313.pyc",
            "lib/util.pyc",
            "handler.py___jb_tmp___",
            "handler.js.tmp",
            ".env",
        ] {
            assert!(ignored(Path::new(noise)), "{noise} should be ignored");
        }
    }

    #[test]
    fn sources_count() {
        for source in [
            "handler.py",
            "requirements.txt",
            "package.json",
            "package-lock.json",
            "lib/util.py",
            "templates/page.html",
            "Makefile",
        ] {
            assert!(!ignored(Path::new(source)), "{source} is source");
        }
    }

    #[test]
    fn folders_skip_outputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["lib/deep", "node_modules/x", ".git/objects", "__pycache__"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let mut found: Vec<PathBuf> = folders(dir.path())
            .into_iter()
            .map(|p| p.strip_prefix(dir.path()).expect("under").to_path_buf())
            .collect();
        found.sort();
        let want: Vec<PathBuf> = ["", "lib", "lib/deep"].iter().map(PathBuf::from).collect();
        assert_eq!(found, want);
    }

    #[test]
    fn resolve_keeps_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/../stack.yml");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        let resolved = resolve(&p).expect("resolved");
        assert_eq!(resolved.file_name(), Some(OsStr::new("stack.yml")));
        assert_eq!(
            resolved.parent(),
            Some(std::fs::canonicalize(dir.path()).expect("canon").as_path())
        );
        assert_eq!(resolve(&dir.path().join("missing/stack.yml")), None);
    }
}
