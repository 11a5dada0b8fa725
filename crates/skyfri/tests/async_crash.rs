//! A crash in the middle of a stream of async calls: 10,000 calls are enqueued by several
//! clients while skyfri is killed with SIGKILL part-way and restarted on the same data dir.
//! Every call that was answered 202 must run; an id sent again (the POSTs that failed during
//! the crash are retried with the same `X-Call-Id`) must not be enqueued twice; a call runs
//! more than once only if it was in flight at the kill (at least once), retries after a
//! failed run aside (the attempts the gateway logs as `will retry`).
//!
//! Runs are seen through the callbacks the gateway posts to a receiver this test runs on
//! 127.0.0.1 (`X-Call-Id`, `X-Function-Status`, `X-Skyfri-Attempt`). A callback still
//! pending at the kill is lost by design (callbacks are best effort, the result stays in the
//! queue), so a call accepted before the kill may instead show as `done` in the queue.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::{fixtures, Platform};

/// Calls accepted in all (the figure).
const CALLS: usize = 10_000;
/// Accepted calls before the kill.
const KILL_AFTER: usize = 3_000;
/// Client threads, each with a keep-alive connection.
const CLIENTS: usize = 8;
/// `com.skyfri.async.concurrency` of `tick` (fixtures/async-crash/stack.yml): at most this
/// many calls are leased (in flight) at the kill, so at most this many may run twice.
const CONCURRENCY: usize = 20;
/// Calls accepted before the kill and POSTed again after the restart.
const RESENT: usize = 200;
/// How long the calls may take to run after the last one was accepted: the leases of the
/// calls in flight at the kill lapse 32 s after it, the rest is the backlog.
const DRAIN: Duration = Duration::from_secs(150);

fn call_id(i: usize) -> String {
    format!("crash-{i:05}")
}

/// What the callback receiver saw of one call.
#[derive(Debug, Clone, Default)]
struct Runs {
    /// `X-Function-Status` of each callback, in arrival order.
    statuses: Vec<u16>,
    /// The highest `X-Skyfri-Attempt` among them.
    attempt: u32,
}

/// An HTTP/1.1 receiver for callbacks: keep-alive, one thread per connection, answers 200.
struct Receiver {
    addr: String,
    runs: Arc<Mutex<HashMap<String, Runs>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let runs = Arc::new(Mutex::new(HashMap::new()));
        let log = Arc::clone(&runs);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        Receiver { addr, runs }
    }

    fn url(&self) -> String {
        format!("http://{}/done", self.addr)
    }

    fn runs(&self) -> HashMap<String, Runs> {
        self.runs.lock().expect("lock").clone()
    }
}

/// Reads requests off one connection until it closes, recording each callback.
fn serve(stream: TcpStream, log: &Mutex<HashMap<String, Runs>>) {
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    while let Some(head) = read_head(&mut r) {
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let id = head.header("x-call-id").unwrap_or_default().to_string();
        let status = head
            .header("x-function-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let attempt = head
            .header("x-skyfri-attempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        {
            let mut log = log.lock().expect("lock");
            let runs = log.entry(id).or_default();
            runs.statuses.push(status);
            runs.attempt = runs.attempt.max(attempt);
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// A request's or response's first line and headers (names lower-cased).
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Some(Head {
        first: first.trim_end().to_string(),
        headers,
    })
}

/// One client's keep-alive connection to the gateway.
struct Client {
    addr: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

/// A gateway's answer to an async POST.
struct Answer {
    status: u16,
    call_id: Option<String>,
    duplicate: bool,
    body: String,
}

impl Client {
    /// `POST /async-function/tick` with `X-Call-Id: id`. An error means no answer: the
    /// connection failed (as it does when skyfri is killed), and is dropped.
    fn post(&mut self, addr: &str, id: &str, callback: &str) -> std::io::Result<Answer> {
        if self.addr != addr {
            self.conn = None;
            self.addr = addr.to_string();
        }
        let result = self.exchange(id, callback);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, id: &str, callback: &str) -> std::io::Result<Answer> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let r = BufReader::new(s.try_clone()?);
            self.conn = Some((s, r));
        }
        let Some((s, r)) = self.conn.as_mut() else {
            unreachable!("connected above");
        };
        let req = format!(
            "POST /async-function/tick HTTP/1.1\r\nHost: {}\r\nX-Call-Id: {id}\r\n\
             X-Callback-Url: {callback}\r\nContent-Length: 0\r\n\r\n",
            self.addr
        );
        s.write_all(req.as_bytes())?;
        let broken = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer");
        let head = read_head(r).ok_or_else(broken)?;
        let status = head
            .first
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(broken)?;
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        if head.header("connection") == Some("close") {
            self.conn = None;
        }
        Ok(Answer {
            status,
            call_id: head.header("x-call-id").map(str::to_string),
            duplicate: head.header("x-skyfri-duplicate") == Some("true"),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The clients' shared view of the run.
#[derive(Default)]
struct Load {
    /// The gateway's address, and whether it is the restarted one; `None` while it is down.
    addr: RwLock<Option<(String, bool)>>,
    /// The next call to send, as an index.
    next: AtomicUsize,
    /// Calls answered 202.
    accepted: AtomicUsize,
    /// Per id: accepted after the restart, and marked a duplicate.
    answers: Mutex<HashMap<String, (bool, bool)>>,
    /// Ids whose POST got no answer at least once (and were sent again).
    failed: Mutex<HashSet<String>>,
}

fn client(load: &Load, callback: &str) {
    let mut c = Client {
        addr: String::new(),
        conn: None,
    };
    loop {
        let i = load.next.fetch_add(1, Ordering::Relaxed);
        if i >= CALLS {
            return;
        }
        let id = call_id(i);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "{id} not accepted within 120 s");
            let addr = load.addr.read().expect("lock").clone();
            let Some((addr, restarted)) = addr else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            match c.post(&addr, &id, callback) {
                Ok(a) if a.status == 202 => {
                    assert_eq!(a.call_id.as_deref(), Some(id.as_str()), "{id}");
                    let dup = load
                        .answers
                        .lock()
                        .expect("lock")
                        .insert(id.clone(), (restarted, a.duplicate));
                    assert!(dup.is_none(), "{id} answered twice");
                    load.accepted.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                // The queue closing under a shutdown: try again.
                Ok(a) if a.status == 503 => std::thread::sleep(Duration::from_millis(5)),
                Ok(a) => panic!("{id}: {} {}", a.status, a.body),
                Err(_) => {
                    load.failed.lock().expect("lock").insert(id.clone());
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// Per call id, its runs that failed and were retried, as the platforms logged them.
fn retries(before: &str, after: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in before.lines().chain(after.lines()) {
        if !line.contains("async call failed; will retry") {
            continue;
        }
        if let Some(id) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("call_id="))
        {
            *out.entry(id.to_string()).or_default() += 1;
        }
    }
    out
}

/// A counter of skyfri's `/metrics`, 0 when absent.
fn counter(p: &Platform, series: &str) -> u64 {
    let m = p.http("GET", "/metrics", &[], b"").text();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn record(p: &Platform, id: &str) -> serde_json::Value {
    let r = p.admin("GET", &format!("/system/async/calls/{id}"), "");
    assert_eq!(r.status, 200, "{id}: {}", r.text());
    r.json()
}

#[test]
fn calls_accepted_before_a_sigkill_run_after_the_restart() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let p = Platform::start_in(&data, &[]);
    let out = p.cli_in(
        &fixtures().join("async-crash"),
        &["deploy", "-f", "stack.yml"],
        "",
    );
    assert!(out.ok, "deploy failed: {}\n{}", out.stderr, out.stdout);
    let cb = Receiver::start();
    let callback = cb.url();

    // Without an X-Call-Id the gateway makes one: a time-ordered UUID (version 7).
    let r = p.http("POST", "/async-function/tick", &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.header("x-call-id").expect("X-Call-Id");
    assert_eq!((id.len(), id.chars().nth(14)), (36, Some('7')), "{id}");

    let load = Arc::new(Load::default());
    *load.addr.write().expect("lock") = Some((p.addr.clone(), false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let load = Arc::clone(&load);
            let callback = callback.clone();
            std::thread::spawn(move || client(&load, &callback))
        })
        .collect();

    // The kill, part-way. The replicas' sandboxes die with skyfri (bwrap --die-with-parent).
    while load.accepted.load(Ordering::Acquire) < KILL_AFTER {
        assert!(
            clients.iter().any(|c| !c.is_finished()),
            "the clients stopped before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    *load.addr.write().expect("lock") = None;
    let killed_at = Instant::now();
    let before_kill = load.accepted.load(Ordering::Acquire);
    let before_logs = p.reap();
    let p = Platform::start_in(&data, &[]);
    *load.addr.write().expect("lock") = Some((p.addr.clone(), true));
    let down = killed_at.elapsed();

    for c in clients {
        if let Err(e) = c.join() {
            std::panic::resume_unwind(e);
        }
    }
    let answers = load.answers.lock().expect("lock").clone();
    assert_eq!(answers.len(), CALLS);
    let failed = load.failed.lock().expect("lock").clone();
    let accepted_at = started.elapsed();

    // A call that got a 202 before the kill, sent again: 202, the same id, nothing added.
    let resent: Vec<String> = (0..CALLS)
        .map(call_id)
        .filter(|id| answers.get(id).is_some_and(|&(after, _)| !after))
        .take(RESENT)
        .collect();
    for id in &resent {
        let r = p.http(
            "POST",
            "/async-function/tick",
            &[("X-Call-Id", id), ("X-Callback-Url", &callback)],
            b"",
        );
        assert_eq!(r.status, 202, "{id}: {}", r.text());
        assert_eq!(r.header("x-call-id"), Some(id.as_str()));
        assert_eq!(r.header("x-skyfri-duplicate"), Some("true"), "{id}");
    }
    // Answered as duplicates by the restarted skyfri: only ids whose POST got no answer
    // during the crash (stored, but the 202 was lost).
    let duplicates: Vec<&String> = answers
        .iter()
        .filter(|(_, &(_, dup))| dup)
        .map(|(id, _)| id)
        .collect();
    for id in &duplicates {
        assert!(failed.contains(*id), "{id} was answered as a duplicate");
    }
    // The restarted skyfri added exactly the ids it answered as new: none twice.
    let new_after = answers
        .values()
        .filter(|&&(after, dup)| after && !dup)
        .count() as u64;
    assert_eq!(
        counter(
            &p,
            "gateway_async_calls_accepted_total{function_name=\"tick\"}"
        ),
        new_after,
        "calls added by the restarted skyfri"
    );

    // Every call runs: called back with 200, or (its callback pending at the kill) done.
    let deadline = Instant::now() + DRAIN;
    let mut lost_callbacks = Vec::new();
    loop {
        let runs = cb.runs();
        let missing: Vec<&String> = answers
            .keys()
            .filter(|id| !runs.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        // Near the end, look the rest up: callbacks pending at the kill are lost (a few,
        // however many calls ran at once), those calls are done in the queue.
        if missing.len() <= 200 {
            let records: Vec<_> = missing.iter().map(|id| record(&p, id)).collect();
            if records.iter().all(|r| r["state"] == "done") {
                lost_callbacks = records;
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} calls did not run within {DRAIN:?}, e.g. {}",
            missing.len(),
            record(&p, missing[0])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // A call is recorded done before its callback is sent: the last callbacks may still be
    // on their way.
    std::thread::sleep(Duration::from_millis(500));
    let drained_at = started.elapsed();
    let runs = cb.runs();
    // A run that failed and was retried (a 503 when no replica had room within the 2 s
    // timeout, as when the calls due at the restart meet one replica on a loaded machine)
    // is the retry policy at work, not a second run caused by the crash.
    let retried = retries(&before_logs, &p.logs());
    lost_callbacks.retain(|r| !runs.contains_key(r["id"].as_str().unwrap_or_default()));

    for r in &lost_callbacks {
        let id = r["id"].as_str().unwrap_or_default();
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            !answers[id].0,
            "{id} was accepted after the restart and did not call back: {r}"
        );
    }
    let unknown: Vec<&String> = runs
        .keys()
        .filter(|id| !answers.contains_key(*id))
        .collect();
    assert!(
        unknown.is_empty(),
        "callbacks for unknown calls: {unknown:?}"
    );
    let not_ok: Vec<_> = runs
        .iter()
        .filter(|(_, r)| r.statuses.iter().any(|&s| s != 200))
        .collect();
    assert!(
        not_ok.is_empty(),
        "calls that did not answer 200: {not_ok:?}"
    );
    // At least once: only a call in flight at the kill runs again (its lease lapses); it
    // calls back once, from its second attempt. Two callbacks for one id would be a call
    // run to its end twice.
    let twice: Vec<_> = runs.iter().filter(|(_, r)| r.statuses.len() > 1).collect();
    assert!(twice.is_empty(), "calls that called back twice: {twice:?}");
    let mut again: Vec<(&String, u32)> = runs
        .iter()
        .filter(|(id, r)| r.attempt > 1 + retried.get(*id).copied().unwrap_or(0))
        .map(|(id, r)| (id, r.attempt))
        .collect();
    again.sort();
    for (id, _) in &again {
        assert!(
            !answers[*id].0,
            "{id} was accepted after the restart and ran more than once"
        );
    }
    for id in resent.iter().take(20) {
        assert_eq!(record(&p, id)["state"], "done", "{id}");
    }

    eprintln!(
        "async crash: {CALLS} calls accepted ({before_kill} before the SIGKILL, {} POSTs \
         without an answer during the crash, {} of them already stored); skyfri down for \
         {down:.1?}; {} callbacks, {} callbacks lost at the kill (done in the queue); {} calls \
         ran more than once (at most {CONCURRENCY} were in flight): {again:?}; {} calls retried \
         after a failure; all accepted after {accepted_at:.1?}, all run after {drained_at:.1?}",
        failed.len(),
        duplicates.len(),
        runs.len(),
        lost_callbacks.len(),
        again.len(),
        retried.len(),
    );
    assert!(
        again.len() <= CONCURRENCY,
        "{} calls ran more than once, more than the {CONCURRENCY} in flight: {again:?}",
        again.len()
    );
}
