//! Per-client token buckets (`skyfri up --rate-per-ip`): one TAT per client address in a
//! sharded map, so that calls from different clients rarely wait for the same lock.
//!
//! A client is its IPv4 address, or its IPv6 /64 (one subscriber usually holds a whole /64,
//! and would otherwise get a fresh bucket per address). The peer address of the connection is
//! used, never `X-Forwarded-For`, which any client can write.
//!
//! Memory is bounded: each shard holds at most `capacity / SHARDS` clients. A shard that is
//! full first drops its idle clients (a TAT in the past is a full bucket, the same as no
//! entry: nothing changes for them); when every client in it is active it drops the one
//! closest to a full bucket, which then starts afresh.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use skyfri_core::limits::Rate;

use super::bucket::Gcra;

const SHARDS: usize = 64;

/// Clients tracked at once unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub struct Clients {
    pub rate: Rate,
    gcra: Gcra,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, u64>>]>,
}

/// The address a client is counted under.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(net))
            }
        },
    }
}

impl Clients {
    pub fn new(rate: Rate, capacity: usize) -> Clients {
        Clients {
            rate,
            gcra: Gcra::new(rate),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token for `ip` at `now`, or says how long until one is there.
    pub fn take(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        let key = client_key(ip);
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = match map.get(&key) {
            Some(&tat) => tat,
            None => {
                if map.len() >= self.per_shard {
                    make_room(&mut map, now, self.per_shard);
                }
                0
            }
        };
        let next = self.gcra.take(tat, now).map_err(Duration::from_nanos)?;
        map.insert(key, next);
        Ok(())
    }

    /// Whether a token for `ip` is there at `now`, without taking it; else how long until.
    pub fn check(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        let key = client_key(ip);
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = map.get(&key).copied().unwrap_or(0);
        self.gcra
            .take(tat, now)
            .map(|_| ())
            .map_err(Duration::from_nanos)
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room for one more client in a full shard (see the module's doc).
fn make_room(map: &mut HashMap<IpAddr, u64>, now: u64, limit: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() >= limit {
        if let Some(oldest) = map.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let c = Clients::new(
            Rate {
                per_second: 1.0,
                burst: 2,
            },
            100,
        );
        let now = 5 * S;
        assert!(c.take(v4(1), now).is_ok());
        assert!(c.take(v4(1), now).is_ok());
        assert_eq!(c.take(v4(1), now), Err(Duration::from_secs(1)));
        assert!(c.take(v4(2), now).is_ok());
        assert!(c.take(v4(1), now + S).is_ok());
    }

    #[test]
    fn ipv6_clients_are_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_key(mapped), v4(7));
        let c = Clients::new(
            Rate {
                per_second: 1.0,
                burst: 1,
            },
            100,
        );
        assert!(c.take(a, S).is_ok());
        assert!(c.take(b, S).is_err());
        assert!(c.take(other, S).is_ok());
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_addresses() {
        let rate = Rate {
            per_second: 1.0,
            burst: 1,
        };
        let capacity = SHARDS * 4;
        let c = Clients::new(rate, capacity);
        // A flood of distinct addresses never grows the map beyond its capacity.
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(c.take(ip, S).is_ok(), "a new client has a full bucket");
            assert!(c.len() <= capacity);
        }
    }

    #[test]
    fn a_full_shard_drops_idle_clients_first_then_the_least_active() {
        let map = |entries: &[(u8, u64)]| -> HashMap<IpAddr, u64> {
            entries.iter().map(|&(ip, tat)| (v4(ip), tat)).collect()
        };
        let mut m = map(&[(1, 5), (2, 20), (3, 30)]);
        make_room(&mut m, 10, 3);
        assert_eq!(m, map(&[(2, 20), (3, 30)]));
        let mut m = map(&[(2, 20), (3, 30), (4, 40)]);
        make_room(&mut m, 10, 3);
        assert_eq!(m, map(&[(3, 30), (4, 40)]));
    }
}
