//! `skyfri doctor`: checks this host for what skyfri needs (kernel settings, isolation,
//! file limits, disk, interpreters, NATS), each ok/warn/fail with a one-line fix.
//! `--write-sysctl` writes the recommended kernel settings as a sysctl.d file.
//!
//! Warnings are things a production node should fix; failures are things that leave
//! replicas unisolated or the platform unable to run. Exit code 1 when any check fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use skyfri_core::sysctl::{self, Setting};
use skyfri_runtime::local::{Interpreters, Isolation};
use tokio::io::AsyncBufReadExt;

use crate::owned_file;

const DEFAULT_SYSCTL_FILE: &str = "/etc/sysctl.d/99-skyfri.conf";
/// Open files below which a busy node runs out (replicas, sockets, client connections).
const NOFILE_GOOD: u64 = 65_536;
const NOFILE_MIN: u64 = 4_096;
const DISK_MIN: u64 = 1 << 30;
const DISK_GOOD: u64 = 5 << 30;
const NATS_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct Doctor {
    /// Write the recommended kernel settings to a sysctl.d file instead of checking
    /// (default /etc/sysctl.d/99-skyfri.conf). Settings already better are kept.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = DEFAULT_SYSCTL_FILE)]
    write_sysctl: Option<PathBuf>,
    /// With --write-sysctl: replace a file skyfri did not write.
    #[arg(long, requires = "write_sysctl")]
    force: bool,
    /// The data dir to check free disk in (default /var/lib/skyfri as root, else the XDG data dir).
    #[arg(long, env = "SKYFRI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The async queue `skyfri up` is given; a nats:// URL is checked for reachability.
    #[arg(long, env = "SKYFRI_QUEUE")]
    queue: Option<String>,
    /// The NATS server of topic triggers, checked for reachability.
    #[arg(long, env = "SKYFRI_NATS")]
    nats: Option<String>,
    /// The service's environment file (`skyfri install --systemd`): SKYFRI_QUEUE,
    /// SKYFRI_NATS and SKYFRI_DATA_DIR there count when not given otherwise.
    #[arg(long, default_value = crate::service::DEFAULT_ENV_FILE)]
    env_file: PathBuf,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    /// What to do about a warning or failure; `None` when ok.
    fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        status: Status,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Serialize)]
struct Summary {
    checks: Vec<Check>,
    ok: usize,
    warn: usize,
    fail: usize,
}

impl Doctor {
    pub async fn run(mut self) -> Result<()> {
        if let Some(path) = &self.write_sysctl {
            return write_sysctl(path, self.force, self.json);
        }
        for (key, value) in crate::service::read_env_file(&self.env_file)? {
            let slot = match key.as_str() {
                "SKYFRI_QUEUE" => &mut self.queue,
                "SKYFRI_NATS" => &mut self.nats,
                "SKYFRI_DATA_DIR" => {
                    if self.data_dir.is_none() && !value.is_empty() {
                        self.data_dir = Some(value.into());
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value);
            }
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(crate::client::default_data_dir);
        let mut checks = kernel()?;
        checks.extend(tokio::task::spawn_blocking(isolation).await?);
        checks.push(nofile());
        checks.push(disk(&data_dir));
        checks.extend(interpreters().await);
        checks.extend(self.nats_checks().await);
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        let summary = Summary {
            ok: count(Status::Ok),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            checks,
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print(&summary);
        }
        if summary.fail > 0 {
            bail!("{} check(s) failed", summary.fail);
        }
        Ok(())
    }

    async fn nats_checks(&self) -> Vec<Check> {
        let mut urls: Vec<(&str, &str)> = Vec::new();
        if let Some(q) = self.queue.as_deref().filter(|q| *q != "embedded") {
            urls.push(("nats.queue", q));
        }
        if let Some(n) = self.nats.as_deref() {
            if Some(n) != self.queue.as_deref() {
                urls.push(("nats.topics", n));
            }
        }
        if urls.is_empty() {
            return vec![Check::ok(
                "nats",
                "not configured (embedded async queue; give --queue or --nats to check a server)",
            )];
        }
        let mut out = Vec::new();
        for (name, url) in urls {
            out.push(match nats_reachable(url).await {
                Ok(()) => Check::ok(name, format!("{} answers as a NATS server", masked(url))),
                Err(e) => Check::bad(
                    Status::Fail,
                    name,
                    format!("{}: {e}", masked(url)),
                    "start the NATS server (nats-server -js) or fix the URL",
                ),
            });
        }
        out
    }
}

fn masked(url: &str) -> String {
    skyfri_core::residency::find_urls(url)
        .into_iter()
        .next()
        .map_or_else(|| url.to_string(), |u| u.masked)
}

fn read_proc(setting: &Setting) -> Option<std::io::Result<String>> {
    let path = Path::new("/proc/sys").join(setting.proc_path());
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        r => Some(r),
    }
}

/// The host's value of each recommended setting: `None` when the kernel does not have it.
fn current(setting: &Setting) -> Option<Result<Vec<u64>, String>> {
    read_proc(setting).map(|r| {
        r.map_err(|e| e.to_string())
            .and_then(|t| sysctl::parse_value(&t))
    })
}

fn kernel() -> Result<Vec<Check>> {
    let mut out = Vec::new();
    for s in sysctl::recommended()? {
        let name = format!("kernel.{}", s.key);
        let check = match current(&s) {
            None if sysctl::is_module_setting(&s.key) => {
                Check::ok(name, "nf_conntrack is not loaded: nothing to tune")
            }
            None => Check::bad(
                Status::Warn,
                name,
                format!("the kernel has no /proc/sys/{}", s.proc_path()),
                "nothing to set on this kernel; check it is a Linux kernel >= 4.19",
            ),
            Some(Err(e)) => Check::bad(
                Status::Warn,
                name,
                format!("cannot read /proc/sys/{}: {e}", s.proc_path()),
                "run skyfri doctor where /proc/sys is readable",
            ),
            Some(Ok(v)) if s.is_met_by(&v) => {
                Check::ok(name, format!("{} (recommended {s})", Setting::show(&v)))
            }
            Some(Ok(v)) => Check::bad(
                Status::Warn,
                name,
                format!("{} (recommended {s})", Setting::show(&v)),
                format!(
                    "sysctl -w {}={}; to keep it: skyfri doctor --write-sysctl && sysctl --system",
                    s.key,
                    match s.target(Some(&v)).as_slice() {
                        [one] => one.to_string(),
                        many => format!("\"{}\"", Setting::show(many)),
                    }
                ),
            ),
        };
        out.push(check);
    }
    Ok(out)
}

fn write_sysctl(path: &Path, force: bool, json: bool) -> Result<()> {
    let mut values = Vec::new();
    let mut skipped = Vec::new();
    for s in sysctl::recommended()? {
        let now = current(&s);
        // A module's setting (conntrack) exists only while the module is loaded: left out
        // when it is not, else prefixed with `-` so that systemd-sysctl skips it at a boot
        // where the module comes later.
        let key = match (&now, sysctl::is_module_setting(&s.key)) {
            (None, true) => {
                skipped.push(s.key);
                continue;
            }
            (_, true) => format!("-{}", s.key),
            (_, false) => s.key.clone(),
        };
        let now = now.and_then(Result::ok);
        values.push((key, s.target(now.as_deref())));
    }
    owned_file::write(path, sysctl::MARKER, &sysctl::render(&values), 0o644, force)?;
    let apply = if path.starts_with("/etc/sysctl.d") {
        "sysctl --system".to_string()
    } else {
        format!("sysctl -p {}", path.display())
    };
    if json {
        let settings: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| {
                (
                    k.trim_start_matches('-').to_string(),
                    Setting::show(v).into(),
                )
            })
            .collect();
        let out = serde_json::json!({
            "written": path,
            "apply": apply,
            "settings": settings,
            "left_out": skipped,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("wrote {} ({} settings)", path.display(), values.len());
        for key in &skipped {
            println!("left out {key}: its module is not loaded; run this again once it is");
        }
        println!("apply them now with: {apply}");
    }
    Ok(())
}

fn isolation() -> Vec<Check> {
    let iso = Isolation::detect();
    let mut out = Vec::new();
    out.push(match (&iso.sandbox, &iso.sandbox_problem) {
        (Some(s), _) => Check::ok(
            "isolation.bubblewrap",
            format!("bwrap works: replicas get user, mount, pid, ipc and uts namespaces, as {}", s.user()),
        ),
        (None, problem) => {
            let problem = problem.clone().unwrap_or_default();
            let fix = if problem.contains("not installed") {
                "apt-get install bubblewrap"
            } else {
                "allow user namespaces: sysctl -w user.max_user_namespaces=15000 (Debian < 11 also kernel.unprivileged_userns_clone=1)"
            };
            Check::bad(Status::Fail, "isolation.bubblewrap", problem, fix)
        }
    });
    let missing_ns: Vec<&str> = ["user", "mnt", "pid"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    let max_user = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    out.push(match (missing_ns.is_empty(), max_user) {
        (false, _) => Check::bad(
            Status::Fail,
            "isolation.namespaces",
            format!("the kernel lacks {} namespaces", missing_ns.join(", ")),
            "use a kernel built with CONFIG_USER_NS, CONFIG_PID_NS and CONFIG_NAMESPACES",
        ),
        (true, Some(0)) => Check::bad(
            Status::Fail,
            "isolation.namespaces",
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            "sysctl -w user.max_user_namespaces=15000",
        ),
        (true, _) => Check::ok(
            "isolation.namespaces",
            "user, mount and pid namespaces available",
        ),
    });
    let report = iso.report();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for (on, controller, file) in [
        (report.enforced.memory, "memory", "memory limits"),
        (report.enforced.cpu, "cpu", "CPU quotas"),
        (report.enforced.pids, "pids", "pids limits"),
    ] {
        let name = format!("isolation.cgroup.{controller}");
        out.push(if on {
            Check::ok(name, format!("cgroup {} {controller} controller: {file} enforced", report.cgroups))
        } else {
            let fix = if root {
                format!("mount the {controller} controller (v1: /sys/fs/cgroup/{controller}; v2: enable it in cgroup.subtree_control)")
            } else {
                "run skyfri as root: it creates a cgroup per replica under /sys/fs/cgroup".into()
            };
            Check::bad(
                Status::Fail,
                name,
                format!("{file} are not enforced (cgroups: {})", report.cgroups),
                fix,
            )
        });
    }
    out
}

fn nofile() -> Check {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Check::bad(
            Status::Warn,
            "limits.nofile",
            format!("getrlimit: {}", std::io::Error::last_os_error()),
            "check `ulimit -n`",
        );
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    // `skyfri up` raises its soft limit to the hard one, so the hard limit is what counts.
    let detail = format!("open files: soft {soft}, hard {hard} (skyfri up raises soft to hard)");
    let fix = "LimitNOFILE=1048576 in the unit (skyfri install --systemd), or `ulimit -Hn 1048576` before skyfri up";
    match hard {
        h if h >= NOFILE_GOOD => Check::ok("limits.nofile", detail),
        h if h >= NOFILE_MIN => Check::bad(Status::Warn, "limits.nofile", detail, fix),
        _ => Check::bad(Status::Fail, "limits.nofile", detail, fix),
    }
}

fn disk(data_dir: &Path) -> Check {
    // The data dir may not exist yet: its disk is the one of its nearest existing parent.
    let Some(existing) = data_dir.ancestors().find(|p| p.exists()) else {
        return Check::bad(
            Status::Warn,
            "disk.data_dir",
            format!("no part of {} exists", data_dir.display()),
            "pass --data-dir",
        );
    };
    let Ok(c_path) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return Check::bad(
            Status::Warn,
            "disk.data_dir",
            "path contains NUL",
            "pass --data-dir",
        );
    };
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated C string and statvfs only writes into `st`.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Check::bad(
            Status::Warn,
            "disk.data_dir",
            format!(
                "statvfs {}: {}",
                existing.display(),
                std::io::Error::last_os_error()
            ),
            "pass --data-dir",
        );
    }
    let frsize = st.f_frsize as u64;
    let free = st.f_bavail as u64 * frsize;
    let total = st.f_blocks as u64 * frsize;
    let detail = format!(
        "{} free of {} on the disk of {}",
        gib(free),
        gib(total),
        data_dir.display()
    );
    let fix = "free space on that disk, or move the data dir (--data-dir) to a bigger one";
    if free < DISK_MIN {
        Check::bad(Status::Fail, "disk.data_dir", detail, fix)
    } else if free < DISK_GOOD || free.saturating_mul(10) < total {
        Check::bad(Status::Warn, "disk.data_dir", detail, fix)
    } else {
        Check::ok("disk.data_dir", detail)
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

async fn interpreters() -> Vec<Check> {
    let found = Interpreters::resolve();
    let mut out = Vec::new();
    for (name, path, templates, package) in [
        (
            "python3",
            found.python,
            "python3, python3-http and exec",
            "python3",
        ),
        ("node", found.node, "node", "nodejs"),
    ] {
        let check_name = format!("interpreter.{name}");
        let Some(path) = path else {
            out.push(Check::bad(
                Status::Warn,
                check_name,
                format!("{name} not found: {templates} functions cannot run"),
                format!("apt-get install {package}"),
            ));
            continue;
        };
        let version = tokio::process::Command::new(&path)
            .arg("--version")
            .kill_on_drop(true)
            .output();
        out.push(
            match tokio::time::timeout(Duration::from_secs(10), version).await {
                Ok(Ok(o)) if o.status.success() => {
                    let text = String::from_utf8_lossy(if o.stdout.is_empty() {
                        &o.stderr
                    } else {
                        &o.stdout
                    })
                    .trim()
                    .to_string();
                    Check::ok(check_name, format!("{} ({text})", path.display()))
                }
                Ok(Ok(o)) => Check::bad(
                    Status::Warn,
                    check_name,
                    format!("{} --version failed ({})", path.display(), o.status),
                    format!("reinstall {package}"),
                ),
                Ok(Err(e)) => Check::bad(
                    Status::Warn,
                    check_name,
                    format!("cannot run {}: {e}", path.display()),
                    format!("reinstall {package}"),
                ),
                Err(_) => Check::bad(
                    Status::Warn,
                    check_name,
                    format!("{} --version did not answer in 10 s", path.display()),
                    format!("reinstall {package}"),
                ),
            },
        );
    }
    out
}

/// `host:port` of a nats:// (or tls://) URL.
fn nats_addr(url: &str) -> Result<String> {
    let Some((_, rest)) = url.split_once("://") else {
        bail!("not a URL: use nats://HOST:PORT");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        bail!("no host: use nats://HOST:PORT");
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    Ok(if has_port {
        host.to_string()
    } else {
        format!("{host}:4222")
    })
}

/// Connects and reads the server's greeting: a NATS server opens with an `INFO` line.
async fn nats_reachable(url: &str) -> Result<()> {
    let addr = nats_addr(url)?;
    let talk = async {
        let stream = tokio::net::TcpStream::connect(&addr).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(NATS_TIMEOUT, talk).await {
        Err(_) => bail!("no answer from {addr} in {} s", NATS_TIMEOUT.as_secs()),
        Ok(Err(e)) => bail!("cannot connect to {addr}: {e}"),
        Ok(Ok(line)) if line.starts_with("INFO ") => Ok(()),
        Ok(Ok(line)) => bail!("{addr} is not a NATS server (it said {:?})", line.trim()),
    }
}

fn print(summary: &Summary) {
    for c in &summary.checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        println!("{status:<5} {:<44} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("      fix: {fix}");
        }
    }
    println!(
        "\n{} ok, {} warning(s), {} failure(s)",
        summary.ok, summary.warn, summary.fail
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_addresses() -> Result<()> {
        assert_eq!(nats_addr("nats://127.0.0.1:4222")?, "127.0.0.1:4222");
        assert_eq!(nats_addr("nats://u:p@nats.internal")?, "nats.internal:4222");
        assert_eq!(nats_addr("tls://h:7422/x")?, "h:7422");
        assert!(nats_addr("nats://").is_err());
        assert!(nats_addr("127.0.0.1:4222").is_err());
        Ok(())
    }
}
