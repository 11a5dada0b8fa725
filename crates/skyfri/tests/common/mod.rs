//! Test harness: starts the real `skyfri` binary on 127.0.0.1:0 with its own data dir,
//! reads the port from its output, and prints its logs when a test fails.

#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "test-admin-password";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A program of the venv where `scripts/setup.sh --tests` installs the Python test tools
/// (schemathesis, boto3): `~/.cache/skyfri/py-tools/bin/NAME`.
pub fn py_tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    cache.join("skyfri/py-tools/bin").join(name)
}

/// A port nothing listens on now (for servers the tests start themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub struct Platform {
    child: Child,
    pub addr: String,
    /// The dashboard's listener (`--ui-listen`), when it runs.
    pub ui_addr: Option<String>,
    pub data_dir: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Platform {
    pub fn start() -> Platform {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut p = Platform::start_in(&dir, &[]);
        p._tmp = Some(tmp);
        p
    }

    /// Starts on a new data dir with extra `up` arguments.
    pub fn start_with(extra: &[&str]) -> Platform {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut p = Platform::start_in(&dir, extra);
        p._tmp = Some(tmp);
        p
    }

    /// Starts on an existing data dir (a restart), with extra `up` arguments. The dashboard
    /// gets a free port of its own unless `extra` has a `--ui-listen`.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Platform {
        let ui_listen: &[&str] = if extra.contains(&"--ui-listen") {
            &[]
        } else {
            &["--ui-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_skyfri"))
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(ui_listen)
            .args(extra)
            .env("SKYFRI_ADMIN_PASSWORD", PASSWORD)
            .env("SKYFRI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skyfri");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let out2 = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out2.lock().expect("lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let (ui_tx, ui_rx) = std::sync::mpsc::channel();
        let out3 = output.clone();
        std::thread::spawn(move || {
            let mut addr_sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Printed right after the gateway's line: it is in the output by then.
                if let Some(url) = line.strip_prefix("skyfri dashboard on ") {
                    let addr = url.split_once("://").map_or(url, |(_, a)| a);
                    let _ = ui_tx.send(Some(addr.trim_end_matches("/ui").to_string()));
                }
                if line.starts_with("skyfri dashboard off") {
                    let _ = ui_tx.send(None);
                }
                let listening = line.strip_prefix("skyfri gateway listening on ");
                if let Some(url) =
                    listening.and_then(|u| u.strip_prefix("http://").or(u.strip_prefix("https://")))
                {
                    let _ = tx.send(Ok(url.to_string()));
                    addr_sent = true;
                }
                if line == "ready" {
                    let _ = tx.send(Err(()));
                }
                out3.lock().expect("lock").push(line);
            }
            if !addr_sent {
                let _ = tx.send(Err(()));
            }
        });
        let mut platform = Platform {
            child,
            addr: String::new(),
            ui_addr: None,
            data_dir: data_dir.to_path_buf(),
            output,
            _tmp: None,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addr)) => platform.addr = addr,
            _ => panic!("skyfri did not start:\n{}", platform.logs()),
        }
        platform.ui_addr = ui_rx.recv_timeout(Duration::from_secs(5)).ok().flatten();
        // Wait for "ready": restored and stack functions are deployed by then.
        let _ = rx.recv_timeout(Duration::from_secs(60));
        platform
    }

    pub fn logs(&self) -> String {
        self.output.lock().map(|o| o.join("\n")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The dashboard's address; panics when it is off.
    pub fn ui(&self) -> &str {
        self.ui_addr
            .as_deref()
            .unwrap_or_else(|| panic!("no dashboard listener:\n{}", self.logs()))
    }

    /// The dashboard's base URL (`http://HOST:PORT`, without `/ui`).
    pub fn ui_url(&self) -> String {
        format!("http://{}", self.ui())
    }

    /// A raw HTTP/1.1 request to the dashboard's listener.
    pub fn ui_http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http(self.ui(), method, path, headers, body)
    }

    /// What `skyfri logs FUNCTION` prints; a failure fails the test.
    pub fn function_logs(&self, function: &str) -> String {
        let out = self.cli(&["logs", function], "");
        assert!(out.ok, "logs {function}: {}", out.stderr);
        out.stdout
    }

    /// Waits until `check` holds for the function's logs (`what` names it in the failure);
    /// returns them.
    pub fn wait_function_logs(
        &self,
        function: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let l = self.function_logs(function);
            if check(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{function}: {what} not seen within {within:?}; its logs:\n{l}\nplatform:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Deploys `tests/fixtures/DIR/stack.yml` with the CLI; a failure fails the test.
    pub fn deploy_stack(&self, dir: &str) {
        let out = self.cli_in(&fixtures().join(dir), &["deploy", "-f", "stack.yml"], "");
        assert!(
            out.ok,
            "deploy failed: {}
{}",
            out.stderr, out.stdout
        );
    }

    /// Runs the CLI against this platform.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        self.cli_in(&fixtures(), args, stdin)
    }

    pub fn cli_in(&self, cwd: &Path, args: &[&str], stdin: &str) -> Output {
        self.cli_as(cwd, None, args, stdin, &[])
    }

    /// As [`Platform::cli_in`], with extra environment variables (a stack's `${VAR}`s, or
    /// ones that override the platform's URL and password).
    pub fn cli_with_env(
        &self,
        cwd: &Path,
        args: &[&str],
        stdin: &str,
        env: &[(&str, &str)],
    ) -> Output {
        self.cli_as(cwd, None, args, stdin, env)
    }

    /// Starts the CLI against this platform and leaves it running (`logs --follow`): its
    /// stdout lines come on the receiver; it is killed when the [`Running`] is dropped.
    pub fn cli_running(&self, args: &[&str]) -> (Running, std::sync::mpsc::Receiver<String>) {
        let mut child = cli_command(&fixtures(), args)
            .env("SKYFRI_URL", self.url())
            .env("SKYFRI_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run skyfri cli");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Running(child), rx)
    }

    /// Runs the CLI with an API token (`SKYFRI_TOKEN`, which wins over the password).
    pub fn cli_with_token(&self, token: &str, args: &[&str], stdin: &str) -> Output {
        self.cli_as(&fixtures(), Some(token), args, stdin, &[])
    }

    fn cli_as(
        &self,
        cwd: &Path,
        token: Option<&str>,
        args: &[&str],
        stdin: &str,
        env: &[(&str, &str)],
    ) -> Output {
        let url = self.url();
        let mut all = vec![("SKYFRI_URL", url.as_str()), ("SKYFRI_PASSWORD", PASSWORD)];
        if let Some(t) = token {
            all.push(("SKYFRI_TOKEN", t));
        }
        all.extend_from_slice(env);
        cli(cwd, args, stdin, &all)
    }

    /// A raw HTTP/1.1 request; returns status, lower-cased headers and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http(&self.addr, method, path, headers, body)
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
        let auth = format!("Basic {token}");
        self.http(method, path, &[("Authorization", &auth)], body.as_bytes())
    }

    /// Waits until async call `id` is in `state` (as `/system/async/calls/ID` says) and
    /// returns the call; panics with the last answer after `within`.
    pub fn wait_call_state(&self, id: &str, state: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .admin("GET", &format!("/system/async/calls/{id}"), "")
                .json();
            if v["state"] == state {
                return v;
            }
            assert!(Instant::now() < deadline, "{id} not {state}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the platform's own output has `needle` at least `n` times; panics with
    /// the output after `within`.
    pub fn wait_output(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.logs().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {n} times within {within:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the platform with SIGKILL: a crash, nothing flushed on the way out.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Reaps a platform the test killed itself; returns its output.
    pub fn reap(mut self) -> String {
        let _ = self.child.wait();
        // The readers get what was left in the pipes.
        std::thread::sleep(Duration::from_millis(200));
        self.logs()
    }

    /// Stops the platform as SIGTERM would, and waits until it has exited.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }

    /// Whether the platform exits within `within`; its exit status when it did.
    pub fn exits_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the platform unless it has exited and been reaped: its pid may
    /// belong to another process by then.
    pub fn signal(&mut self, signal: i32) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: sending a signal to our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- skyfri output ----\n{}\n----", self.logs());
        }
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// How many of the log lines end with `want`.
pub fn lines_ending(logs: &str, want: &str) -> usize {
    logs.lines()
        .filter(|l| l.trim_end().ends_with(want))
        .count()
}

/// A CLI process left running; killed on drop.
pub struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the CLI in `cwd` with `env` (no gateway unless `env` names one).
/// The `skyfri` CLI with `args` in `cwd`, none of the caller's own settings passed on.
fn cli_command(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyfri"));
    cmd.args(args).current_dir(cwd);
    for name in [
        "OPENFAAS_URL",
        "SKYFRI_URL",
        "SKYFRI_PASSWORD",
        "SKYFRI_TOKEN",
        "SKYFRI_DEBUG",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

pub fn cli(cwd: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = cli_command(cwd, args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run skyfri cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("cli output");
    Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct Output {
    pub ok: bool,
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(90))).ok();
    parse_response(&exchange(&mut s, addr, method, path, headers, body))
}

/// Writes one `Connection: close` request to `stream` and reads the whole raw answer.
pub fn exchange(
    stream: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

/// Parses a whole HTTP/1.1 response (head and body, chunked or not).
pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 4 + size..];
    }
    out
}
