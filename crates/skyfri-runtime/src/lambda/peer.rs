//! Who is on the other end of a Runtime API connection. Every replica runs as the same
//! user and, unless it has no network, shares the host's loopback, so a port number is no
//! secret: another function could connect to this replica's Runtime API and take its events.
//! A connection is served only when the socket at its far end is held by the shim itself
//! or one of its descendants (the shim is a child subreaper, so orphans stay its
//! descendants): the kernel's socket table (`/proc/net/tcp`) gives the far end's inode, and
//! `/proc/PID/fd` of the shim's descendants must hold it.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The socket table is kernel-generated, but still read with a bound.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Whether the client socket `peer` -> `local` (our listening address) belongs to this
/// process or one of its descendants.
pub fn is_ours(peer: SocketAddr, local: SocketAddr) -> bool {
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
        return false;
    };
    let Some(inode) = client_inode(peer, local) else {
        return false;
    };
    let target = format!("socket:[{inode}]");
    descendants(std::process::id()).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|link| link.as_os_str().as_encoded_bytes() == target.as_bytes())
            })
    })
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
        if let Some(ppid) = parent(pid) {
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

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The parent follows the state, after the command name in parentheses.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
