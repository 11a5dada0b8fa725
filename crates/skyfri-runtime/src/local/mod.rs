//! The local provider: runs each replica as a supervised process on this host and reaches it
//! over a unix socket (shim templates) or a loopback TCP port (the http template).

mod cells;
mod cgroup;
mod isolation;
mod launch;
mod logs;
mod metering;
mod mounts;
mod probe;
mod sandbox;
mod supervisor;

pub use isolation::{Isolation, Mode as IsolationMode, Report as IsolationReport};
pub use launch::{Interpreters, NETWORK_ANNOTATION};
pub use logs::{
    LogConfig, RotatingFile, Rotation as LogRotation, DEFAULT_FILES as DEFAULT_LOG_FILES,
    DEFAULT_MAX_BYTES as DEFAULT_LOG_MAX_BYTES,
};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use skyfri_core::scaling::ScalePolicy;
use skyfri_core::Deployment;
use tokio::sync::broadcast;

use crate::artefact::ArtefactStore;
use crate::provider::{
    CallTracker, Endpoint, LogLine, LogQuery, LogRead, Provider, ReplicaStatus, RuntimeError,
    SecretSource,
};
use cells::Cells;
use launch::Launch;
use logs::LogStore;
use metering::CpuLedger;
use supervisor::Replica;

/// How long a deploy waits for its first replica to become ready (after the initial delay
/// of its health check).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long retired replicas (scaled down, replaced by a deploy) keep running untouched
/// after they left the rotation: a call that read the endpoint list just before may take
/// its replica only now. Then each waits until the gateway's calls no longer hold it (see
/// [`CallTracker`]; at most the function's timeout more), gets SIGTERM, and finishes
/// whatever it still serves before it exits (the supervisor gives it the exec timeout):
/// scaling and redeploys cause no 5xx. The http template's server decides itself what it
/// does on SIGTERM, as in Knative.
const DRAIN: Duration = Duration::from_secs(2);
/// How often a retired replica looks whether calls still hold it.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// Runs functions as local processes.
pub struct LocalProvider {
    artefacts: ArtefactStore,
    run_dir: PathBuf,
    logs: LogStore,
    interpreters: Interpreters,
    isolation: Isolation,
    secrets: Arc<dyn SecretSource>,
    /// Pre-started interpreters, where this host allows them.
    cells: Option<Arc<Cells>>,
    /// Hashed fast (foldhash): the gateway asks for a function's endpoints on every call.
    functions: RwLock<HashMap<String, Function, foldhash::fast::RandomState>>,
    /// Per function, kills by the kernel's OOM killer since the provider started; shared
    /// with the function's launches, so a redeploy keeps counting.
    oom_kills: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Replicas replaced by a deploy, draining before they stop; shutdown must stop them too.
    retiring: Arc<Mutex<Vec<Arc<Replica>>>>,
    /// The gateway's view of the calls on each replica, once it has said where it is.
    tracker: RwLock<Option<Weak<dyn CallTracker>>>,
    /// CPU the replicas used, per function, until the gateway collects it.
    cpu: Arc<CpuLedger>,
    /// One lock per function so deploy/scale/remove of a function never interleave, while
    /// a slow deploy of one function does not hold up the others.
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `AWS_REGION` of Lambda functions (and in their ARNs).
    aws_region: RwLock<String>,
}

struct Function {
    launch: Arc<Launch>,
    desired: u32,
    replicas: Vec<Arc<Replica>>,
}

impl LocalProvider {
    pub fn new(
        artefacts: ArtefactStore,
        run_dir: PathBuf,
        logs: impl Into<LogConfig>,
        isolation: Isolation,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Arc<LocalProvider>, RuntimeError> {
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", run_dir.display()), e))?;
        if let Some(sandbox) = &isolation.sandbox {
            sandbox
                .grant_access(&[&run_dir, artefacts.root()])
                .map_err(RuntimeError::Invalid)?;
        }
        let interpreters = Interpreters::resolve();
        tracing::debug!(?interpreters, "resolved interpreters");
        let cpu = Arc::new(CpuLedger::default());
        let cells = Cells::start(&run_dir, &isolation, &interpreters, &cpu);
        Ok(Arc::new(LocalProvider {
            cells,
            artefacts,
            run_dir,
            logs: LogStore::open(logs.into())?,
            oom_kills: Mutex::new(HashMap::new()),
            interpreters,
            isolation,
            secrets,
            functions: RwLock::new(HashMap::default()),
            retiring: Arc::new(Mutex::new(Vec::new())),
            tracker: RwLock::new(None),
            cpu,
            op_locks: Mutex::new(HashMap::new()),
            aws_region: RwLock::new(skyfri_core::lambda::DEFAULT_REGION.to_string()),
        }))
    }

    /// Sets the `AWS_REGION` Lambda functions deployed from now on see.
    pub fn set_aws_region(&self, region: &str) {
        *self
            .aws_region
            .write()
            .unwrap_or_else(PoisonError::into_inner) = region.to_string();
    }

    fn aws_region(&self) -> String {
        self.aws_region
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn op_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.op_locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(name.to_string()).or_default())
    }

    /// Starts `count` replicas of `launch`, from stem cells where there are some.
    async fn start_replicas(
        &self,
        launch: &Arc<Launch>,
        count: u32,
    ) -> Result<Vec<Arc<Replica>>, RuntimeError> {
        let sink = self
            .logs
            .sink(&launch.function)
            .ok_or_else(|| RuntimeError::Invalid(format!("bad name {}", launch.function)))?;
        let mut replicas = Vec::new();
        for _ in 0..count {
            if let Some(cells) = &self.cells {
                if let Some(replica) = cells.replica(launch, &sink).await {
                    replicas.push(replica);
                    continue;
                }
            }
            match Replica::start(
                Arc::clone(launch),
                Arc::clone(&sink),
                &self.run_dir,
                &self.isolation,
                Arc::clone(&self.cpu),
            ) {
                Ok(r) => replicas.push(r),
                Err(e) => {
                    tokio::spawn(stop_all(replicas));
                    return Err(e);
                }
            }
        }
        Ok(replicas)
    }

    /// The values of the secrets `names`, or which one is missing. Read on the blocking
    /// pool: the source is the store, whose lock a long write may hold, and a deploy runs on
    /// a thread that serves calls too.
    async fn secret_values(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let (source, names) = (Arc::clone(&self.secrets), names.to_vec());
        tokio::task::spawn_blocking(move || read_secrets(source.as_ref(), &names))
            .await
            .map_err(|e| RuntimeError::Invalid(format!("reading secrets: {e}")))?
    }

    /// Admission by `requests.memory`: `replicas` of `function` (replacing whatever it runs
    /// now) must fit in what the node has not promised to other functions.
    fn admit(
        &self,
        function: &str,
        request: Option<u64>,
        replicas: u32,
    ) -> Result<(), RuntimeError> {
        let Some(request) = request else {
            return Ok(());
        };
        let Some(total) = node_memory() else {
            return Ok(());
        };
        let promised: u64 = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| name.as_str() != function)
            .map(|(_, f)| {
                f.launch
                    .requests_memory
                    .unwrap_or(0)
                    .saturating_mul(u64::from(f.desired))
            })
            .fold(0u64, u64::saturating_add);
        let wanted = request.saturating_mul(u64::from(replicas));
        let left = total.saturating_sub(promised);
        if wanted > left {
            return Err(RuntimeError::Insufficient(format!(
                "{function}: {replicas} replica(s) x requests.memory {} MiB = {} MiB, but the node has {} MiB left ({} MiB in all, {} MiB requested by other functions)",
                request >> 20,
                wanted >> 20,
                left >> 20,
                total >> 20,
                promised >> 20
            )));
        }
        Ok(())
    }

    /// Stops replicas of `function` that left the rotation, in the background, each once
    /// `drain` is over (normally [`DRAIN`]) and no call holds it (waiting at most `timeout`,
    /// the function's, for that); calls it is serving then still finish.
    fn retire(
        &self,
        function: &str,
        drain: Duration,
        timeout: Duration,
        replicas: Vec<Arc<Replica>>,
    ) {
        if replicas.is_empty() {
            return;
        }
        self.retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(replicas.iter().cloned());
        let tracker = self
            .tracker
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for replica in replicas {
            let retiring = Arc::clone(&self.retiring);
            let tracker = tracker.clone();
            let function = function.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                let idle_by = tokio::time::Instant::now() + timeout;
                while tokio::time::Instant::now() < idle_by
                    && calls_on(tracker.as_ref(), &function, &replica.endpoint) > 0
                {
                    tokio::time::sleep(IDLE_CHECK).await;
                }
                replica.stop().await;
                retiring
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .retain(|r| !Arc::ptr_eq(r, &replica));
            });
        }
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        if let Some(cells) = &self.cells {
            cells.abandon();
        }
    }
}

/// Calls the gateway says hold `endpoint`; without a gateway (or once it is gone), none.
fn calls_on(tracker: Option<&Weak<dyn CallTracker>>, function: &str, endpoint: &Endpoint) -> usize {
    tracker
        .and_then(Weak::upgrade)
        .map_or(0, |t| t.calls_on(function, endpoint))
}

/// Waits until all of `replicas` are ready, so that traffic moves to the new version at
/// full capacity; when only some are by the deadline, those do (the others keep trying).
/// If none becomes ready in time, or all of them exited before becoming ready, says why.
async fn wait_ready(replicas: &[Arc<Replica>], initial_delay: Duration) -> Result<(), String> {
    let deadline = Instant::now() + initial_delay + START_TIMEOUT;
    loop {
        let ready = replicas.iter().filter(|r| r.is_ready()).count();
        if ready == replicas.len() {
            return Ok(());
        }
        // A process that exits before it is ready will most likely do it again: fail now
        // with its output rather than after the full timeout.
        if ready == 0 && replicas.iter().all(|r| r.state().exits > 0) {
            return Err("the process exited before it was ready".into());
        }
        if Instant::now() >= deadline {
            if ready > 0 {
                return Ok(());
            }
            return Err(format!(
                "not ready after {} s",
                (initial_delay + START_TIMEOUT).as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The values of the secrets `names` from `source`, or which one is missing (blocking).
fn read_secrets(
    source: &dyn SecretSource,
    names: &[String],
) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
    names
        .iter()
        .map(|name| match source.secret(name) {
            Ok(Some(value)) => Ok((name.clone(), value)),
            Ok(None) => Err(RuntimeError::Invalid(format!(
                "secret {name:?} does not exist: create it with `skyfri secret create {name}`"
            ))),
            Err(e) => Err(RuntimeError::Invalid(format!("secret {name:?}: {e}"))),
        })
        .collect()
}

/// The node's memory, from /proc/meminfo.
fn node_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

async fn stop_all(replicas: Vec<Arc<Replica>>) {
    let mut set = tokio::task::JoinSet::new();
    for r in replicas {
        set.spawn(async move { r.stop().await });
    }
    while set.join_next().await.is_some() {}
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    async fn deploy(&self, d: &Deployment) -> Result<(), RuntimeError> {
        let name = d.spec.name.as_str();
        skyfri_core::validate_name(name).map_err(RuntimeError::Invalid)?;
        let dir = self
            .artefacts
            .path(&d.artefact)
            .ok_or_else(|| RuntimeError::UnknownArtefact(d.artefact.clone()))?;
        let root = match self.isolation.sandbox {
            Some(_) => PathBuf::from(sandbox::APP_DIR),
            None => dir.clone(),
        };
        if self.isolation.sandbox.is_none() && !d.spec.secrets.is_empty() {
            // Secrets are mounted into the sandbox; outside one there is no private place.
            return Err(RuntimeError::Invalid(format!(
                "{name} declares secrets, which need the replica sandbox, and this host has none ({})",
                self.isolation.sandbox_problem.as_deref().unwrap_or("unknown reason")
            )));
        }
        let secrets = self.secret_values(&d.spec.secrets).await?;
        let mut launch = launch::plan(
            d,
            &dir,
            &root,
            &self.interpreters,
            secrets,
            &self.aws_region(),
        )?;
        launch.oom_kills = Arc::clone(
            self.oom_kills
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(name.to_string())
                .or_default(),
        );
        let launch = Arc::new(launch);
        let lock = self.op_lock(name);
        let _guard = lock.lock().await;
        // A new version takes over at the scale the function runs at (the autoscaler's or
        // an activation's), within its new maximum, so that the switch costs no capacity.
        let running = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map_or(0, |f| f.desired);
        let max = ScalePolicy::from_spec(&d.spec, d.template).map_or(u32::MAX, |p| p.max);
        let replicas = d.replicas.max(running.min(max));
        self.admit(name, launch.requests_memory, replicas)?;

        // A function deployed at zero still starts once, so that a handler that cannot
        // load fails its deploy (as a Knative revision that never gets ready), not its
        // first call. Until the new replicas are ready the old ones serve; a deploy that
        // fails leaves them serving.
        let trial = replicas == 0;
        let mut new = self.start_replicas(&launch, replicas.max(1)).await?;
        if !new.is_empty() {
            if let Err(reason) = wait_ready(&new, launch.initial_delay).await {
                let output = new
                    .iter()
                    .map(|r| r.last_output())
                    .find(|o| !o.is_empty())
                    .unwrap_or_default();
                stop_all(new).await;
                return Err(RuntimeError::StartFailed {
                    name: name.to_string(),
                    reason,
                    output,
                });
            }
        }
        if trial {
            // Never in the rotation, so no call can be on its way to it: no drain. Deploying
            // many functions at zero then runs one trial at a time, not one per deploy of
            // the last two seconds.
            let tried = std::mem::take(&mut new);
            self.retire(name, Duration::ZERO, launch.timeout, tried);
        }
        // One swap: calls see either the old replicas or the new, never none.
        let old = {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            functions.insert(
                name.to_string(),
                Function {
                    launch,
                    desired: replicas,
                    replicas: new,
                },
            )
        };
        if let Some(old) = old {
            self.retire(name, DRAIN, old.launch.timeout, old.replicas);
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let lock = self.op_lock(name);
        let _guard = lock.lock().await;
        let removed = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        stop_all(removed.replicas).await;
        Ok(())
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<(), RuntimeError> {
        let lock = self.op_lock(name);
        let _guard = lock.lock().await;
        let (launch, current) = {
            let functions = self
                .functions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let f = functions
                .get(name)
                .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
            (Arc::clone(&f.launch), f.replicas.len())
        };
        self.admit(name, launch.requests_memory, replicas)?;
        let wanted = replicas as usize;
        let added = if wanted > current {
            self.start_replicas(&launch, replicas - current as u32)
                .await?
        } else {
            Vec::new()
        };
        let removed = {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(f) = functions.get_mut(name) else {
                return Err(RuntimeError::NotFound(name.to_string()));
            };
            f.desired = replicas;
            f.replicas.extend(added);
            if f.replicas.len() > wanted {
                // Drop replicas that are not ready first: they serve nobody.
                f.replicas.sort_by_key(|r| !r.is_ready());
                f.replicas.split_off(wanted)
            } else {
                Vec::new()
            }
        };
        // Calls already on their way to the removed replicas may finish.
        self.retire(name, DRAIN, launch.timeout, removed);
        Ok(())
    }

    fn endpoints(&self, name: &str) -> Vec<Endpoint> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        functions
            .get(name)
            .map(|f| {
                f.replicas
                    .iter()
                    .filter(|r| r.is_ready())
                    .map(|r| r.endpoint.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn status(&self, name: &str) -> Option<ReplicaStatus> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        functions.get(name).map(|f| ReplicaStatus {
            desired: f.desired,
            available: f.replicas.iter().filter(|r| r.is_ready()).count() as u32,
            oom_kills: f.launch.oom_kills.load(Ordering::Relaxed),
        })
    }

    fn report_failure(&self, name: &str, endpoint: &Endpoint) -> Option<String> {
        let functions = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let f = functions.get(name)?;
        let r = f.replicas.iter().find(|r| &r.endpoint == endpoint)?;
        r.recheck();
        r.exceeded_memory().then(|| {
            format!(
                "the function exceeded its memory limit of {} (limits.memory) and was killed by the kernel",
                supervisor::memory_text(f.launch.limits.memory)
            )
        })
    }

    fn info(&self) -> serde_json::Value {
        let cells = self.cells.as_ref().map(|c| {
            c.idle()
                .into_iter()
                .map(|(runtime, n)| (runtime.name(), n))
                .collect::<std::collections::BTreeMap<_, _>>()
        });
        serde_json::json!({
            "isolation": self.isolation.report(),
            "stemCells": cells,
            "stemCellsUsed": self.cells.as_ref().map(|c| c.used()),
        })
    }

    fn logs(&self, name: &str, query: &LogQuery) -> LogRead {
        self.logs.read(name, query)
    }

    fn follow_logs(&self, name: &str) -> broadcast::Receiver<LogLine> {
        self.logs.subscribe(name)
    }

    fn take_cpu_usage(&self) -> Option<Vec<(String, Duration)>> {
        if !self.isolation.cgroups.accounts_cpu() {
            return None;
        }
        // Replicas that stopped have reported already; the running ones report now.
        let running: Vec<Arc<Replica>> = {
            let functions = self
                .functions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            functions
                .values()
                .flat_map(|f| f.replicas.iter().cloned())
                .collect()
        };
        let retiring = self
            .retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for replica in running.iter().chain(&retiring) {
            replica.meter_cpu();
        }
        Some(self.cpu.take())
    }

    fn track_calls(&self, tracker: Weak<dyn CallTracker>) {
        *self.tracker.write().unwrap_or_else(PoisonError::into_inner) = Some(tracker);
    }

    async fn shutdown(&self) {
        let mut all: Vec<Arc<Replica>> = {
            let mut functions = self
                .functions
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            functions.drain().flat_map(|(_, f)| f.replicas).collect()
        };
        all.extend(
            self.retiring
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..),
        );
        stop_all(all).await;
        if let Some(cells) = &self.cells {
            cells.shutdown().await;
        }
    }
}
