//! Saved credentials per gateway (`skyfri login`): the admin password or an API token, in
//! the user's config dir (mode 0600).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::client::Credential;

/// One gateway's entry: a bare string is a password (the first releases' format).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Saved {
    Password(String),
    Token { token: String },
}

fn path() -> Option<PathBuf> {
    Some(dirs::config_dir()?.join("skyfri").join("credentials.json"))
}

fn read_all() -> BTreeMap<String, Saved> {
    path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The saved credential for a gateway; for a gateway on this machine, the admin password
/// that `skyfri up` wrote into the default data dir, when readable.
pub fn load(gateway: &str) -> Option<Credential> {
    let saved = read_all().remove(gateway).map(|s| match s {
        Saved::Password(p) => Credential::Password(p),
        Saved::Token { token } => Credential::Token(token),
    });
    saved.or_else(|| {
        let local = is_local(gateway);
        local
            .then(|| {
                std::fs::read_to_string(crate::client::default_data_dir().join("admin-password"))
                    .ok()
            })
            .flatten()
            .map(|s| Credential::Password(s.trim().to_string()))
    })
}

pub fn save(gateway: &str, credential: &Credential) -> Result<PathBuf> {
    let path = path().context("no config directory for this user")?;
    let mut all = read_all();
    let saved = match credential {
        Credential::Password(p) => Saved::Password(p.clone()),
        Credential::Token(t) => Saved::Token { token: t.clone() },
    };
    all.insert(gateway.to_string(), saved);
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
    use super::{is_local, Saved};

    #[test]
    fn only_loopback_is_local() {
        assert!(is_local("http://127.0.0.1:8080"));
        assert!(is_local("http://localhost"));
        assert!(is_local("http://[::1]:8080/"));
        assert!(!is_local("http://127.0.0.1.evil.example"));
        assert!(!is_local("http://localhost.evil.example:8080"));
        assert!(!is_local("https://gateway.example"));
    }

    #[test]
    fn old_password_entries_still_read() {
        let all: std::collections::BTreeMap<String, Saved> =
            serde_json::from_str(r#"{"http://a": "pw", "http://b": {"token": "sky_x"}}"#)
                .expect("both forms parse");
        assert!(matches!(all.get("http://a"), Some(Saved::Password(p)) if p == "pw"));
        assert!(matches!(all.get("http://b"), Some(Saved::Token { token }) if token == "sky_x"));
    }
}
