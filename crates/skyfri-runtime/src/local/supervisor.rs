//! One replica: its process (in its own process group), its output, its readiness, and
//! restarts with exponential backoff when it exits.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::cgroup::Group;
use super::isolation::Isolation;
use super::launch::Launch;
use super::logs::LogSink;
use super::metering::{CpuLedger, CpuMeter};
use super::probe;
use super::sandbox::{self, Sandbox, Spec};
use crate::provider::{Endpoint, LogLine, RuntimeError};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A replica that ran this long is considered healthy again: its next crash restarts fast.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Poll interval while waiting for a replica to become ready.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// A stopping replica gets its exec timeout to finish the calls it serves (the shims exit
/// once they have, at the latest when it passes), plus this, before its group is killed.
const STOP_SLACK: Duration = Duration::from_secs(2);
/// Health checks failed in a row before a replica is restarted (Kubernetes' default).
const FAILURE_THRESHOLD: u32 = 3;
/// Output lines kept in memory for start-failure messages.
const TAIL_LINES: usize = 30;
/// Unix socket paths are limited to 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;
/// An out-of-memory kill this recent still explains a failed call.
const OOM_MEMORY: Duration = Duration::from_secs(5);
pub(super) const SOCKET_NAME: &str = "sock";

/// What the supervisor publishes about a replica.
#[derive(Debug, Clone, Copy, Default)]
pub struct State {
    pub ready: bool,
    /// How many times the process exited (or failed to spawn).
    pub exits: u32,
    /// The supervisor is done: process gone, nothing will be restarted.
    pub stopped: bool,
}

pub struct Replica {
    function: String,
    /// `<function>-<random>`: the replica's HOSTNAME and its `instance` in logs.
    pub instance: String,
    pub endpoint: Endpoint,
    ready: AtomicBool,
    /// Process group id of the running process, 0 when none.
    pgid: AtomicI32,
    state: watch::Sender<State>,
    stop: watch::Sender<bool>,
    recheck: Notify,
    tail: Mutex<VecDeque<String>>,
    /// The replica's own directory: its socket, and its HOME without a sandbox.
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    group: Option<Group>,
    /// The group's OOM-kill count when the current process started.
    oom_baseline: AtomicU64,
    last_oom: Mutex<Option<Instant>>,
    cpu: CpuMeter,
    /// Where the CPU the replica used is reported.
    ledger: Arc<CpuLedger>,
}

impl Replica {
    /// Starts a replica of `launch` and its supervisor task.
    pub fn start(
        launch: Arc<Launch>,
        logs: Arc<LogSink>,
        run_dir: &Path,
        isolation: &Isolation,
        ledger: Arc<CpuLedger>,
    ) -> Result<Arc<Replica>, RuntimeError> {
        let instance = format!("{}-{:08x}", launch.function, rand::random::<u32>());
        let dir = run_dir.join(&instance);
        let endpoint = if launch.tcp {
            Endpoint::Tcp(free_port()?)
        } else {
            let path = dir.join(SOCKET_NAME);
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(RuntimeError::Invalid(format!(
                    "socket path {} is too long for a unix socket: use a shorter run directory",
                    path.display()
                )));
            }
            Endpoint::Unix(path)
        };
        make_private_dir(&dir, isolation.sandbox.as_ref().and_then(Sandbox::uid))?;
        let group = Group::create(&isolation.cgroups, &instance, launch.limits)
            .map_err(|e| RuntimeError::io(format!("creating the cgroup of {instance}"), e))?;
        let replica = Arc::new(Replica {
            function: launch.function.clone(),
            instance,
            endpoint,
            ready: AtomicBool::new(false),
            pgid: AtomicI32::new(0),
            state: watch::channel(State::default()).0,
            stop: watch::channel(false).0,
            recheck: Notify::new(),
            tail: Mutex::new(VecDeque::new()),
            dir,
            sandbox: isolation.sandbox.clone(),
            cpu: CpuMeter::new(Some(&group)),
            group: Some(group),
            oom_baseline: AtomicU64::new(0),
            last_oom: Mutex::new(None),
            ledger,
        });
        tokio::spawn(Arc::clone(&replica).supervise(launch, logs, None));
        Ok(replica)
    }

    /// Makes a replica of `launch` out of a process that is already running and serving:
    /// a stem cell that was just specialised. When that process exits, the replica restarts
    /// as any other, from scratch.
    pub fn adopt(
        launch: Arc<Launch>,
        logs: Arc<LogSink>,
        isolation: &Isolation,
        adopted: Adopted,
        ledger: Arc<CpuLedger>,
    ) -> Arc<Replica> {
        let pid = adopted
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let oom_baseline = adopted.group.as_ref().map_or(0, Group::oom_kills);
        let replica = Arc::new(Replica {
            function: launch.function.clone(),
            instance: adopted.instance,
            endpoint: Endpoint::Unix(adopted.dir.join(SOCKET_NAME)),
            ready: AtomicBool::new(true),
            pgid: AtomicI32::new(pid),
            state: watch::channel(State {
                ready: true,
                ..State::default()
            })
            .0,
            stop: watch::channel(false).0,
            recheck: Notify::new(),
            tail: Mutex::new(VecDeque::new()),
            dir: adopted.dir,
            sandbox: isolation.sandbox.clone(),
            cpu: CpuMeter::new(adopted.group.as_ref()),
            group: adopted.group,
            oom_baseline: AtomicU64::new(oom_baseline),
            last_oom: Mutex::new(None),
            ledger,
        });
        let first = (adopted.child, adopted.readers, adopted.keep);
        tokio::spawn(Arc::clone(&replica).supervise(launch, logs, Some(first)));
        replica
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// The last lines the replica printed, for error messages.
    pub fn last_output(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Something failed talking to the replica: stop routing to it and probe it again. If
    /// its process died, the supervisor notices the exit and restarts it anyway.
    pub fn recheck(&self) {
        if self.is_alive() {
            self.set_ready(false);
            self.recheck.notify_one();
        } else {
            self.set_ready(false);
        }
    }

    /// Stops the replica (SIGTERM, then SIGKILL of its process group) and waits until the
    /// supervisor is done.
    pub async fn stop(&self) {
        // `send` would drop the value when the supervisor has not subscribed yet (a replica
        // stopped right after it was made), and the wait below would never end.
        self.stop.send_replace(true);
        let mut rx = self.state.subscribe();
        // The supervisor owns the sender too, so this cannot fail while it runs.
        let _ = rx.wait_for(|s| s.stopped).await;
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.state.send_modify(|s| s.ready = ready);
    }

    fn is_alive(&self) -> bool {
        let pgid = self.pgid.load(Ordering::Acquire);
        // SAFETY: kill with signal 0 only checks that the process exists.
        pgid > 0 && unsafe { libc::kill(pgid, 0) } == 0 && !is_zombie(pgid)
    }

    async fn supervise(
        self: Arc<Self>,
        launch: Arc<Launch>,
        logs: Arc<LogSink>,
        mut first: Option<FirstProcess>,
    ) {
        let mut stop = self.stop.subscribe();
        let mut backoff = MIN_BACKOFF;
        loop {
            if *stop.borrow() {
                break;
            }
            let started = Instant::now();
            let (spawned, _keep) = match first.take() {
                Some((child, readers, keep)) => (Ok((child, readers)), Some(keep)),
                None => (self.spawn(&launch, &logs), None),
            };
            match spawned {
                Ok((mut child, readers)) => {
                    let outcome = self.run(&mut child, &launch, &logs, &mut stop).await;
                    self.set_ready(false);
                    let pgid = self.pgid.swap(0, Ordering::AcqRel);
                    match outcome {
                        None => {
                            self.terminate(&mut child, pgid, launch.timeout + STOP_SLACK)
                                .await;
                            self.kill_cgroup();
                            drain(readers).await;
                            break;
                        }
                        Some(status) => {
                            // Leftover children (an exec fprocess, a server's workers) would
                            // keep the socket or port busy: take the whole group down.
                            kill_group(pgid, libc::SIGKILL);
                            self.kill_cgroup();
                            drain(readers).await;
                            let why = if self.oom_killed_now() {
                                *self.last_oom.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(Instant::now());
                                launch.oom_kills.fetch_add(1, Ordering::Relaxed);
                                format!(
                                    "killed by the kernel: it exceeded its memory limit of {} (limits.memory)",
                                    memory_text(launch.limits.memory)
                                )
                            } else {
                                format!("process exited ({status})")
                            };
                            self.record(
                                &logs,
                                format!("skyfri: {why}, restarting in {} ms", backoff.as_millis()),
                            );
                        }
                    }
                }
                Err(e) => self.record(
                    &logs,
                    format!("skyfri: cannot start {}: {e}", launch.program.display()),
                ),
            }
            self.state.send_modify(|s| s.exits += 1);
            if started.elapsed() >= STABLE_AFTER {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut stop) => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The last reading: the group and its counter go now.
        self.meter_cpu();
        if let Some(group) = &self.group {
            group.remove();
        }
        self.state.send_modify(|s| {
            s.ready = false;
            s.stopped = true;
        });
    }

    /// Runs until the process exits (`Some(status)`) or a stop is requested (`None`),
    /// probing readiness whenever the replica is not known to be ready (the first time after
    /// the initial delay). Once it has been ready, a server with a health path is checked
    /// every period as well: after `FAILURE_THRESHOLD` failures in a row it leaves the
    /// rotation and its process is killed, which the supervisor restarts.
    async fn run(
        &self,
        child: &mut Child,
        launch: &Launch,
        logs: &LogSink,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<ExitStatus> {
        use tokio::time::{sleep_until, Instant};
        let mut next_probe = Instant::now() + launch.initial_delay;
        let mut next_check = launch
            .health_period
            .filter(|_| self.is_ready())
            .map(|period| Instant::now() + period);
        let mut failures = 0;
        let mut killed = false;
        loop {
            let probing = !killed && !self.is_ready();
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(status) => Some(status),
                        // Cannot happen for a child we own; treat it as an exit so we restart.
                        Err(_) => Some(ExitStatus::default()),
                    };
                }
                _ = stopped(stop) => return None,
                _ = sleep_until(next_probe), if probing => {
                    if probe::is_ready(&self.endpoint, &launch.probe).await {
                        self.set_ready(true);
                        failures = 0;
                        if next_check.is_none() {
                            next_check = launch.health_period.map(|period| Instant::now() + period);
                        }
                    }
                    next_probe = Instant::now() + PROBE_INTERVAL;
                }
                _ = self.recheck.notified(), if !probing => {
                    next_probe = Instant::now() + PROBE_INTERVAL;
                }
                _ = sleep_until(next_check.unwrap_or(next_probe)), if next_check.is_some() => {
                    match probe::check_health(&self.endpoint, &launch.probe).await {
                        Ok(()) => failures = 0,
                        Err(_) if failures + 1 < FAILURE_THRESHOLD => failures += 1,
                        Err(why) => {
                            failures += 1;
                            self.set_ready(false);
                            self.record(
                                logs,
                                format!(
                                    "skyfri: health check GET {} failed {failures} times ({why}), restarting",
                                    probe::path(&launch.probe)
                                ),
                            );
                            kill_group(self.pgid.load(Ordering::Acquire), libc::SIGKILL);
                            killed = true;
                        }
                    }
                    next_check = match (killed, launch.health_period) {
                        (false, Some(period)) => Some(Instant::now() + period),
                        _ => None,
                    };
                }
            }
        }
    }

    /// Stops the process: SIGTERM, so it finishes the calls it serves (the shims do, within
    /// the exec timeout; the http template's server does what it does on SIGTERM, as in
    /// Knative), then SIGKILL of the group if it has not exited after `grace`.
    async fn terminate(&self, child: &mut Child, pgid: i32, grace: Duration) {
        // bubblewrap forwards no signal and dies of SIGTERM, taking the sandbox down with
        // it: the program inside runs in the group of bwrap's child (the sandbox's pid 1,
        // which ignores the signal), so that is the group to tell.
        let target = match self.sandbox {
            Some(_) => first_child(pgid).unwrap_or(pgid),
            None => pgid,
        };
        kill_group(target, libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait().await;
        }
        // Whatever else is left in the group goes too.
        kill_group(pgid, libc::SIGKILL);
    }

    fn spawn(
        self: &Arc<Self>,
        launch: &Launch,
        logs: &Arc<LogSink>,
    ) -> std::io::Result<(Child, [JoinHandle<()>; 2])> {
        if let Endpoint::Unix(path) = &self.endpoint {
            // A stale socket from the previous run would make the new bind fail.
            let _ = std::fs::remove_file(path);
        }
        let (home, socket) = match self.sandbox {
            Some(_) => (
                PathBuf::from("/tmp"),
                Path::new(sandbox::RUN_DIR).join(SOCKET_NAME),
            ),
            None => (self.dir.clone(), self.dir.join(SOCKET_NAME)),
        };
        let port = match &self.endpoint {
            Endpoint::Tcp(addr) => Some(addr.port()),
            Endpoint::Unix(_) => None,
        };
        let env = launch.environment(&self.instance, &home, &socket, port);
        if let Some(group) = &self.group {
            self.oom_baseline
                .store(group.oom_kills(), Ordering::Release);
        }
        let mut child = spawn_process(
            self.sandbox.as_ref(),
            &Spec {
                hostname: &self.instance,
                artefact: &launch.artefact,
                run: &self.dir,
                network: launch.network,
                readonly_root: launch.readonly_root,
                tmp_bytes: launch.tmp_bytes,
                cwd: &launch.cwd,
                secrets: &launch.secrets,
            },
            &launch.program,
            &launch.args,
            &env,
            self.group.as_ref(),
            Priority::Normal,
        )?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        self.pgid.store(pid, Ordering::Release);
        let out = child.stdout.take();
        let err = child.stderr.take();
        Ok((child, [self.reader(logs, out), self.reader(logs, err)]))
    }

    /// Whether the kernel's OOM killer hit this replica's current process.
    fn oom_killed_now(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| g.oom_kills() > self.oom_baseline.load(Ordering::Acquire))
    }

    /// Whether the replica was recently killed for exceeding its memory limit (or is being
    /// killed right now): what a call that lost its connection should be told.
    pub fn exceeded_memory(&self) -> bool {
        self.oom_killed_now()
            || self
                .last_oom
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| t.elapsed() < OOM_MEMORY)
    }

    /// Reports the CPU the replica used since the last reading.
    pub fn meter_cpu(&self) {
        self.cpu
            .read(self.group.as_ref(), &self.function, &self.ledger);
    }

    fn kill_cgroup(&self) {
        if let Some(group) = &self.group {
            group.kill_all();
        }
    }

    /// Copies one output stream into the log, line by line.
    fn reader<R: AsyncRead + Unpin + Send + 'static>(
        self: &Arc<Self>,
        logs: &Arc<LogSink>,
        stream: Option<R>,
    ) -> JoinHandle<()> {
        let replica = Arc::clone(self);
        let logs = Arc::clone(logs);
        read_lines(stream, move |text| replica.record(&logs, text))
    }

    pub(super) fn record(&self, logs: &LogSink, text: String) {
        {
            let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }
        logs.write(LogLine {
            name: self.function.clone(),
            instance: self.instance.clone(),
            timestamp: Utc::now(),
            text,
        });
    }
}

/// The first process of an adopted replica: the running child, its output readers, and
/// what must live as long as it runs.
type FirstProcess = (Child, [JoinHandle<()>; 2], Box<dyn Send + Sync>);

/// A running, specialised stem cell, handed over to become a replica.
pub struct Adopted {
    pub instance: String,
    /// The replica's own directory, holding the socket the process serves on.
    pub dir: PathBuf,
    pub child: Child,
    pub readers: [JoinHandle<()>; 2],
    pub group: Option<Group>,
    /// Kept until the adopted process exits (the cell's mount of the artefact).
    pub keep: Box<dyn Send + Sync>,
}

/// The CPU scheduling class a process starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    Normal,
    /// `SCHED_IDLE`: whatever else wakes up on the CPU preempts it at once (a stem cell
    /// booting must not delay a cold start in flight). It still gets its cgroup's share when
    /// the CPUs are busy, so it is slowed down, not starved.
    Background,
}

/// Starts `program args` with exactly `env`: in the sandbox built from `spec` when there is
/// one (else as a plain process in `spec.cwd`), in its own process group, in `group`, as the
/// sandbox user, with piped output, in the scheduling class `priority`.
pub(super) fn spawn_process(
    sandbox: Option<&Sandbox>,
    spec: &Spec<'_>,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    group: Option<&Group>,
    priority: Priority,
) -> std::io::Result<Child> {
    let (program, args, fds, cwd) = match sandbox {
        Some(sandbox) => {
            let p = sandbox.prepare(spec, program, args)?;
            (p.program, p.args, p.fds, Path::new("/"))
        }
        None => (
            program.to_path_buf(),
            args.iter().map(OsString::from).collect(),
            Vec::new(),
            spec.cwd,
        ),
    };
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group, so stopping it also stops whatever it started.
        .process_group(0);
    let join = group.map(Group::joiner);
    let keep: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let user = sandbox.and_then(Sandbox::uid);
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (open/write/close, fcntl, sched_setscheduler, setgroups/setgid/setuid) and does not
    // allocate.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(join) = &join {
                join.join()?;
            }
            if priority == Priority::Background {
                set_scheduler(0, libc::SCHED_IDLE)?;
            }
            sandbox::inherit(&keep)?;
            sandbox::drop_privileges(user)
        });
    }
    let child = cmd.spawn()?;
    drop(fds);
    Ok(child)
}

/// Puts the thread `tid` (0: the calling one) in the scheduling class `policy` (`SCHED_IDLE`
/// or `SCHED_OTHER`, which take no static priority). Async-signal-safe.
pub(super) fn set_scheduler(tid: i32, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with a valid parameter block; the result is checked.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The longest line of a replica's output, in bytes: longer ones are split (as Docker's and
/// CRI's log drivers split them), each piece but the last ending in [`CONTINUED`], so that a
/// replica printing without newlines cannot grow the supervisor's memory.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024;
/// Ends each piece of a split line but the last.
pub(super) const CONTINUED: &str = " [continued]";

/// Copies one output stream to `line`, line by line (see [`MAX_LINE_BYTES`]), until it
/// closes.
pub(super) fn read_lines<R: AsyncRead + Unpin + Send + 'static>(
    stream: Option<R>,
    line: impl Fn(String) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(stream) = stream else {
            return;
        };
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::with_capacity(256);
        let text = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .trim_end_matches('\r')
                .to_string()
        };
        loop {
            // `more`: a byte past a full line was seen, and it is no newline.
            let (taken, ended, more) = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(available) => {
                    // One byte past the room: a newline right after a full line ends it.
                    let room = MAX_LINE_BYTES - buf.len();
                    let seen = &available[..available.len().min(room + 1)];
                    match seen.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            buf.extend_from_slice(&seen[..i]);
                            (i + 1, true, false)
                        }
                        None => {
                            let taken = seen.len().min(room);
                            buf.extend_from_slice(&seen[..taken]);
                            (taken, false, seen.len() > room)
                        }
                    }
                }
            };
            reader.consume(taken);
            if ended {
                line(text(&buf));
                buf.clear();
            } else if buf.len() >= MAX_LINE_BYTES && more {
                let cut = char_boundary(&buf);
                line(format!("{}{CONTINUED}", text(&buf[..cut])));
                buf.drain(..cut);
            }
        }
        // The last line, without a newline.
        if !buf.is_empty() {
            line(text(&buf));
        }
    })
}

/// Where `buf` may be cut without splitting a UTF-8 character: before an incomplete one at
/// its end.
fn char_boundary(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=len.min(4) {
        let b = buf[len - back];
        if b & 0xC0 != 0x80 {
            let needs = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if needs > back { len - back } else { len };
        }
    }
    len
}

/// Waits briefly for the output readers, so the last lines a dying process wrote (a
/// traceback) are in the log and the tail before anyone looks; a grandchild still holding
/// the pipes open must not block us, hence the timeout.
async fn drain(readers: [JoinHandle<()>; 2]) {
    for mut reader in readers {
        if tokio::time::timeout(Duration::from_millis(500), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

/// A child process of `pid`, from /proc.
fn first_child(pid: i32) -> Option<i32> {
    if pid <= 0 {
        return None;
    }
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return children.split_whitespace().next()?.parse().ok();
    }
    // Kernels without CONFIG_PROC_CHILDREN: look for a process whose parent is `pid`.
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let child: i32 = entry.file_name().to_str()?.parse().ok()?;
            let ppid = crate::procfs::parent(u32::try_from(child).ok()?)?;
            (i64::from(ppid) == i64::from(pid)).then_some(child)
        })
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: plain kill(2) on a process group we created; failure (ESRCH) is harmless.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// `kill(pid, 0)` succeeds on a zombie that tokio has not reaped yet: look at its state.
fn is_zombie(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(crate::procfs::is_zombie)
}

/// The replica's directory, private to it (and to the sandbox user it runs as).
pub(super) fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |e| RuntimeError::io(format!("creating {}", dir.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(())
}

/// `128Mi` for messages.
pub fn memory_text(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) if b % (1 << 30) == 0 => format!("{}Gi", b >> 30),
        Some(b) if b % (1 << 20) == 0 => format!("{}Mi", b >> 20),
        Some(b) => format!("{b} bytes"),
        None => "none".into(),
    }
}

fn free_port() -> Result<std::net::SocketAddr, RuntimeError> {
    // Bind port 0 and release it: the replica binds it again right after. Racy in theory,
    // good enough for a single host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| RuntimeError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map_err(|e| RuntimeError::io("finding a free port", e))
}

/// Resolves once a stop was requested. Returns nothing, because the `Ref` that
/// `wait_for` returns is not `Send` and must not live in the supervisor's future.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_line_without_end_is_cut_into_pieces_as_it_comes(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (mut replica, output) = tokio::io::duplex(4096);
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let reader = read_lines(Some(output), move |l| {
            let _ = tx.send(l);
        });
        // Three pieces' worth, with a multi-byte character across the first cut, and no
        // newline: the pieces come while the replica still prints.
        let mut long = "x".repeat(MAX_LINE_BYTES - 1);
        long.push('é');
        long.push_str(&"y".repeat(MAX_LINE_BYTES * 2));
        replica.write_all(long.as_bytes()).await?;
        let mut piece = async || {
            tokio::time::timeout(Duration::from_secs(10), lines.recv())
                .await
                .map_err(|_| "no piece while the line goes on")?
                .ok_or("no piece")
        };
        let first = piece().await?;
        let second = piece().await?;
        for piece in [&first, &second] {
            assert!(piece.ends_with(CONTINUED), "{}", &piece[piece.len() - 20..]);
            assert!(piece.len() <= MAX_LINE_BYTES + CONTINUED.len());
        }
        replica.write_all(b"\nshort\r\nlast").await?;
        drop(replica);
        reader.await?;
        let mut rest = Vec::new();
        while let Ok(l) = lines.try_recv() {
            rest.push(l);
        }
        assert_eq!(rest[rest.len() - 2..], ["short", "last"]);
        let whole: String = [first, second]
            .iter()
            .map(|p| p.trim_end_matches(CONTINUED))
            .chain(
                rest[..rest.len() - 2]
                    .iter()
                    .map(|p| p.trim_end_matches(CONTINUED)),
            )
            .collect();
        assert_eq!(whole, long);
        Ok(())
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_cap_is_one_line() -> Result<(), Box<dyn std::error::Error>> {
        let (mut replica, output) = tokio::io::duplex(4096);
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let reader = read_lines(Some(output), move |l| {
            let _ = tx.send(l);
        });
        let full = "z".repeat(MAX_LINE_BYTES);
        // The newline comes in a write of its own, after the line filled the buffer.
        replica.write_all(full.as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        replica.write_all(b"\nnext\n").await?;
        drop(replica);
        reader.await?;
        let mut got = Vec::new();
        while let Ok(l) = lines.try_recv() {
            got.push(l);
        }
        assert_eq!(got, [full, "next".to_string()]);
        Ok(())
    }
}
