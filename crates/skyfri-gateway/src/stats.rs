//! Per-function call statistics of the last hour, minute by minute, for the dashboard
//! (`GET /system/stats`): calls, errors (5xx), cold starts, a latency histogram (p50/p99)
//! and the most replicas seen ready.
//!
//! Bounded and cheap on the invoke path: a function's ring of [`MINUTES`] slots is
//! allocated at its first call (idle functions cost one pointer), and recording a call is a
//! comparison of the slot's minute plus three relaxed atomic adds (four for a 5xx). A slot
//! from an older minute is reset by the first call that finds it so; calls racing with that
//! reset, at the very edge of a minute, may be lost: the figures are for charts, not
//! billing (that is [`crate::usage`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Minutes kept.
pub const MINUTES: usize = 60;
/// Latency buckets: two per power of two from 128 µs (bucket 0 takes everything faster) to
/// about 70 s (the last takes everything slower).
const BUCKETS: usize = 40;
/// The half-power-of-two step where bucket 0 ends: 2 x log2(128 µs).
const FIRST: u32 = 14;

/// Maps an `Instant` to Unix time once, so recording needs no second clock read.
struct Clock {
    instant: Instant,
    unix_secs: u64,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| Clock {
        instant: Instant::now(),
        unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// The Unix minute (seconds / 60) that `now` falls in.
pub fn minute_of(now: Instant) -> u64 {
    let c = clock();
    (c.unix_secs + now.saturating_duration_since(c.instant).as_secs()) / 60
}

/// The bucket of a call that took `took`.
fn bucket(took: Duration) -> usize {
    // In u64 (`as_micros` is a u128 division).
    let us = took
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(took.subsec_micros()))
        .max(1);
    let log = 63 - us.leading_zeros();
    let half = if log == 0 { 0 } else { (us >> (log - 1)) & 1 };
    let index = (2 * log + half as u32 + 1).saturating_sub(FIRST);
    (index as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn upper_ms(i: usize) -> f64 {
    // Half-powers of two: step k starts at 2^(k/2), times 1.5 for odd k; bucket i ends
    // where step i + FIRST starts.
    let k = i as u32 + FIRST;
    let (b, h) = (k / 2, k % 2);
    let us = (1u64 << b) as f64 * if h == 1 { 1.5 } else { 1.0 };
    us / 1000.0
}

struct Slot {
    /// The Unix minute the counts are for.
    minute: AtomicU64,
    calls: AtomicU32,
    errors: AtomicU32,
    cold_starts: AtomicU32,
    replicas: AtomicU32,
    latency: [AtomicU32; BUCKETS],
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            minute: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            cold_starts: AtomicU32::new(0),
            replicas: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Slot {
    /// The slot, made current for `minute` (reset if it held an older one).
    fn at(&self, minute: u64) -> &Slot {
        let held = self.minute.load(Ordering::Acquire);
        if held != minute
            && held < minute
            && self
                .minute
                .compare_exchange(held, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.calls.store(0, Ordering::Relaxed);
            self.errors.store(0, Ordering::Relaxed);
            self.cold_starts.store(0, Ordering::Relaxed);
            self.replicas.store(0, Ordering::Relaxed);
            for b in &self.latency {
                b.store(0, Ordering::Relaxed);
            }
        }
        self
    }

    fn holds(&self, minute: u64) -> bool {
        self.minute.load(Ordering::Acquire) == minute
    }
}

/// One function's last hour.
#[derive(Default)]
pub struct FunctionStats {
    ring: OnceLock<Box<[Slot; MINUTES]>>,
}

impl FunctionStats {
    fn ring(&self) -> &[Slot; MINUTES] {
        self.ring
            .get_or_init(|| Box::new(std::array::from_fn(|_| Slot::default())))
    }

    fn slot(&self, now: Instant) -> (&Slot, u64) {
        let minute = minute_of(now);
        (&self.ring()[(minute % MINUTES as u64) as usize], minute)
    }

    /// A call that ended at `now` with `code`, `took` after it arrived.
    pub fn call(&self, now: Instant, took: Duration, code: u16) {
        let (slot, minute) = self.slot(now);
        let slot = slot.at(minute);
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if code >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// A call found the function at zero and waited for a replica to start.
    pub fn cold_start(&self, now: Instant) {
        let (slot, minute) = self.slot(now);
        slot.at(minute).cold_starts.fetch_add(1, Ordering::Relaxed);
    }

    /// `ready` replicas were seen at `now` (the minute keeps the most seen). A function that
    /// has had no calls and has no replica is left unallocated.
    pub fn replicas(&self, now: Instant, ready: u32) {
        if ready == 0 && self.ring.get().is_none() {
            return;
        }
        let (slot, minute) = self.slot(now);
        slot.at(minute).replicas.fetch_max(ready, Ordering::Relaxed);
    }

    /// The last [`MINUTES`] minutes up to the one `now` falls in, oldest first.
    pub fn hour(&self, now: Instant) -> Hour {
        let last = minute_of(now);
        let first = last + 1 - MINUTES as u64;
        let mut h = Hour {
            from: first * 60,
            ..Hour::default()
        };
        let mut total = [0u64; BUCKETS];
        for minute in first..=last {
            let slot = self
                .ring
                .get()
                .map(|r| &r[(minute % MINUTES as u64) as usize])
                .filter(|s| s.holds(minute));
            let Some(slot) = slot else {
                h.push_empty();
                continue;
            };
            let counts: [u64; BUCKETS] =
                std::array::from_fn(|i| u64::from(slot.latency[i].load(Ordering::Relaxed)));
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
            let calls = slot.calls.load(Ordering::Relaxed);
            let errors = slot.errors.load(Ordering::Relaxed);
            let cold = slot.cold_starts.load(Ordering::Relaxed);
            h.calls.push(calls);
            h.errors.push(errors);
            h.cold_starts.push(cold);
            h.replicas.push(slot.replicas.load(Ordering::Relaxed));
            h.p50_ms.push(quantile(&counts, 0.50));
            h.p99_ms.push(quantile(&counts, 0.99));
            h.total.calls += u64::from(calls);
            h.total.errors += u64::from(errors);
            h.total.cold_starts += u64::from(cold);
        }
        h.total.p50_ms = quantile(&total, 0.50);
        h.total.p99_ms = quantile(&total, 0.99);
        h
    }
}

/// The `q` quantile of a histogram, in ms: the upper bound of the bucket it falls in
/// (an overestimate by at most half the value); `None` without calls.
fn quantile(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((n as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(upper_ms(i));
        }
    }
    Some(upper_ms(BUCKETS - 1))
}

/// One function's hour: per-minute columns (oldest first) and the hour's totals.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hour {
    /// Unix seconds of the first minute.
    pub from: u64,
    pub calls: Vec<u32>,
    pub errors: Vec<u32>,
    pub cold_starts: Vec<u32>,
    /// The most replicas seen ready in the minute.
    pub replicas: Vec<u32>,
    pub p50_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
    pub total: Totals,
}

impl Hour {
    fn push_empty(&mut self) {
        self.calls.push(0);
        self.errors.push(0);
        self.cold_starts.push(0);
        self.replicas.push(0);
        self.p50_ms.push(None);
        self.p99_ms.push(None);
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub calls: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_microseconds_to_a_minute() {
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(127)), 0);
        assert_eq!(bucket(Duration::from_micros(128)), 1);
        assert_eq!(bucket(Duration::from_micros(192)), 2);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        // Each bucket's upper bound is the next one's lower bound, and lies above what it holds.
        for us in [
            1u64, 100, 128, 200, 1000, 1500, 2048, 50_000, 1_000_000, 30_000_000,
        ] {
            let b = bucket(Duration::from_micros(us));
            assert!(upper_ms(b) * 1000.0 > us as f64, "{us} µs in bucket {b}");
            if b > 0 {
                assert!(
                    upper_ms(b - 1) * 1000.0 <= us as f64,
                    "{us} µs in bucket {b}"
                );
            }
        }
    }

    #[test]
    fn an_hour_of_calls_by_minute() {
        let s = FunctionStats::default();
        let now = Instant::now();
        assert_eq!(s.hour(now).total.calls, 0);
        assert!(s.ring.get().is_none(), "nothing allocated before a call");
        s.replicas(now, 0);
        assert!(
            s.ring.get().is_none(),
            "no replicas, no calls: still nothing"
        );
        for _ in 0..98 {
            s.call(now, Duration::from_millis(2), 200);
        }
        s.call(now, Duration::from_millis(900), 502);
        s.call(now, Duration::from_millis(900), 404);
        s.cold_start(now);
        s.replicas(now, 3);
        s.replicas(now, 1);
        let h = s.hour(now);
        assert_eq!(h.calls.len(), MINUTES);
        assert_eq!(h.calls[MINUTES - 1], 100);
        assert_eq!(h.errors[MINUTES - 1], 1, "only 5xx are errors");
        assert_eq!(h.cold_starts[MINUTES - 1], 1);
        assert_eq!(h.replicas[MINUTES - 1], 3, "the most seen");
        let p50 = h.p50_ms[MINUTES - 1].expect("p50");
        assert!((2.0..=3.0).contains(&p50), "{p50}");
        let p99 = h.p99_ms[MINUTES - 1].expect("p99");
        assert!((900.0..=1400.0).contains(&p99), "{p99}");
        assert_eq!(h.p50_ms[0], None);
        assert_eq!(h.total.calls, 100);
        assert_eq!(h.from % 60, 0);
        assert_eq!(h.from / 60 + MINUTES as u64 - 1, minute_of(now));
    }

    #[test]
    fn old_minutes_leave_the_hour_and_their_slots_are_reused() {
        let s = FunctionStats::default();
        let t0 = Instant::now();
        s.call(t0, Duration::from_millis(1), 200);
        // Ten minutes on: the first call is still in the hour, ten slots back.
        let t1 = t0 + Duration::from_secs(600);
        s.call(t1, Duration::from_millis(1), 200);
        let h = s.hour(t1);
        assert_eq!(h.total.calls, 2);
        // An hour after t0 its slot is reused: t0's call is gone, the new one counted alone.
        let t2 = t0 + Duration::from_secs(60 * MINUTES as u64);
        s.call(t2, Duration::from_millis(1), 500);
        let h = s.hour(t2);
        assert_eq!(h.total.calls, 2, "t1 and t2");
        assert_eq!(h.calls[MINUTES - 1], 1);
        assert_eq!(h.errors[MINUTES - 1], 1);
        // Two hours on, nothing is left.
        assert_eq!(s.hour(t0 + Duration::from_secs(7200)).total.calls, 0);
    }
}
