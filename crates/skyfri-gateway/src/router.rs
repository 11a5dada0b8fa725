//! Per-function routing: picks the least-loaded ready replica, enforces each replica's
//! concurrency (containerConcurrency / max_inflight) and the function's cap on calls in
//! flight across its replicas (`com.skyfri.max-concurrency`), and holds calls beyond the
//! current capacity in a bounded queue while the scaler adds replicas. Each call is metered
//! (its function's [`Account`]) when it lets go of its replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use skyfri_runtime::Endpoint;
use tokio::sync::Notify;

use crate::usage::Account;

/// How soon a waiting call first looks again for a ready replica (a new replica does not
/// notify); the wait doubles up to [`MAX_RECHECK`].
const RECHECK: Duration = Duration::from_millis(2);
const MAX_RECHECK: Duration = Duration::from_millis(20);
/// How often a call held by the function's cap looks again, in case a wake-up was missed:
/// every finished call wakes one.
const CAPPED_RECHECK: Duration = Duration::from_millis(100);

/// Why a call could not get a replica.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full: the caller should back off (429).
    QueueFull { limit: usize },
    /// Waited as long as the call may take and still no capacity (503). `capped` is the
    /// function's cap when it was the limit at the end.
    TimedOut {
        waited: Duration,
        replicas: usize,
        capped: Option<u32>,
    },
}

/// What a function's router enforces, from its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls one replica takes at once, 0 = unlimited.
    pub per_replica: u32,
    /// Calls in flight across all replicas, 0 = unlimited.
    pub total: u32,
    /// Calls that may wait for capacity.
    pub queue: usize,
}

/// The load picture of one function, shared by its calls and the autoscaler.
pub struct Router {
    /// Calls in flight per replica, and their time integral.
    slots: Mutex<Slots>,
    freed: Notify,
    /// Per replica, 0 = unlimited.
    capacity: AtomicU32,
    /// Across all replicas, 0 = unlimited.
    total: AtomicU32,
    queue_limit: AtomicUsize,
    waiting: AtomicUsize,
    /// When each waiting call started waiting, by arrival number: the first is the oldest.
    queued: Mutex<BTreeMap<u64, Instant>>,
    arrivals: AtomicU64,
    in_flight: AtomicUsize,
    /// Calls that got a replica, ever: the rps metric is its rate.
    started: AtomicU64,
    next: AtomicUsize,
    account: Arc<Account>,
}

impl Router {
    pub fn new(limits: Limits) -> Router {
        Router {
            slots: Mutex::new(Slots {
                load: HashMap::default(),
                busy: BusyTime::default(),
            }),
            freed: Notify::new(),
            capacity: AtomicU32::new(limits.per_replica),
            total: AtomicU32::new(limits.total),
            queue_limit: AtomicUsize::new(limits.queue),
            waiting: AtomicUsize::new(0),
            queued: Mutex::new(BTreeMap::new()),
            arrivals: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            account: Arc::new(Account::default()),
        }
    }

    /// Where the function's calls are metered.
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }

    /// New limits after a redeploy; calls in flight keep their replicas.
    pub fn configure(&self, limits: Limits) {
        self.capacity.store(limits.per_replica, Ordering::Relaxed);
        self.total.store(limits.total, Ordering::Relaxed);
        self.queue_limit.store(limits.queue, Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// New replicas may be ready: waiting calls look again now.
    pub fn wake(&self) {
        self.freed.notify_waiters();
    }

    /// Seconds of calls in flight since the router was made (the integral over time of
    /// the calls in flight): the autoscaler's average concurrency over an interval is its
    /// increase divided by the interval, which counts calls shorter than any sampling
    /// period, as Knative's queue-proxy does.
    pub fn busy_seconds(&self) -> f64 {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.busy.at(Instant::now())
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls waiting for capacity now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long the call waiting longest has waited, `None` when none waits.
    pub fn oldest_wait(&self) -> Option<Duration> {
        let queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        queued.values().next().map(Instant::elapsed)
    }

    /// Calls holding `endpoint` now (from getting it until their answer is sent).
    pub fn calls_on(&self, endpoint: &Endpoint) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.load.get(endpoint).map_or(0, |&n| n as usize)
    }

    /// Calls that have been given a replica since the start.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// A replica with room for one more call, waiting up to `deadline` for one. `ready`
    /// lists the ready replicas (asked again while waiting); `starved` is called when there
    /// is none at all, so that the function is scaled up from zero.
    pub async fn acquire(
        self: &Arc<Self>,
        ready: impl Fn() -> Vec<Endpoint>,
        starved: impl Fn(),
        deadline: Instant,
    ) -> Result<Lease, Busy> {
        let first = ready();
        if let Some(lease) = self.try_acquire(&first) {
            return Ok(lease);
        }
        let limit = self.queue_limit.load(Ordering::Relaxed);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::QueueFull { limit });
        }
        let start = Instant::now();
        let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(arrival, start);
        let _queued = Queued(self, arrival);
        let mut cold = first.is_empty();
        let mut recheck = RECHECK;
        loop {
            // Registered before looking, so that a slot freed meanwhile still wakes this call.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let endpoints = ready();
            if endpoints.is_empty() {
                cold = true;
                starved();
            }
            if let Some(mut lease) = self.try_acquire(&endpoints) {
                lease.cold = cold;
                lease.waited = start.elapsed();
                return Ok(lease);
            }
            let now = Instant::now();
            let total = self.total.load(Ordering::Relaxed);
            let capped = total != 0 && self.in_flight() >= total as usize;
            if now >= deadline {
                return Err(Busy::TimedOut {
                    waited: now - start,
                    replicas: endpoints.len(),
                    capped: capped.then_some(total),
                });
            }
            // A finished call wakes the waiting calls one at a time, oldest first; the timer
            // is for replicas that become ready, which cannot help a call held by the cap.
            // It slows down the longer a call waits, so that a long queue does not spin.
            let nap = if capped { CAPPED_RECHECK } else { recheck };
            recheck = (recheck * 2).min(MAX_RECHECK);
            let _ = tokio::time::timeout(nap.min(deadline - now), freed).await;
        }
    }

    fn try_acquire(self: &Arc<Self>, endpoints: &[Endpoint]) -> Option<Lease> {
        if endpoints.is_empty() {
            return None;
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let offset = self.next.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // The cap is checked and taken under the lock that counts the calls in flight, so
        // that racing calls cannot pass it together.
        if total != 0 && slots.busy.level >= total {
            return None;
        }
        // Least loaded first; among equals, rotate so replicas share the work.
        let (_, endpoint) = (0..endpoints.len())
            .map(|i| &endpoints[(i + offset) % endpoints.len()])
            .map(|e| (slots.load.get(e).copied().unwrap_or(0), e))
            .filter(|(load, _)| capacity == 0 || *load < capacity)
            .min_by_key(|(load, _)| *load)?;
        *slots.load.entry(endpoint.clone()).or_insert(0) += 1;
        let now = Instant::now();
        slots.busy.change(now, 1);
        // Under the lock too, so that the count never shows a call over the cap.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        drop(slots);
        self.started.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            router: Arc::clone(self),
            endpoint: endpoint.clone(),
            cold: false,
            since: now,
            waited: Duration::ZERO,
        })
    }

    fn release(&self, endpoint: &Endpoint, since: Instant) {
        let now = Instant::now();
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(load) = slots.load.get_mut(endpoint) {
                *load = load.saturating_sub(1);
                if *load == 0 {
                    slots.load.remove(endpoint);
                }
                slots.busy.change(now, -1);
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.account.record(now.saturating_duration_since(since));
        self.freed.notify_one();
    }
}

struct Slots {
    /// Hashed fast (foldhash): looked up twice per call, and the keys (replica addresses)
    /// are the gateway's own.
    load: HashMap<Endpoint, u32, foldhash::fast::RandomState>,
    busy: BusyTime,
}

/// The time integral of the calls in flight.
#[derive(Default)]
struct BusyTime {
    /// When `level` last changed; `None` before the first call.
    since: Option<Instant>,
    level: u32,
    /// Call-seconds up to `since`.
    area: f64,
}

impl BusyTime {
    fn at(&self, now: Instant) -> f64 {
        let running = self.since.map_or(0.0, |t| {
            now.saturating_duration_since(t).as_secs_f64() * f64::from(self.level)
        });
        self.area + running
    }

    fn change(&mut self, now: Instant, by: i32) {
        self.area = self.at(now);
        self.since = Some(now);
        self.level = self.level.saturating_add_signed(by);
    }
}

/// Counts a call in the queue for as long as it waits: the router and its arrival number.
struct Queued<'a>(&'a Router, u64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One call's hold on a replica; released when dropped (after the response body is sent).
pub struct Lease {
    router: Arc<Router>,
    endpoint: Endpoint,
    cold: bool,
    /// When the call got its replica: its metered time starts.
    since: Instant,
    waited: Duration,
}

impl Lease {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The call found no replica at all and waited for one to start: a cold start.
    pub fn cold(&self) -> bool {
        self.cold
    }

    /// How long the call waited in the queue for this replica (zero: it did not wait).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.router.release(&self.endpoint, self.since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::Tcp(([127, 0, 0, 1], 9000 + i).into()))
            .collect()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    fn limits(per_replica: u32, total: u32, queue: usize) -> Limits {
        Limits {
            per_replica,
            total,
            queue,
        }
    }

    #[tokio::test]
    async fn spreads_and_respects_capacity() {
        let r = Arc::new(Router::new(limits(1, 0, 10)));
        let two = eps(2);
        let a = r.acquire(|| two.clone(), || {}, soon()).await;
        let b = r.acquire(|| two.clone(), || {}, soon()).await;
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("two replicas of capacity 1 hold two calls");
        };
        assert_ne!(a.endpoint(), b.endpoint());
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.calls_on(a.endpoint()), 1);
        // Full: the third waits, and gets the replica the first one frees.
        let r2 = Arc::clone(&r);
        let list = two.clone();
        let third = tokio::spawn(async move {
            r2.acquire(
                || list.clone(),
                || {},
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .map(|l| l.endpoint().clone())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(r.waiting(), 1);
        assert!(r.oldest_wait().is_some_and(|w| w > Duration::ZERO));
        let freed = a.endpoint().clone();
        drop(a);
        assert_eq!(third.await.ok(), Some(Ok(freed)));
        assert_eq!((r.waiting(), r.oldest_wait()), (0, None));
        let on_b = b.endpoint().clone();
        drop(b);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.calls_on(&on_b), 0);
        assert_eq!(r.started(), 3);
    }

    #[tokio::test]
    async fn queue_limit_and_timeout() {
        let r = Arc::new(Router::new(limits(1, 0, 1)));
        let one = eps(1);
        let _held = r.acquire(|| one.clone(), || {}, soon()).await;
        let r2 = Arc::clone(&r);
        let list = one.clone();
        let waiter =
            tokio::spawn(async move { r2.acquire(|| list.clone(), || {}, soon()).await.err() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let full = r.acquire(|| one.clone(), || {}, soon()).await.err();
        assert_eq!(full, Some(Busy::QueueFull { limit: 1 }));
        assert!(matches!(
            waiter.await.ok().flatten(),
            Some(Busy::TimedOut { replicas: 1, .. })
        ));
    }

    #[tokio::test]
    async fn no_replica_asks_for_one() {
        let r = Arc::new(Router::new(limits(0, 0, 10)));
        let asked = AtomicUsize::new(0);
        let got = r
            .acquire(
                Vec::new,
                || {
                    asked.fetch_add(1, Ordering::Relaxed);
                },
                soon(),
            )
            .await;
        assert!(matches!(got, Err(Busy::TimedOut { replicas: 0, .. })));
        assert!(asked.load(Ordering::Relaxed) > 0);

        // A replica that appears while the call waits serves it, marked cold.
        let appeared = std::sync::atomic::AtomicBool::new(false);
        let one = eps(1);
        let lease = r
            .acquire(
                || {
                    if appeared.swap(true, Ordering::Relaxed) {
                        one.clone()
                    } else {
                        Vec::new()
                    }
                },
                || {},
                soon(),
            )
            .await;
        assert!(lease.is_ok_and(|l| l.cold()));
    }

    #[test]
    fn busy_seconds_integrate_calls_in_flight() {
        let t0 = Instant::now();
        let mut b = BusyTime::default();
        assert_eq!(b.at(t0), 0.0);
        b.change(t0, 1);
        b.change(t0 + Duration::from_millis(500), 1);
        // One call for 0.5 s, then two for 0.25 s.
        let at = b.at(t0 + Duration::from_millis(750));
        assert!((at - 1.0).abs() < 1e-9, "{at}");
        b.change(t0 + Duration::from_millis(750), -2);
        let later = b.at(t0 + Duration::from_secs(10));
        assert!((later - 1.0).abs() < 1e-9, "{later}");
    }

    #[tokio::test]
    async fn unlimited_capacity_takes_everything() {
        let r = Arc::new(Router::new(limits(0, 0, 0)));
        let one = eps(1);
        let mut leases = Vec::new();
        for _ in 0..100 {
            match r.acquire(|| one.clone(), || {}, soon()).await {
                Ok(l) => leases.push(l),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(r.in_flight(), 100);
    }

    #[tokio::test]
    async fn the_cap_holds_calls_across_replicas() {
        // Four replicas of unlimited concurrency, at most three calls in all.
        let r = Arc::new(Router::new(limits(0, 3, 10)));
        let four = eps(4);
        let mut held = Vec::new();
        for _ in 0..3 {
            match r.acquire(|| four.clone(), || {}, soon()).await {
                Ok(l) => held.push(l),
                Err(e) => panic!("under the cap: {e:?}"),
            }
        }
        assert_eq!(r.in_flight(), 3);
        // The fourth waits in the queue, and says the cap was the limit when it gives up.
        let over = r.acquire(|| four.clone(), || {}, soon()).await.err();
        assert!(
            matches!(
                over,
                Some(Busy::TimedOut {
                    replicas: 4,
                    capped: Some(3),
                    ..
                })
            ),
            "{over:?}"
        );
        // It gets the slot a finished call frees.
        let r2 = Arc::clone(&r);
        let list = four.clone();
        let waiter = tokio::spawn(async move {
            r2.acquire(
                || list.clone(),
                || {},
                Instant::now() + Duration::from_secs(5),
            )
            .await
            .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((r.in_flight(), r.waiting()), (3, 1));
        held.pop();
        assert_eq!(waiter.await.ok(), Some(true));

        // A redeploy that lifts the cap lets waiting calls through.
        r.configure(limits(0, 0, 10));
        let lifted = r.acquire(|| four.clone(), || {}, soon()).await;
        assert!(lifted.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_calls_never_pass_the_cap() {
        let r = Arc::new(Router::new(limits(2, 5, 1000)));
        let ten = eps(10);
        let peak = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let (r, list, peak) = (Arc::clone(&r), ten.clone(), Arc::clone(&peak));
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let lease = r.acquire(|| list.clone(), || {}, deadline).await;
                    peak.fetch_max(r.in_flight(), Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    drop(lease);
                })
            })
            .collect();
        for c in calls {
            assert!(c.await.is_ok());
        }
        let peak = peak.load(Ordering::Relaxed);
        assert!((1..=5).contains(&peak), "peak {peak}");
        assert_eq!((r.in_flight(), r.started()), (0, 200));
    }
}
