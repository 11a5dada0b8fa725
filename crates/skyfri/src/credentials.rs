//! Saved admin passwords per gateway (`skyfri login`), in the user's config dir (mode 0600).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

fn path() -> Option<PathBuf> {
    Some(dirs::config_dir()?.join("skyfri").join("credentials.json"))
}

fn read_all() -> BTreeMap<String, String> {
    path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The saved password for a gateway; for a gateway on this machine, the admin password
/// that `skyfri up` wrote into the default data dir, when readable.
pub fn load(gateway: &str) -> Option<String> {
    read_all().remove(gateway).or_else(|| {
        let local = is_local(gateway);
        local
            .then(|| {
                std::fs::read_to_string(crate::client::default_data_dir().join("admin-password"))
                    .ok()
            })
            .flatten()
            .map(|s| s.trim().to_string())
    })
}

pub fn save(gateway: &str, password: &str) -> Result<PathBuf> {
    let path = path().context("no config directory for this user")?;
    let mut all = read_all();
    all.insert(gateway.to_string(), password.to_string());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(serde_json::to_string_pretty(&all)?.as_bytes())?;
    Ok(path)
}

/// Whether `gateway` is exactly a loopback URL (`http://127.0.0.1:8080`, not
/// `http://127.0.0.1.example.com`).
fn is_local(gateway: &str) -> bool {
    let Some(rest) = gateway.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_loopback_is_local() {
        assert!(is_local("http://127.0.0.1:8080"));
        assert!(is_local("http://localhost"));
        assert!(is_local("http://[::1]:8080/"));
        assert!(!is_local("http://127.0.0.1.evil.example"));
        assert!(!is_local("http://localhost.evil.example:8080"));
        assert!(!is_local("https://gateway.example"));
    }
}
