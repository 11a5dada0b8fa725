//! Who is on the other end of a Runtime API connection. Every replica runs as the same
//! user and, unless it has no network, shares the host's loopback, so a port number is no
//! secret: another function could connect to this replica's Runtime API and take its events.
//! A connection is served only when the socket at its far end is held by the shim itself
//! or one of its descendants (the shim is a child subreaper, so orphans stay its
//! descendants): the kernel's socket table (`/proc/net/tcp`) gives the far end's inode, and
//! `/proc/PID/fd` of the shim's descendants must hold it.
//!
//! That check reads much of `/proc`, and any process on the host can connect, so its cost
//! is bounded ([`Guard`]): one check runs at a time and at most [`MAX_WAITING`] wait for
//! it (connections beyond are closed unchecked); the processes that held a verified socket
//! are remembered for [`REMEMBERED_FOR`] and looked at first (still checked to hold the
//! socket and to be descendants, so a reused pid gains nothing); and after refusals each
//! check waits longer first (from [`BACKOFF_FIRST`], doubling, up to [`BACKOFF_MAX`]), so a
//! process that connects in a loop gets about one check a second, not a core.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// The socket table is kernel-generated, but still read with a bound.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Connections that may wait for a check; more are closed unchecked.
pub const MAX_WAITING: usize = 8;
/// How long a process that held a verified socket is looked at first.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// The wait before the check that follows a refusal; it doubles with each further one.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refusals older than this no longer slow checks down.
const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// Processes remembered at most.
const MAX_REMEMBERED: usize = 16;

/// The Runtime API's gatekeeper for connections to `local` (see the module's doc).
pub struct Guard {
    local: SocketAddr,
    checks: Semaphore,
    waiting: AtomicUsize,
    memory: Mutex<Memory>,
    /// The first and the longest wait after refusals.
    backoff: (Duration, Duration),
    /// Checks that read `/proc/net/tcp` and walked the process tree (for tests).
    scans: AtomicU64,
}

#[derive(Default)]
struct Memory {
    /// Processes that held a verified socket, and when.
    verified: Vec<(u32, Instant)>,
    /// Refusals in a row, and the last one's time.
    refused: u32,
    last_refused: Option<Instant>,
}

/// Who holds a client socket.
enum Holder {
    /// A process remembered from an earlier check.
    Remembered(u32),
    /// A descendant found by walking the process tree.
    Found(u32),
    Nobody,
}

/// Decrements a counter when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Guard {
    pub fn new(local: SocketAddr) -> Arc<Guard> {
        Guard::with_backoff(local, (BACKOFF_FIRST, BACKOFF_MAX))
    }

    fn with_backoff(local: SocketAddr, backoff: (Duration, Duration)) -> Arc<Guard> {
        Arc::new(Guard {
            local,
            checks: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
            memory: Mutex::default(),
            backoff,
            scans: AtomicU64::new(0),
        })
    }

    /// Whether the connection from `peer` is one of this replica's processes'; `Err` with
    /// the number of refusals in a row when it is not (or was not checked).
    pub async fn admit(self: &Arc<Guard>, peer: SocketAddr) -> Result<(), u32> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refused());
        }
        let _waiting = Waiting(&self.waiting);
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(self.refused());
        };
        let (delay, remembered) = {
            let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            m.verified.retain(|(_, at)| at.elapsed() < REMEMBERED_FOR);
            let pids: Vec<u32> = m.verified.iter().map(|(pid, _)| *pid).collect();
            (backoff(&m, self.backoff), pids)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let guard = Arc::clone(self);
        let holder = tokio::task::spawn_blocking(move || guard.holder(peer, &remembered))
            .await
            .unwrap_or(Holder::Nobody);
        let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = match holder {
            Holder::Remembered(pid) | Holder::Found(pid) => pid,
            Holder::Nobody => {
                m.refused = m.refused.saturating_add(1);
                m.last_refused = Some(Instant::now());
                return Err(m.refused);
            }
        };
        m.refused = 0;
        m.verified.retain(|(p, _)| *p != pid);
        if m.verified.len() >= MAX_REMEMBERED {
            m.verified.remove(0);
        }
        m.verified.push((pid, Instant::now()));
        Ok(())
    }

    /// Counts a connection refused unchecked.
    fn refused(&self) -> u32 {
        let mut m = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        m.refused = m.refused.saturating_add(1);
        m.last_refused = Some(Instant::now());
        m.refused
    }

    /// Who holds the client socket `peer` -> our address: a remembered process, else one
    /// found among our descendants.
    fn holder(&self, peer: SocketAddr, remembered: &[u32]) -> Holder {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, self.local) else {
            return Holder::Nobody;
        };
        let Some(inode) = client_inode(peer, local) else {
            return Holder::Nobody;
        };
        let target = format!("socket:[{inode}]");
        let root = std::process::id();
        if let Some(&pid) = remembered
            .iter()
            .find(|&&pid| holds(pid, &target) && descends_from(pid, root))
        {
            return Holder::Remembered(pid);
        }
        descendants(root)
            .into_iter()
            .find(|&pid| holds(pid, &target))
            .map_or(Holder::Nobody, Holder::Found)
    }
}

/// The wait before the next check, after `m.refused` refusals in a row.
fn backoff(m: &Memory, (first, max): (Duration, Duration)) -> Duration {
    let recent = m
        .last_refused
        .is_some_and(|at| at.elapsed() < BACKOFF_RESET);
    if m.refused == 0 || !recent {
        return Duration::ZERO;
    }
    let doublings = (m.refused - 1).min(16);
    first.saturating_mul(1 << doublings).min(max)
}

/// Whether the client socket `peer` -> `local` (our listening address) belongs to this
/// process or one of its descendants.
#[cfg(test)]
fn is_ours(peer: SocketAddr, local: SocketAddr) -> bool {
    !matches!(Guard::new(local).holder(peer, &[]), Holder::Nobody)
}

/// Whether process `pid` has `target` (`socket:[INODE]`) open.
fn holds(pid: u32, target: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|link| link.as_os_str().as_encoded_bytes() == target.as_bytes())
        })
}

/// Whether `pid` is `root` or below it now.
fn descends_from(pid: u32, root: u32) -> bool {
    let mut at = pid;
    // A process tree deeper than this is no runtime client's.
    for _ in 0..64 {
        if at == root {
            return true;
        }
        match crate::procfs::parent(at) {
            Some(p) if p != 0 && p != at => at = p,
            _ => return false,
        }
    }
    false
}

/// The inode of the socket whose local address is `peer` and remote address `local`.
fn client_inode(peer: SocketAddrV4, local: SocketAddrV4) -> Option<u64> {
    let mut table = String::new();
    std::fs::File::open("/proc/net/tcp")
        .ok()?
        .take(MAX_TABLE_BYTES)
        .read_to_string(&mut table)
        .ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (parse_addr(from)? == peer && parse_addr(to)? == local)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90`: the address as the kernel's native-endian word, the port big-endian.
fn parse_addr(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// `root` and every process below it, from the parents in `/proc/PID/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = crate::procfs::parent(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&pid) = out.get(i) {
        out.extend(children.get(&pid).into_iter().flatten());
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let native = u32::from_ne_bytes([127, 0, 0, 1]);
        let text = format!("{native:08X}:1F90");
        assert_eq!(
            parse_addr(&text),
            Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080))
        );
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[tokio::test]
    async fn checks_are_bounded_remembered_and_slowed_after_refusals() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let local = listener.local_addr().expect("test setup");
        // Waits of 1 ms to 20 ms: the test need not take seconds.
        let bounds = (Duration::from_millis(1), Duration::from_millis(20));
        let guard = Guard::with_backoff(local, bounds);
        let scans = || guard.scans.load(Ordering::Relaxed);

        // Our own connections pass; the second is found by the remembered process.
        let first = std::net::TcpStream::connect(local).expect("test setup");
        let addr = first.local_addr().expect("test setup");
        assert_eq!(guard.admit(addr).await, Ok(()));
        let second = std::net::TcpStream::connect(local).expect("test setup");
        let addr = second.local_addr().expect("test setup");
        let root = std::process::id();
        assert!(matches!(
            guard.holder(addr, &[root]),
            Holder::Remembered(pid) if pid == root
        ));
        assert_eq!(guard.admit(addr).await, Ok(()));
        assert_eq!(scans(), 3);

        // A flood of connections nobody here holds, while a check runs: those beyond
        // MAX_WAITING are closed unchecked, the waiting ones are checked in turn.
        let nobody = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let running = guard.checks.acquire().await.expect("permit");
        let flood: Vec<_> = (0..100)
            .map(|_| {
                let g = Arc::clone(&guard);
                tokio::spawn(async move { g.admit(nobody).await })
            })
            .collect();
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let closed = flood.iter().filter(|t| t.is_finished()).count();
        assert_eq!(closed, 100 - MAX_WAITING);
        drop(running);
        for task in flood {
            assert!(task.await.expect("task").is_err());
        }
        assert_eq!(scans(), 3 + MAX_WAITING as u64);
        {
            let m = guard.memory.lock().expect("lock");
            assert_eq!(m.refused, 100);
            assert_eq!(backoff(&m, bounds), bounds.1);
        }

        // Our own still pass after the flood (past the backoff), which resets it.
        let third = std::net::TcpStream::connect(local).expect("test setup");
        assert_eq!(
            guard.admit(third.local_addr().expect("test setup")).await,
            Ok(())
        );
        assert_eq!(
            backoff(&guard.memory.lock().expect("lock"), bounds),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let m = |refused| Memory {
            verified: Vec::new(),
            refused,
            last_refused: Some(Instant::now()),
        };
        let bounds = (BACKOFF_FIRST, BACKOFF_MAX);
        assert_eq!(backoff(&m(0), bounds), Duration::ZERO);
        assert_eq!(backoff(&m(1), bounds), BACKOFF_FIRST);
        assert_eq!(backoff(&m(3), bounds), BACKOFF_FIRST * 4);
        assert_eq!(backoff(&m(1000), bounds), BACKOFF_MAX);
        assert_eq!(backoff(&Memory::default(), bounds), Duration::ZERO);
    }

    #[test]
    fn own_connections_pass_and_unknown_ones_do_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("test setup");
        let local = listener.local_addr().expect("test setup");
        let mine = std::net::TcpStream::connect(local).expect("test setup");
        assert!(is_ours(mine.local_addr().expect("test setup"), local));
        // No such connection: nobody holds it.
        let nobody = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        assert!(!is_ours(nobody, local));
        // The other end of our own connection is no client socket of `local`.
        assert!(!is_ours(local, mine.local_addr().expect("test setup")));
    }
}
