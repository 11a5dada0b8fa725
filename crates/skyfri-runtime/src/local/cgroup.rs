//! Resource limits of one replica, written straight into the kernel's cgroup files: cgroup v1
//! (one hierarchy per controller, as on hosts with v2 mounted without controllers) or v2 (one
//! unified hierarchy with the controllers enabled). The group also tells how much CPU its
//! processes used (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`), which metering reads.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

const ROOT: &str = "/sys/fs/cgroup";
/// skyfri's own subtree in each hierarchy.
const SUBTREE: &str = "skyfri";
/// CFS period for CPU quotas. Shorter than the kernel's 100 ms so that a throttled
/// neighbour runs in short slices instead of holding both cores for tens of milliseconds,
/// which is what the other functions' tail latency sees.
const CPU_PERIOD_US: u64 = 10_000;

/// Which cgroup hierarchy the host gives us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One directory per controller; `None` where that controller is not mounted or not
    /// writable.
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
        /// CPU accounting; `None` also when it is mounted together with `cpu` (then `cpu`
        /// holds its files).
        cpuacct: Option<PathBuf>,
    },
    /// The unified hierarchy, with the controllers it delegates to skyfri's subtree.
    V2 {
        root: PathBuf,
        memory: bool,
        cpu: bool,
        pids: bool,
    },
    None,
}

/// What the layout can enforce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Enforced {
    pub memory: bool,
    pub cpu: bool,
    pub pids: bool,
}

impl Layout {
    /// Finds a usable hierarchy and creates skyfri's subtree in it. v2 wins when it has
    /// controllers; otherwise v1 controllers are used one by one.
    pub fn detect() -> Layout {
        let layout = Layout::detect_at(Path::new(ROOT));
        layout.sweep_orphans();
        layout
    }

    /// Kills the replicas an earlier skyfri left behind and removes their groups. A replica
    /// dies with skyfri (bwrap --die-with-parent), except when skyfri is killed while the
    /// sandbox is still setting itself up: its inner half then outlives it, adopted by init,
    /// holding memory and a socket nobody will call. Such a group is told apart from a live
    /// one (another skyfri's, another test's) by its processes: none has a parent outside the
    /// group but init. Empty groups are left for a minute (a live skyfri makes its group
    /// before it starts the process that joins it).
    pub fn sweep_orphans(&self) {
        // As init, skyfri is every orphan's parent: nothing can be told apart.
        if std::process::id() == 1 {
            return;
        }
        let bases = self.bases();
        let Some(first) = bases.first() else {
            return;
        };
        let Ok(entries) = fs::read_dir(first) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let group = Group {
                dirs: bases.iter().map(|b| b.join(&name)).collect(),
                memory_dir: None,
                cpu_dir: None,
                v2: false,
                procs: Vec::new(),
            };
            let members = group.members();
            let orphaned = if members.is_empty() {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > EMPTY_GROUP_AGE))
            } else {
                let parents: Vec<(i32, i32)> = members
                    .iter()
                    .filter_map(|&pid| Some((pid, parent_of(pid)?)))
                    .collect();
                orphaned(&parents)
            };
            if !orphaned {
                continue;
            }
            if !members.is_empty() {
                group.kill_all();
                tracing::warn!(
                    group = %name.to_string_lossy(),
                    processes = members.len(),
                    "killed a replica an earlier skyfri left behind"
                );
            }
            group.remove_within(ORPHAN_REMOVE_TRIES);
        }
    }

    /// skyfri's subtree in each hierarchy, the pids one first (the one most hosts have).
    fn bases(&self) -> Vec<PathBuf> {
        match self {
            Layout::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => [pids, memory, cpu, cpuacct]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            Layout::V2 { root, .. } => vec![root.clone()],
            Layout::None => Vec::new(),
        }
    }

    fn detect_at(root: &Path) -> Layout {
        if let Some(v2) = detect_v2(root) {
            return v2;
        }
        let v1 = |controller: &str| {
            let dir = root.join(controller);
            let is_mount = dir.join("cgroup.procs").exists();
            (is_mount && fs::create_dir_all(dir.join(SUBTREE)).is_ok()).then(|| dir.join(SUBTREE))
        };
        let (memory, cpu, pids) = (v1("memory"), v1("cpu"), v1("pids"));
        if memory.is_none() && cpu.is_none() && pids.is_none() {
            return Layout::None;
        }
        // Usually `cpu` and `cpuacct` are one mount (`cpu,cpuacct`, with links to it).
        let same = |a: &Path, b: &Path| match (fs::canonicalize(a), fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let cpuacct = v1("cpuacct").filter(|acct| !cpu.as_deref().is_some_and(|c| same(c, acct)));
        Layout::V1 {
            memory,
            cpu,
            pids,
            cpuacct,
        }
    }

    pub fn enforced(&self) -> Enforced {
        match self {
            Layout::V1 {
                memory, cpu, pids, ..
            } => Enforced {
                memory: memory.is_some(),
                cpu: cpu.is_some(),
                pids: pids.is_some(),
            },
            Layout::V2 {
                memory, cpu, pids, ..
            } => Enforced {
                memory: *memory,
                cpu: *cpu,
                pids: *pids,
            },
            Layout::None => Enforced::default(),
        }
    }

    /// Whether a replica's group tells the CPU it used.
    pub fn accounts_cpu(&self) -> bool {
        match self {
            Layout::V1 { cpu, cpuacct, .. } => cpuacct.is_some() || cpu.is_some(),
            // `cpu.stat` is there in every v2 group, with or without the cpu controller.
            Layout::V2 { .. } => true,
            Layout::None => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Layout::V1 { .. } => "v1",
            Layout::V2 { .. } => "v2",
            Layout::None => "none",
        }
    }
}

fn detect_v2(root: &Path) -> Option<Layout> {
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    if !(has("memory") || has("cpu") || has("pids")) {
        return None;
    }
    let wanted: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| has(c))
        .collect();
    let enable = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    // Controllers must be enabled in every parent's subtree_control down to our groups.
    let sub = root.join(SUBTREE);
    fs::create_dir_all(&sub).ok()?;
    for dir in [root, sub.as_path()] {
        fs::write(dir.join("cgroup.subtree_control"), &enable).ok()?;
    }
    Some(Layout::V2 {
        root: sub,
        memory: has("memory"),
        cpu: has("cpu"),
        pids: has("pids"),
    })
}

/// The limits of one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// The CPU the replica asked for (`requests.cpu`, else its limit): its weight when
    /// replicas compete for a core, as Kubernetes derives cpu.shares.
    pub cpu_request_millis: Option<u64>,
    pub pids: Option<u64>,
}

/// A replica's own cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug)]
pub struct Group {
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    /// The directory with the group's CPU accounting.
    cpu_dir: Option<PathBuf>,
    v2: bool,
    /// `cgroup.procs` of every directory, ready for the child to write itself into between
    /// fork and exec (no allocation allowed there).
    procs: Vec<CString>,
}

impl Group {
    /// Creates the group `name` and writes `limits` into it.
    pub fn create(layout: &Layout, name: &str, limits: Limits) -> std::io::Result<Group> {
        let mut group = Group {
            dirs: Vec::new(),
            memory_dir: None,
            cpu_dir: None,
            v2: matches!(layout, Layout::V2 { .. }),
            procs: Vec::new(),
        };
        match layout {
            Layout::None => {}
            Layout::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => {
                if let Some(base) = memory {
                    let dir = group.add(base, name)?;
                    if let Some(bytes) = limits.memory {
                        fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
                        // Without a swap limit the cgroup would swap instead of being killed;
                        // the file only exists when the kernel accounts swap.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            fs::write(memsw, bytes.to_string())?;
                        }
                    }
                    group.memory_dir = Some(dir);
                }
                if let Some(base) = cpu {
                    let dir = group.add(base, name)?;
                    if let Some(millis) = limits.cpu_millis {
                        fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                        fs::write(dir.join("cpu.cfs_quota_us"), quota_us(millis).to_string())?;
                    }
                    if let Some(millis) = limits.cpu_request_millis {
                        fs::write(dir.join("cpu.shares"), shares(millis).to_string())?;
                    }
                    group.cpu_dir = Some(dir);
                }
                if let Some(base) = cpuacct {
                    group.cpu_dir = Some(group.add(base, name)?);
                }
                if let Some(base) = pids {
                    let dir = group.add(base, name)?;
                    if let Some(n) = limits.pids {
                        fs::write(dir.join("pids.max"), n.to_string())?;
                    }
                }
            }
            Layout::V2 {
                root,
                memory,
                cpu,
                pids,
            } => {
                let dir = group.add(root, name)?;
                if let (true, Some(bytes)) = (memory, limits.memory) {
                    fs::write(dir.join("memory.max"), bytes.to_string())?;
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                if let (true, Some(millis)) = (cpu, limits.cpu_millis) {
                    fs::write(
                        dir.join("cpu.max"),
                        format!("{} {CPU_PERIOD_US}", quota_us(millis)),
                    )?;
                }
                if let (true, Some(millis)) = (cpu, limits.cpu_request_millis) {
                    // cpu.weight is 1..10000 with 100 as the default (v1's 1024).
                    let weight = (shares(millis) * 100 / 1024).clamp(1, 10_000);
                    fs::write(dir.join("cpu.weight"), weight.to_string())?;
                }
                if let (true, Some(n)) = (pids, limits.pids) {
                    fs::write(dir.join("pids.max"), n.to_string())?;
                }
                if *memory {
                    group.memory_dir = Some(dir.clone());
                }
                group.cpu_dir = Some(dir);
            }
        }
        Ok(group)
    }

    /// Renames the group to `name` (its processes stay in it, with what they have charged)
    /// and writes `limits` into it: how a stem cell's group becomes its replica's. After an
    /// error the group still names its directories, so it can be emptied and removed.
    pub fn rename(&mut self, layout: &Layout, name: &str, limits: Limits) -> std::io::Result<()> {
        for dir in &mut self.dirs {
            let renamed = dir.with_file_name(name);
            fs::rename(&*dir, &renamed)?;
            *dir = renamed;
        }
        self.memory_dir = self.memory_dir.as_ref().map(|d| d.with_file_name(name));
        self.cpu_dir = self.cpu_dir.as_ref().map(|d| d.with_file_name(name));
        *self = Group::create(layout, name, limits)?;
        Ok(())
    }

    fn add(&mut self, base: &Path, name: &str) -> std::io::Result<PathBuf> {
        let dir = base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.procs.push(procs);
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// What the child runs between fork and exec to move itself into the group.
    pub fn joiner(&self) -> Joiner {
        Joiner {
            procs: self.procs.clone(),
        }
    }

    /// How many times the kernel's OOM killer has killed a process of this group.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (k, v) = line.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// CPU time the group's processes have used since it was made (those gone included),
    /// `None` where the host does not account it.
    pub fn cpu_usage(&self) -> Option<Duration> {
        let dir = self.cpu_dir.as_ref()?;
        if self.v2 {
            let text = fs::read_to_string(dir.join("cpu.stat")).ok()?;
            let usec = text.lines().find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == "usage_usec").then(|| v.trim().parse().ok()).flatten()
            })?;
            Some(Duration::from_micros(usec))
        } else {
            let text = fs::read_to_string(dir.join("cpuacct.usage")).ok()?;
            Some(Duration::from_nanos(text.trim().parse().ok()?))
        }
    }

    /// SIGKILLs every process left in the group (a sandbox's stragglers).
    pub fn kill_all(&self) {
        for pid in self.members() {
            // SAFETY: kill(2) of a pid read from our own cgroup; ESRCH is harmless.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// The processes in the group, each once (a process is in every hierarchy's directory).
    fn members(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.dirs.iter().flat_map(|d| procs(d)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Group {
    /// Removes the group's directories; its processes must be gone (they are being reaped
    /// right after a kill, hence the short retry).
    pub fn remove(&self) {
        self.remove_within(20);
    }

    fn remove_within(&self, tries: u32) {
        for dir in &self.dirs {
            for _ in 0..tries {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// A group left empty this long is no live skyfri's group about to be joined.
const EMPTY_GROUP_AGE: Duration = Duration::from_secs(60);
/// Killed orphans are reaped by init, not by us: give it up to a quarter second.
const ORPHAN_REMOVE_TRIES: u32 = 250;

/// The processes in the group directory `dir` (none when it is not there).
fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The parent of `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    i32::try_from(crate::procfs::parent(u32::try_from(pid).ok()?)?).ok()
}

/// Whether a group whose processes have these `(pid, parent)` pairs is left behind: every
/// parent is init or a process of the group itself (a live replica's sandbox has skyfri, or
/// the test running it, as the parent of its first process).
fn orphaned(members: &[(i32, i32)]) -> bool {
    !members.is_empty()
        && members
            .iter()
            .all(|&(_, parent)| parent == 1 || members.iter().any(|&(pid, _)| pid == parent))
}

/// Moves the calling process into a group; built before fork, run in the child.
pub struct Joiner {
    procs: Vec<CString>,
}

impl Joiner {
    /// Only async-signal-safe calls, no allocation: this runs between fork and exec.
    pub fn join(&self) -> std::io::Result<()> {
        for path in &self.procs {
            // SAFETY: open/write/close on a valid NUL-terminated path and a static buffer.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Writing "0" moves the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// v1 cpu.shares for a CPU request: 1024 per core, within the kernel's bounds.
fn shares(millis: u64) -> u64 {
    (millis.saturating_mul(1024) / 1000).clamp(2, 262_144)
}

fn quota_us(millis: u64) -> u64 {
    // 1000 millicores = one full period; the kernel's minimum quota is 1 ms.
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

/// A fake cgroup v1 root in `root` with `controllers` mounted, for tests.
#[cfg(test)]
pub(super) fn fake_v1(root: &Path, controllers: &[&str]) -> std::io::Result<Layout> {
    for c in controllers {
        fs::create_dir_all(root.join(c))?;
        fs::write(root.join(c).join("cgroup.procs"), "")?;
    }
    Ok(Layout::detect_at(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_orphaned_when_only_init_and_itself_are_parents() {
        // The inner bwrap adopted by init, the shim its child.
        assert!(orphaned(&[(2147, 1), (2166, 2147)]));
        // A live sandbox: the outer bwrap is skyfri's child.
        assert!(!orphaned(&[(300, 250), (301, 300), (302, 301)]));
        // Adopted by a subreaper, not init: left alone.
        assert!(!orphaned(&[(400, 77), (401, 400)]));
        assert!(!orphaned(&[]));
    }

    #[test]
    fn a_live_child_is_not_swept() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = fake_v1(dir.path(), &["pids"])?;
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let group = dir.path().join("pids/skyfri/f-1");
        fs::create_dir_all(&group)?;
        fs::write(group.join("cgroup.procs"), format!("{}\n", child.id()))?;
        assert_eq!(
            parent_of(child.id() as i32),
            Some(std::process::id() as i32)
        );
        layout.sweep_orphans();
        assert!(child.try_wait()?.is_none(), "a live replica was killed");
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    #[test]
    fn quotas() {
        assert_eq!(quota_us(1000), 10_000);
        assert_eq!(quota_us(500), 5_000);
        assert_eq!(quota_us(2500), 25_000);
        assert_eq!(quota_us(1), 1000);
        assert_eq!(shares(500), 512);
        assert_eq!(shares(0), 2);
    }

    #[test]
    fn v1_layout_from_a_fake_tree() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = fake_v1(dir.path(), &["memory", "pids"])?;
        assert_eq!(
            layout.enforced(),
            Enforced {
                memory: true,
                cpu: false,
                pids: true
            }
        );
        assert_eq!(layout.name(), "v1");
        let group = Group::create(
            &layout,
            "f-1",
            Limits {
                memory: Some(1 << 20),
                cpu_millis: Some(500),
                cpu_request_millis: Some(500),
                pids: Some(64),
            },
        )?;
        let mem = dir.path().join("memory/skyfri/f-1/memory.limit_in_bytes");
        assert_eq!(fs::read_to_string(mem)?, "1048576");
        assert_eq!(
            fs::read_to_string(dir.path().join("pids/skyfri/f-1/pids.max"))?,
            "64"
        );
        fs::write(
            dir.path().join("memory/skyfri/f-1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )?;
        assert_eq!(group.oom_kills(), 2);
        // No cpu or cpuacct controller: no CPU accounting.
        assert!(!layout.accounts_cpu());
        assert_eq!(group.cpu_usage(), None);
        Ok(())
    }

    #[test]
    fn v1_cpu_accounting_from_a_separate_cpuacct_mount() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = fake_v1(dir.path(), &["cpu", "cpuacct"])?;
        assert!(layout.accounts_cpu());
        let group = Group::create(&layout, "f-3", Limits::default())?;
        fs::write(
            dir.path().join("cpuacct/skyfri/f-3/cpuacct.usage"),
            "1500000000\n",
        )?;
        assert_eq!(group.cpu_usage(), Some(Duration::from_millis(1500)));
        Ok(())
    }

    #[test]
    fn v1_cpu_and_cpuacct_mounted_together_are_one_directory() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for link in ["cpu", "cpuacct"] {
            std::os::unix::fs::symlink("cpu,cpuacct", dir.path().join(link))?;
        }
        let layout = fake_v1(dir.path(), &["cpu,cpuacct"])?;
        let both = dir.path().join("cpu,cpuacct");
        assert!(matches!(layout, Layout::V1 { cpuacct: None, .. }));
        let group = Group::create(&layout, "f-4", Limits::default())?;
        assert_eq!(group.joiner().procs.len(), 1, "joined once");
        fs::write(both.join("skyfri/f-4/cpuacct.usage"), "2000")?;
        assert_eq!(group.cpu_usage(), Some(Duration::from_micros(2)));
        Ok(())
    }

    #[test]
    fn v2_layout_enables_controllers_and_writes_limits() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )?;
        let layout = Layout::detect_at(dir.path());
        assert_eq!(layout.name(), "v2");
        assert_eq!(
            fs::read_to_string(dir.path().join("skyfri/cgroup.subtree_control"))?,
            "+memory +cpu +pids"
        );
        let group = Group::create(
            &layout,
            "f-2",
            Limits {
                memory: Some(64 << 20),
                cpu_millis: Some(250),
                cpu_request_millis: None,
                pids: Some(32),
            },
        )?;
        let group_dir = dir.path().join("skyfri/f-2");
        fs::write(
            group_dir.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        )?;
        assert_eq!(group.cpu_usage(), Some(Duration::from_micros(2500)));
        let group = group_dir;
        assert_eq!(fs::read_to_string(group.join("memory.max"))?, "67108864");
        assert_eq!(fs::read_to_string(group.join("cpu.max"))?, "2500 10000");
        assert_eq!(fs::read_to_string(group.join("pids.max"))?, "32");
        Ok(())
    }

    #[test]
    fn nothing_mounted_is_none() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(Layout::detect_at(dir.path()), Layout::None);
        Ok(())
    }
}
