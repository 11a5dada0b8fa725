//! The gateway's shared state: the durable store, the provider, and the in-memory view of
//! deployed functions that the invoke path reads without touching the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use skyfri_core::limits::CallLimits;
use skyfri_core::scaling::DEFAULT_QUEUE_SIZE;
pub use skyfri_core::scaling::MAX_CONCURRENCY_KEY;
pub use skyfri_core::scaling::QUEUE_SIZE_KEY as QUEUE_ANNOTATION;
use skyfri_core::{Deployment, ScalePolicy};
use skyfri_queue::Queue;
use skyfri_runtime::{ArtefactStore, CallTracker, Endpoint, Provider};
use skyfri_store::Store;

use crate::access_log::AccessLog;
use crate::async_calls::callback::Callbacks;
use crate::audit::Audit;
use crate::autoscale::Decisions;
use crate::limits::bucket::Bucket;
use crate::limits::{function_bucket, GatewayLimits, LimitSettings};
use crate::metrics::{CallSeries, Metrics};
use crate::router::{Limits, Router};
use crate::stats::FunctionStats;
use crate::tokens::Tokens;
use crate::upstream::Upstream;
use crate::usage::Meter;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub admin_password: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Scratch space for uploads and backups.
    pub tmp_dir: std::path::PathBuf,
    /// Peers whose `X-Forwarded-For` names the client (for the audit log); none by default.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where data lives, for `/system/info/residency`.
    pub locations: Locations,
    /// Timeouts and rates (see [`crate::limits`]).
    pub limits: LimitSettings,
}

/// Where the platform keeps its data and which servers it was told to use: the gateway
/// reports it (`/system/info/residency`) but does not open anything from it.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    pub data_dir: std::path::PathBuf,
    /// The JetStream server of the async queue; `None` for the embedded queue in `data_dir`.
    pub queue_url: Option<String>,
    /// The NATS server of topic triggers.
    pub nats_url: Option<String>,
}

/// One deployed function as the invoke path sees it.
pub struct Live {
    pub deployment: Deployment,
    pub invocations: AtomicU64,
    /// Survives redeploys: calls in flight keep counting against their replicas.
    pub router: Arc<Router>,
    /// `com.skyfri.auth: token`: callers need a token with `invoke:NAME`.
    pub private: bool,
    /// Its body and rate limits (validated at deploy).
    pub limits: CallLimits,
    /// Its token bucket when it has a rate; survives redeploys that keep the rate.
    pub rate: Option<Arc<Bucket>>,
    /// Its calls' metrics series; survive redeploys.
    pub calls: Arc<CallSeries>,
    /// Its last hour by minute, for the dashboard; survives redeploys.
    pub stats: Arc<FunctionStats>,
    /// A scale-up from zero is on its way.
    activating: AtomicBool,
}

/// Per-replica concurrency of a deployment: its own setting, else one call at a time for
/// the templates whose replica runs one handler call at a time.
fn capacity(d: &Deployment) -> u32 {
    match d.spec.concurrency {
        0 => d.template.default_concurrency(),
        n => n,
    }
}

/// What the router enforces: the replicas' concurrency, the cap on calls in flight
/// (`com.skyfri.max-concurrency`) and the calls that may wait (`com.skyfri.queue-size`), both
/// validated at deploy.
fn limits(d: &Deployment) -> Limits {
    let policy = ScalePolicy::from_spec(&d.spec, d.template).ok();
    Limits {
        per_replica: capacity(d),
        total: policy.as_ref().and_then(|p| p.max_concurrency).unwrap_or(0),
        queue: policy.map_or(DEFAULT_QUEUE_SIZE, |p| p.queue_size),
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<Store>,
    pub provider: Arc<dyn Provider>,
    pub artefacts: Arc<ArtefactStore>,
    pub admin_password: String,
    /// SHA-256 of `admin:PASSWORD`, what basic auth is compared against.
    pub admin_digest: [u8; 32],
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The API tokens, by hash (loaded by `restore`, reloaded on every change).
    pub tokens: Tokens,
    pub audit: Audit,
    pub max_body: usize,
    pub limits: GatewayLimits,
    pub tmp_dir: std::path::PathBuf,
    pub locations: Locations,
    pub metrics: Metrics,
    /// Keep-alive connections to the replicas.
    pub upstream: Upstream,
    /// Async calls, durable until they are done, dead or cancelled.
    pub queue: Arc<dyn Queue>,
    /// Posts async results to `X-Callback-Url`s: plain HTTP to any host, never the
    /// replicas' unix sockets.
    pub callbacks: Callbacks,
    pub decisions: Decisions,
    /// Usage per function and month, until it is flushed to the store.
    pub meter: Meter,
    /// Failed credentials per client address, for every place a credential is checked.
    pub failed_logins: crate::limits::logins::FailedLogins,
    /// Dashboard sessions (in memory).
    pub sessions: crate::ui::session::Sessions,
    /// Set once at start when the access log is on.
    pub access_log: std::sync::OnceLock<AccessLog>,
    /// Hashed fast (foldhash): looked up on every call; the names are validated deploys'.
    functions: RwLock<HashMap<String, Arc<Live>, foldhash::fast::RandomState>>,
}

/// The provider stops a replica it retires once no call of the function's router holds it.
impl CallTracker for Inner {
    fn calls_on(&self, function: &str, endpoint: &Endpoint) -> usize {
        self.functions
            .read()
            .ok()
            .and_then(|m| m.get(function).map(|live| live.router.calls_on(endpoint)))
            .unwrap_or(0)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: GatewayConfig,
        store: Arc<Store>,
        provider: Arc<dyn Provider>,
        artefacts: Arc<ArtefactStore>,
        queue: Arc<dyn Queue>,
    ) -> AppState {
        let inner = Arc::new(Inner {
            audit: Audit::new(Arc::clone(&store)),
            store,
            provider,
            artefacts,
            admin_digest: crate::auth::admin_digest(&config.admin_password),
            admin_password: config.admin_password,
            trusted_proxies: config.trusted_proxies,
            tokens: Tokens::default(),
            max_body: config.max_body,
            limits: GatewayLimits::new(&config.limits),
            tmp_dir: config.tmp_dir,
            locations: config.locations,
            metrics: Metrics::default(),
            upstream: Upstream::default(),
            queue,
            callbacks: Callbacks::default(),
            decisions: Decisions::default(),
            meter: Meter::default(),
            failed_logins: Default::default(),
            sessions: Default::default(),
            access_log: std::sync::OnceLock::new(),
            functions: RwLock::new(HashMap::default()),
        });
        // Weak: the provider is part of the state it asks.
        let tracker: std::sync::Weak<dyn CallTracker> = Arc::downgrade(&inner) as _;
        inner.provider.track_calls(tracker);
        AppState(inner)
    }

    /// Reads (or writes) the store on the blocking pool. Every store access on a request path
    /// goes through here or [`AppState::blocking`]: the store is one connection behind a lock,
    /// and a request worker waiting there (behind a deploy's write, a backup, the audit
    /// writer) would hold up every call of its connections.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, skyfri_store::StoreError> + Send + 'static,
    ) -> Result<T, crate::error::GatewayError> {
        self.blocking(move |s| Ok(f(&s.store)?)).await
    }

    /// Runs `f` on the blocking pool, for store writes on request paths: the workers that
    /// serve requests are single-threaded, and a SQLite write (with its fsync) there would
    /// stall every other connection of the worker.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppState) -> Result<T, crate::error::GatewayError> + Send + 'static,
    ) -> Result<T, crate::error::GatewayError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(crate::error::GatewayError::internal)?
    }

    /// A call found no replica: start one, once, if the function is at zero.
    pub fn activate(&self, live: &Arc<Live>) {
        let name = &live.deployment.spec.name;
        let at_zero = self.provider.status(name).is_some_and(|s| s.desired == 0);
        if !at_zero || live.activating.swap(true, Ordering::AcqRel) {
            return;
        }
        // The gauge follows the desired count, as the autoscaler's decisions set it.
        self.metrics.set_replicas(name, 1);
        self.metrics.scaling_decision(name, "up");
        let provider = Arc::clone(&self.provider);
        let live = Arc::clone(live);
        let asked = std::time::Instant::now();
        tokio::spawn(async move {
            let name = &live.deployment.spec.name;
            match provider.scale(name, 1).await {
                // The waiting calls look again now rather than at their next recheck.
                Ok(()) => {
                    live.router.wake();
                    tracing::debug!(function = %name, took_us = asked.elapsed().as_micros() as u64, "scaled up from zero");
                }
                Err(e) => {
                    tracing::error!(function = %name, error = %e, "could not scale up from zero")
                }
            }
            live.activating.store(false, Ordering::Release);
        });
    }

    /// Every deployed function, for the autoscaler.
    pub fn all_live(&self) -> Vec<Arc<Live>> {
        self.functions
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn live(&self, name: &str) -> Option<Arc<Live>> {
        self.functions
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
    }

    /// Publishes a deployment to the invoke path, keeping its invocation count.
    pub fn set_live(&self, deployment: Deployment) {
        let name = deployment.spec.name.clone();
        self.metrics.set_replicas(&name, deployment.replicas);
        // Deploys validate the limits; a stored function whose limits no longer parse runs
        // without its own.
        let call_limits = CallLimits::from_spec(&deployment.spec).unwrap_or_else(|e| {
            tracing::warn!(function = %name, error = %e, "ignoring the function's call limits");
            CallLimits::default()
        });
        if let Ok(mut m) = self.functions.write() {
            let limits = limits(&deployment);
            // Deploys validate the annotation; one that no longer parses keeps callers out.
            let private = skyfri_core::auth::access(&deployment.spec)
                .map_or(true, |a| a == skyfri_core::auth::Access::Token);
            let live = match m.get(&name) {
                Some(old) => {
                    old.router.configure(limits);
                    Live {
                        deployment,
                        invocations: AtomicU64::new(old.invocations.load(Ordering::Relaxed)),
                        router: Arc::clone(&old.router),
                        private,
                        limits: call_limits,
                        rate: function_bucket(call_limits.rate, old.rate.as_ref()),
                        calls: Arc::clone(&old.calls),
                        stats: Arc::clone(&old.stats),
                        activating: AtomicBool::new(false),
                    }
                }
                None => Live {
                    deployment,
                    invocations: AtomicU64::new(0),
                    router: Arc::new(Router::new(limits)),
                    private,
                    limits: call_limits,
                    rate: function_bucket(call_limits.rate, None),
                    calls: self.metrics.call_series(&name),
                    stats: Arc::default(),
                    activating: AtomicBool::new(false),
                },
            };
            let account = live.router.account();
            account.set_memory_mib(skyfri_core::usage::metered_mib(&live.deployment.spec));
            self.meter.register(&name, account);
            m.insert(name, Arc::new(live));
        }
    }

    pub fn remove_live(&self, name: &str) {
        self.metrics.forget(name);
        self.decisions.forget(name);
        if let Ok(mut m) = self.functions.write() {
            m.remove(name);
        }
    }
}
