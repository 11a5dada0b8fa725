//! Usage metering: invocations, billed time and memory-time per function and month, and the
//! CPU its replicas used, kept in memory and written to the store every flush interval
//! (and at shutdown), never per call.
//!
//! A call is metered when it lets go of its replica (the router's lease is dropped, after
//! the response body was sent): sync calls, async runs and trigger calls alike, since all of
//! them go through the router. Its billed time is how long it held the replica, rounded up
//! to the millisecond; calls that never got a replica (429, 503, 404) are not metered. The
//! memory is the function's `limits.memory`, else `requests.memory`, else 128 MiB
//! (`skyfri_core::usage::metered_mib`). CPU comes from the provider, per function, and is
//! booked in the month it is collected in.
//!
//! A crash (kill -9, power loss) loses what was metered since the last flush: at most one
//! interval. A flush that fails keeps its rows and tries again at the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use skyfri_core::usage::{billed_ms, Month, Usage, DEFAULT_METERED_MEMORY};
use skyfri_runtime::Provider;
use skyfri_store::{Store, StoreError};
use tokio::sync::watch;

use crate::state::AppState;

/// How often metered usage is written to the store unless `skyfri up` says otherwise.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// The calls of one function not yet written, by month. Shared by the function's router
/// (which records each call) and the [`Meter`] (which takes them away).
pub struct Account {
    memory_mib: AtomicU64,
    tally: Mutex<Vec<(Month, Usage)>>,
}

impl Default for Account {
    fn default() -> Account {
        Account {
            memory_mib: AtomicU64::new(DEFAULT_METERED_MEMORY >> 20),
            tally: Mutex::new(Vec::new()),
        }
    }
}

impl Account {
    /// The memory calls are metered with from now on.
    pub fn set_memory_mib(&self, mib: u64) {
        self.memory_mib.store(mib, Ordering::Relaxed);
    }

    /// One call that held a replica for `held`.
    pub fn record(&self, held: Duration) {
        let call = Usage::call(
            self.memory_mib.load(Ordering::Relaxed),
            billed_ms(held.as_nanos()),
        );
        self.add(Month::of(Utc::now()), &call);
    }

    fn add(&self, month: Month, usage: &Usage) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        // Nearly always one month, the last one.
        match tally.iter_mut().rev().find(|(m, _)| *m == month) {
            Some((_, u)) => u.add(usage),
            None => tally.push((month, *usage)),
        }
    }

    fn take(&self) -> Vec<(Month, Usage)> {
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Every function's [`Account`], and the flushes that write them to the store.
#[derive(Default)]
pub struct Meter {
    accounts: Mutex<Vec<(String, Arc<Account>)>>,
    /// Rows a failed flush could not write; the next flush tries again.
    unsaved: Mutex<HashMap<(String, Month), Usage>>,
    /// One flush at a time (the periodic one and the one at shutdown).
    flushing: Mutex<()>,
    cpu_metered: AtomicBool,
    last_flush: Mutex<Option<DateTime<Utc>>>,
}

impl Meter {
    /// Meters `function`'s calls recorded in `account` from now on.
    pub fn register(&self, function: &str, account: &Arc<Account>) {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        if !accounts.iter().any(|(_, a)| Arc::ptr_eq(a, account)) {
            accounts.push((function.to_string(), Arc::clone(account)));
        }
    }

    /// Whether the provider measures CPU (known after the first flush).
    pub fn cpu_metered(&self) -> bool {
        self.cpu_metered.load(Ordering::Relaxed)
    }

    /// When usage was last written to the store.
    pub fn last_flush(&self) -> Option<DateTime<Utc>> {
        *self
            .last_flush
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes everything metered since the last flush (and the provider's CPU readings) to
    /// the store, in one transaction. On failure the rows are kept for the next flush.
    pub fn flush(&self, store: &Store, provider: &dyn Provider) -> Result<(), StoreError> {
        let _one = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows =
            std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(PoisonError::into_inner));
        {
            let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
            for (function, account) in accounts.iter() {
                for (month, usage) in account.take() {
                    rows.entry((function.clone(), month))
                        .or_default()
                        .add(&usage);
                }
            }
            // An account only the meter holds belongs to a removed function: nothing can
            // record into it any more, and it has just been emptied.
            accounts.retain(|(_, a)| Arc::strong_count(a) > 1);
        }
        let cpu = provider.take_cpu_usage();
        self.cpu_metered.store(cpu.is_some(), Ordering::Relaxed);
        let now = Month::of(Utc::now());
        for (function, used) in cpu.unwrap_or_default() {
            let cpu_us = u64::try_from(used.as_micros()).unwrap_or(u64::MAX);
            rows.entry((function, now)).or_default().add(&Usage {
                cpu_us,
                ..Usage::default()
            });
        }
        rows.retain(|_, u| !u.is_empty());
        let list: Vec<(String, Month, Usage)> =
            rows.iter().map(|((f, m), u)| (f.clone(), *m, *u)).collect();
        match store.add_usage(&list) {
            Ok(()) => {
                *self
                    .last_flush
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Utc::now());
                Ok(())
            }
            Err(e) => {
                let mut unsaved = self.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, usage) in rows {
                    unsaved.entry(key).or_default().add(&usage);
                }
                Err(e)
            }
        }
    }
}

/// Flushes the meter every `interval` until `stop`. The last flush, after the replicas have
/// stopped (their final CPU readings), is the caller's: [`flush`].
pub async fn run(state: AppState, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // A write of the store: not on the runtime's threads, which serve the dashboard.
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || flush(&state)).await;
    }
}

/// One flush, with its failure logged.
pub fn flush(state: &AppState) {
    if let Err(e) = state.meter.flush(&state.store, state.provider.as_ref()) {
        tracing::error!(error = %e, "usage not written to the store; trying again at the next flush");
    }
}

#[cfg(test)]
mod tests;
