//! The gateway at the edge: TLS (HTTP/1.1 and HTTP/2 over rustls, on the gateway's and the
//! dashboard's listeners, certificate reload on SIGHUP without dropping open connections)
//! and the bounds on clients (request head size and field count, slow clients, open
//! connections). TLS is checked with the real `curl` and `openssl s_client`; certificates
//! are made by `openssl req` (both installed by scripts/setup.sh).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Platform;

/// A self-signed certificate for 127.0.0.1 and localhost.
fn make_cert(dir: &Path, name: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `curl` against `addr` (the gateway's or the dashboard's) trusting `ca`; returns (exit
/// ok, "status http-version").
fn curl(addr: &str, ca: &Path, http: &str, path: &str) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", http, "--cacert"])
        .arg(ca)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("run curl (scripts/setup.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sighup(p: &Platform) {
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(p.pid() as i32, libc::SIGHUP) };
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tls_serves_both_protocols_and_a_reloaded_certificate_keeps_open_connections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    make_cert(dir, "first");
    make_cert(dir, "second");
    let (cert, key) = (dir.join("served.pem"), dir.join("served.key"));
    std::fs::copy(dir.join("first.pem"), &cert).expect("copy cert");
    std::fs::copy(dir.join("first.key"), &key).expect("copy key");
    let p = Platform::start_in(
        &dir.join("data"),
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let (first, second) = (dir.join("first.pem"), dir.join("second.pem"));
    assert_eq!(
        curl(&p.addr, &first, "--http2", "/healthz"),
        (true, "200 2".to_string())
    );
    assert_eq!(
        curl(&p.addr, &first, "--http1.1", "/healthz"),
        (true, "200 1.1".to_string())
    );
    // The dashboard's listener serves the same certificate; over HTTP/2 (no Host header,
    // the :authority names it) a login from its own origin works and the cookie is Secure.
    let ui = p.ui().to_string();
    assert_eq!(
        curl(&ui, &first, "--http2", "/ui"),
        (true, "200 2".to_string())
    );
    let login = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2", "--cacert"])
        .arg(&first)
        .args([
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-H", &format!("Origin: https://{ui}")])
        .args(["-d", &format!(r#"{{"password":"{}"}}"#, common::PASSWORD)])
        .arg(format!("https://{ui}/ui/login"))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&login.stdout).to_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie: skyfri_session="))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    assert!(cookie.contains("; secure"), "{cookie}");
    // Plain HTTP on the TLS port is not served.
    let r = TcpStream::connect(&p.addr).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Ok(buf)
    });
    assert!(
        !String::from_utf8_lossy(&r.unwrap_or_default()).contains("200 OK"),
        "plain HTTP answered on the TLS port"
    );

    // A connection made with the first certificate, still open across the reload.
    let mut held = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &p.addr, "-CAfile"])
        .arg(&first)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut held_in = held.stdin.take().expect("stdin");
    let mut held_out = BufReader::new(held.stdout.take().expect("stdout"));
    let ask = b"GET /healthz HTTP/1.1\r\nHost: skyfri\r\n\r\n";
    held_in.write_all(ask).expect("first request");
    let mut status = String::new();
    held_out.read_line(&mut status).expect("first answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Garbage in place of the certificate: the reload fails, the old one stays in service.
    std::fs::write(&cert, "not a certificate").expect("write garbage");
    sighup(&p);
    wait_for("the failed reload", Duration::from_secs(10), || {
        p.logs().contains("TLS certificate not reloaded")
    });
    assert_eq!(
        curl(&p.addr, &first, "--http2", "/healthz"),
        (true, "200 2".to_string())
    );

    std::fs::copy(dir.join("second.pem"), &cert).expect("copy cert");
    std::fs::copy(dir.join("second.key"), &key).expect("copy key");
    sighup(&p);
    wait_for("the reload", Duration::from_secs(10), || {
        p.logs().contains("TLS certificate reloaded")
    });
    assert_eq!(
        curl(&p.addr, &second, "--http2", "/healthz"),
        (true, "200 2".to_string())
    );
    let (ok, said) = curl(&p.addr, &first, "--http2", "/healthz");
    assert!(
        !ok,
        "the old certificate is still served to new clients: {said}"
    );
    // The dashboard's listener too.
    assert_eq!(
        curl(&ui, &second, "--http2", "/ui"),
        (true, "200 2".to_string())
    );
    assert!(
        !curl(&ui, &first, "--http2", "/ui").0,
        "the dashboard kept the old certificate"
    );

    // The connection opened before the reload still answers.
    loop {
        let mut line = String::new();
        held_out
            .read_line(&mut line)
            .expect("rest of the first answer");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = [0u8; 2];
    held_out.read_exact(&mut body).expect("first body");
    held_in.write_all(ask).expect("second request");
    status.clear();
    held_out.read_line(&mut status).expect("second answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let _ = held.kill();
    let _ = held.wait();
}

/// Sends `head` and returns the status line of the answer ("" if the connection closed).
fn status_of(addr: &str, head: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = s.write_all(head);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.trim_end().to_string()
}

#[test]
fn oversized_heads_and_slow_clients_are_cut_off_and_others_are_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = Platform::start_in(
        &tmp.path().join("data"),
        &["--header-timeout", "1", "--max-headers", "50"],
    );
    let ok = "HTTP/1.1 200 OK";
    assert_eq!(
        status_of(&p.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ok
    );

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = status_of(&p.addr, big.as_bytes());
    assert!(
        answer.contains("431") || answer.is_empty(),
        "a 100 KiB head was answered: {answer}"
    );

    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(
        status_of(&p.addr, many.as_bytes()).contains("431"),
        "80 header fields were accepted with --max-headers 50"
    );

    // Slowloris: 50 connections that never finish their head.
    let slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&p.addr).expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("partial head");
            s
        })
        .collect();
    // Others are served meanwhile.
    assert_eq!(
        status_of(&p.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ok
    );
    // And the slow ones are closed once the header timeout (1 s) passes.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf);
        let said = String::from_utf8_lossy(&buf[..*n.as_ref().unwrap_or(&0)]).into_owned();
        assert!(
            n.is_ok() && !said.contains("200"),
            "a slow client was not cut off: {n:?} {said}"
        );
    }
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = Platform::start_in(&tmp.path().join("data"), &["--max-connections", "3"]);
    let ask = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let open = |ask_now: bool| {
        let mut s = TcpStream::connect(&p.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        if ask_now {
            s.write_all(ask).expect("request");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).expect("answer");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        }
        s
    };
    let held: Vec<TcpStream> = (0..3).map(|_| open(true)).collect();
    let mut fourth = open(false);
    fourth.write_all(ask).expect("request");
    fourth
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .ok();
    let mut buf = [0u8; 256];
    assert!(
        fourth.read(&mut buf).is_err(),
        "a fourth connection was served with --max-connections 3"
    );
    drop(held);
    fourth.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let n = fourth
        .read(&mut buf)
        .expect("answer once a connection closed");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        p.logs().contains("connection limit reached"),
        "{}",
        p.logs()
    );
}
