//! Files skyfri writes into system directories (a sysctl.d file, a systemd unit): each opens
//! with a marker line, and a file without it belongs to someone else and is only replaced
//! with `--force`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Writes `content` (which starts with `marker`) to `path` with `mode`, unless a file that
/// is not ours is there and `force` is off. The file is replaced atomically (written beside
/// it, then renamed), so a reader never sees half of it.
pub fn write(path: &Path, marker: &str, content: &str, mode: u32, force: bool) -> Result<()> {
    debug_assert!(content.starts_with(marker));
    match std::fs::read_to_string(path) {
        Ok(existing) if !existing.starts_with(marker) && !force => bail!(
            "{} exists and was not written by skyfri: move it away or pass --force to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData && !force => bail!(
            "{} exists and is not a text file skyfri wrote: pass --force to replace it",
            path.display()
        ),
        _ => {}
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "cannot write {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
}

/// Like [`write`], but leaves an existing file alone (it may hold the operator's settings).
/// Returns whether the file was written.
pub fn create_once(path: &Path, content: &str, mode: u32) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_is_replaced_and_theirs_needs_force() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.conf");
        write(&path, "# ours", "# ours\na\n", 0o644, false)?;
        write(&path, "# ours", "# ours\nb\n", 0o644, false)?;
        assert_eq!(std::fs::read_to_string(&path)?, "# ours\nb\n");
        std::fs::write(&path, "theirs\n")?;
        let err = write(&path, "# ours", "# ours\nc\n", 0o644, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("not written by skyfri") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path)?, "theirs\n");
        write(&path, "# ours", "# ours\nc\n", 0o644, true)?;
        assert_eq!(std::fs::read_to_string(&path)?, "# ours\nc\n");
        let missing = dir.path().join("no/such/dir/f");
        assert!(write(&missing, "# ours", "# ours\n", 0o644, false).is_err());

        let env = dir.path().join("etc/skyfri.env");
        assert!(create_once(&env, "A=1\n", 0o600)?);
        assert!(!create_once(&env, "A=2\n", 0o600)?);
        assert_eq!(std::fs::read_to_string(&env)?, "A=1\n");
        Ok(())
    }
}
