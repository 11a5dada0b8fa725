//! Installs the dependencies a handler folder declares into the artefact being built:
//! `requirements.txt` with pip (the interpreter replicas run, `--target` a folder beside
//! `function/` that the Python shim puts on `sys.path`), `package.json` with npm
//! (`node_modules/` beside `handler.js`, where `require` finds it).
//!
//! Installers run on the building host, outside any sandbox, and the gateway builds archives
//! uploaded to it; so no package code runs during an install: pip takes wheels only (building
//! a source distribution runs its `setup.py`) and npm skips lifecycle scripts. Each run is
//! bounded in time, and a failure names the file and ends with the installer's last lines.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skyfri_core::Template;

use super::layers::{LayerKey, Layers};
use super::FUNCTION_DIR;
use crate::provider::RuntimeError;

/// The folder, beside `function/`, that pip installs a Python function's packages into. The
/// shim (`skyfri_shim.py`, `add_packages`) looks for it under this name.
pub const PYTHON_PACKAGES: &str = "python_packages";
const REQUIREMENTS: &str = "requirements.txt";
const PACKAGE_JSON: &str = "package.json";
const LOCK_FILES: [&str; 2] = ["package-lock.json", "npm-shrinkwrap.json"];
const NODE_MODULES: &str = "node_modules";
/// Long enough for a large wheel set on a slow link; a hung installer must not hold a build
/// (and the gateway's blocking thread) forever.
const TIMEOUT: Duration = Duration::from_secs(600);
/// How much of the installer's output a failure shows: its error is nearly always at the end.
const TAIL_LINES: usize = 20;
/// Scratch files of a run, inside the staging dir and removed before it is renamed.
const LOG_FILE: &str = ".install.log";
const NPM_CACHE: &str = ".npm-cache";
/// AWS's Python runtime client, installed into every lambda-python artefact.
pub const AWSLAMBDARIC: &str = "awslambdaric==4.2.2";
/// AWS's Node runtime client, copied into every lambda-node artefact (3.x: the 4.x line
/// needs Node 22).
pub const AWS_LAMBDA_RIC: &str = "aws-lambda-ric@3.3.0";

/// Installs what the handler folder in `staging/function/` declares, if anything, reusing
/// the packages of an earlier build with the same dependency files from `layers`.
pub fn install(template: Template, staging: &Path, layers: &Layers) -> Result<(), RuntimeError> {
    let function = staging.join(FUNCTION_DIR);
    match template {
        Template::Python3 | Template::Python3Http | Template::Exec | Template::LambdaPython => {
            let requirements = function.join(REQUIREMENTS);
            let declared = requirements.is_file() && declares_something(&requirements)?;
            let lambda = template == Template::LambdaPython;
            if !declared && !lambda {
                return Ok(());
            }
            let python = crate::local::Interpreters::resolve()
                .python
                .ok_or(RuntimeError::MissingInterpreter("python3"))?;
            let target = staging.join(PYTHON_PACKAGES);
            let key = if declared && !self_contained_requirements(&requirements)? {
                None
            } else {
                let mut key = LayerKey::new("pip --only-binary=:all: --target");
                key.program(&python)
                    .env(&["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"])
                    .file(&requirements)?;
                if lambda {
                    key.field(AWSLAMBDARIC.as_bytes());
                }
                Some(key)
            };
            let mut cmd = Command::new(&python);
            cmd.args([
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--no-warn-script-location",
                "--only-binary=:all:",
                "--target",
            ])
            .arg(&target);
            if declared {
                cmd.args(["-r", REQUIREMENTS]);
            }
            if lambda {
                // AWS's runtime client, beside the function's own packages.
                cmd.arg(AWSLAMBDARIC);
            }
            cmd
                // Settings that contradict `--target` (PIP_USER makes pip refuse it) or would
                // point the interpreter at other packages; proxies and index settings stay.
                .env_remove("PIP_USER")
                .env_remove("PIP_TARGET")
                .env_remove("PIP_PREFIX")
                .env_remove("PIP_REQUIRE_VIRTUALENV")
                .env_remove("PYTHONPATH")
                .env_remove("PYTHONHOME");
            let hint = "fix requirements.txt and build again (skyfri installs wheels only: \
                building a package from source would run its code on the build host, outside \
                the sandbox)";
            layers.install(key, &target, || {
                run(cmd, REQUIREMENTS, "pip", hint, staging)?;
                seal(&target)
            })?;
            Ok(())
        }
        Template::LambdaNode => {
            install(Template::Node, staging, layers)?;
            add_lambda_node_client(staging)
        }
        Template::Node => {
            if !function.join(PACKAGE_JSON).is_file() {
                return Ok(());
            }
            let node = crate::local::Interpreters::resolve()
                .node
                .ok_or(RuntimeError::MissingInterpreter("node"))?;
            let npm = find_npm(&node).ok_or(RuntimeError::MissingInterpreter("npm"))?;
            let locked = LOCK_FILES.iter().any(|f| function.join(f).is_file());
            let key = if self_contained_package(&function.join(PACKAGE_JSON))? {
                let mut key = LayerKey::new("npm --omit=dev --ignore-scripts");
                key.program(&node)
                    .program(&npm)
                    .env(&["npm_config_registry", "NPM_CONFIG_REGISTRY"]);
                key.file(&function.join(PACKAGE_JSON))?;
                // A registry or its settings uploaded beside the handler change what installs.
                key.file(&function.join(".npmrc"))?;
                for lock in LOCK_FILES {
                    key.file(&function.join(lock))?;
                }
                Some(key)
            } else {
                None
            };
            let mut cmd = Command::new(&npm);
            if locked {
                cmd.arg("ci");
            } else {
                // No lock file to write back: the function's files stay what was hashed.
                cmd.args(["install", "--no-package-lock"]);
            }
            cmd.args([
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--update-notifier=false",
                // Its log file would be deleted with the scratch cache; the tail is shown.
                "--logs-max=0",
            ])
            .arg("--cache")
            .arg(staging.join(NPM_CACHE));
            cmd.env("PATH", npm_path(&node));
            let hint = if locked {
                "fix package.json and build again (npm ci needs the lock file to match it; \
                 packages' install scripts are not run)"
            } else {
                "fix package.json and build again (packages' install scripts are not run)"
            };
            let modules = function.join(NODE_MODULES);
            layers.install(key, &modules, || {
                let result = run(cmd, PACKAGE_JSON, "npm", hint, staging);
                let _ = fs::remove_dir_all(staging.join(NPM_CACHE));
                result?;
                seal(&modules)
            })?;
            Ok(())
        }
        Template::Http | Template::LambdaProvided => Ok(()),
    }
}

/// Copies AWS's Node runtime client into `staging/lambda_runtime/node_modules/`, from the
/// host's cache (see [`lambda_node_client`]).
fn add_lambda_node_client(staging: &Path) -> Result<(), RuntimeError> {
    let cached = lambda_node_client()?;
    let dest = staging.join("lambda_runtime/node_modules/aws-lambda-ric");
    for entry in walkdir::WalkDir::new(&cached).follow_links(false) {
        let entry = entry.map_err(|e| RuntimeError::io("copying aws-lambda-ric", e.into()))?;
        let rel = entry.path().strip_prefix(&cached).unwrap_or(entry.path());
        let to = dest.join(rel);
        let io = |e| RuntimeError::io(format!("copying aws-lambda-ric to {}", to.display()), e);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&to).map_err(io)?;
        } else if entry.file_type().is_file() {
            fs::copy(entry.path(), &to).map_err(io)?;
        }
    }
    seal(&staging.join("lambda_runtime"))
}

/// AWS's Node runtime client (`aws-lambda-ric`, pinned), the parts a replica runs
/// (`package.json`, `bin/`, `dist/` with the native `rapid-client.node`), built once per host
/// into the cache (`$SKYFRI_CACHE_DIR`, else the user's cache dir `/skyfri`). Its install
/// compiles native code (aws-lambda-cpp, curl) with its own install scripts: the one package
/// whose scripts run at build, a fixed version from AWS, never the function's packages.
fn lambda_node_client() -> Result<PathBuf, RuntimeError> {
    let cache = std::env::var_os("SKYFRI_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("skyfri")))
        .ok_or_else(|| {
            RuntimeError::Invalid(
                "no cache directory for aws-lambda-ric: set SKYFRI_CACHE_DIR".into(),
            )
        })?;
    let name = AWS_LAMBDA_RIC.replace('@', "-");
    let done = cache.join("lambda-node").join(&name);
    if done.join("dist/rapid-client.node").is_file() {
        return Ok(done);
    }
    let node = crate::local::Interpreters::resolve()
        .node
        .ok_or(RuntimeError::MissingInterpreter("node"))?;
    let npm = find_npm(&node).ok_or(RuntimeError::MissingInterpreter("npm"))?;
    let work = cache
        .join("lambda-node")
        .join(format!(".building-{name}-{}", rand::random::<u32>()));
    let io = |what: &str, e| RuntimeError::io(format!("{what} {}", work.display()), e);
    fs::create_dir_all(work.join(FUNCTION_DIR)).map_err(|e| io("creating", e))?;
    fs::write(
        work.join(FUNCTION_DIR).join(PACKAGE_JSON),
        r#"{"name":"skyfri-lambda-node-client","version":"1.0.0","private":true}"#,
    )
    .map_err(|e| io("writing", e))?;
    tracing::info!(
        client = AWS_LAMBDA_RIC,
        "building AWS's Node runtime client once for this host (minutes)"
    );
    let mut cmd = Command::new(&npm);
    cmd.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--omit=dev",
        "--update-notifier=false",
        "--logs-max=0",
        "--foreground-scripts",
    ])
    .arg(AWS_LAMBDA_RIC);
    cmd.env("PATH", npm_path(&node));
    let hint = "aws-lambda-ric compiles native code: install cmake, autoconf, automake, libtool, g++ and make (scripts/setup.sh does)";
    let built = run(cmd, AWS_LAMBDA_RIC, "npm", hint, &work).and_then(|()| {
        let package = work.join(FUNCTION_DIR).join("node_modules/aws-lambda-ric");
        if !package.join("dist/rapid-client.node").is_file() {
            return Err(RuntimeError::Invalid(format!(
                "{AWS_LAMBDA_RIC}: npm installed it without its native part (dist/rapid-client.node); {hint}"
            )));
        }
        let keep = work.join("keep");
        for part in ["package.json", "bin", "dist"] {
            fs::create_dir_all(&keep).map_err(|e| io("creating", e))?;
            fs::rename(package.join(part), keep.join(part)).map_err(|e| io("moving", e))?;
        }
        // Another build may have finished first: theirs is as good.
        if fs::rename(&keep, &done).is_err() && !done.join("dist/rapid-client.node").is_file() {
            return Err(RuntimeError::Invalid(format!(
                "{AWS_LAMBDA_RIC}: cannot move the build into {}",
                done.display()
            )));
        }
        Ok(())
    });
    let _ = fs::remove_dir_all(&work);
    built.map(|()| done)
}

/// Whether a requirements file names anything: the OpenFaaS templates ship an empty one, and
/// starting pip for it would cost a second per build.
fn declares_something(requirements: &Path) -> Result<bool, RuntimeError> {
    let text = fs::read_to_string(requirements)
        .map_err(|e| RuntimeError::io(format!("reading {REQUIREMENTS}"), e))?;
    Ok(text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    }))
}

/// Whether `requirements` says everything pip installs from it by itself: not when a line
/// includes, constrains or finds packages through other files or folders (`-r`, `-c`, `-e`,
/// `-f`), or names a path, a URL or an archive (`./pkg`, `/abs`, `file:`, `x @ https://…`,
/// `wheels/x.whl`); such a folder is installed on every build. Index options (`-i URL`,
/// `--extra-index-url URL`) are keyed by their text like any other line.
fn self_contained_requirements(requirements: &Path) -> Result<bool, RuntimeError> {
    const REFERS: [&str; 8] = [
        "-r",
        "-c",
        "-e",
        "-f",
        "--requirement",
        "--constraint",
        "--editable",
        "--find-links",
    ];
    const INDEX: [&str; 3] = ["-i", "--index-url", "--extra-index-url"];
    const ARCHIVES: [&str; 5] = [".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2"];
    let text = fs::read_to_string(requirements)
        .map_err(|e| RuntimeError::io(format!("reading {REQUIREMENTS}"), e))?;
    Ok(text.lines().all(|l| {
        let l = l.split(" #").next().unwrap_or("").trim();
        if l.starts_with('#') || (INDEX.iter().any(|o| l.starts_with(o)) && !l.contains("file:")) {
            return true;
        }
        !(REFERS.iter().any(|r| l.starts_with(r))
            || l.starts_with(['.', '/', '~'])
            || l.contains(['/', '\\'])
            || l.contains("file:")
            || ARCHIVES.iter().any(|a| l.ends_with(a)))
    }))
}

/// Whether `package.json` names only registry packages: not a local folder or file
/// (`file:`, `link:`, `workspace:`, `./lib`, `../lib`, `/abs`, `~/lib`), which installs on
/// every build. A file that is not JSON is left to npm to refuse.
fn self_contained_package(package: &Path) -> Result<bool, RuntimeError> {
    const LOCAL: [&str; 3] = ["file:", "link:", "workspace:"];
    let text = fs::read_to_string(package)
        .map_err(|e| RuntimeError::io(format!("reading {PACKAGE_JSON}"), e))?;
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(false);
    };
    let specs = [
        "dependencies",
        "optionalDependencies",
        "peerDependencies",
        "bundleDependencies",
        "bundledDependencies",
        "overrides",
    ]
    .iter()
    .filter_map(|field| json.get(field))
    .flat_map(|deps| match deps {
        serde_json::Value::Object(map) => map.values().cloned().collect(),
        serde_json::Value::Array(list) => list.clone(),
        _ => Vec::new(),
    });
    let mut local = false;
    for spec in specs {
        local |= match &spec {
            serde_json::Value::String(s) => {
                s.starts_with(['.', '/', '~']) || LOCAL.iter().any(|p| s.starts_with(p))
            }
            // Nested overrides: judged by their text.
            other => {
                let text = other.to_string();
                LOCAL.iter().any(|p| text.contains(&format!("\"{p}")))
                    || text.contains("\"./")
                    || text.contains("\"../")
            }
        };
    }
    Ok(!local)
}

/// npm beside `node` (both come from one package), else the first on `PATH`.
fn find_npm(node: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(p) = node
        .parent()
        .map(|d| d.join("npm"))
        .filter(|p| executable(p))
    {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("npm"))
        .find(|p| executable(p))
}

/// Runs an installer in `staging/function/` with its output in a scratch file, killing its
/// process group after [`TIMEOUT`]. A failure names `file` and shows the output's tail.
fn run(
    mut cmd: Command,
    file: &str,
    installer: &str,
    hint: &str,
    staging: &Path,
) -> Result<(), RuntimeError> {
    let function = staging.join(FUNCTION_DIR);
    let log_path = staging.join(LOG_FILE);
    let log = fs::File::create(&log_path)
        .map_err(|e| RuntimeError::io(format!("creating {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| RuntimeError::io(format!("creating {}", log_path.display()), e))?;
    cmd.current_dir(&function)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own group, so a timeout kills the installer's children too.
        .process_group(0);

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        RuntimeError::io(
            format!(
                "{file}: running {installer} ({})",
                cmd.get_program().to_string_lossy()
            ),
            e,
        )
    })?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= TIMEOUT => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: signals the process group the child leads; no memory involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait();
                break Err(format!("did not finish within {}s", TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("could not be waited for: {e}"));
            }
        }
    };
    let elapsed = started.elapsed();
    let output = fs::read(&log_path).unwrap_or_default();
    let _ = fs::remove_file(&log_path);
    let failure = match status {
        Ok(status) if status.success() => {
            tracing::info!(
                file,
                installer,
                elapsed_ms = elapsed.as_millis() as u64,
                "dependencies installed"
            );
            return Ok(());
        }
        Ok(status) => format!("failed ({status})"),
        Err(reason) => reason,
    };
    tracing::warn!(
        file,
        installer,
        elapsed_ms = elapsed.as_millis() as u64,
        "dependency install failed"
    );
    let text = String::from_utf8_lossy(&output)
        // Paths inside the staging dir mean nothing to the user and would change every build.
        .replace(&format!("{}/", function.display()), "")
        .replace(&staging.display().to_string(), "<artefact>");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    let hint = if installer == "pip" && text.contains("No module named pip") {
        format!(
            "pip is not installed for {}: install it (Debian: apt-get install python3-pip, or run scripts/setup.sh)",
            cmd.get_program().to_string_lossy()
        )
    } else {
        hint.to_string()
    };
    Err(RuntimeError::Invalid(format!(
        "{file}: {installer} {failure} installing the function's dependencies; its last lines:\n{tail}\n{hint}"
    )))
}

/// Makes installed files read-only like the rest of the artefact (keeping executable bits)
/// and leaves every folder traversable by the sandbox user. Links (npm's `.bin/`) are left
/// alone: they point inside the installed tree.
fn seal(dir: &Path) -> Result<(), RuntimeError> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| {
            RuntimeError::io(
                format!("reading {}", dir.display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let kind = entry.file_type();
        let mode = if kind.is_dir() {
            0o755
        } else if kind.is_file() {
            let executable = entry
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
            if executable {
                0o555
            } else {
                0o444
            }
        } else {
            continue;
        };
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))
            .map_err(|e| RuntimeError::io(format!("chmod {}", entry.path().display()), e))?;
    }
    Ok(())
}

/// `PATH` for npm, a `#!/usr/bin/env node` script: the node replicas run comes first.
fn npm_path(node: &Path) -> std::ffi::OsString {
    let mut path = node
        .parent()
        .map(|p| p.as_os_str().to_os_string())
        .unwrap_or_default();
    path.push(":/usr/local/bin:/usr/bin:/bin");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requirement_lines_count() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(REQUIREMENTS);
        for (text, expected) in [
            ("", false),
            ("\n  \n", false),
            ("# nothing yet\n", false),
            ("six\n", true),
            ("# pinned\nidna==3.7 # comment\n", true),
        ] {
            fs::write(&file, text)?;
            assert_eq!(declares_something(&file)?, expected, "{text:?}");
        }
        Ok(())
    }

    #[test]
    fn requirements_naming_other_files_are_not_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join(REQUIREMENTS);
        for (text, expected) in [
            ("six==1.16.0\nidna # any\n", true),
            ("requests[socks]>=2 ; python_version > '3'\n", true),
            ("-r base.txt\n", false),
            ("six\n-c constraints.txt\n", false),
            ("./vendor/pkg\n", false),
            ("-e .\n", false),
            ("mylib @ file:///srv/mylib\n", false),
            ("mylib@file:///srv/mylib\n", false),
            ("-f ./wheels\nsix\n", false),
            ("--find-links wheels\nsix\n", false),
            ("wheels/six-1.16.0-py2.py3-none-any.whl\n", false),
            ("six-1.16.0-py2.py3-none-any.whl\n", false),
            ("pkg @ https://example.com/pkg-1.0.tar.gz\n", false),
            ("-i https://pypi.example.com/simple\nsix==1.16.0\n", true),
            ("--extra-index-url https://x.example/simple\nsix\n", true),
            ("six==1.16.0 --hash=sha256:8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254\n", true),
        ] {
            fs::write(&file, text)?;
            assert_eq!(self_contained_requirements(&file)?, expected, "{text:?}");
        }
        let package = dir.path().join(PACKAGE_JSON);
        fs::write(&package, r#"{"dependencies": {"ms": "2.1.3"}}"#)?;
        assert!(self_contained_package(&package)?);
        for local in [
            r#"{"dependencies": {"lib": "file:../lib"}}"#,
            r#"{"dependencies": {"lib": "../lib"}}"#,
            r#"{"dependencies": {"lib": "./lib"}}"#,
            r#"{"optionalDependencies": {"lib": "/srv/lib"}}"#,
            r#"{"dependencies": {"ms": "2"}, "overrides": {"ms": {"x": "file:./x"}}}"#,
            "not json",
        ] {
            fs::write(&package, local)?;
            assert!(!self_contained_package(&package)?, "{local}");
        }
        Ok(())
    }

    #[test]
    fn a_failed_install_names_the_file_and_shows_the_tail() -> Result<(), Box<dyn std::error::Error>>
    {
        let staging = tempfile::tempdir()?;
        fs::create_dir_all(staging.path().join(FUNCTION_DIR))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "for i in $(seq 1 50); do echo line $i; done; echo \"$PWD/x is bad\" >&2; exit 3",
        ]);
        let err = run(cmd, REQUIREMENTS, "pip", "fix it", staging.path())
            .err()
            .ok_or("succeeded")?
            .to_string();
        assert!(err.contains("requirements.txt: pip failed"), "{err}");
        assert!(
            err.contains("line 50") && !err.contains("line 20\n"),
            "{err}"
        );
        assert!(
            err.contains("\nx is bad"),
            "staging path not stripped: {err}"
        );
        assert!(!staging.path().join(LOG_FILE).exists());
        Ok(())
    }

    #[test]
    fn sealed_files_are_read_only_and_folders_traversable() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let pkg = dir.path().join("pkg");
        fs::create_dir_all(pkg.join("sub"))?;
        fs::write(pkg.join("a.py"), "")?;
        fs::write(pkg.join("sub/tool"), "")?;
        fs::set_permissions(pkg.join("sub/tool"), fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(pkg.join("sub"), fs::Permissions::from_mode(0o700))?;
        seal(&pkg)?;
        let mode = |p: &str| -> std::io::Result<u32> {
            Ok(fs::metadata(pkg.join(p))?.permissions().mode() & 0o777)
        };
        assert_eq!(mode("a.py")?, 0o444);
        assert_eq!(mode("sub/tool")?, 0o555);
        assert_eq!(mode("sub")?, 0o755);
        Ok(())
    }
}
