//! The timer behind hyper's header-read timeout (the slowloris bound, see `crate::server`):
//! coarse, and cheap to arm and disarm.
//!
//! hyper arms this timer for every request of a keep-alive connection (while it waits for the
//! next head) and nearly always disarms it when the head arrives. With tokio's timer each
//! round costs a boxed `Sleep`, an entry inserted into the driver's wheel and removed again
//! (~800 instructions per call in `bench/profile.sh`). Here arming puts the deadline and the
//! task's waker into a slab under an uncontended lock, and disarming takes them out.
//!
//! One thread per [`HeaderTimer`] (one per server) looks at the armed deadlines every
//! [`TICK`] and wakes the tasks whose deadline has passed, so a timeout fires up to one tick
//! late; it ends within a tick once the timer's last clone (held by the server and its
//! connections) is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often armed deadlines are looked at.
pub const TICK: Duration = Duration::from_millis(250);
/// Slabs, so that worker threads do not share one lock.
const SHARDS: usize = 16;

/// A [`hyper::rt::Timer`] whose sleeps fire within [`TICK`] after their deadline.
#[derive(Clone)]
pub struct HeaderTimer {
    inner: Arc<Inner>,
}

struct Inner {
    shards: [Mutex<Slab>; SHARDS],
}

/// Armed sleeps: deadline and waker (taken when woken); free places are reused.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<(Instant, Option<Waker>)>>,
    free: Vec<usize>,
}

impl HeaderTimer {
    /// A timer and the thread that fires it.
    pub fn start() -> std::io::Result<HeaderTimer> {
        let inner = Arc::new(Inner {
            shards: std::array::from_fn(|_| Mutex::default()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("header-timer".into())
            .spawn(move || fire(&weak))?;
        Ok(HeaderTimer { inner })
    }

    /// A sleep until `deadline` (unboxed: for skyfri's own HTTP/1.1 path).
    pub(super) fn sleep_at(&self, deadline: Instant) -> HeaderSleep {
        HeaderSleep {
            deadline,
            timer: Arc::clone(&self.inner),
            armed: None,
        }
    }

    /// Wakes every armed sleep now, due or not (they go on sleeping when polled before their
    /// deadline): a task that waits on one looks at what else it waits for, such as the
    /// server stopping.
    pub(super) fn wake_all(&self) {
        let mut woken = Vec::new();
        for shard in &self.inner.shards {
            let mut slab = lock(shard);
            woken.extend(
                slab.entries
                    .iter_mut()
                    .flatten()
                    .filter_map(|(_, w)| w.take()),
            );
        }
        for waker in woken {
            waker.wake();
        }
    }

    /// Sleeps armed now (for tests).
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).entries.iter().flatten().count())
            .sum()
    }
}

fn lock(shard: &Mutex<Slab>) -> std::sync::MutexGuard<'_, Slab> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every [`TICK`]: wakes the sleeps past their deadline; ends when the timer has gone.
fn fire(timer: &Weak<Inner>) {
    let mut due = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let Some(inner) = timer.upgrade() else {
            return;
        };
        let now = Instant::now();
        for shard in &inner.shards {
            let mut slab = lock(shard);
            for (deadline, waker) in slab.entries.iter_mut().flatten() {
                if *deadline <= now {
                    due.extend(waker.take());
                }
            }
        }
        drop(inner);
        // Woken outside the locks: a woken task may arm or disarm at once.
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

/// This thread's slab.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_at(deadline))
    }
}

/// One sleep; armed (in a slab) from its first pending poll until it fires or is dropped.
pub(super) struct HeaderSleep {
    deadline: Instant,
    timer: Arc<Inner>,
    /// Shard and place in it.
    armed: Option<(usize, usize)>,
}

impl HeaderSleep {
    fn disarm(&mut self) {
        if let Some((shard, at)) = self.armed.take() {
            let mut slab = lock(&self.timer.shards[shard]);
            if let Some(entry) = slab.entries.get_mut(at) {
                *entry = None;
                slab.free.push(at);
            }
        }
    }
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        match this.armed {
            Some((shard, at)) => {
                let mut slab = lock(&this.timer.shards[shard]);
                if let Some(Some((_, waker))) = slab.entries.get_mut(at) {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                }
            }
            None => {
                let shard = shard();
                let mut slab = lock(&this.timer.shards[shard]);
                let entry = Some((this.deadline, Some(cx.waker().clone())));
                let at = match slab.free.pop() {
                    Some(at) => {
                        slab.entries[at] = entry;
                        at
                    }
                    None => {
                        slab.entries.push(entry);
                        slab.entries.len() - 1
                    }
                };
                this.armed = Some((shard, at));
            }
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn sleeps_fire_within_a_tick_and_disarm_when_dropped() -> std::io::Result<()> {
        let timer = HeaderTimer::start()?;
        let start = Instant::now();
        timer.sleep(Duration::from_millis(300)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(300) + 4 * TICK,
            "{took:?}"
        );
        assert_eq!(timer.armed(), 0);

        // Armed by a pending poll, disarmed on drop; the place is reused.
        for _ in 0..3 {
            let mut sleep = timer.sleep(Duration::from_secs(60));
            let polled = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
            assert_eq!(timer.armed(), 1);
            drop(sleep);
            assert_eq!(timer.armed(), 0);
        }
        Ok(())
    }
}
