//! Stem cells: sandboxed interpreters started before any function needs them, so that a
//! scale-up (from zero above all) loads a handler instead of booting an interpreter. The
//! prior art is OpenWhisk's prewarmed containers and Fission's pool manager.
//!
//! A cell is the Python or Node shim (`SKYFRI_CELL=1`) in a bubblewrap sandbox like a
//! replica's, in a cgroup of its own, with `/home/app` bound from an empty directory below
//! a shared mount point (`<run>/cells`). Specialising it into a replica of a function:
//!
//! 1. attach a read-only clone of the function's artefact on that directory: the mount
//!    propagates into the cell's sandbox (bubblewrap makes its copies slaves);
//! 2. rename the cell's run directory and cgroup to the replica's, and write the
//!    function's limits into the cgroup;
//! 3. POST `/_/specialise` to the shim with the function's environment, directory and
//!    calling convention; it imports the handler and answers, and serves as the replica
//!    from then on. If that process exits, the replica restarts from scratch as any other.
//!
//! Cells are kept per [`Shape`], what a sandbox is started with. The default shape of each
//! interpreter found is kept [`WARM`] deep from the start; a shape a function asked for
//! and did not find is kept one deep from then on, for at most [`MAX_SHAPES`] shapes, so
//! the pool's memory is bounded. A function whose sandbox needs what a cell cannot get
//! later (secrets, interpreter variables such as `PYTHONPATH`) starts from scratch.
//!
//! Cells need the sandbox and root (for the mounts, and to rename the cell's host: its
//! kernel hostname becomes the replica's instance name, as `HOSTNAME` in its environment).
//!
//! A cold start waits for the specialisation and the first call, so nothing else of the pool's
//! may compete with them for the CPU: a cell boots in `SCHED_IDLE` (preempted by whatever
//! wakes) and is promoted to the normal class once it answers its probe, and the pool refills
//! [`REFILL_DELAY`] after a specialisation rather than during its first call.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::cgroup::{Group, Limits};
use super::isolation::Isolation;
use super::launch::{Interpreters, Launch, Probe, Runtime, DEFAULT_PIDS, DEFAULT_TMP_BYTES};
use super::logs::LogSink;
use super::metering::CpuLedger;
use super::mounts;
use super::probe;
use super::sandbox::{self, Spec};
use super::supervisor::{self, Adopted, Priority, Replica, SOCKET_NAME};
use crate::provider::Endpoint;
use crate::templates;

/// Cells kept ready of each interpreter's default shape.
pub const WARM: usize = 2;
/// Shapes kept at most.
pub const MAX_SHAPES: usize = 8;
/// How long a cell may take to start, or to load a handler.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting cell is probed.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How often idle cells are checked for having died.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long after a specialisation the pool starts refilling: long enough for the new
/// replica's first call (the cold start a caller waits for) to be served without the next
/// cell's sandbox and interpreter start (tens of ms of CPU, and a fork of skyfri) beside it.
const REFILL_DELAY: Duration = Duration::from_millis(20);
/// Largest answer read from a specialising shim (a traceback).
const MAX_ANSWER: usize = 64 << 10;
const CELL_PREFIX: &str = "cell-";

/// What a cell's sandbox is started with; a function can use a cell of its own shape only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub runtime: Runtime,
    pub network: bool,
    pub readonly_root: bool,
    pub tmp_bytes: u64,
}

impl Shape {
    /// The shape of cell `launch` can be served by, if any.
    pub fn of(launch: &Launch) -> Option<Shape> {
        launch.stem.map(|stem| Shape {
            runtime: stem.runtime,
            network: launch.network,
            readonly_root: launch.readonly_root,
            tmp_bytes: launch.tmp_bytes,
        })
    }

    fn default_for(runtime: Runtime) -> Shape {
        Shape {
            runtime,
            network: true,
            readonly_root: false,
            tmp_bytes: DEFAULT_TMP_BYTES,
        }
    }
}

/// Where a cell's output goes: nowhere but the debug log until it is adopted, then the
/// replica's log.
type Owner = Arc<OnceLock<(Weak<Replica>, Arc<LogSink>)>>;

struct Cell {
    id: String,
    /// Its run directory (the socket), bound at `/run/skyfri`.
    dir: PathBuf,
    /// `<cells>/<id>`; its `app` is bound at `/home/app`.
    mount: PathBuf,
    child: Child,
    readers: [JoinHandle<()>; 2],
    group: Option<Group>,
    owner: Owner,
}

impl Cell {
    fn app(&self) -> PathBuf {
        self.mount.join("app")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the cell and removes what it had.
    async fn discard(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) of the process group we created for the cell.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait().await;
        if let Some(group) = &self.group {
            group.kill_all();
            group.remove();
        }
        for reader in &self.readers {
            reader.abort();
        }
        MountPoint(self.mount.clone()).clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cell's mount point; cleared when the process that used it is gone.
struct MountPoint(PathBuf);

impl MountPoint {
    fn clear(&self) {
        let app = self.0.join("app");
        mounts::detach(&app);
        // Never recursive: if the detach failed, the artefact is still below.
        let _ = std::fs::remove_dir(&app);
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The pool of stem cells.
pub struct Cells {
    run_dir: PathBuf,
    mounts_dir: PathBuf,
    isolation: Isolation,
    interpreters: Interpreters,
    idle: Mutex<HashMap<Shape, Vec<Cell>>>,
    /// How many cells to keep of each shape.
    wanted: Mutex<HashMap<Shape, usize>>,
    refill: Notify,
    /// Replicas made from cells since the start.
    used: AtomicU64,
    stop: watch::Sender<bool>,
    refiller: Mutex<Option<JoinHandle<()>>>,
    /// Where the replicas made from cells report their CPU.
    ledger: Arc<CpuLedger>,
}

impl Cells {
    /// The pool, started; `None` (and a log line saying why) where cells cannot work.
    pub fn start(
        run_dir: &Path,
        isolation: &Isolation,
        interpreters: &Interpreters,
        ledger: &Arc<CpuLedger>,
    ) -> Option<Arc<Cells>> {
        let unavailable = |why: &str| {
            tracing::warn!("no stem cells, functions start from scratch: {why}");
            None
        };
        let Some(sandbox) = &isolation.sandbox else {
            return unavailable("they need the sandbox");
        };
        if sandbox.uid().is_none() {
            return unavailable("they need skyfri to run as root (mounts)");
        }
        let mounts_dir = run_dir.join("cells");
        clear_leftovers(run_dir, &mounts_dir);
        if let Err(e) =
            std::fs::create_dir_all(&mounts_dir).and_then(|()| mounts::make_shared(&mounts_dir))
        {
            return unavailable(&format!(
                "cannot make {} a shared mount: {e}",
                mounts_dir.display()
            ));
        }
        let mut wanted = HashMap::new();
        if interpreters.python.is_some() {
            wanted.insert(Shape::default_for(Runtime::Python), WARM);
        }
        if interpreters.node.is_some() {
            wanted.insert(Shape::default_for(Runtime::Node), WARM);
        }
        let cells = Arc::new(Cells {
            run_dir: run_dir.to_path_buf(),
            mounts_dir,
            isolation: isolation.clone(),
            interpreters: interpreters.clone(),
            idle: Mutex::new(HashMap::new()),
            wanted: Mutex::new(wanted),
            refill: Notify::new(),
            used: AtomicU64::new(0),
            stop: watch::channel(false).0,
            refiller: Mutex::new(None),
            ledger: Arc::clone(ledger),
        });
        let task = tokio::spawn(Arc::clone(&cells).keep_filled());
        *cells
            .refiller
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Some(cells)
    }

    /// Idle cells by interpreter, for reports.
    pub fn idle(&self) -> HashMap<Runtime, usize> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = HashMap::new();
        for (shape, cells) in idle.iter() {
            *out.entry(shape.runtime).or_insert(0) += cells.len();
        }
        out
    }

    /// Replicas made from cells since the start.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// A replica of `launch` made from a cell, or `None` when there is no cell for it (the
    /// caller starts one from scratch). A cell that fails to specialise is discarded and
    /// its error logged.
    pub async fn replica(
        self: &Arc<Self>,
        launch: &Arc<Launch>,
        logs: &Arc<LogSink>,
    ) -> Option<Arc<Replica>> {
        let shape = Shape::of(launch)?;
        let cell = self.take(shape)?;
        let id = cell.id.clone();
        let started = Instant::now();
        let made = self.specialise(cell, launch, logs).await;
        match made {
            Ok((replica, steps)) => {
                tracing::debug!(function = %launch.function, cell = %id, took_us = micros(started.elapsed()), mount_us = steps.mount, rename_us = steps.rename, hostname_us = steps.hostname, cgroup_us = steps.cgroup, load_us = steps.load, "specialised a stem cell");
                // Refill after the replica's first call, not during: on a small machine the
                // next cell's start would compete with it for the CPU.
                let cells = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(REFILL_DELAY).await;
                    cells.refill.notify_one();
                });
                Some(replica)
            }
            Err(e) => {
                tracing::warn!(function = %launch.function, cell = %id, error = %e, "stem cell not specialised; starting from scratch");
                self.refill.notify_one();
                None
            }
        }
    }

    /// Stops refilling and kills every idle cell.
    pub async fn shutdown(&self) {
        // Kept even when the refiller has not subscribed yet (`send` would drop it, and the
        // refiller, started later, would never stop).
        self.stop.send_replace(true);
        let task = self
            .refiller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let all = self.take_all();
        for cell in all {
            cell.discard().await;
        }
        mounts::detach(&self.mounts_dir);
    }

    /// For a provider dropped without [`Cells::shutdown`] (tests, error paths): stops
    /// refilling, kills the idle cells and lets go of the mounts, without waiting.
    pub fn abandon(&self) {
        self.stop.send_replace(true);
        let all = self.take_all();
        for mut cell in all {
            if let Some(pid) = cell.child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) of the process group we created for the cell.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = cell.child.try_wait();
            if let Some(group) = &cell.group {
                group.kill_all();
                group.remove();
            }
            MountPoint(cell.mount.clone()).clear();
            let _ = std::fs::remove_dir_all(&cell.dir);
        }
        mounts::detach(&self.mounts_dir);
    }

    fn take_all(&self) -> Vec<Cell> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .flat_map(|(_, cells)| cells)
            .collect()
    }

    fn take(&self, shape: Shape) -> Option<Cell> {
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let cells = idle.entry(shape).or_default();
            let mut found = None;
            while let Some(mut cell) = cells.pop() {
                if cell.alive() {
                    found = Some(cell);
                    break;
                }
                tokio::spawn(cell.discard());
            }
            found
        };
        if found.is_none() {
            let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            if !wanted.contains_key(&shape) && wanted.len() < MAX_SHAPES {
                wanted.insert(shape, 1);
            }
            self.refill.notify_one();
        }
        found
    }

    async fn specialise(
        &self,
        mut cell: Cell,
        launch: &Arc<Launch>,
        logs: &Arc<LogSink>,
    ) -> Result<(Arc<Replica>, Steps), String> {
        let stem = launch.stem.ok_or("the function has no stem")?;
        let instance = format!(
            "{}-{}",
            launch.function,
            cell.id.trim_start_matches(CELL_PREFIX)
        );
        let dir = self.run_dir.join(&instance);
        let mut took = Steps::default();
        let steps = async {
            let mut clock = Instant::now();
            let mut lap = || {
                let now = Instant::now();
                micros(now - std::mem::replace(&mut clock, now))
            };
            mounts::attach_read_only(&launch.artefact, &cell.app())
                .map_err(|e| format!("mounting the artefact: {e}"))?;
            took.mount = lap();
            std::fs::rename(&cell.dir, &dir)
                .map_err(|e| format!("renaming the run directory: {e}"))?;
            cell.dir = dir.clone();
            took.rename = lap();
            if let Some(pid) = cell.child.id() {
                set_hostname(pid, &instance).map_err(|e| format!("setting the hostname: {e}"))?;
            }
            took.hostname = lap();
            if let Some(group) = &mut cell.group {
                group
                    .rename(&self.isolation.cgroups, &instance, launch.limits)
                    .map_err(|e| format!("setting the function's limits: {e}"))?;
            }
            took.cgroup = lap();
            let env: serde_json::Map<String, serde_json::Value> = launch
                .environment(
                    &instance,
                    Path::new("/tmp"),
                    &Path::new(sandbox::RUN_DIR).join(SOCKET_NAME),
                    None,
                )
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            let body = serde_json::json!({
                "mode": stem.mode,
                "cwd": launch.cwd,
                "env": env,
            });
            let (status, text) = tokio::time::timeout(
                START_TIMEOUT,
                post(
                    &dir.join(SOCKET_NAME),
                    "/_/specialise",
                    body.to_string().as_bytes(),
                ),
            )
            .await
            .map_err(|_| format!("the handler did not load in {} s", START_TIMEOUT.as_secs()))?
            .map_err(|e| format!("talking to the cell: {e}"))?;
            if status != 200 {
                return Err(format!(
                    "the handler did not load ({status}): {}",
                    text.trim()
                ));
            }
            took.load = lap();
            Ok(())
        };
        if let Err(e) = steps.await {
            cell.discard().await;
            return Err(e);
        }
        let owner = Arc::clone(&cell.owner);
        let replica = Replica::adopt(
            Arc::clone(launch),
            Arc::clone(logs),
            &self.isolation,
            Adopted {
                instance,
                dir,
                child: cell.child,
                readers: cell.readers,
                group: cell.group,
                keep: Box::new(MountPoint(cell.mount)),
            },
            Arc::clone(&self.ledger),
        );
        let _ = owner.set((Arc::downgrade(&replica), Arc::clone(logs)));
        self.used.fetch_add(1, Ordering::Relaxed);
        Ok((replica, took))
    }

    /// Keeps every wanted shape filled, and idle cells alive, until shutdown.
    async fn keep_filled(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut failing: HashSet<Shape> = HashSet::new();
        loop {
            let wanted: Vec<(Shape, usize)> = self
                .wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(s, n)| (*s, *n))
                .collect();
            for (shape, want) in wanted {
                self.sweep(shape);
                while self.count(shape) < want && !*stop.borrow() {
                    match self.spawn_cell(shape).await {
                        Ok(cell) => {
                            failing.remove(&shape);
                            self.idle
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .entry(shape)
                                .or_default()
                                .push(cell);
                        }
                        Err(e) => {
                            // Tried again at the next sweep; said once.
                            if failing.insert(shape) {
                                tracing::warn!(?shape, error = %e, "cannot start a stem cell");
                            }
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.refill.notified() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn count(&self, shape: Shape) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shape)
            .map_or(0, Vec::len)
    }

    /// Drops idle cells of `shape` whose process died.
    fn sweep(&self, shape: Shape) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(cells) = idle.get_mut(&shape) else {
            return;
        };
        let mut i = 0;
        while i < cells.len() {
            if cells[i].alive() {
                i += 1;
            } else {
                tokio::spawn(cells.swap_remove(i).discard());
            }
        }
    }

    async fn spawn_cell(&self, shape: Shape) -> Result<Cell, String> {
        let sandbox = self.isolation.sandbox.as_ref().ok_or("no sandbox")?;
        let (program, args) = match shape.runtime {
            Runtime::Python => (
                self.interpreters.python.clone().ok_or("no python3")?,
                ["-c", templates::PYTHON_SHIM_SRC],
            ),
            Runtime::Node => (
                self.interpreters.node.clone().ok_or("no node")?,
                ["-e", templates::NODE_SHIM_SRC],
            ),
        };
        let args = args.map(str::to_string);
        let id = format!("{CELL_PREFIX}{:08x}", rand::random::<u32>());
        let dir = self.run_dir.join(&id);
        let mount = self.mounts_dir.join(&id);
        supervisor::make_private_dir(&dir, sandbox.uid()).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(mount.join("app"))
            .map_err(|e| format!("{}: {e}", mount.display()))?;
        let group = Group::create(
            &self.isolation.cgroups,
            &id,
            Limits {
                pids: Some(DEFAULT_PIDS),
                ..Limits::default()
            },
        )
        .map_err(|e| format!("creating the cgroup of {id}: {e}"))?;
        let env: Vec<(String, String)> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("PYTHONUNBUFFERED", "1"),
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("SKYFRI_CELL", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([(
            "SKYFRI_SOCKET".to_string(),
            Path::new(sandbox::RUN_DIR)
                .join(SOCKET_NAME)
                .display()
                .to_string(),
        )])
        .collect();
        let app = mount.join("app");
        let spawned = supervisor::spawn_process(
            Some(sandbox),
            &Spec {
                hostname: &id,
                artefact: &app,
                run: &dir,
                network: shape.network,
                readonly_root: shape.readonly_root,
                tmp_bytes: shape.tmp_bytes,
                cwd: Path::new("/tmp"),
                secrets: &[],
            },
            &program,
            &args,
            &env,
            Some(&group),
            Priority::Background,
        );
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                group.remove();
                MountPoint(mount).clear();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("starting {}: {e}", program.display()));
            }
        };
        let owner: Owner = Arc::new(OnceLock::new());
        let readers = [
            forward(child.stdout.take(), &id, &owner),
            forward(child.stderr.take(), &id, &owner),
        ];
        let mut cell = Cell {
            id,
            dir,
            mount,
            child,
            readers,
            group: Some(group),
            owner,
        };
        let endpoint = Endpoint::Unix(cell.dir.join(SOCKET_NAME));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if !cell.alive() {
                cell.discard().await;
                return Err("the interpreter exited before it was ready".into());
            }
            if probe::is_ready(&endpoint, &Probe::Shim).await {
                // Booted (in the background class, see `Priority`): from now on it waits
                // in accept, and what it does next (specialise, serve) is a caller's.
                return match cell.child.id().map(promote) {
                    Some(Err(e)) => {
                        cell.discard().await;
                        Err(format!("restoring the CPU priority of a booted cell: {e}"))
                    }
                    _ => Ok(cell),
                };
            }
            if Instant::now() >= deadline {
                cell.discard().await;
                return Err(format!("not ready after {} s", START_TIMEOUT.as_secs()));
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// How long each step of a specialisation took, in µs, for the debug log.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    mount: u64,
    rename: u64,
    hostname: u64,
    cgroup: u64,
    load: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Rounds of [`promote`] at most: a cell creates no threads while it waits, so the second
/// round normally finds nothing new.
const PROMOTE_ROUNDS: usize = 4;

/// Moves every thread of the cell whose bubblewrap is `pid` (bubblewrap, the sandbox's init,
/// the interpreter and their threads) from the background scheduling class it booted in to
/// the normal one, which its replica runs in. Threads are found through `/proc`, children per thread; a thread that
/// ended meanwhile is skipped. Rounds repeat until no new thread turns up, so one made by a
/// thread that was still in the background class is not missed.
fn promote(pid: u32) -> std::io::Result<()> {
    let root = i32::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad pid"))?;
    let mut done: HashSet<i32> = HashSet::new();
    for _ in 0..PROMOTE_ROUNDS {
        let mut fresh = 0;
        for tid in cell_threads(root) {
            if !done.insert(tid) {
                continue;
            }
            fresh += 1;
            match supervisor::set_scheduler(tid, libc::SCHED_OTHER) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(e),
                _ => {}
            }
        }
        if fresh == 0 {
            return Ok(());
        }
    }
    Ok(())
}

/// The threads of `pid` and of all its descendants, from `/proc`.
fn cell_threads(pid: i32) -> Vec<i32> {
    let mut threads = Vec::new();
    let mut processes = vec![pid];
    while let Some(p) = processes.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            threads.push(tid);
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                processes.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    threads
}

/// Sends a cell's output to its replica's log once it has one.
fn forward<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    stream: Option<R>,
    id: &str,
    owner: &Owner,
) -> JoinHandle<()> {
    let (id, owner) = (id.to_string(), Arc::clone(owner));
    supervisor::read_lines(stream, move |text| {
        match owner.get().and_then(|(r, logs)| Some((r.upgrade()?, logs))) {
            Some((replica, logs)) => replica.record(logs, text),
            None => tracing::debug!(cell = %id, "{text}"),
        }
    })
}

/// Sets the kernel hostname of the cell whose bubblewrap is `pid` to the replica's name.
/// The sandboxed processes are bubblewrap's children, in the cell's UTS namespace; the
/// calling thread joins that namespace just for this (a thread may, unlike for mount
/// namespaces), then goes back to its own. No await in between: nothing else runs on this
/// thread meanwhile. (Not a thread of its own: starting one costs a scheduler round trip,
/// milliseconds on a busy host, on the cold-start path.)
fn set_hostname(pid: u32, hostname: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let inner = children.split_whitespace().next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the sandbox has no process")
    })?;
    let cell = std::fs::File::open(format!("/proc/{inner}/ns/uts"))?;
    let own = std::fs::File::open("/proc/thread-self/ns/uts")?;
    let name = hostname.as_bytes();
    // SAFETY: setns on namespace descriptors we opened, sethostname with a valid buffer and
    // length; both only affect this thread, which is back in its own namespace before the
    // function returns.
    unsafe {
        if libc::setns(cell.as_raw_fd(), libc::CLONE_NEWUTS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let set = if libc::sethostname(name.as_ptr().cast(), name.len()) != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        if libc::setns(own.as_raw_fd(), libc::CLONE_NEWUTS) != 0 {
            let e = std::io::Error::last_os_error();
            tracing::error!(error = %e, "a skyfri thread could not return to its own UTS namespace");
            return Err(e);
        }
        set
    }
}

/// A one-shot HTTP/1.1 POST over a unix socket: the status and the body.
async fn post(socket: &Path, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    // One write: the shim reads the whole request at once instead of waking twice.
    request.extend_from_slice(body);
    stream.write_all(&request).await?;
    // Read until the answer is complete by its Content-Length (the shim always sends one)
    // rather than until the shim closes: one wake-up less on the cold-start path.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer.len() < MAX_ANSWER && !complete(&answer) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n.min(MAX_ANSWER - answer.len())]);
    }
    let text = String::from_utf8_lossy(&answer);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// Whether `answer` holds an HTTP head and as many body bytes as its Content-Length says.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| answer.len() >= end + 4 + n)
}

/// Clears what a killed skyfri left in the cells directory: its mounts, then the empty
/// directories (never recursively: a mount that would not go keeps its artefact safe).
fn clear_leftovers(run_dir: &Path, mounts_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(CELL_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    for mount in mounts::below(mounts_dir) {
        mounts::detach(&mount);
    }
    if let Ok(entries) = std::fs::read_dir(mounts_dir) {
        for entry in entries.flatten() {
            MountPoint(entry.path()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn policy(tid: i32) -> libc::c_int {
        // SAFETY: sched_getscheduler only reads the thread's policy.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A pool shut down before its refiller ever ran (on this single-threaded runtime it
    /// cannot have) must still stop: the stop request may not be lost for want of a listener.
    #[tokio::test]
    async fn a_pool_shut_down_at_once_stops() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let isolation = Isolation::detect();
        let ledger = Arc::new(CpuLedger::default());
        let Some(cells) = Cells::start(dir.path(), &isolation, &Interpreters::resolve(), &ledger)
        else {
            eprintln!("SKIPPED: no stem cells on this host (they need root and the sandbox)");
            return Ok(());
        };
        let stopped = tokio::time::timeout(Duration::from_secs(30), cells.shutdown()).await;
        assert!(stopped.is_ok(), "the refiller did not stop");
        assert!(cells.idle().values().all(|&n| n == 0));
        Ok(())
    }

    #[test]
    fn answers_are_complete_by_their_content_length() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n"));
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nspecial"
        ));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nspecialised"
        ));
        // Without a length, only the end of the stream completes it.
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nspecialised"));
    }

    #[test]
    fn promote_moves_a_process_tree_out_of_the_background_class() -> std::io::Result<()> {
        // A shell in SCHED_IDLE with a child that inherits it, as bubblewrap's processes do.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30 & wait"]).process_group(0);
        // SAFETY: sched_setscheduler is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| supervisor::set_scheduler(0, libc::SCHED_IDLE));
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let root = i32::try_from(pid).map_err(std::io::Error::other)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cell_threads(root).len() < 2 {
            assert!(Instant::now() < deadline, "the shell started no child");
            std::thread::sleep(Duration::from_millis(5));
        }
        let threads = cell_threads(root);
        let before: Vec<_> = threads.iter().map(|&t| policy(t)).collect();
        promote(pid)?;
        let after: Vec<_> = threads.iter().map(|&t| policy(t)).collect();
        // SAFETY: kill(2) of the process group made for the test.
        unsafe {
            libc::kill(-root, libc::SIGKILL);
        }
        let _ = child.wait();
        assert!(
            before.iter().all(|&p| p == libc::SCHED_IDLE),
            "{threads:?}: {before:?}"
        );
        assert!(
            after.iter().all(|&p| p == libc::SCHED_OTHER),
            "{threads:?}: {after:?}"
        );
        Ok(())
    }
}
