//! Which paths and links an archive may hold. A backup is user input when restored (it may
//! have been altered, or not be one), so nothing in it may reach outside the data dir.

use std::path::{Component, Path};

/// An entry's path: relative, made of plain names only (no `/` at the start, no `.` or `..`).
pub(super) fn check_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    for c in path.components() {
        match c {
            Component::Normal(_) => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path: entries must be relative to the data dir".into())
            }
            Component::ParentDir => {
                return Err("a `..` in its path: entries must stay inside the data dir".into())
            }
            Component::CurDir => return Err("a `.` in its path".into()),
        }
    }
    Ok(())
}

/// A symbolic link at `path` (already checked) pointing at `target`: relative, `..` only at
/// the start and no more of them than the link is deep, then plain names. So, read from where
/// the link is, it names a place inside the data dir; and since no entry may be written
/// through a link (restore checks that), a link to a link stays inside too.
pub(super) fn check_link(path: &Path, target: &Path) -> Result<(), String> {
    let depth = path.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::ParentDir if !named => ups += 1,
            Component::Normal(_) => named = true,
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "a link to the absolute path {}: links must stay inside the data dir",
                    target.display()
                ))
            }
            Component::ParentDir | Component::CurDir => {
                return Err(format!(
                    "a link to {}: only leading `..` are allowed in a link",
                    target.display()
                ))
            }
        }
    }
    if !named && ups == 0 {
        return Err("a link with an empty target".into());
    }
    if ups > depth {
        return Err(format!(
            "a link to {}, outside the data dir",
            target.display()
        ));
    }
    Ok(())
}
