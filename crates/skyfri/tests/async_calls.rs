//! Async calls end to end: `/async-function`, the queue, retries, dead letters, re-drive,
//! cancellation and callbacks, seen through a callback receiver the test runs on 127.0.0.1
//! (a fixture writing files would not be visible outside its sandbox).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Platform;

/// One POST the gateway made to the receiver.
#[derive(Clone, Debug)]
struct Callback {
    at: Instant,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Callback {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("callback body is not JSON ({e}): {self:?}"))
    }
}

/// A tiny HTTP/1.1 server that records every request and answers 200.
struct Receiver {
    addr: String,
    got: Arc<Mutex<Vec<Callback>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    if let Some(cb) = read_request(&stream) {
                        log.lock().expect("lock").push(cb);
                    }
                    let mut stream = stream;
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Receiver { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/done", self.addr)
    }

    fn all(&self) -> Vec<Callback> {
        self.got.lock().expect("lock").clone()
    }

    fn for_call(&self, id: &str) -> Vec<Callback> {
        self.all()
            .into_iter()
            .filter(|c| c.header("x-call-id") == id)
            .collect()
    }

    /// Waits for the `n`-th callback of call `id`.
    fn wait(&self, p: &Platform, id: &str, n: usize, within: Duration) -> Callback {
        let deadline = Instant::now() + within;
        loop {
            let got = self.for_call(id);
            if got.len() >= n {
                return got[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no callback #{n} for {id} within {within:?}; got {:#?}\ncall: {}",
                self.all(),
                p.admin("GET", &format!("/system/async/calls/{id}"), "")
                    .text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Callback> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Callback {
        at: Instant::now(),
        path,
        headers,
        body,
    })
}

fn deploy(p: &Platform) {
    p.deploy_stack("async");
}

/// Posts an async call with a callback to `cb`; returns its id.
fn post(p: &Platform, path: &str, cb: &Receiver, headers: &[(&str, &str)], body: &str) -> String {
    let url = cb.url();
    let mut all = vec![("X-Callback-Url", url.as_str())];
    all.extend_from_slice(headers);
    let r = p.http("POST", path, &all, body.as_bytes());
    assert_eq!(r.status, 202, "{path}: {}", r.text());
    r.header("x-call-id").expect("X-Call-Id").to_string()
}

fn call_json(p: &Platform, id: &str) -> serde_json::Value {
    let out = p.cli(&["async", "get", id, "--json"], "");
    assert!(out.ok, "async get {id}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("json")
}

fn wait_state(p: &Platform, id: &str, state: &str, within: Duration) -> serde_json::Value {
    p.wait_call_state(id, state, within)
}

#[test]
fn calls_run_once_and_call_back_with_the_result() {
    let p = Platform::start();
    deploy(&p);
    let cb = Receiver::start();

    // 202 with a new id, then the callback with the function's answer.
    let id = post(
        &p,
        "/async-function/echo/a/b?x=1",
        &cb,
        &[("X-Test", "yes")],
        "hello",
    );
    assert_eq!(id.len(), 36, "{id}");
    let c = cb.wait(&p, &id, 1, Duration::from_secs(30));
    assert_eq!(c.path, "/done");
    assert_eq!(c.header("x-function-name"), "echo");
    assert_eq!(c.header("x-function-status"), "201");
    assert_eq!(c.header("x-echo"), "yes");
    assert_eq!((c.header("x-retry"), c.header("x-retry-max")), ("0", "9"));
    assert_eq!(c.header("x-skyfri-call-state"), "done");
    assert!(
        c.header("x-duration-seconds").parse::<f64>().is_ok(),
        "{c:?}"
    );
    let v = c.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["x"], "1");
    assert_eq!(v["body"], "hello");
    assert_eq!(v["header"], "yes");
    assert_eq!(v["attempt"], "1");

    // The same X-Call-Id twice: two 202s with that id, one run, one callback.
    for _ in 0..2 {
        let r = p.http(
            "POST",
            "/async-function/echo",
            &[
                ("X-Callback-Url", cb.url().as_str()),
                ("X-Call-Id", "order-42"),
            ],
            b"once",
        );
        assert_eq!((r.status, r.header("x-call-id")), (202, Some("order-42")));
    }
    cb.wait(&p, "order-42", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(cb.for_call("order-42").len(), 1, "{:#?}", cb.all());

    // The CLI: invoke --async prints the id; async get / ls show the call.
    let out = p.cli(
        &[
            "invoke",
            "echo",
            "--async",
            "--callback-url",
            &cb.url(),
            "-H",
            "X-Test=cli",
            "--path",
            "p",
            "--query",
            "k=v",
        ],
        "from-cli",
    );
    assert!(out.ok, "{}", out.stderr);
    let cli_id = out.stdout.trim().to_string();
    let c = cb.wait(&p, &cli_id, 1, Duration::from_secs(30));
    let v = c.json();
    assert_eq!(
        (&v["body"], &v["header"], &v["path"], &v["query"]["k"]),
        (
            &serde_json::json!("from-cli"),
            &serde_json::json!("cli"),
            &serde_json::json!("/p"),
            &serde_json::json!("v")
        )
    );
    wait_state(&p, &cli_id, "done", Duration::from_secs(5));
    let out = p.cli(&["async", "get", &cli_id], "");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("done (attempt 1, status 201)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("POST /p?k=v (8 bytes)"),
        "{}",
        out.stdout
    );
    let out = p.cli(&["async", "ls", "--function", "echo"], "");
    assert!(out.ok, "{}", out.stderr);
    for call in [&id, &cli_id, &"order-42".to_string()] {
        assert!(out.stdout.contains(call.as_str()), "{call}: {}", out.stdout);
    }

    // Bad calls are refused before anything is stored.
    let r = p.http(
        "POST",
        "/async-function/echo",
        &[("X-Call-Id", &"x".repeat(129))],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(p.http("POST", "/async-function/nope", &[], b"").status, 404);
    let out = p.cli(&["invoke", "nope", "--async"], "");
    assert!(
        !out.ok && out.stderr.contains("not deployed"),
        "{}",
        out.stderr
    );

    // The backend in /system/info, the outcomes in /metrics.
    let info = p.admin("GET", "/system/info", "").json();
    assert_eq!(info["provider"]["queue"]["backend"], "embedded");
    let m = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        m.contains("gateway_async_calls_total{function_name=\"echo\",outcome=\"done\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("gateway_async_calls_accepted_total{function_name=\"echo\"} 3"),
        "{m}"
    );
    // Async runs are invocations too.
    assert!(
        m.contains("gateway_function_invocation_total{function_name=\"echo\",code=\"201\"} 3"),
        "{m}"
    );
}

#[test]
fn failures_are_retried_with_backoff_and_dead_letters_can_be_redriven() {
    let p = Platform::start();
    deploy(&p);
    let cb = Receiver::start();

    // 500, 500, then 200: done on attempt 3, after two waits of at least 100 ms.
    let sent = Instant::now();
    let id = post(&p, "/async-function/flaky", &cb, &[], "");
    let c = cb.wait(&p, &id, 1, Duration::from_secs(30));
    assert_eq!(c.header("x-function-status"), "200");
    assert_eq!(String::from_utf8_lossy(&c.body), "done on attempt 3");
    assert_eq!((c.header("x-retry"), c.header("x-retry-max")), ("2", "3"));
    assert_eq!(c.header("x-skyfri-attempt"), "3");
    assert!(
        c.at - sent >= Duration::from_millis(200),
        "{:?}",
        c.at - sent
    );
    let v = wait_state(&p, &id, "done", Duration::from_secs(5));
    assert_eq!(
        (v["attempt"].as_u64(), v["status"].as_u64()),
        (Some(3), Some(200))
    );
    let m = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        m.contains("gateway_async_calls_total{function_name=\"flaky\",outcome=\"retried\"} 2"),
        "{m}"
    );

    // Always 503 with two attempts: dead, with the reason, in the dead letters.
    let dead = post(&p, "/async-function/broken", &cb, &[], "payload");
    let c = cb.wait(&p, &dead, 1, Duration::from_secs(30));
    assert_eq!(c.header("x-skyfri-call-state"), "dead");
    assert_eq!(c.header("x-function-status"), "503");
    assert_eq!((c.header("x-retry"), c.header("x-retry-max")), ("1", "1"));
    assert_eq!(String::from_utf8_lossy(&c.body), "always down");
    let v = wait_state(&p, &dead, "dead", Duration::from_secs(5));
    let reason = v["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("out of attempts") && reason.contains("always down"),
        "{v}"
    );
    let out = p.cli(&["async", "ls", "--state", "dead"], "");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains(&dead), "{}", out.stdout);
    assert!(!out.stdout.contains(&id), "{}", out.stdout);
    let out = p.cli(&["async", "ls", "--state", "dead", "--json"], "");
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], dead.as_str());

    // Re-drive: it runs again from attempt 1 (and dies again).
    let out = p.cli(&["async", "redrive", &dead], "");
    assert!(out.ok, "{}", out.stderr);
    let c = cb.wait(&p, &dead, 2, Duration::from_secs(30));
    assert_eq!(c.header("x-skyfri-call-state"), "dead");
    assert_eq!(c.header("x-retry"), "1");
    assert_eq!(call_json(&p, &dead)["state"], "dead");
    // Only dead calls can be re-driven.
    let out = p.cli(&["async", "redrive", &id], "");
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("only dead calls"), "{}", out.stderr);
    let out = p.cli(&["async", "ls", "--state", "sleeping"], "");
    assert!(!out.ok && out.stderr.contains("sleeping"), "{}", out.stderr);
}

#[test]
fn queued_calls_can_be_cancelled_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let p = Platform::start_in(&data, &[]);
    deploy(&p);
    let cb = Receiver::start();

    // `slow` runs one async call at a time: the first runs, the next ones wait.
    let running = post(&p, "/async-function/slow", &cb, &[], "2");
    wait_state(&p, &running, "running", Duration::from_secs(20));
    let queued = post(&p, "/async-function/slow", &cb, &[], "0");
    assert_eq!(call_json(&p, &queued)["state"], "queued");
    let m = p.http("GET", "/metrics", &[], b"").text();
    assert!(
        m.contains("gateway_async_queue_depth{function_name=\"slow\"} 1"),
        "{m}"
    );

    let out = p.cli(&["async", "cancel", &queued], "");
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(call_json(&p, &queued)["state"], "cancelled");
    // Too late for the running one.
    let out = p.cli(&["async", "cancel", &running], "");
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("is running"), "{}", out.stderr);
    // OpenFaaS Pro's cancel: DELETE /async-function/CALL-ID.
    let by_delete = post(
        &p,
        "/async-function/slow",
        &cb,
        &[("X-Call-Id", "c-1")],
        "0",
    );
    let r = p.http("DELETE", &format!("/async-function/{by_delete}"), &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(call_json(&p, "c-1")["state"], "cancelled");
    let after = post(&p, "/async-function/slow", &cb, &[], "0");

    // The running one and the one after it finish; the cancelled ones never run.
    let c = cb.wait(&p, &running, 1, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&c.body), "slept 2");
    cb.wait(&p, &after, 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert!(cb.for_call(&queued).is_empty() && cb.for_call("c-1").is_empty());

    // A call waiting when the gateway stops runs after the restart.
    let busy = post(&p, "/async-function/slow", &cb, &[], "2");
    wait_state(&p, &busy, "running", Duration::from_secs(20));
    let waiting = post(&p, "/async-function/slow", &cb, &[], "0");
    p.stop();
    let p = Platform::start_in(&data, &[]);
    let c = cb.wait(&p, &waiting, 1, Duration::from_secs(30));
    assert_eq!(c.header("x-function-status"), "200");
    assert_eq!(
        cb.for_call(&busy).len(),
        1,
        "the running call finished before the stop"
    );

    // A call still running when the grace period (5 s) ends is handed back to the queue: it
    // runs at once after the restart, and as attempt 1 again (left to its lease, it would
    // run as attempt 2, and only once the lease lapsed).
    let long = post(&p, "/async-function/slow", &cb, &[], "8");
    wait_state(&p, &long, "running", Duration::from_secs(20));
    p.stop();
    assert!(
        cb.for_call(&long).is_empty(),
        "the long call ended before the stop"
    );
    let p = Platform::start_in(&data, &[]);
    let c = cb.wait(&p, &long, 1, Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&c.body), "slept 8");
    assert_eq!(c.header("x-skyfri-attempt"), "1");
}
