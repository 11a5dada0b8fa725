//! A real nats-server with JetStream on a free port, for the tests of NATS features.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Debian's nats-server, else one on the PATH.
pub fn nats_server() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("no nats-server: install Debian's (apt-get install nats-server, see scripts/setup.sh)")
        })
}

#[path = "../../../skyfri-queue/tests/support/nats_bin.rs"]
mod nats_bin;
pub use nats_bin::new_nats_server;

/// A nats-server with JetStream, on a free port, storing in a temporary dir.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Nats {
        Nats::start_binary(&nats_server(), port)
    }

    /// A nats-server 2.10+ (see [`new_nats_server`]), when there is one.
    pub fn start_new() -> Option<Nats> {
        Some(Nats::start_binary(&new_nats_server()?, free_port()))
    }

    fn start_binary(binary: &Path, port: u16) -> Nats {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let nats = Nats {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        nats
    }

    /// The server's version, from its INFO line (`2.9.25`).
    pub fn version(&self) -> String {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to NATS");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("INFO");
        let info: serde_json::Value =
            serde_json::from_str(line.trim_start_matches("INFO ").trim()).expect("INFO json");
        info["version"].as_str().unwrap_or_default().to_string()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Sends a request (PUB with a reply inbox) and returns the first reply's payload.
    pub fn request(&self, subject: &str, data: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to NATS");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("INFO");
        assert!(line.starts_with("INFO"), "{line}");
        let mut out = Vec::new();
        out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
        out.extend_from_slice(b"SUB _INBOX.skyfri-test 1\r\n");
        out.extend_from_slice(
            format!("PUB {subject} _INBOX.skyfri-test {}\r\n", data.len()).as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        s.write_all(&out).expect("publish");
        loop {
            line.clear();
            r.read_line(&mut line).expect("reply from NATS");
            if line.starts_with("PING") {
                s.write_all(b"PONG\r\n").expect("pong");
                continue;
            }
            assert!(!line.starts_with("-ERR"), "NATS refused: {line}");
            if let Some(head) = line.strip_prefix("MSG ") {
                let len: usize = head
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .expect("MSG length");
                let mut payload = vec![0; len + 2];
                r.read_exact(&mut payload).expect("payload");
                payload.truncate(len);
                return String::from_utf8_lossy(&payload).into_owned();
            }
        }
    }

    /// Publishes to a subject a stream captures; returns once JetStream has stored it.
    pub fn publish(&self, subject: &str, data: &str) {
        let ack = self.request(subject, data.as_bytes());
        assert!(ack.contains("\"seq\""), "not stored by JetStream: {ack}");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
