//! skyfri as a systemd service: the unit and the environment file `skyfri install --systemd`
//! writes (the repository's `deploy/` holds the same two files), and reading that
//! environment file back (`skyfri doctor` checks the NATS server configured there).
//!
//! The service runs as root, on purpose: skyfri creates a cgroup per replica under
//! /sys/fs/cgroup (memory, CPU and pids limits) and starts each replica in a bubblewrap
//! sandbox as the unprivileged uid 65534, and switching to that uid needs root. Function code
//! never runs as root. A dedicated `skyfri` user (or DynamicUser=) would get neither
//! cgroups nor the uid switch, so replicas would run unlimited as that user: the unit
//! instead asks for `SKYFRI_ISOLATION=strict`, which refuses to start without them.

use std::path::Path;

use anyhow::{bail, Result};

pub const UNIT_MARKER: &str = "# Written by `skyfri install --systemd`.";
pub const DEFAULT_UNIT: &str = "/etc/systemd/system/skyfri.service";
pub const DEFAULT_ENV_FILE: &str = "/etc/skyfri/skyfri.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/skyfri";

/// A path that goes into a unit as it is: absolute, and free of what systemd would read as
/// a separator, quote or `%` specifier.
pub fn check_unit_path(what: &str, path: &Path) -> Result<String> {
    let Some(text) = path.to_str() else {
        bail!("{what} {}: not UTF-8", path.display());
    };
    if !path.is_absolute() {
        bail!("{what} {text:?}: must be an absolute path");
    }
    if let Some(c) = text.chars().find(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '%' | '"' | '\'' | '\\' | ';' | '$')
    }) {
        bail!("{what} {text:?}: {c:?} cannot go into a systemd unit unquoted; use a plainer path");
    }
    Ok(text.to_string())
}

/// The unit file.
pub fn unit(binary: &str, data_dir: &str, env_file: &str) -> String {
    format!(
        "{UNIT_MARKER}
# skyfri runs as root: it creates a cgroup per replica under /sys/fs/cgroup and starts
# each replica in a bubblewrap sandbox as the unprivileged uid 65534; function code never
# runs as root. Settings (admin password, listen address, queue): {env_file}.
[Unit]
Description=skyfri: self-hosted Function-as-a-Service
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
EnvironmentFile=-{env_file}
ExecStart={binary} up --data-dir {data_dir}
Restart=on-failure
RestartSec=2s
# Replicas, their sockets and client connections all hold descriptors.
LimitNOFILE=1048576
# SIGTERM goes to skyfri, which drains (calls in flight finish within their timeout, async
# and topic work is handed back after 5 s) and then stops its replicas; whatever is left in
# the unit gets SIGKILL after TimeoutStopSec: raise it for calls longer than 30 s.
KillMode=mixed
TimeoutStopSec=30s
UMask=0077
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"
    )
}

/// The environment file: every setting of `skyfri up` the service reads.
pub fn env_file(data_dir: &str) -> String {
    format!(
        "# Settings of the skyfri service (EnvironmentFile= of skyfri.service), written by
# `skyfri install --systemd`. After a change: systemctl restart skyfri
#
# The admin password, read at the first start only and then kept in
# {data_dir}/admin-password. Left empty, one is generated and shown once in
# `journalctl -u skyfri`.
SKYFRI_ADMIN_PASSWORD=
# Where the gateway listens; put a TLS proxy in front of it for other hosts.
SKYFRI_LISTEN=127.0.0.1:8080
# Where the dashboard (/ui) listens, on a port of its own apart from the functions; off
# serves none. It shares the gateway's TLS certificate.
SKYFRI_UI_LISTEN=127.0.0.1:8081
# strict refuses to start unless replicas get a sandbox and enforced memory, CPU and pids
# limits (check with `skyfri doctor`); best-effort takes what the host offers.
SKYFRI_ISOLATION=strict
# Async calls: embedded (in the data dir) or nats://HOST:PORT (NATS JetStream).
SKYFRI_QUEUE=embedded
# The NATS server of topic triggers (default: the queue's when it is NATS).
#SKYFRI_NATS=nats://127.0.0.1:4222
# Log level: error, warn, info, debug.
SKYFRI_LOG=info
"
    )
}

/// Reads `KEY=VALUE` lines as systemd's EnvironmentFile= does (comments, blank lines,
/// one level of matching quotes); a missing file is empty.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{}:{}: {line:?} is not KEY=VALUE", path.display(), i + 1);
        };
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.push((key.trim().to_string(), unquoted.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_checked() {
        assert!(check_unit_path("binary", Path::new("/usr/local/bin/skyfri")).is_ok());
        for bad in ["skyfri", "/opt/my skyfri", "/opt/%h", "/a\"b", "/a;b"] {
            assert!(check_unit_path("binary", Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_files_read_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("skyfri.env");
        assert!(read_env_file(&path)?.is_empty());
        std::fs::write(
            &path,
            env_file("/var/lib/skyfri") + "SKYFRI_NATS=\"nats://h:1\"\n",
        )?;
        let vars = read_env_file(&path)?;
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("SKYFRI_QUEUE"), Some("embedded"));
        assert_eq!(get("SKYFRI_ADMIN_PASSWORD"), Some(""));
        assert_eq!(get("SKYFRI_NATS"), Some("nats://h:1"));
        std::fs::write(&path, "A=1\nbroken\n")?;
        let err = read_env_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(":2:"), "{err}");
        Ok(())
    }
}
