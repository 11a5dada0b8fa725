//! `skyfri up`: run the platform (gateway, store, local runtime) until SIGINT/SIGTERM.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::distr::{Alphanumeric, SampleString};
use skyfri_gateway::access_log::{self, AccessLog, AccessLogConfig};
use skyfri_gateway::limits::{self, LimitSettings};
use skyfri_gateway::secrets::StoreSecrets;
use skyfri_gateway::server::{self, ServerLimits, Tls};
use skyfri_gateway::{AppState, GatewayConfig};
use skyfri_queue::{EmbeddedQueue, JetStreamQueue, Queue};
use skyfri_runtime::local::{Isolation, IsolationMode, LogConfig, LogRotation};
use skyfri_runtime::{ArtefactStore, LocalProvider, Provider};
use skyfri_store::Store;

use crate::client::Gateway;
use crate::progress::Progress;
use crate::stackfile::StackFile;
use crate::watch::StackWatch;

/// How long, after SIGINT/SIGTERM, open connections that carry no call to a function (a
/// `logs --follow`, a live tail) and async and topic runs get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long, after the grace period, the async and topic runs still going get to be handed
/// back (a write or two each), so that shutdown cannot hang on the queue or on NATS.
const HAND_BACK_GRACE: Duration = Duration::from_secs(2);
/// How often a draining gateway looks at the calls it still serves.
const DRAIN_TICK: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct Up {
    /// Address the gateway listens on.
    #[arg(long, env = "SKYFRI_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address the dashboard (/ui) listens on, apart from the functions: default the
    /// --listen address's IP, port 8081; port 0 picks a free one; `off` serves no dashboard.
    #[arg(long, env = "SKYFRI_UI_LISTEN", value_parser = parse_ui_listen)]
    ui_listen: Option<UiListen>,
    /// Where state lives (default /var/lib/skyfri as root, else the XDG data dir).
    #[arg(long, env = "SKYFRI_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Deploy this stack.yml or Knative Service once the gateway is ready.
    #[arg(short = 'f', long = "yaml")]
    file: Option<PathBuf>,
    /// Keep -f's functions deployed as their files change: a change to a handler folder or
    /// to a function's entry rebuilds and redeploys that function, without a failed call.
    #[arg(long, requires = "file")]
    watch: bool,
    /// Largest request body in bytes; a function's `com.skyfri.max-body` may only lower it.
    #[arg(long, default_value_t = 50 << 20)]
    max_body: usize,
    /// Longest a call may take, in seconds: a function's exec_timeout / timeoutSeconds may
    /// only be shorter (a deploy asking more is refused).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_TIMEOUT_SECS)]
    max_timeout: u64,
    /// Calls per second admitted per client address (token bucket; IPv6 per /64), over it
    /// 429 with Retry-After. Off unless given.
    #[arg(long)]
    rate_per_ip: Option<f64>,
    /// Calls a client may send at once after a quiet spell (default: --rate-per-ip rounded up).
    #[arg(long, requires = "rate_per_ip")]
    burst_per_ip: Option<u32>,
    /// `strict` refuses to start unless replicas get a sandbox and enforced memory, CPU and
    /// pids limits; `best-effort` takes what the host offers and warns about the rest.
    #[arg(long, env = "SKYFRI_ISOLATION", value_enum, default_value_t = IsolationArg::BestEffort)]
    isolation: IsolationArg,
    /// Where async calls are kept: `embedded` (`<data-dir>/queue.db`), or NATS JetStream at
    /// `nats://HOST:PORT` (shared by every gateway pointed at it).
    #[arg(long, env = "SKYFRI_QUEUE", default_value = "embedded")]
    queue: String,
    /// NATS server of the topic triggers (`topic` annotation); default: the `--queue` URL when
    /// it is a `nats://` one, else nats://127.0.0.1:4222. Dialled only once a function with a
    /// topic is deployed.
    #[arg(long, env = "SKYFRI_NATS")]
    nats: Option<String>,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2) with this PEM certificate chain; needs --tls-key.
    /// SIGHUP reloads both files without dropping open connections.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds a client has to send a complete request head, from connecting or from the
    /// previous answer (so also how long an idle keep-alive connection stays open).
    #[arg(long, default_value_t = server::DEFAULT_HEADER_TIMEOUT_SECS)]
    header_timeout: u64,
    /// Largest request head (request line and headers) in bytes; over it: 431.
    #[arg(long, default_value_t = server::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Most header fields in one request; over it: 431.
    #[arg(long, default_value_t = server::DEFAULT_MAX_HEADERS)]
    max_headers: usize,
    /// Most client connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// A reverse proxy (address or network, repeatable) whose X-Forwarded-For names the
    /// client in the audit log; without one, the client is the peer address.
    /// The AWS region Lambda functions are told they run in (`AWS_REGION`, their ARNs).
    #[arg(long, env = "SKYFRI_AWS_REGION", default_value = skyfri_core::lambda::DEFAULT_REGION, value_parser = parse_region)]
    aws_region: String,
    #[arg(long = "trusted-proxy", value_parser = skyfri_gateway::auth::parse_proxy)]
    trusted_proxies: Vec<skyfri_gateway::auth::IpNet>,
    /// How often metered usage is written to the store (`skyfri cost`): a crash loses at
    /// most this much of it.
    #[arg(long, default_value = "5s", value_parser = flush_interval)]
    usage_flush: std::time::Duration,
    /// Size at which a log file (a function's, the access log) is rotated.
    #[arg(long, default_value_t = skyfri_runtime::local::DEFAULT_LOG_MAX_BYTES)]
    log_max_bytes: u64,
    /// Files kept per log, the one being written included: a function's logs take at most
    /// --log-files x --log-max-bytes on disk.
    #[arg(long, default_value_t = skyfri_runtime::local::DEFAULT_LOG_FILES)]
    log_files: usize,
    /// Where the access log (one JSON line per call) goes: `file` (<data-dir>/logs/access.log,
    /// rotated as above), `stdout`, `both` or `off`.
    #[arg(long, env = "SKYFRI_ACCESS_LOG", default_value = "file")]
    access_log: access_log::Target,
}

fn flush_interval(s: &str) -> Result<std::time::Duration, String> {
    match skyfri_core::quantity::parse_duration(s)? {
        d if d.is_zero() => Err("the flush interval must be longer than 0".into()),
        d => Ok(d),
    }
}

/// What `--ui-listen` says.
#[derive(Clone, Copy)]
enum UiListen {
    Off,
    At(SocketAddr),
}

/// The dashboard's port unless `--ui-listen` says otherwise.
const DEFAULT_UI_PORT: u16 = 8081;

fn parse_ui_listen(value: &str) -> Result<UiListen, String> {
    match value.trim() {
        "off" => Ok(UiListen::Off),
        v => v.parse().map(UiListen::At).map_err(|_| {
            format!("{v:?} is not an address such as 127.0.0.1:8081 (or `off`: no dashboard)")
        }),
    }
}

/// Where topic triggers look for NATS unless told.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

#[derive(Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    Strict,
    BestEffort,
}

impl From<IsolationArg> for IsolationMode {
    fn from(a: IsolationArg) -> IsolationMode {
        match a {
            IsolationArg::Strict => IsolationMode::Strict,
            IsolationArg::BestEffort => IsolationMode::BestEffort,
        }
    }
}

/// Finds what isolation the host gives, says so, and enforces `--isolation`.
fn isolation(mode: IsolationArg) -> Result<Isolation> {
    let isolation = Isolation::detect();
    isolation.require(mode.into()).map_err(anyhow::Error::msg)?;
    println!("isolation: {}", isolation.report());
    for missing in isolation.missing() {
        eprintln!("WARNING: replicas are not fully isolated: {missing}");
    }
    Ok(isolation)
}

/// What `--queue` names.
enum QueueArg {
    Embedded,
    JetStream(String),
}

impl QueueArg {
    fn parse(value: &str) -> Result<QueueArg> {
        match value {
            "embedded" => Ok(QueueArg::Embedded),
            v if v.starts_with("nats://") || v.starts_with("tls://") => {
                Ok(QueueArg::JetStream(v.to_owned()))
            }
            v => anyhow::bail!("--queue {v:?}: use \"embedded\" or nats://HOST:PORT"),
        }
    }

    async fn open(&self, data_dir: &Path) -> Result<Arc<dyn Queue>> {
        match self {
            QueueArg::Embedded => {
                let path = data_dir.join("queue.db");
                let queue = EmbeddedQueue::open(&path)
                    .with_context(|| format!("cannot open the async queue {}", path.display()))?;
                Ok(queue)
            }
            QueueArg::JetStream(url) => {
                let queue = JetStreamQueue::connect(url)
                    .await
                    .with_context(|| format!("cannot open the async queue at {url}"))?;
                Ok(queue)
            }
        }
    }
}

/// The admin password: from SKYFRI_ADMIN_PASSWORD at first start, else generated; kept in
/// `<data-dir>/admin-password` (0600). Returns it and whether it was generated now (and so
/// must be shown once).
fn admin_password(data_dir: &Path) -> Result<(String, bool)> {
    let path = data_dir.join("admin-password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        return Ok((p.trim().to_string(), false));
    }
    let (password, generated) = match std::env::var("SKYFRI_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (Alphanumeric.sample_string(&mut rand::rng(), 24), true),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{password}")?;
    Ok((password, generated))
}

fn make_dir(p: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

impl Up {
    /// The call limits the flags ask for, checked.
    fn call_limits(&self) -> Result<LimitSettings> {
        if self.max_timeout == 0 {
            anyhow::bail!("--max-timeout must be at least 1 second");
        }
        if self.max_body == 0 {
            anyhow::bail!("--max-body must be at least 1 byte");
        }
        let per_ip = self
            .rate_per_ip
            .map(|rate| {
                let burst = self
                    .burst_per_ip
                    .unwrap_or_else(|| skyfri_core::limits::Rate::default_burst(rate));
                skyfri_core::limits::Rate::new(rate, burst, "--rate-per-ip / --burst-per-ip")
            })
            .transpose()
            .map_err(anyhow::Error::msg)?;
        Ok(LimitSettings {
            max_timeout: std::time::Duration::from_secs(self.max_timeout),
            per_ip,
            ..LimitSettings::default()
        })
    }

    pub async fn run(self) -> Result<()> {
        init_tracing();
        // Check the stack file before anything is bound or started.
        let stack = self
            .file
            .as_deref()
            .map(|f| StackFile::load(f, None))
            .transpose()?;
        // Started before anything else, so that a host out of inotify instances says so first.
        let files = self.watch.then(crate::watch::FileEvents::new).transpose()?;
        let queue_arg = QueueArg::parse(&self.queue)?;
        let call_limits = self.call_limits()?;
        let nats_url = match &self.nats {
            Some(url) => url.clone(),
            None if self.queue.starts_with("nats://") => self.queue.clone(),
            None => DEFAULT_NATS.to_string(),
        };
        if !nats_url.starts_with("nats://") && !nats_url.starts_with("tls://") {
            anyhow::bail!("--nats {nats_url:?}: use a URL such as nats://127.0.0.1:4222");
        }
        let data_dir = self
            .data_dir
            .unwrap_or_else(crate::client::default_data_dir);
        make_dir(&data_dir)?;
        let (password, generated) = admin_password(&data_dir)?;
        let store = Arc::new(Store::open(&data_dir.join("skyfri.db"))?);
        let queue = queue_arg.open(&data_dir).await?;
        let artefact_dir = data_dir.join("artefacts");
        let rotation = LogRotation {
            max_bytes: self.log_max_bytes,
            files: self.log_files,
        };
        rotation.validate().map_err(anyhow::Error::msg)?;
        let provider = LocalProvider::new(
            ArtefactStore::open(artefact_dir.clone())?,
            data_dir.join("run"),
            LogConfig {
                dir: data_dir.join("logs"),
                rotation,
            },
            isolation(self.isolation)?,
            Arc::new(StoreSecrets(store.clone())),
        )?;
        provider.set_aws_region(&self.aws_region);
        // After the provider, which made the logs dir private.
        let access_log = AccessLog::start(AccessLogConfig {
            target: self.access_log,
            path: data_dir.join("logs").join("access.log"),
            rotation,
        })
        .context("cannot start the access log")?;
        let limits = ServerLimits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_connections: self.max_connections,
        };
        limits.validate().map_err(anyhow::Error::msg)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        raise_open_file_limit(limits.max_connections);
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        let ui_listen = match self.ui_listen {
            Some(UiListen::Off) => None,
            Some(UiListen::At(a)) => Some(a),
            None => Some(SocketAddr::new(self.listen.ip(), DEFAULT_UI_PORT)),
        };
        let ui_listener = match ui_listen {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| {
                        format!("cannot listen on {at} for the dashboard (--ui-listen ADDR picks another address, --ui-listen off serves none)")
                    })?,
            ),
            None => None,
        };
        let ui_addr = ui_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let state = AppState::new(
            GatewayConfig {
                admin_password: password.clone(),
                max_body: self.max_body,
                limits: call_limits,
                tmp_dir: data_dir.join("tmp"),
                locations: skyfri_gateway::Locations {
                    data_dir: data_dir.clone(),
                    queue_url: match &queue_arg {
                        QueueArg::Embedded => None,
                        QueueArg::JetStream(url) => Some(url.clone()),
                    },
                    nats_url: Some(nats_url.clone()),
                },
                trusted_proxies: self.trusted_proxies,
            },
            store,
            provider.clone(),
            Arc::new(ArtefactStore::open(artefact_dir)?),
            queue,
        );
        if let Some(log) = access_log {
            // Only set here, once.
            let _ = state.access_log.set(log);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        println!("skyfri gateway listening on {url}");
        match ui_addr {
            Some(ui) => println!("skyfri dashboard on {scheme}://{ui}/ui"),
            None => println!("skyfri dashboard off (--ui-listen off)"),
        }
        println!("data dir: {}", data_dir.display());
        println!("async queue: {}", state.queue.backend());
        if generated {
            println!(
                "admin user: admin, password: {password} (kept in {})",
                data_dir.join("admin-password").display()
            );
        }
        // Functions come back before the first request is served, so no API call can race
        // the restore of the same function.
        let restored = skyfri_gateway::restore(&state).await?;
        if restored > 0 {
            println!("restored {restored} function(s)");
        }
        let (stopping, stop_rx) = tokio::sync::watch::channel(false);
        let mut graceful = stop_rx.clone();
        if let Some(tls) = tls.clone() {
            tokio::spawn(reload_on_sighup(tls));
        }
        let mut dashboard = ui_listener.map(|ui| {
            let mut graceful = stop_rx.clone();
            tokio::spawn(skyfri_gateway::serve_dashboard(
                ui,
                state.clone(),
                limits.clone(),
                tls.clone(),
                async move {
                    let _ = graceful.wait_for(|s| *s).await;
                },
            ))
        });
        let mut server = tokio::spawn(skyfri_gateway::serve(
            listener,
            state.clone(),
            limits,
            tls,
            ui_addr,
            async move {
                let _ = graceful.wait_for(|s| *s).await;
            },
        ));
        tokio::spawn(skyfri_gateway::autoscale::run(
            state.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(skyfri_gateway::usage::run(
            state.clone(),
            self.usage_flush,
            stop_rx.clone(),
        ));
        let (hand_back, hand_back_rx) = tokio::sync::watch::channel(false);
        let dispatchers = tokio::spawn(skyfri_gateway::async_calls::dispatcher::run(
            state.clone(),
            stop_rx.clone(),
            hand_back_rx.clone(),
        ));
        let triggers = tokio::spawn(skyfri_gateway::triggers::run(
            state.clone(),
            skyfri_gateway::triggers::TriggerConfig { nats_url },
            stop_rx.clone(),
            hand_back_rx,
        ));
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stopping.send(true);
            // A second one while draining: the user will not wait for the calls in flight.
            shutdown_signal().await;
            eprintln!("second signal: exiting now, calls still in flight are cut");
            std::process::exit(130);
        });
        if let Some(stack) = stack {
            let gw = Gateway::new(url.clone(), Some(password));
            match files {
                // Watching from before the first build, so that no edit is missed.
                Some(files) => {
                    let mut watch = StackWatch::new(files, gw, stack);
                    watch.deploy_all().await;
                    tokio::spawn(watch.run(stop_rx.clone()));
                }
                None => {
                    if let Err(e) =
                        crate::commands::deploy::deploy_all(&gw, &stack, &Progress::plain()).await
                    {
                        eprintln!("error: {e:#}");
                    }
                }
            }
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        // Draining: no new connection is accepted; calls to functions in flight finish (each
        // within its timeout, so at most --max-timeout); other open connections get the grace
        // period. Async and topic runs get the grace period too, then those still going are
        // handed back (due again at once, on another gateway sharing the queue or NATS, or
        // after the restart, with the same attempt number); one that cannot be runs again
        // when its lease lapses. Then the replicas are stopped.
        let mut stopped = stop_rx.clone();
        // The stop first: the server ends when told to stop, and a stop seen as the server's
        // end would skip the drain (async runs handed back at once, without their grace).
        let early = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => None,
            served = &mut server => Some(served),
        };
        let draining = early.is_none();
        if draining {
            tracing::info!(
                calls_in_flight = calls_in_flight(&state),
                grace = ?SHUTDOWN_GRACE,
                "draining: no new connections; calls in flight finish, async calls and topic messages still running after the grace period are handed back"
            );
        }
        let started = tokio::time::Instant::now();
        let longest = Duration::from_secs(self.max_timeout) + Duration::from_secs(1);
        let background = hand_back_after(
            dispatchers,
            triggers,
            hand_back,
            if draining {
                SHUTDOWN_GRACE
            } else {
                Duration::ZERO
            },
        );
        let (served, dashboard_served, ()) = tokio::join!(
            async {
                match early {
                    Some(served) => Some(served),
                    None => drain(&mut server, &state, started, longest).await,
                }
            },
            async {
                match dashboard.as_mut() {
                    Some(d) if draining => drain(d, &state, started, longest).await,
                    _ => None,
                }
            },
            background,
        );
        server.abort();
        if let Some(d) = &dashboard {
            d.abort();
        }
        provider.shutdown().await;
        // The replicas' last CPU readings are in now; nothing is metered after this.
        skyfri_gateway::usage::flush(&state);
        if let Some(served) = served {
            served?.context("gateway failed")?;
        }
        if let Some(served) = dashboard_served {
            served?.context("dashboard failed")?;
        }
        Ok(())
    }
}

/// Waits for a server that stops accepting to finish its connections: as long as calls to
/// functions are in flight (each ends within its timeout; `longest` bounds them all), else
/// for [`SHUTDOWN_GRACE`] from `since`. `None` when it had to be left unfinished.
async fn drain<T>(
    server: &mut tokio::task::JoinHandle<T>,
    state: &AppState,
    since: tokio::time::Instant,
    longest: Duration,
) -> Option<Result<T, tokio::task::JoinError>> {
    loop {
        tokio::select! {
            served = &mut *server => return Some(served),
            _ = tokio::time::sleep(DRAIN_TICK) => {}
        }
        let waited = since.elapsed();
        if waited >= longest || (waited >= SHUTDOWN_GRACE && calls_in_flight(state) == 0) {
            return None;
        }
    }
}

/// Calls to functions being served or waiting for a replica, async and topic runs included.
fn calls_in_flight(state: &AppState) -> usize {
    state
        .all_live()
        .iter()
        .map(|l| l.router.in_flight() + l.router.waiting())
        .sum()
}

/// Lets the async dispatchers and the topic triggers finish their runs for `grace`, then
/// turns `hand_back` true and gives them [`HAND_BACK_GRACE`] to hand back what still runs;
/// whatever is left then is aborted.
async fn hand_back_after(
    dispatchers: tokio::task::JoinHandle<()>,
    triggers: tokio::task::JoinHandle<()>,
    hand_back: tokio::sync::watch::Sender<bool>,
    grace: Duration,
) {
    let aborts = [dispatchers.abort_handle(), triggers.abort_handle()];
    let work = async {
        let _ = tokio::join!(dispatchers, triggers);
    };
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return,
        () = tokio::time::sleep(grace) => {}
    }
    let _ = hand_back.send(true);
    if tokio::time::timeout(HAND_BACK_GRACE, &mut work)
        .await
        .is_err()
    {
        tracing::warn!("async calls and topic messages not all handed back in time; they run again when their leases lapse");
    }
    for a in aborts {
        a.abort();
    }
}

/// Reloads the certificate on every SIGHUP; a failed reload keeps the old one.
async fn reload_on_sighup(tls: Arc<Tls>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the certificate will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays")
            }
        }
    }
}

/// Each connection is a file descriptor: lifts the soft limit towards the hard one so that
/// `--max-connections` can be reached, and warns when it cannot.
fn raise_open_file_limit(connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    // Room for replicas' sockets, logs and databases beside the connections.
    let wanted = connections as u64 + 1024;
    if lim.rlim_cur < wanted {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections = connections,
            "the open-file limit is below --max-connections plus room for the platform; raise LimitNOFILE (systemd) or ulimit -n"
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKYFRI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !crate::term::no_color())
        .try_init();
}

/// An AWS region name as AWS spells them (`eu-north-1`): lower-case letters, digits, '-'.
fn parse_region(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not an AWS region name (like eu-north-1: lower-case letters, digits and '-')"
        ))
    }
}
