//! Operating skyfri, through the real binary: `doctor` on this machine (every check with a
//! status and, when not ok, a fix; kernel values as /proc/sys has them; NATS reachable or
//! not), `doctor --write-sysctl` (a file that parses back and never lowers a setting),
//! `install --systemd` (the unit `deploy/` ships, verified by systemd-analyze), and
//! `info --residency` against a running platform (masked database URLs, network access).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::free_port;
use common::nats::Nats;
use common::{fixtures, Platform};
use serde_json::Value;
use skyfri_core::sysctl;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary without a gateway, with no service environment file in the way.
fn skyfri(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_skyfri"))
        .args(args)
        .env_remove("SKYFRI_QUEUE")
        .env_remove("SKYFRI_NATS")
        .env_remove("SKYFRI_DATA_DIR")
        .output()
        .expect("run skyfri");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `skyfri doctor --json` with a private data dir and env file, plus `extra`.
fn doctor(dir: &Path, extra: &[&str]) -> (Run, Value) {
    let data = dir.join("data");
    let env = dir.join("no-such.env");
    let mut args = vec![
        "doctor",
        "--json",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--env-file",
        env.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let run = skyfri(&args);
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}\n{}",
            run.stdout, run.stderr
        )
    });
    (run, json)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

fn proc_value(s: &sysctl::Setting) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(Path::new("/proc/sys").join(s.proc_path())).ok()?;
    sysctl::parse_value(&text).ok()
}

#[test]
fn doctor_checks_this_machine() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (run, report) = doctor(dir.path(), &[]);
    let checks = report["checks"].as_array().expect("checks");
    let mut fails = 0;
    for c in checks {
        let status = c["status"].as_str().unwrap_or_default();
        assert!(matches!(status, "ok" | "warn" | "fail"), "{c}");
        assert!(!c["detail"].as_str().unwrap_or_default().is_empty(), "{c}");
        let fix = c["fix"].as_str().unwrap_or_default();
        assert_eq!(
            status == "ok",
            fix.is_empty(),
            "a fix exactly when not ok: {c}"
        );
        fails += usize::from(status == "fail");
    }
    assert_eq!(report["fail"], fails);
    assert_eq!(
        run.code,
        Some(if fails > 0 { 1 } else { 0 }),
        "{}",
        run.stderr
    );

    // Every recommended setting, judged by its rule against what /proc/sys says.
    for s in sysctl::recommended()? {
        let c = check(&report, &format!("kernel.{}", s.key));
        match proc_value(&s) {
            Some(v) => {
                let detail = c["detail"].as_str().unwrap_or_default();
                assert!(detail.starts_with(&sysctl::Setting::show(&v)), "{c}");
                let want = if s.is_met_by(&v) { "ok" } else { "warn" };
                assert_eq!(c["status"], want, "{c}");
            }
            None if sysctl::is_module_setting(&s.key) => assert_eq!(c["status"], "ok"),
            None => assert_eq!(c["status"], "warn", "{c}"),
        }
    }
    for name in [
        "isolation.bubblewrap",
        "isolation.namespaces",
        "isolation.cgroup.memory",
        "isolation.cgroup.cpu",
        "isolation.cgroup.pids",
        "limits.nofile",
        "disk.data_dir",
        "interpreter.python3",
        "interpreter.node",
        "nats",
    ] {
        check(&report, name);
    }
    // Interpreters are reported by absolute path with their version.
    let python = check(&report, "interpreter.python3");
    if python["status"] == "ok" {
        let detail = python["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with('/') && detail.contains("Python 3"),
            "{python}"
        );
    }
    // The disk check looks at the data dir's disk even before the dir exists.
    let disk = check(&report, "disk.data_dir");
    assert!(
        disk["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("GiB free"),
        "{disk}"
    );
    Ok(())
}

#[test]
fn doctor_reaches_the_configured_nats_or_fails() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = Nats::start();
    let url = nats.url();
    let (_, report) = doctor(dir.path(), &["--queue", &url]);
    let c = check(&report, "nats.queue");
    assert_eq!(c["status"], "ok", "{c}");

    // Configured through the service's environment file rather than a flag.
    let closed = format!("nats://127.0.0.1:{}", free_port());
    let env = dir.path().join("skyfri.env");
    std::fs::write(
        &env,
        format!("SKYFRI_QUEUE=embedded\nSKYFRI_NATS=\"{closed}\"\n"),
    )?;
    let run = skyfri(&[
        "doctor",
        "--json",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--env-file",
        env.to_str().expect("utf-8"),
    ]);
    let report: Value = serde_json::from_str(&run.stdout)?;
    let c = check(&report, "nats.topics");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["fix"].as_str().is_some_and(|f| f.contains("nats-server")),
        "{c}"
    );
    assert_eq!(run.code, Some(1), "a failed check fails the command");
    assert!(run.stderr.contains("failed"), "{}", run.stderr);
    Ok(())
}

#[test]
fn write_sysctl_writes_a_file_that_parses_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("99-skyfri.conf");
    let p = path.to_str().expect("utf-8");
    let run = skyfri(&["doctor", "--write-sysctl", p]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("sysctl -p"), "{}", run.stdout);
    let text = std::fs::read_to_string(&path)?;
    assert!(text.starts_with(sysctl::MARKER), "{text}");
    let written = sysctl::parse(&text)?;
    for s in sysctl::recommended()? {
        let current = proc_value(&s);
        let Some((_, value)) = written.iter().find(|(k, _)| *k == s.key) else {
            assert!(
                sysctl::is_module_setting(&s.key) && current.is_none(),
                "{} missing from {text}",
                s.key
            );
            continue;
        };
        assert!(s.is_met_by(value), "{} = {value:?} misses {s}", s.key);
        if let Some(cur) = current.filter(|c| s.is_met_by(c)) {
            assert_eq!(value, &cur, "{}: a host value already good is kept", s.key);
        }
    }

    // Ours is rewritten; someone else's needs --force.
    assert_eq!(skyfri(&["doctor", "--write-sysctl", p]).code, Some(0));
    let theirs = dir.path().join("10-theirs.conf");
    std::fs::write(&theirs, "vm.swappiness = 1\n")?;
    let t = theirs.to_str().expect("utf-8");
    let run = skyfri(&["doctor", "--write-sysctl", t]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&theirs)?, "vm.swappiness = 1\n");
    assert_eq!(
        skyfri(&["doctor", "--write-sysctl", t, "--force"]).code,
        Some(0)
    );
    assert!(std::fs::read_to_string(&theirs)?.starts_with(sysctl::MARKER));
    Ok(())
}

#[test]
fn install_systemd_writes_the_unit_deploy_ships() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join("skyfri.service");
    let env = dir.path().join("etc/skyfri.env");
    let data = dir.path().join("data");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "install",
            "--systemd",
            "--output",
            unit.to_str().expect("utf-8"),
            "--env-file",
            env.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
        ];
        a.extend_from_slice(extra);
        skyfri(&a)
    };
    let run = args(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("systemctl daemon-reload && systemctl enable --now skyfri"),
        "{}",
        run.stdout
    );
    let text = std::fs::read_to_string(&unit)?;
    let exec = format!(
        "ExecStart={} up --data-dir {}",
        std::fs::canonicalize(env!("CARGO_BIN_EXE_skyfri"))?.display(),
        data.display()
    );
    for line in [
        exec.as_str(),
        "LimitNOFILE=1048576",
        "Restart=on-failure",
        &format!("EnvironmentFile=-{}", env.display()),
        "WantedBy=multi-user.target",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
    // The env file holds the admin password: owner-only, and never overwritten.
    assert_eq!(std::fs::metadata(&env)?.permissions().mode() & 0o777, 0o600);
    std::fs::write(&env, "SKYFRI_ADMIN_PASSWORD=mine\n")?;
    assert_eq!(args(&[]).code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&env)?,
        "SKYFRI_ADMIN_PASSWORD=mine\n"
    );

    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!(
            "SKIPPED: systemd-analyze verify of the unit: cannot run systemd-analyze ({e})"
        ),
    }

    // Someone else's unit is not replaced without --force.
    std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n")?;
    let run = args(&[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(args(&["--force"]).code, Some(0));

    // deploy/ ships exactly what install writes for /usr/local/bin/skyfri.
    let printed = skyfri(&[
        "install",
        "--systemd",
        "--print",
        "--binary",
        "/usr/local/bin/skyfri",
    ]);
    let shipped = std::fs::read_to_string(repo_root().join("deploy/skyfri.service"))?;
    assert_eq!(printed.stdout, shipped, "deploy/skyfri.service is stale: regenerate it with `skyfri install --systemd --print --binary /usr/local/bin/skyfri`");
    let fresh_env = dir.path().join("fresh.env");
    let other_unit = dir.path().join("other.service");
    let run = skyfri(&[
        "install",
        "--systemd",
        "--output",
        other_unit.to_str().expect("utf-8"),
        "--env-file",
        fresh_env.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let shipped_env = std::fs::read_to_string(repo_root().join("deploy/skyfri.env"))?;
    assert_eq!(
        std::fs::read_to_string(&fresh_env)?,
        shipped_env,
        "deploy/skyfri.env is stale"
    );

    let bad = skyfri(&[
        "install",
        "--systemd",
        "--print",
        "--data-dir",
        "relative/dir",
    ]);
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr.contains("--data-dir") && bad.stderr.contains("absolute"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn residency_lists_paths_masked_urls_and_network_access() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The sandbox user must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let stack = fixtures().join("residency/stack.yml");
    let p = Platform::start_in(
        &tmp.path().join("data"),
        &["-f", stack.to_str().expect("utf-8")],
    );
    assert_eq!(
        p.http("GET", "/system/info/residency", &[], b"").status,
        401
    );

    let out = p.cli(&["info", "--residency", "--json"], "");
    assert!(out.ok, "{}", out.stderr);
    for secret in ["hunter2-orders", "cache-pass-77"] {
        assert!(
            !out.stdout.contains(secret),
            "a password is shown: {}",
            out.stdout
        );
    }
    let r: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let data_dir = p.data_dir.display().to_string();
    assert_eq!(r["data_dir"], data_dir.as_str());
    let paths: Vec<&str> = r["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(|p| p["location"].as_str())
        .collect();
    for file in ["skyfri.db", "secret.key", "queue.db", "artefacts", "logs"] {
        let want = format!("{data_dir}/{file}");
        assert!(paths.contains(&want.as_str()), "{want} not in {paths:?}");
        if file != "queue.db" && file != "artefacts" {
            continue;
        }
        assert!(
            Path::new(&want).exists(),
            "{want} is listed but does not exist"
        );
    }
    let function = |name: &str| {
        r["functions"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .unwrap_or_else(|| panic!("{name} not listed: {r:#}"))
            .clone()
    };
    let orders = function("orders");
    assert_eq!(orders["network"], "host");
    let endpoints = orders["endpoints"].as_array().expect("endpoints");
    let db = endpoints
        .iter()
        .find(|e| e["env"] == "DATABASE_URL")
        .expect("DATABASE_URL listed");
    assert_eq!(
        db["url"],
        "postgres://orders:****@db.internal:5432/orders?sslmode=require"
    );
    assert_eq!(db["data_store"], true);
    assert!(endpoints
        .iter()
        .any(|e| e["url"] == "redis://:****@cache.internal:6379/0"));
    assert!(!endpoints.iter().any(|e| e["env"] == "GREETING"));
    assert_eq!(function("offline")["network"], "none");
    assert!(r["telemetry"]
        .as_str()
        .is_some_and(|t| t.starts_with("none")));
    let outbound = r["outbound"].to_string();
    assert!(outbound.contains("X-Callback-Url"), "{outbound}");

    // The text form says the same.
    let text = p.cli(&["info", "--residency"], "");
    assert!(text.ok, "{}", text.stderr);
    assert!(
        text.stdout.contains("offline  network: none"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("DATABASE_URL=postgres://orders:****@"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("hunter2-orders"));
}

/// The residency report says skyfri opens no connections but the ones it lists. Every
/// source file that can open one is named here with the reason; a new one fails this test
/// until it is added here and to `/system/info/residency` (crates/skyfri-gateway/src/api/residency.rs).
#[test]
fn only_the_listed_code_opens_connections() -> anyhow::Result<()> {
    const ALLOWED: &[(&str, &str)] = &[
        (
            "crates/skyfri-gateway/src/async_calls/callback.rs",
            "callbacks to X-Callback-Url",
        ),
        ("crates/skyfri-gateway/src/async_calls/tests.rs", "tests"),
        ("crates/skyfri-gateway/src/server/http1/tests.rs", "tests"),
        ("crates/skyfri-gateway/src/testing.rs", "tests"),
        ("crates/skyfri-runtime/src/lambda/peer.rs", "its tests"),
        (
            "crates/skyfri-gateway/src/triggers/topics.rs",
            "NATS of topic triggers",
        ),
        (
            "crates/skyfri-gateway/src/upstream.rs",
            "replicas on this host",
        ),
        (
            "crates/skyfri-queue/src/jetstream.rs",
            "NATS of the JetStream queue",
        ),
        (
            "crates/skyfri-runtime/src/local/cells.rs",
            "stem cells on this host",
        ),
        (
            "crates/skyfri-runtime/src/local/probe.rs",
            "health checks of replicas on this host",
        ),
        (
            "crates/skyfri/src/client.rs",
            "the CLI to the gateway it is pointed at",
        ),
        (
            "crates/skyfri/src/commands/doctor.rs",
            "doctor checks the configured NATS",
        ),
    ];
    const OPENERS: &[&str] = &[
        "TcpStream::connect",
        "UnixStream::connect",
        "TcpSocket",
        "UdpSocket",
        "async_nats::connect",
        "ConnectOptions",
        "Client::builder(",
        "build_http",
        "reqwest",
        "ureq::",
    ];
    let root = repo_root().canonicalize()?;
    let mut found = Vec::new();
    let mut stack = vec![root.join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                // Only sources; integration tests (crates/*/tests) talk to what they start.
                if path
                    .file_name()
                    .is_some_and(|n| n != "tests" && n != "target")
                {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                if OPENERS.iter().any(|o| text.contains(o)) {
                    found.push(path.strip_prefix(&root)?.display().to_string());
                }
            }
        }
    }
    found.sort();
    let allowed: Vec<String> = ALLOWED.iter().map(|(f, _)| f.to_string()).collect();
    let unlisted: Vec<&String> = found.iter().filter(|f| !allowed.contains(f)).collect();
    assert!(
        unlisted.is_empty(),
        "these files open connections but the residency report does not account for them: {unlisted:?}"
    );
    Ok(())
}
