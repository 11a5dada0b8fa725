//! How each template is started: the program, its arguments, environment and readiness probe.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use skyfri_core::{Deployment, Template};

use super::cgroup::Limits;
use crate::artefact::FUNCTION_DIR;
use crate::provider::RuntimeError;
use crate::templates;

/// Interpreters, resolved to absolute paths once: replicas get a minimal PATH, and version
/// manager shims (pyenv, nvm) re-resolve per call, which is slow and depends on the caller's
/// environment.
#[derive(Debug, Clone)]
pub struct Interpreters {
    pub python: Option<PathBuf>,
    pub node: Option<PathBuf>,
    /// The skyfri binary, whose `lambda-shim` command serves the Lambda templates' Runtime
    /// API (`None` when this process is not skyfri: a library test).
    pub lambda_shim: Option<PathBuf>,
}

impl Interpreters {
    pub fn resolve() -> Interpreters {
        Interpreters {
            python: find("python3", &["/usr/bin/python3", "/usr/local/bin/python3"]),
            node: find("node", &[]),
            lambda_shim: std::env::current_exe()
                .ok()
                .filter(|exe| exe.file_name().is_some_and(|n| n == "skyfri")),
        }
    }
}

fn find(program: &str, preferred: &[&str]) -> Option<PathBuf> {
    if let Some(p) = preferred.iter().map(Path::new).find(|p| is_executable(p)) {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.components().any(|c| c.as_os_str() == "shims"))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How to tell that a replica is ready.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `GET /_/health` must answer 200 (the shims answer it themselves).
    Shim,
    /// The user's own server: with a configured health path, a GET of it must answer
    /// 2xx or 3xx (as a Kubernetes httpGet probe); without one, accepting TCP is enough.
    Http { health_path: Option<String> },
}

/// Everything needed to start replicas of one deployment.
#[derive(Clone)]
pub struct Launch {
    pub function: String,
    /// The artefact on the host; `root` is where the process sees it.
    pub artefact: PathBuf,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Environment shared by all replicas; per-replica variables are added at spawn.
    pub env: Vec<(String, String)>,
    pub probe: Probe,
    /// Listens on TCP `PORT` (the http template) rather than on the unix socket `SKYFRI_SOCKET`.
    pub tcp: bool,
    pub limits: Limits,
    /// `requests.memory`, per replica: admission.
    pub requests_memory: Option<u64>,
    /// Shares the host's network (the default); `com.skyfri.network: none` turns it off.
    pub network: bool,
    pub readonly_root: bool,
    /// Size of the private `/tmp`.
    pub tmp_bytes: u64,
    /// The secrets the function declares, as (name, value); given to the sandbox as files.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// How a stem cell becomes a replica of this function, when one can.
    pub stem: Option<Stem>,
    /// The exec timeout (`SKYFRI_TIMEOUT_SECONDS`): how long a stopping replica may take to
    /// finish the calls it is serving.
    pub timeout: Duration,
    /// `com.openfaas.health.http.initialDelay`: how long after its start a replica is first
    /// probed.
    pub initial_delay: Duration,
    /// How often a ready replica's health path is checked (the http template with
    /// `com.openfaas.health.http.path` only; `None`: never once it is ready).
    pub health_period: Option<Duration>,
    /// Counts the kernel's OOM kills of the function's replicas (shared across launches).
    pub oom_kills: Arc<AtomicU64>,
}

/// The interpreters stem cells are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Python,
    Node,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
        }
    }
}

/// What a stem cell is told to become: the shim's calling convention, and what a cell of
/// this function must have been started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stem {
    pub runtime: Runtime,
    /// The Python shim's mode (`python3`, `python3-http`, `exec`), `node` for Node.
    pub mode: &'static str,
}

impl Launch {
    /// The environment of a replica process: the deployment's, plus its home, its
    /// hostname and where it serves.
    pub fn environment(
        &self,
        instance: &str,
        home: &Path,
        socket: &Path,
        port: Option<u16>,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOME".to_string(), home.display().to_string()),
            ("TMPDIR".to_string(), home.display().to_string()),
        ];
        env.extend(self.env.iter().cloned());
        env.push(("HOSTNAME".to_string(), instance.to_string()));
        match port {
            Some(port) => env.push(("PORT".to_string(), port.to_string())),
            None => env.push(("SKYFRI_SOCKET".to_string(), socket.display().to_string())),
        }
        env
    }
}

/// Environment variables read when an interpreter starts, not later: a function that sets
/// one cannot be served by a cell started without it.
fn read_at_interpreter_start(key: &str) -> bool {
    key.starts_with("PYTHON")
        || key.starts_with("NODE_")
        || key == "LD_PRELOAD"
        || key == "LD_LIBRARY_PATH"
}

/// Replicas without a declared pids limit get this one, so a fork bomb stays contained.
pub const DEFAULT_PIDS: u64 = 512;
/// Size of a replica's private `/tmp` unless `com.skyfri.tmp-size` says otherwise.
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;
pub const NETWORK_ANNOTATION: &str = "com.skyfri.network";
pub const TMP_SIZE_ANNOTATION: &str = "com.skyfri.tmp-size";
pub const PIDS_ANNOTATION: &str = "com.skyfri.pids-limit";
/// A Go duration (`30s`), as faas-netes reads it: delays the first probe of a replica.
pub const HEALTH_DELAY_ANNOTATION: &str = "com.openfaas.health.http.initialDelay";
/// How often the http template's health path is checked once a replica is ready. OpenFaaS
/// has no per-function key for it (faas-netes takes the period from its own configuration),
/// hence a skyfri one.
pub const HEALTH_PERIOD_ANNOTATION: &str = "com.skyfri.health.http.period";
/// Kubernetes' default `periodSeconds`.
pub const DEFAULT_HEALTH_PERIOD: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Launch {
    // By hand, so secret values never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("function", &self.function)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("limits", &self.limits)
            .field(
                "secrets",
                &self.secrets.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Plans the replicas of `d`. `root` is where the process will see `artefact_dir` (the same
/// path without a sandbox); `secrets` are the values of the secrets `d` declares.
pub fn plan(
    d: &Deployment,
    artefact_dir: &Path,
    root: &Path,
    interpreters: &Interpreters,
    secrets: Vec<(String, Vec<u8>)>,
    region: &str,
) -> Result<Launch, RuntimeError> {
    let fprocess = d.spec.env_process.clone().filter(|p| !p.trim().is_empty());
    let python = || {
        interpreters
            .python
            .clone()
            .ok_or(RuntimeError::MissingInterpreter("python3"))
    };
    let (program, args, probe, tcp) = match d.template {
        Template::Python3 | Template::Python3Http | Template::Exec => {
            if d.template == Template::Exec && fprocess.is_none() {
                return Err(RuntimeError::Invalid(
                    "the exec template needs fprocess (env_process)".into(),
                ));
            }
            let shim = root.join(templates::PYTHON_SHIM);
            let mode = templates::python_mode(d.template).unwrap_or("python3");
            (
                python()?,
                vec![shim.to_string_lossy().into_owned(), mode.to_string()],
                Probe::Shim,
                false,
            )
        }
        Template::Node => {
            let node = interpreters
                .node
                .clone()
                .ok_or(RuntimeError::MissingInterpreter("node"))?;
            let shim = root.join(templates::NODE_SHIM);
            (
                node,
                vec![shim.to_string_lossy().into_owned()],
                Probe::Shim,
                false,
            )
        }
        Template::Http => {
            let Some(command) = fprocess.clone() else {
                return Err(RuntimeError::Invalid(
                    "the http template needs fprocess (env_process): the command that starts the server".into(),
                ));
            };
            (
                PathBuf::from("/bin/sh"),
                vec!["-c".to_string(), exec_prefixed(&command)],
                Probe::Http {
                    health_path: d.spec.health_path().map(str::to_string),
                },
                true,
            )
        }
        Template::LambdaPython | Template::LambdaNode | Template::LambdaProvided => {
            let shim = interpreters
                .lambda_shim
                .clone()
                .ok_or(RuntimeError::MissingInterpreter("skyfri (lambda-shim)"))?;
            let mut args = vec!["lambda-shim".to_string(), "--".to_string()];
            args.extend(lambda_client(d, artefact_dir, root, interpreters)?);
            (shim, args, Probe::Shim, false)
        }
    };

    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        ),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
    ];
    if let Some(fprocess) = fprocess {
        env.push(("fprocess".to_string(), fprocess));
    }
    if d.template.is_lambda() {
        env.extend(lambda_environment(d, root, region));
    }
    // The user's variables come last so they may override the defaults above (PATH, say);
    // the protocol variables set per replica at spawn override them in turn.
    env.extend(d.spec.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push((
        "SKYFRI_TIMEOUT_SECONDS".to_string(),
        d.spec.timeout_secs.to_string(),
    ));

    let annotation = |key: &str| d.spec.annotations.get(key).map(|v| v.trim());
    let network = match annotation(NETWORK_ANNOTATION) {
        None | Some("" | "host" | "shared") => true,
        Some("none") => false,
        Some(other) => {
            return Err(RuntimeError::Invalid(format!(
                "annotation {NETWORK_ANNOTATION}: {other:?} is not a network mode (use none, or leave it out)"
            )))
        }
    };
    if tcp && !network {
        return Err(RuntimeError::Invalid(format!(
            "the http template serves on a TCP port and needs the network: remove {NETWORK_ANNOTATION}: none"
        )));
    }
    let tmp_bytes = match annotation(TMP_SIZE_ANNOTATION) {
        None => DEFAULT_TMP_BYTES,
        Some(v) => skyfri_core::quantity::parse_memory(v)
            .map_err(|e| RuntimeError::Invalid(format!("annotation {TMP_SIZE_ANNOTATION}: {e}")))?,
    };
    let pids = match annotation(PIDS_ANNOTATION) {
        None => DEFAULT_PIDS,
        Some(v) => v.parse().map_err(|_| {
            RuntimeError::Invalid(format!(
                "annotation {PIDS_ANNOTATION}: {v:?} is not a whole number"
            ))
        })?,
    };
    let duration = |key: &str| -> Result<Option<Duration>, RuntimeError> {
        annotation(key)
            .map(|v| {
                skyfri_core::quantity::parse_duration(v)
                    .map_err(|e| RuntimeError::Invalid(format!("annotation {key}: {e}")))
            })
            .transpose()
    };
    let initial_delay = duration(HEALTH_DELAY_ANNOTATION)?.unwrap_or(Duration::ZERO);
    let health_period = match duration(HEALTH_PERIOD_ANNOTATION)? {
        Some(period) if period.is_zero() => {
            return Err(RuntimeError::Invalid(format!(
                "annotation {HEALTH_PERIOD_ANNOTATION}: the period must be longer than 0"
            )))
        }
        period => period.unwrap_or(DEFAULT_HEALTH_PERIOD),
    };
    // Only the user's own server can fall ill while it runs: the shims answer their health
    // check as long as they run, and a dead process is noticed anyway.
    let health_period = matches!(
        probe,
        Probe::Http {
            health_path: Some(_)
        }
    )
    .then_some(health_period);

    let stem = match d.template {
        Template::Node => Some(Stem {
            runtime: Runtime::Node,
            mode: "node",
        }),
        t => templates::python_mode(t).map(|mode| Stem {
            runtime: Runtime::Python,
            mode,
        }),
    }
    // Secrets are mounted when the sandbox starts; cells start before they are known.
    .filter(|_| {
        secrets.is_empty() && !d.spec.env_vars.keys().any(|k| read_at_interpreter_start(k))
    });

    Ok(Launch {
        stem,
        function: d.spec.name.clone(),
        artefact: artefact_dir.to_path_buf(),
        program,
        args,
        cwd: root.join(FUNCTION_DIR),
        env,
        probe,
        tcp,
        limits: Limits {
            memory: d.spec.limits.memory,
            cpu_millis: d.spec.limits.cpu_millis,
            cpu_request_millis: d.spec.requests.cpu_millis.or(d.spec.limits.cpu_millis),
            pids: Some(pids),
        },
        requests_memory: d.spec.requests.memory,
        network,
        readonly_root: d.spec.read_only_root_filesystem,
        tmp_bytes,
        secrets,
        timeout: Duration::from_secs(d.spec.timeout_secs),
        initial_delay,
        health_period,
        oom_kills: Arc::default(),
    })
}

/// The handler a Lambda function names (`_HANDLER` in its environment), else the
/// template's starter's.
fn lambda_handler(d: &Deployment) -> String {
    d.spec
        .env_vars
        .get("_HANDLER")
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            match d.template {
                Template::LambdaNode => "index.handler",
                Template::LambdaProvided => "bootstrap",
                _ => "handler.handler",
            }
            .to_string()
        })
}

/// The runtime client a Lambda template's shim starts: AWS's own for Python and Node, the
/// function's `bootstrap` for a custom runtime.
fn lambda_client(
    d: &Deployment,
    artefact_dir: &Path,
    root: &Path,
    interpreters: &Interpreters,
) -> Result<Vec<String>, RuntimeError> {
    let handler = lambda_handler(d);
    let text = |p: PathBuf| p.to_string_lossy().into_owned();
    match d.template {
        Template::LambdaPython => {
            let python = interpreters
                .python
                .clone()
                .ok_or(RuntimeError::MissingInterpreter("python3"))?;
            Ok(vec![
                text(python),
                "-m".into(),
                "awslambdaric".into(),
                handler,
            ])
        }
        Template::LambdaNode => {
            let node = interpreters
                .node
                .clone()
                .ok_or(RuntimeError::MissingInterpreter("node"))?;
            let client = Path::new(crate::artefact::LAMBDA_NODE_CLIENT);
            if !artefact_dir.join(client).is_file() {
                return Err(RuntimeError::Invalid(format!(
                    "the artefact of {} has no aws-lambda-ric ({}): build it again",
                    d.spec.name,
                    client.display()
                )));
            }
            Ok(vec![text(node), text(root.join(client)), handler])
        }
        _ => {
            let bootstrap = Path::new(FUNCTION_DIR).join(templates::LAMBDA_BOOTSTRAP);
            if !is_executable(&artefact_dir.join(&bootstrap)) {
                return Err(RuntimeError::Invalid(format!(
                    "the lambda-provided template runs an executable file named {} in the handler folder, and {} has none: add it (chmod +x) and deploy again",
                    templates::LAMBDA_BOOTSTRAP,
                    d.spec.name
                )));
            }
            Ok(vec![text(root.join(bootstrap))])
        }
    }
}

/// The environment AWS gives a function (the shim adds `AWS_LAMBDA_RUNTIME_API` and the log
/// stream); the function's own variables come after and may override it.
fn lambda_environment(d: &Deployment, root: &Path, region: &str) -> Vec<(String, String)> {
    use skyfri_core::lambda as aws;
    let name = &d.spec.name;
    let memory_mb = d
        .spec
        .limits
        .memory
        .map_or(aws::DEFAULT_MEMORY_MB, |b| (b >> 20).max(1));
    let task_root = root.join(FUNCTION_DIR).to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = [
        ("_HANDLER", lambda_handler(d)),
        ("LAMBDA_TASK_ROOT", task_root),
        ("LAMBDA_RUNTIME_DIR", root.to_string_lossy().into_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", aws::FUNCTION_VERSION.into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        ("AWS_REGION", region.into()),
        ("AWS_DEFAULT_REGION", region.into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("TZ", ":UTC".into()),
        ("LANG", "en_US.UTF-8".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    match d.template {
        Template::LambdaPython => {
            env.push(("AWS_EXECUTION_ENV".into(), "AWS_Lambda_python3".into()));
            env.push((
                "PYTHONPATH".into(),
                root.join(crate::artefact::PYTHON_PACKAGES)
                    .to_string_lossy()
                    .into_owned(),
            ));
        }
        Template::LambdaNode => {
            env.push(("AWS_EXECUTION_ENV".into(), "AWS_Lambda_nodejs".into()));
        }
        _ => {}
    }
    env
}

/// `exec` in front of a plain command (`python3 server.py`), so the server replaces the
/// shell: a stop's SIGTERM then reaches the server itself, which decides how it drains (as
/// in Knative), instead of killing the shell and, with it, the server. Anything with shell
/// syntax (lists, pipes, groups, leading assignments) runs as written.
fn exec_prefixed(command: &str) -> String {
    let first = command.split_whitespace().next().unwrap_or("");
    let plain = !command.contains(|c: char| ";&|(){}`\n\\".contains(c))
        && !first.is_empty()
        && !first.contains('=')
        && !matches!(
            first,
            "exec" | "!" | "if" | "case" | "for" | "while" | "until" | "cd" | "." | "source"
        );
    if plain {
        format!("exec {command}")
    } else {
        command.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::exec_prefixed;

    #[test]
    fn plain_server_commands_replace_the_shell() {
        assert_eq!(exec_prefixed("python3 server.py"), "exec python3 server.py");
        assert_eq!(
            exec_prefixed("node 'my server.js' --port=$PORT"),
            "exec node 'my server.js' --port=$PORT"
        );
        for as_written in [
            "cd app && python3 server.py",
            "python3 a.py; python3 b.py",
            "PORT=9000 python3 server.py",
            "exec python3 server.py",
            "(python3 server.py)",
            "python3 server.py | tee log",
            "python3 server.py &",
        ] {
            assert_eq!(exec_prefixed(as_written), as_written);
        }
    }
}
