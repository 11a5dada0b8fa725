//! The lambda shim: the program a Lambda template's replica runs (`skyfri lambda-shim --
//! RUNTIME-CLIENT...`, inside the replica's sandbox). It serves the gateway's calls on the
//! replica's unix socket as the other shims do, serves the Lambda Runtime API (2018-06-01)
//! on loopback to the runtime client it starts (AWS's awslambdaric, aws-lambda-ric, a
//! `bootstrap`), and hands each call to the client as an event, one at a time.
//!
//! - `calls`: the gateway's side: a call becomes an event (an API Gateway HTTP API event,
//!   or the body verbatim under `X-Skyfri-Lambda-Event: raw`), the result an answer.
//! - `runtime_api`: the runtime client's side: `invocation/next`, `response`, `error`,
//!   `init/error`, for connections from this replica's own processes only (`peer`).

mod calls;
mod peer;
mod runtime_api;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

/// What the shim is told by its environment and command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gateway's calls arrive (`SKYFRI_SOCKET`).
    pub socket: PathBuf,
    /// The function's timeout: each event's deadline.
    pub timeout: Duration,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub function_arn: String,
    /// The runtime client and its arguments.
    pub command: Vec<String>,
}

impl Config {
    /// From the replica's environment (`SKYFRI_SOCKET`, `SKYFRI_TIMEOUT_SECONDS`,
    /// `AWS_LAMBDA_FUNCTION_NAME`, `AWS_REGION`) and the runtime client's command line.
    pub fn from_env(command: Vec<String>) -> Result<Config, String> {
        let var = |key: &str| std::env::var(key).map_err(|_| format!("{key} is not set"));
        let timeout: u64 = var("SKYFRI_TIMEOUT_SECONDS")?
            .parse()
            .map_err(|_| "SKYFRI_TIMEOUT_SECONDS is not a whole number".to_string())?;
        if command.is_empty() {
            return Err("no runtime client command given".into());
        }
        Ok(Config {
            socket: PathBuf::from(var("SKYFRI_SOCKET")?),
            timeout: Duration::from_secs(timeout),
            function_arn: skyfri_core::lambda::function_arn(
                &var("AWS_REGION")?,
                &var("AWS_LAMBDA_FUNCTION_NAME")?,
            ),
            command,
        })
    }
}

/// One event on its way to the runtime client.
struct Invocation {
    request_id: String,
    event: Bytes,
    deadline_ms: i64,
    /// When the runtime client's time is up: the environment is then discarded.
    deadline: tokio::time::Instant,
    trace_id: String,
    client_context: Option<String>,
    cognito_identity: Option<String>,
    reply: oneshot::Sender<Outcome>,
}

/// What the runtime client said about an event.
enum Outcome {
    Response(Bytes),
    /// The error type and the error JSON as posted.
    Error(String, Bytes),
}

/// State shared by the two servers.
struct Shared {
    config: Config,
    queue: mpsc::UnboundedSender<Invocation>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    /// Taken by `next`, awaiting `response` or `error`.
    inflight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// The runtime client has asked for its first event: its handler is loaded.
    ready: AtomicBool,
    /// Calls being served, for draining on SIGTERM.
    busy: AtomicUsize,
    idle: Notify,
    /// The environment is unusable (an init error, a timed-out handler): restart it.
    fatal: Notify,
}

impl Shared {
    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, why: &str) {
        eprintln!("skyfri: {why}");
        self.fatal.notify_one();
    }
}

/// Runs the shim until the runtime client exits, the environment becomes unusable, or a
/// SIGTERM has been served (after the calls in flight finish). Returns the exit code.
pub async fn run(config: Config) -> std::io::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    // Orphans of the runtime client stay ours, so `peer` still recognises their sockets.
    // SAFETY: prctl with constant arguments; failure only weakens that.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = api.local_addr()?;
    let _ = std::fs::remove_file(&config.socket);
    let calls = tokio::net::UnixListener::bind(&config.socket)?;

    let (queue, next) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        config: config.clone(),
        queue,
        next: tokio::sync::Mutex::new(next),
        inflight: Mutex::default(),
        ready: AtomicBool::new(false),
        busy: AtomicUsize::new(0),
        idle: Notify::new(),
        fatal: Notify::new(),
    });

    let mut child = tokio::process::Command::new(&config.command[0])
        .args(&config.command[1..])
        .env("AWS_LAMBDA_RUNTIME_API", api_addr.to_string())
        // The replica (its HOSTNAME), as `skyfri logs --instance` names it.
        .env(
            "AWS_LAMBDA_LOG_STREAM_NAME",
            std::env::var("HOSTNAME").unwrap_or_default(),
        )
        .env_remove("SKYFRI_SOCKET")
        .kill_on_drop(true)
        // Its own group: the replica's SIGTERM is the shim's to handle (it drains first).
        .process_group(0)
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start the runtime client {}: {e}", config.command[0]),
            )
        })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);

    tokio::spawn(runtime_api::serve(api, Arc::clone(&shared)));
    tokio::spawn(calls::serve(calls, Arc::clone(&shared)));

    let code = tokio::select! {
        status = child.wait() => {
            let status = status?;
            eprintln!("skyfri: the runtime client exited ({status})");
            status.code().unwrap_or(1).max(1)
        }
        () = shared.fatal.notified() => 1,
        _ = sigterm.recv() => {
            // Finish what is in flight (each call ends by its deadline at the latest).
            while shared.busy.load(Ordering::Acquire) > 0 {
                shared.idle.notified().await;
            }
            0
        }
    };
    if pgid > 0 {
        // SAFETY: kill(2) of the group we created for the runtime client.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
    Ok(code)
}
