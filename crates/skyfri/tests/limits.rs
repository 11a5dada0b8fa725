//! Call limits end to end with the real binary (fixtures/limits): rate limits per function
//! and per client address answering 429 with `Retry-After`, the per-function body limit,
//! the one timeout (the function's, bounded by the gateway's maximum) answering 504 naming
//! the limit that fired, and server-sent events streamed through without buffering.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{fixtures, Platform, Response};

fn deploy(p: &Platform, file: &str) -> common::Output {
    p.cli_in(&fixtures().join("limits"), &["deploy", "-f", file], "")
}

fn start(dir: &Path, extra: &[&str]) -> Platform {
    let p = Platform::start_in(dir, extra);
    let out = deploy(&p, "stack.yml");
    assert!(out.ok, "deploy: {}{}\n{}", out.stdout, out.stderr, p.logs());
    p
}

/// A POST to `path` as raw bytes.
fn request(addr: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// `n` calls sent at once (every connection opened and every request written before any
/// answer is read), from `from` when given.
fn at_once(addr: &str, from: Option<&str>, path: &str, n: usize) -> Vec<Response> {
    let mut conns: Vec<TcpStream> = (0..n).map(|_| connect(addr, from)).collect();
    for c in &mut conns {
        c.write_all(&request(addr, path, b"x")).expect("write");
    }
    conns
        .into_iter()
        .map(|mut c| {
            let mut raw = Vec::new();
            c.read_to_end(&mut raw).expect("read");
            common::parse_response(&raw)
        })
        .collect()
}

/// A connection to `addr`, from the local address `from` when given (any loopback address
/// works on Linux: 127.0.0.2 is another client for the gateway).
fn connect(addr: &str, from: Option<&str>) -> TcpStream {
    let to: SocketAddr = addr.parse().expect("gateway address");
    let stream = match from {
        None => TcpStream::connect(to).expect("connect"),
        Some(ip) => {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let local: SocketAddr = format!("{ip}:0").parse().expect("local address");
            s.bind(&local.into()).expect("bind the client address");
            s.connect(&to.into()).expect("connect");
            s.into()
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
}

fn call(p: &Platform, from: Option<&str>, path: &str, body: &[u8]) -> Response {
    let mut c = connect(&p.addr, from);
    c.write_all(&request(&p.addr, path, body)).expect("write");
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).expect("read");
    common::parse_response(&raw)
}

fn statuses(rs: &[Response]) -> Vec<u16> {
    let mut s: Vec<u16> = rs.iter().map(|r| r.status).collect();
    s.sort_unstable();
    s
}

/// The value of one series of `/metrics`, 0 when absent.
fn metric(p: &Platform, series: &str) -> f64 {
    p.http("GET", "/metrics", &[], b"")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_function_rate_answers_429_with_retry_after_and_passes_after_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = start(&tmp.path().join("data"), &[]);
    // Warm: the first call may start a replica.
    assert_eq!(call(&p, None, "/function/open", b"x").status, 200);

    // `limited`: 5 a second, 5 at once. Six at once: five pass, one is refused.
    let answers = at_once(&p.addr, None, "/function/limited", 6);
    assert_eq!(
        statuses(&answers),
        [200, 200, 200, 200, 200, 429],
        "{answers:?}"
    );
    let refused = answers.iter().find(|r| r.status == 429).expect("a 429");
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in whole seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let v = refused.json();
    assert_eq!(v["source"], "caller", "{v}");
    assert_eq!(v["limit"]["scope"], "function", "{v}");
    assert_eq!(v["limit"]["name"], "com.skyfri.rate", "{v}");
    assert_eq!(v["limit"]["value"], 5.0, "{v}");
    assert_eq!(v["limit"]["burst"], 5, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"limited\"") && error.contains("5 calls per second"),
        "{v}"
    );

    // Waiting as long as it says is enough.
    std::thread::sleep(Duration::from_secs(retry_after));
    let again = call(&p, None, "/function/limited", b"x");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        metric(
            &p,
            "gateway_rate_limited_total{function_name=\"limited\",limit=\"function\"}"
        ),
        1.0
    );

    // Async calls are limited when they are accepted: `trickle` takes one call per 10 s.
    let first = call(&p, None, "/async-function/trickle", b"x");
    assert_eq!(first.status, 202, "{}", first.text());
    let second = call(&p, None, "/async-function/trickle", b"x");
    assert_eq!(second.status, 429, "{}", second.text());
    let wait: u64 = second
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    assert_eq!(second.json()["limit"]["name"], "com.skyfri.rate");
    // ... and share the function's bucket with sync calls.
    let sync = call(&p, None, "/function/trickle", b"x");
    assert_eq!(sync.status, 429, "{}", sync.text());
    // A function without a rate is not limited.
    assert_eq!(
        statuses(&at_once(&p.addr, None, "/function/open", 8)),
        [200; 8]
    );
}

#[test]
fn a_client_rate_limits_one_address_and_not_the_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = start(
        &tmp.path().join("data"),
        &["--rate-per-ip", "0.1", "--burst-per-ip", "3"],
    );
    // Three at once from 127.0.0.1 pass (the deploy's admin calls do not count), a fourth
    // does not.
    let answers = at_once(&p.addr, None, "/function/open", 4);
    assert_eq!(statuses(&answers), [200, 200, 200, 429], "{answers:?}");
    let refused = answers.iter().find(|r| r.status == 429).expect("a 429");
    let v = refused.json();
    assert_eq!(v["limit"]["scope"], "client", "{v}");
    assert_eq!(v["limit"]["name"], "--rate-per-ip", "{v}");
    assert_eq!(v["limit"]["burst"], 3, "{v}");
    let wait: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    // The client's bucket covers every function and async calls too.
    assert_eq!(call(&p, None, "/function/small-body", b"x").status, 429);
    assert_eq!(call(&p, None, "/async-function/open", b"x").status, 429);
    // Another address has its own bucket; X-Forwarded-For does not make one.
    assert_eq!(
        call(&p, Some("127.0.0.2"), "/function/open", b"x").status,
        200
    );
    let spoofed = p.http(
        "POST",
        "/function/open",
        &[("X-Forwarded-For", "203.0.113.9")],
        b"x",
    );
    assert_eq!(spoofed.status, 429, "{}", spoofed.text());
    // Admin calls are not rate limited.
    assert_eq!(p.admin("GET", "/system/functions", "").status, 200);
    assert!(
        metric(
            &p,
            "gateway_rate_limited_total{function_name=\"open\",limit=\"client\"}"
        ) >= 3.0
    );
    assert!(
        !p.http("GET", "/metrics", &[], b"")
            .text()
            .contains("127.0.0."),
        "no addresses in metrics"
    );
}

#[test]
fn body_limits_name_the_function_or_the_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = start(&tmp.path().join("data"), &["--max-body", "4096"]);
    // `small-body` takes 1 KiB.
    let ok = call(&p, None, "/function/small-body", &[b'a'; 1024]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text().trim(), "hello, 1024 bytes");
    let big = call(&p, None, "/function/small-body", &[b'a'; 1025]);
    assert_eq!(big.status, 413, "{}", big.text());
    let v = big.json();
    assert_eq!(v["limit"]["scope"], "function", "{v}");
    assert_eq!(v["limit"]["name"], "com.skyfri.max-body", "{v}");
    assert_eq!(v["limit"]["value"], 1024, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"small-body\""),
        "{v}"
    );
    // The async route applies the same limit.
    let queued = call(&p, None, "/async-function/small-body", &[b'a'; 2000]);
    assert_eq!(queued.status, 413, "{}", queued.text());
    // `open` has no limit of its own: the gateway's --max-body applies.
    assert_eq!(call(&p, None, "/function/open", &[b'a'; 4096]).status, 200);
    let big = call(&p, None, "/function/open", &[b'a'; 4097]);
    assert_eq!(big.status, 413, "{}", big.text());
    let v = big.json();
    assert_eq!(v["limit"]["scope"], "gateway", "{v}");
    assert_eq!(v["limit"]["name"], "--max-body", "{v}");
    assert_eq!(v["limit"]["value"], 4096, "{v}");
    // A function may not ask for more than the gateway takes.
    let out = deploy(&p, "too-big.yml");
    assert!(!out.ok, "deployed: {}", out.stdout);
    assert!(
        out.stderr.contains("\"greedy\"")
            && out.stderr.contains("com.skyfri.max-body")
            && out.stderr.contains("4096"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_cut_call_says_which_timeout_fired() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let p = start(&dir, &[]);
    // `sleepy` may take 1 s and sleeps 3.
    let cut = call(&p, None, "/function/sleepy", b"3");
    assert_eq!(cut.status, 504, "{}", cut.text());
    let v = cut.json();
    assert_eq!(v["source"], "function", "{v}");
    assert_eq!(v["limit"]["scope"], "function", "{v}");
    assert_eq!(v["limit"]["name"], "exec_timeout", "{v}");
    assert_eq!(v["limit"]["value"], 1.0, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("its timeout of 1s"),
        "{v}"
    );
    // Within its timeout, it answers.
    assert_eq!(call(&p, None, "/function/patient", b"0.1").status, 200);
    // A streamed answer counts too: `events-short` sends `tick 1`, then waits past its 2 s;
    // the stream is cut there (no closing chunk), not left to run.
    let mut stream = connect(&p.addr, None);
    write!(
        stream,
        "GET /function/events-short/stream HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        p.addr
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("data: 1\n"), "{raw}");
    assert!(!raw.contains("unreleased"), "{raw}");
    assert!(!raw.ends_with("0\r\n\r\n"), "the stream was not cut: {raw}");
    // Logged (the log is read from the gateway's stderr by another thread: give it time).
    let logged = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        p.logs().contains("answer cut at the deadline")
    });
    assert!(logged, "{}", p.logs());
    p.stop();

    // The same functions under a gateway that allows 2 s: `patient` (10 s) is cut at the
    // gateway's maximum, and may not be deployed again as it is.
    let p = Platform::start_in(&dir, &["--max-timeout", "2"]);
    let cut = call(&p, None, "/function/patient", b"5");
    assert_eq!(cut.status, 504, "{}", cut.text());
    let v = cut.json();
    assert_eq!(v["limit"]["scope"], "gateway", "{v}");
    assert_eq!(v["limit"]["name"], "--max-timeout", "{v}");
    assert_eq!(v["limit"]["value"], 2.0, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("asks for 10s"),
        "{v}"
    );
    assert_eq!(
        call(&p, None, "/function/sleepy", b"3").json()["limit"]["scope"],
        "function"
    );
    let out = deploy(&p, "stack.yml");
    assert!(!out.ok, "deployed: {}", out.stdout);
    assert!(
        out.stderr.contains("\"patient\"")
            && out.stderr.contains("10s")
            && out.stderr.contains("--max-timeout"),
        "{}",
        out.stderr
    );
}

#[test]
fn server_sent_events_stream_through_unbuffered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = start(&tmp.path().join("data"), &[]);
    let mut stream = connect(&p.addr, None);
    write!(
        stream,
        "GET /function/events/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        p.addr
    )
    .expect("write");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    // The function sent `tick 1` and now waits to be released: a gateway that buffered its
    // answer would show nothing until the function gave up (and sent `unreleased`).
    let mut events = String::new();
    while !events.contains("data: 1\n") {
        let chunk = next_chunk(&mut reader).unwrap_or_else(|| panic!("stream ended: {events}"));
        events.push_str(&chunk);
    }
    assert!(!events.contains("unreleased"), "{events}");
    let released = p.http("GET", "/function/events/release", &[], b"");
    assert_eq!(released.status, 200, "{}", released.text());
    while let Some(chunk) = next_chunk(&mut reader) {
        events.push_str(&chunk);
    }
    assert!(!events.contains("unreleased"), "{events}");
    let data: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data, ["1", "2", "3", "4", "4"], "{events}");
    assert!(events.ends_with("event: done\ndata: 4\n\n"), "{events}");
}

/// The next chunk of a chunked body; `None` at its end.
fn next_chunk(reader: &mut impl BufRead) -> Option<String> {
    let mut size = String::new();
    reader.read_line(&mut size).expect("chunk size");
    let size = usize::from_str_radix(size.trim(), 16).expect("chunk size in hex");
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data).expect("chunk");
    if size == 0 {
        return None;
    }
    data.truncate(size);
    Some(String::from_utf8(data).expect("text"))
}
