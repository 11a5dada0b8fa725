//! The replica sandbox: bubblewrap with its own mount, pid, ipc and uts namespaces (and
//! network, on request), read-only system directories and artefact, a private size-limited
//! `/tmp`, secrets as read-only files, run as an unprivileged user.
//!
//! Host directories reach the sandbox as open file descriptors (`--ro-bind-fd`), so the
//! unprivileged user never needs to traverse the platform's data directory.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Where things appear inside the sandbox.
pub const APP_DIR: &str = "/home/app";
pub const RUN_DIR: &str = "/run/skyfri";
pub const SECRETS_DIR: &str = "/var/openfaas/secrets";

/// The unprivileged user replicas run as when skyfri runs as root.
const NOBODY: (u32, u32) = (65534, 65534);

/// System directories every replica sees read-only (links like `/bin -> usr/bin` are recreated).
const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
];
/// The parts of `/etc` programs need (name resolution, TLS roots, users, time zone); not the
/// rest, which may hold other services' credentials.
const ETC_FILES: [&str; 17] = [
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/gai.conf",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/protocols",
    "/etc/resolv.conf",
    "/etc/ssl",
];

/// A working bubblewrap, and the user to run it as.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// uid/gid to switch to before starting bwrap; `None` when skyfri is not root (bwrap then
    /// runs as skyfri's own unprivileged user).
    user: Option<(u32, u32)>,
}

/// What one replica's sandbox contains.
pub struct Spec<'a> {
    pub hostname: &'a str,
    pub artefact: &'a Path,
    /// The replica's own writable directory (its unix socket lives there).
    pub run: &'a Path,
    pub network: bool,
    pub readonly_root: bool,
    pub tmp_bytes: u64,
    pub cwd: &'a Path,
    pub secrets: &'a [(String, Vec<u8>)],
}

/// A prepared bwrap command line and the descriptors it refers to; they must stay open until
/// the child has been spawned, and are cleared of close-on-exec in the child only.
pub struct Prepared {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub fds: Vec<OwnedFd>,
}

impl Sandbox {
    /// Finds bwrap and checks that it really works here (user namespaces may be disabled).
    pub fn detect() -> Result<Sandbox, String> {
        let bwrap = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("bubblewrap (bwrap) is not installed")?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let sandbox = Sandbox {
            bwrap,
            user: root.then_some(NOBODY),
        };
        sandbox.trial()?;
        Ok(sandbox)
    }

    pub fn user(&self) -> String {
        match self.user {
            Some((uid, _)) => format!("uid {uid}"),
            // SAFETY: geteuid has no preconditions.
            None => format!("uid {} (skyfri's own)", unsafe { libc::geteuid() }),
        }
    }

    pub fn uid(&self) -> Option<(u32, u32)> {
        self.user
    }

    /// bubblewrap, running as the sandbox user, must reach the directories it mounts: gives
    /// the sandbox group search (not read) permission on `dirs` and their parents, and
    /// checks that every directory above them lets it through. Other users get nothing.
    pub fn grant_access(&self, dirs: &[&Path]) -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Some((uid, gid)) = self.user else {
            return Ok(());
        };
        let mut granted: Vec<&Path> = Vec::new();
        for dir in dirs {
            granted.push(dir);
            granted.extend(dir.parent());
        }
        for dir in &granted {
            let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if meta.gid() != gid && meta.mode() & 0o001 == 0 {
                std::os::unix::fs::chown(dir, None, Some(gid))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o010 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o010))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        for dir in dirs {
            for ancestor in dir.ancestors() {
                let meta = std::fs::metadata(ancestor)
                    .map_err(|e| format!("{}: {e}", ancestor.display()))?;
                let mode = meta.mode();
                let passes = mode & 0o001 != 0
                    || (meta.gid() == gid && mode & 0o010 != 0)
                    || (meta.uid() == uid && mode & 0o100 != 0);
                if !passes {
                    return Err(format!(
                        "the sandbox user (uid {uid}) cannot reach {}: {} is closed to it; use a data dir under a directory others may traverse (chmod o+x)",
                        dir.display(),
                        ancestor.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn trial(&self) -> Result<(), String> {
        let mut args: Vec<OsString> = namespaces(true, "skyfri-trial");
        system_binds(&mut args);
        args.extend(["--", "/bin/true"].map(OsString::from));
        let mut cmd = std::process::Command::new(&self.bwrap);
        cmd.args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let user = self.user;
        // SAFETY: the closure only makes async-signal-safe calls (see drop_privileges).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || drop_privileges(user));
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} does not work here ({}): {}",
                self.bwrap.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The bwrap command line that runs `program args` in a sandbox built from `spec`.
    pub fn prepare(
        &self,
        spec: &Spec<'_>,
        program: &Path,
        args: &[String],
    ) -> std::io::Result<Prepared> {
        let mut out = namespaces(spec.network, spec.hostname);
        system_binds(&mut out);
        let mut fds = Vec::new();
        let mut push = |out: &mut Vec<OsString>, flag: &str, fd: OwnedFd, dest: &str| {
            out.push(flag.into());
            out.push(fd.as_raw_fd().to_string().into());
            out.push(dest.into());
            fds.push(fd);
        };
        out.extend(["--size", &spec.tmp_bytes.to_string(), "--tmpfs", "/tmp"].map(OsString::from));
        if !spec.readonly_root {
            out.extend(
                ["--size", &spec.tmp_bytes.to_string(), "--tmpfs", "/var/tmp"].map(OsString::from),
            );
        }
        push(&mut out, "--ro-bind-fd", open_path(spec.artefact)?, APP_DIR);
        push(&mut out, "--bind-fd", open_path(spec.run)?, RUN_DIR);
        // A program outside the system directories (skyfri's own binary, running the lambda
        // shim) is bound read-only at its own path, and nothing else beside it.
        if !SYSTEM_DIRS.iter().any(|dir| program.starts_with(dir)) && program.is_absolute() {
            let dest = program.to_string_lossy().into_owned();
            push(&mut out, "--ro-bind-fd", open_file(program)?, &dest);
        }
        for (name, value) in spec.secrets {
            let dest = format!("{SECRETS_DIR}/{name}");
            push(&mut out, "--ro-bind-data", memfd(name, value)?, &dest);
        }
        out.push("--chdir".into());
        out.push(spec.cwd.into());
        out.push("--".into());
        out.push(program.into());
        out.extend(args.iter().map(OsString::from));
        Ok(Prepared {
            program: self.bwrap.clone(),
            args: out,
            fds,
        })
    }
}

fn namespaces(network: bool, hostname: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        hostname,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    .map(OsString::from)
    .to_vec();
    if !network {
        args.push("--unshare-net".into());
    }
    args
}

fn system_binds(args: &mut Vec<OsString>) {
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            Ok(target) => {
                args.push("--symlink".into());
                args.push(target.into_os_string());
                args.push(dir.into());
            }
            Err(_) if path.is_dir() => {
                args.extend(["--ro-bind", dir, dir].map(OsString::from));
            }
            Err(_) => {}
        }
    }
    for file in ETC_FILES {
        args.extend(["--ro-bind-try", file, file].map(OsString::from));
    }
}

/// An `O_PATH` descriptor of a directory, close-on-exec (cleared in the one child that needs
/// it, so no other replica can inherit it).
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `O_PATH` descriptor of a file, close-on-exec (see [`open_path`]).
fn open_file(path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An anonymous in-memory file holding `value`, read by bwrap into the sandbox's own
/// memory; the secret never touches a disk.
fn memfd(name: &str, value: &[u8]) -> std::io::Result<OwnedFd> {
    let label = std::ffi::CString::new(format!("secret-{name}"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(label.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    std::io::Write::write_all(&mut file, value)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// In the child between fork and exec: keep `fds` open across exec.
pub fn inherit(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl on descriptors the parent opened for this child.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child between fork and exec: become the unprivileged user.
pub fn drop_privileges(user: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = user else {
        return Ok(());
    };
    // SAFETY: setgroups/setgid/setuid are async-signal-safe; results are checked.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
