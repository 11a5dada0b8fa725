//! Token buckets as GCRA (the generic cell rate algorithm): a bucket of `burst` tokens that
//! refills at `per_second` is one number, the theoretical arrival time (TAT) of the next call
//! when the bucket is empty. A call at `now` is admitted when taking a token leaves the TAT
//! at most `burst` token-intervals ahead of `now`; otherwise it must wait until it would.
//!
//! A TAT at or before `now` means a full bucket, the same as no entry at all: idle client
//! entries can be dropped without changing any answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use skyfri_core::limits::Rate;

/// Nanoseconds since the first call in this process: the clock buckets keep their TATs on.
pub fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A rate in the units the algorithm works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two tokens.
    interval: u64,
    /// How far ahead of now the TAT may be: `burst` intervals.
    tolerance: u64,
}

impl Gcra {
    pub fn new(rate: Rate) -> Gcra {
        let interval = (1e9 / rate.per_second).round().clamp(1.0, u64::MAX as f64) as u64;
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1))),
        }
    }

    /// Takes one token at `now` from a bucket whose TAT is `tat`: the new TAT, or how long
    /// (nanoseconds) until a token is there.
    pub fn take(self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.tolerance {
            Ok(next)
        } else {
            Err(ahead - self.tolerance)
        }
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// One bucket shared by every call of a function: lock-free, a compare-and-swap per call.
#[derive(Debug)]
pub struct Bucket {
    pub rate: Rate,
    gcra: Gcra,
    tat: AtomicU64,
}

impl Bucket {
    pub fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            gcra: Gcra::new(rate),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token now, or says how long until one is there.
    pub fn take(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = self.gcra.take(tat, now).map_err(Duration::from_nanos)?;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// Takes tokens at the given instants (ms); `true` for admitted.
    fn run(g: Gcra, at_ms: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        at_ms
            .iter()
            .map(|&t| match g.take(tat, 10 * S + t * MS) {
                Ok(next) => {
                    tat = next;
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_refills_at_the_rate() {
        let g = Gcra::new(rate(5.0, 5));
        // Five at once, the sixth refused; one token back after 200 ms, not before.
        assert_eq!(
            run(g, &[0, 0, 0, 0, 0, 0, 199, 200, 200]),
            [true, true, true, true, true, false, false, true, false]
        );
        // A quiet second refills the whole bucket, and no more than it.
        assert_eq!(
            run(g, &[0, 0, 0, 0, 0, 1000, 1000, 1000, 1000, 1000, 1000]),
            [true, true, true, true, true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn steady_calls_at_the_rate_always_pass() {
        let g = Gcra::new(rate(10.0, 1));
        let at: Vec<u64> = (0..50).map(|i| i * 100).collect();
        assert!(run(g, &at).iter().all(|&ok| ok));
        // Twice the rate: every other one.
        let at: Vec<u64> = (0..10).map(|i| i * 50).collect();
        assert_eq!(
            run(g, &at),
            [true, false, true, false, true, false, true, false, true, false]
        );
    }

    #[test]
    fn the_wait_is_the_time_until_a_token() {
        let g = Gcra::new(rate(5.0, 5));
        let now = 10 * S;
        let mut tat = 0;
        for _ in 0..5 {
            tat = g.take(tat, now).expect("burst");
        }
        assert_eq!(g.take(tat, now), Err(200 * MS));
        assert_eq!(g.take(tat, now + 150 * MS), Err(50 * MS));
        // Slow rates wait long.
        let slow = Gcra::new(rate(0.1, 1));
        let tat = slow.take(0, now).expect("first");
        assert_eq!(slow.take(tat, now), Err(10 * S));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let cases = [
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(200), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(10), 10),
            (Duration::ZERO, 1),
        ];
        for (wait, want) in cases {
            assert_eq!(retry_after_secs(wait), want, "{wait:?}");
        }
    }

    #[test]
    fn a_shared_bucket_admits_exactly_its_burst_across_threads() {
        let bucket = std::sync::Arc::new(Bucket::new(rate(0.001, 100)));
        let now = now();
        let admitted: usize = (0..8)
            .map(|_| {
                let b = std::sync::Arc::clone(&bucket);
                std::thread::spawn(move || (0..50).filter(|_| b.take(now).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(admitted, 100);
    }
}
