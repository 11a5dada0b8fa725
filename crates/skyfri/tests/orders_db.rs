//! Databases under a swarm, in the shape of the `orders-db` example (`tests/fixtures/orders-db`:
//! its stack.yml, the python3-http `order-writer` with psycopg, its pgbouncer.ini and schema).
//!
//! The test starts its own PostgreSQL (Debian's `initdb` and `postgres`) and PgBouncer
//! (transaction pooling, a pool of [`POOL_SIZE`]) on free ports, as an unprivileged user, deploys
//! the function capped at [`POOL_SIZE`] calls in flight (`com.skyfri.max-concurrency`) and fires
//! [`CALLS`] concurrent calls. Every call must be answered by the handler, every row stored
//! once, no connection fail anywhere (PostgreSQL, PgBouncer, the function), and PostgreSQL must
//! never see more server connections than the pool has: `pg_stat_activity` is sampled every
//! 20 ms while the calls run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fixtures, free_port, Platform};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const CALLS: usize = 1000;
/// PgBouncer's `default_pool_size` in the test, and the function's concurrency cap.
const POOL_SIZE: u64 = 10;
const FUNCTION: &str = "order-writer";

/// The newest of Debian's PostgreSQL binaries named `name`.
fn pg_bin(name: &str) -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin").join(name);
            bin.exists().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no /usr/lib/postgresql/*/bin/{name}: install Debian's postgresql (scripts/setup.sh)"
        ),
    }
}

fn pgbouncer_bin() -> PathBuf {
    let bin = PathBuf::from("/usr/sbin/pgbouncer");
    assert!(
        bin.exists(),
        "no /usr/sbin/pgbouncer: install Debian's pgbouncer (scripts/setup.sh)"
    );
    bin
}

/// Who runs PostgreSQL and PgBouncer: both refuse root. As root, `postgres` (Debian's) or
/// `nobody`; otherwise the current user.
struct RunAs(Option<(String, u32, u32)>);

impl RunAs {
    fn pick() -> RunAs {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return RunAs(None);
        }
        let id = |user: &str, flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, user]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let user = ["postgres", "nobody"]
            .into_iter()
            .find_map(|u| Some((u.to_string(), id(u, "-u")?, id(u, "-g")?)))
            .expect("a postgres or nobody user to run PostgreSQL as");
        RunAs(Some(user))
    }

    fn command(&self, program: &Path) -> Command {
        match &self.0 {
            None => Command::new(program),
            Some((_, uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--"])
                    .arg(program);
                c
            }
        }
    }

    /// Makes `path` the user's, so that the servers can write there.
    fn own(&self, path: &Path) {
        if let Some((_, uid, gid)) = &self.0 {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).expect("chown");
        }
    }
}

/// A server process of the test, stopped (SIGINT: PostgreSQL's fast shutdown) when dropped,
/// its output in a log file.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Server {
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Server { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}\n----", self.name, self.log());
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// Runs psql against 127.0.0.1:`port` and returns its unaligned output.
fn psql(port: u16, user: &str, db: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-d", db])
        .args(args)
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> Result<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ok() {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} did not come up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The fixture's pgbouncer.ini with `settings` ((section, key, value)) replacing its values,
/// or added at the end of their section.
fn pgbouncer_ini(fixture: &str, settings: &[(&str, &str, String)]) -> String {
    let mut out = Vec::new();
    let mut section = "";
    // Which settings are written.
    let mut done = vec![false; settings.len()];
    let flush = |section: &str, out: &mut Vec<String>, done: &mut [bool]| {
        for (i, (s, k, v)) in settings.iter().enumerate() {
            if *s == section && !done[i] {
                done[i] = true;
                out.push(format!("{k} = {v}"));
            }
        }
    };
    for line in fixture.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            flush(section, &mut out, &mut done);
            section = name;
            out.push(line.to_string());
            continue;
        }
        let key = trimmed.split_once('=').map(|(k, _)| k.trim());
        let setting = settings
            .iter()
            .position(|(s, k, _)| *s == section && Some(*k) == key);
        match setting {
            Some(i) => {
                done[i] = true;
                out.push(format!("{} = {}", settings[i].1, settings[i].2));
            }
            None => out.push(line.to_string()),
        }
    }
    flush(section, &mut out, &mut done);
    out.join("\n") + "\n"
}

/// Samples `pg_stat_activity` every 20 ms over one connection (psql's `\watch`): the server
/// connections PgBouncer holds to the orders database, with PostgreSQL's clock.
struct Sampler {
    child: Child,
    /// psql keeps watching while its stdin is open.
    _stdin: std::process::ChildStdin,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(port: u16) -> Sampler {
        let mut child = Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-At",
                "-F",
                " ",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start psql");
        let query = "SELECT extract(epoch FROM clock_timestamp()), count(*) FROM pg_stat_activity \
                     WHERE datname = 'orders' AND usename = 'app_user' \
                     AND backend_type = 'client backend' \\watch 0.02\n";
        let mut stdin = child.stdin.take().expect("psql stdin");
        stdin.write_all(query.as_bytes()).expect("psql query");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("psql stdout");
        let into = Arc::clone(&samples);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut fields = line.split_whitespace();
                let at = fields.next().and_then(|t| t.parse().ok());
                let n = fields.next().and_then(|n| n.parse().ok());
                if let (Some(at), Some(n)) = (at, n) {
                    into.lock().expect("samples").push((at, n));
                }
            }
        });
        Sampler {
            child,
            _stdin: stdin,
            samples,
            reader,
        }
    }

    fn count(&self) -> usize {
        self.samples.lock().expect("samples").len()
    }

    /// Stops sampling; returns the samples.
    fn stop(mut self) -> Vec<(f64, u64)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        std::mem::take(&mut *self.samples.lock().expect("samples"))
    }
}

/// The first lines of `log` (from byte `from`) that report a failure.
fn failures_in(log: &str, from: usize, marks: &[&str]) -> Vec<String> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| marks.iter().any(|m| l.contains(m)))
        .take(5)
        .map(str::to_string)
        .collect()
}

#[test]
fn a_thousand_concurrent_calls_through_pgbouncer_store_every_row_within_the_pool() {
    let fixture = fixtures().join("orders-db");
    let pool_ini = std::fs::read_to_string(fixture.join("pgbouncer.ini")).expect("pgbouncer.ini");
    assert!(
        pool_ini.contains("pool_mode = transaction"),
        "the example pools by transaction"
    );
    let run_as = RunAs::pick();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    run_as.own(dir);

    // PostgreSQL, with few connections: were PgBouncer to open more than its pool, clients
    // would get "too many clients".
    let pg_port = free_port();
    let data = dir.join("pgdata");
    let init = run_as
        .command(&pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("run initdb");
    assert!(
        init.status.success(),
        "initdb: {}{}",
        String::from_utf8_lossy(&init.stdout),
        String::from_utf8_lossy(&init.stderr)
    );
    let mut cmd = run_as.command(&pg_bin("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &pg_port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=20",
        ])
        .args(["-c", "fsync=off", "-c", "log_connections=on"]);
    let postgres = Server::spawn("postgres", cmd, dir.join("postgres.log"));
    wait_for("PostgreSQL", || {
        psql(pg_port, "postgres", "postgres", &["-c", "SELECT 1"])
    });
    let setup = [
        "CREATE ROLE app_user LOGIN",
        "CREATE DATABASE orders OWNER app_user",
    ];
    for sql in setup {
        psql(pg_port, "postgres", "postgres", &["-c", sql]).expect("create role and database");
    }
    let schema = fixture.join("schema.sql");
    psql(
        pg_port,
        "app_user",
        "orders",
        &["-f", schema.to_str().expect("path")],
    )
    .expect("schema.sql");

    // PgBouncer: the fixture's settings, on the test's ports and files.
    let bouncer_port = free_port();
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"app_user\" \"\"\n").expect("userlist.txt");
    let settings = [
        ("databases", "*", format!("host=127.0.0.1 port={pg_port}")),
        ("pgbouncer", "listen_port", bouncer_port.to_string()),
        ("pgbouncer", "auth_file", userlist.display().to_string()),
        ("pgbouncer", "unix_socket_dir", dir.display().to_string()),
        ("pgbouncer", "default_pool_size", POOL_SIZE.to_string()),
    ];
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(&ini, pgbouncer_ini(&pool_ini, &settings)).expect("pgbouncer.ini");
    let mut cmd = run_as.command(&pgbouncer_bin());
    cmd.arg(&ini);
    let pgbouncer = Server::spawn("pgbouncer", cmd, dir.join("pgbouncer.log"));
    wait_for("PgBouncer", || {
        psql(bouncer_port, "app_user", "orders", &["-c", "SELECT 1"])
    });

    // skyfri, and the function, capped at the pool size.
    let p = Arc::new(Platform::start());
    let url = format!("postgresql://app_user@127.0.0.1:{bouncer_port}/orders");
    let cap = POOL_SIZE.to_string();
    let out = p.cli_with_env(
        &fixture,
        &["deploy", "-f", "stack.yml"],
        "",
        &[("DATABASE_URL", &url), ("MAX_CONCURRENCY", &cap)],
    );
    assert!(out.ok, "deploy: {}{}", out.stdout, out.stderr);
    let described = p.cli(&["describe", FUNCTION], "").stdout;
    assert!(
        described.contains(&format!("at most {POOL_SIZE} calls in flight in all")),
        "{described}"
    );

    let (pg_log_from, bouncer_log_from) = (postgres.log().len(), pgbouncer.log().len());
    let sampler = Sampler::start(pg_port);
    let sampling = Instant::now();
    while sampler.count() < 2 {
        assert!(
            sampling.elapsed() < Duration::from_secs(30),
            "pg_stat_activity is not being sampled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The gateway's side: calls in flight and ready replicas, while the calls run.
    let (peak_in_flight, peak_replicas) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (p, done) = (Arc::clone(&p), Arc::clone(&done));
        let (in_flight, replicas) = (Arc::clone(&peak_in_flight), Arc::clone(&peak_replicas));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let v = p
                    .admin("GET", &format!("/system/function/{FUNCTION}"), "")
                    .json();
                in_flight.fetch_max(v["inFlight"].as_u64().unwrap_or(0), Ordering::Relaxed);
                replicas.fetch_max(
                    v["availableReplicas"].as_u64().unwrap_or(0),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let results = rt.block_on(fire(&p.url(), CALLS));
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let samples = sampler.stop();

    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CALLS} calls failed, such as {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let (rows, distinct) = psql(
        pg_port,
        "app_user",
        "orders",
        &[
            "-c",
            "SELECT count(*), count(DISTINCT order_id) FROM orders",
        ],
    )
    .map(|out| {
        let (a, b) = out.split_once('|').unwrap_or_default();
        (a.to_string(), b.to_string())
    })
    .expect("count the rows");
    assert_eq!(
        (rows.as_str(), distinct.as_str()),
        (CALLS.to_string().as_str(), CALLS.to_string().as_str()),
        "rows stored, distinct order ids"
    );

    // No connection failed anywhere while the calls ran.
    let pg_failures = failures_in(&postgres.log(), pg_log_from, &["FATAL", "ERROR", "PANIC"]);
    assert!(pg_failures.is_empty(), "PostgreSQL: {pg_failures:?}");
    let bouncer_failures = failures_in(
        &pgbouncer.log(),
        bouncer_log_from,
        &[" ERROR ", " WARNING ", " FATAL ", "pooler error"],
    );
    assert!(
        bouncer_failures.is_empty(),
        "PgBouncer: {bouncer_failures:?}"
    );
    let logs = p.cli(&["logs", FUNCTION], "").stdout;
    let function_failures = failures_in(&logs, 0, &["Traceback", "Error"]);
    assert!(
        function_failures.is_empty(),
        "the function: {function_failures:?}"
    );

    // Server connections never above the pool, and the sampler did see the load.
    let max_server = samples.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let widest_gap = samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .fold(0.0, f64::max);
    let (in_flight, replicas) = (
        peak_in_flight.load(Ordering::Relaxed),
        peak_replicas.load(Ordering::Relaxed),
    );
    eprintln!(
        "orders-db: {CALLS} calls in {took:?}; server connections at most {max_server} \
         ({} samples, widest gap {:.0} ms); calls in flight at most {in_flight}; \
         replicas at most {replicas}",
        samples.len(),
        widest_gap * 1000.0
    );
    assert!(
        max_server >= 1,
        "the samples never saw a server connection: {samples:?}"
    );
    assert!(
        max_server <= POOL_SIZE,
        "{max_server} server connections, more than the pool of {POOL_SIZE}"
    );
    assert!(
        in_flight <= POOL_SIZE,
        "{in_flight} calls in flight, more than the cap of {POOL_SIZE}"
    );
    assert!(
        (1..=POOL_SIZE).contains(&replicas),
        "{replicas} replicas: the cap keeps {POOL_SIZE} busy"
    );
}

/// `calls` concurrent POSTs of distinct orders; each result is Ok, or what went wrong.
async fn fire(base: &str, calls: usize) -> Vec<Result<(), String>> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            let client = client.clone();
            let uri = format!("{base}/function/{FUNCTION}");
            tokio::spawn(async move {
                let id = format!("order-{i}");
                let body = format!("{{\"order_id\":\"{id}\",\"amount\":{i}}}");
                let req = hyper::Request::post(uri)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let call = async {
                    let res = client.request(req).await.map_err(|e| e.to_string())?;
                    let status = res.status().as_u16();
                    let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>((status, body.to_bytes()))
                };
                let (status, body) = tokio::time::timeout(Duration::from_secs(120), call)
                    .await
                    .map_err(|_| format!("{id}: no answer in 120s"))??;
                let stored = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["stored"].as_str().map(str::to_string));
                // The handler answers 201 Created with the order id it stored.
                if status == 201 && stored.as_deref() == Some(id.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{id}: {status} {}", String::from_utf8_lossy(&body)))
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(calls);
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    results
}
