//! The audit trail of the admin API: who (the admin user or `token:NAME`), what (action and
//! target), when (UTC), from where (the client's IP) and the outcome, in the store.
//!
//! Admin actions are written one row each. Rejections — failed logins on `/system` and
//! requests a token's scopes do not allow — come from callers who may be attackers, so they
//! are folded: one row per action, claimed identity and client per UTC minute (keeping the
//! first target), whose `count` says how many there were. At most [`MAX_ROWS_PER_MINUTE`]
//! such rows are made a minute; beyond them, each action's rejections share one row with
//! who and client `*`. The log so grows by at most [`MAX_ROWS_PER_MINUTE`] + 2 rejection
//! rows a minute (about 100,000 a day, some 15 MB) however fast or widely spread the
//! requests are. A row's count is written at most once a second, at the minute's end (on
//! the next rejection) and whenever the log is read.
//!
//! No write runs on a request's thread (the gateway's workers are single-threaded, so a
//! SQLite write there would stall every connection of the worker). An admin action's entry
//! is written on the blocking pool and awaited: the action is answered once its entry is
//! stored. Rejections go through a bounded channel to one writer thread, which folds them;
//! when the channel is full, a rejection is counted (not lost) and added to its action's
//! `*` row by the writer. Reading the log first waits for the writer to catch up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skyfri_store::{NewAuditEntry, Store};
use tokio::sync::{mpsc, oneshot};

use crate::error::GatewayError;

/// Rejection rows made per minute before the rest are folded into one per action.
pub const MAX_ROWS_PER_MINUTE: usize = 64;
/// The longest outcome recorded.
const MAX_OUTCOME_CHARS: usize = 500;
/// How often a folded row's count is written, at most.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// The who and client of the row that folds the rejections beyond the limit.
const OTHERS: &str = "*";
/// Rejections that may wait for the writer thread.
const QUEUE: usize = 4096;

/// Who sent an authenticated `/system` request, and from where: a request extension the
/// auth middleware sets for the handlers.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `admin` or `token:NAME`.
    pub who: String,
    /// The client's IP address (or `unknown`).
    pub client: String,
}

struct Fold {
    id: i64,
    count: u64,
    saved: u64,
    saved_at: Instant,
}

#[derive(Default)]
struct Folded {
    minute: i64,
    /// By action, who and client.
    rows: HashMap<(&'static str, String, String), Fold>,
}

/// What the writer thread is sent.
enum Job {
    Rejected {
        at: DateTime<Utc>,
        action: &'static str,
        actor: Actor,
        target: String,
        outcome: String,
    },
    /// Write the folded counts, then answer.
    Flush(oneshot::Sender<()>),
}

/// Rejections the channel had no room for, by action.
type Overflow = Arc<Mutex<HashMap<&'static str, u64>>>;

pub struct Audit {
    store: Arc<Store>,
    jobs: mpsc::Sender<Job>,
    overflow: Overflow,
}

impl Audit {
    /// The audit log of `store`, with its writer thread (which ends when this is dropped).
    pub fn new(store: Arc<Store>) -> Audit {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let overflow = Overflow::default();
        let writer = Writer {
            folder: Folder::new(Arc::clone(&store)),
            overflow: Arc::clone(&overflow),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("skyfri-audit".into())
            .spawn(move || writer.run(rx))
        {
            tracing::error!(error = %e, "could not start the audit log's writer: rejections will not be recorded");
        }
        Audit {
            store,
            jobs,
            overflow,
        }
    }

    /// Appends one entry (on the blocking pool), and returns once it is written. A store
    /// failure is logged: the action itself has happened.
    pub async fn record(&self, actor: &Actor, action: &str, target: &str, outcome: &str) {
        let entry = NewAuditEntry {
            at: Utc::now(),
            who: actor.who.clone(),
            action: action.to_string(),
            target: target.to_string(),
            client: actor.client.clone(),
            outcome: outcome.to_string(),
        };
        let store = Arc::clone(&self.store);
        let written = tokio::task::spawn_blocking(move || store.append_audit(&entry)).await;
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(action, target, error = %e, "could not write the audit log")
            }
            Err(e) => {
                tracing::error!(action, target, error = %e, "could not write the audit log")
            }
        }
        tracing::info!(who = %actor.who, client = %actor.client, action, target, outcome, "audit");
    }

    /// Records the outcome of an action and passes its result on.
    pub async fn outcome<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        result: Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            // A failed deploy's message can carry an installer's output: its start will do.
            Err(e) => format!("{}: {e}", e.status().as_u16())
                .chars()
                .take(MAX_OUTCOME_CHARS)
                .collect(),
        };
        self.record(actor, action, target, &outcome).await;
        result
    }

    /// Records a rejected request, folded per client and minute, without waiting for the
    /// store.
    pub fn rejected(&self, action: &'static str, actor: &Actor, target: &str, outcome: &str) {
        let job = Job::Rejected {
            at: Utc::now(),
            action,
            actor: actor.clone(),
            target: target.to_string(),
            outcome: outcome.to_string(),
        };
        if self.jobs.try_send(job).is_err() {
            *self
                .overflow
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(action)
                .or_default() += 1;
        }
    }

    /// Waits for the rejections recorded so far to be written, counts included (before the
    /// log is read).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The writer thread's side.
struct Writer {
    folder: Folder,
    overflow: Overflow,
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            self.add_overflow();
            match job {
                Job::Rejected {
                    at,
                    action,
                    actor,
                    target,
                    outcome,
                } => self
                    .folder
                    .rejected(at, action, &actor, &target, &outcome, 1),
                Job::Flush(done) => {
                    self.folder.write_counts();
                    let _ = done.send(());
                }
            }
        }
        self.folder.write_counts();
    }

    /// Adds the rejections the channel had no room for to their actions' `*` rows.
    fn add_overflow(&mut self) {
        let lost =
            std::mem::take(&mut *self.overflow.lock().unwrap_or_else(PoisonError::into_inner));
        let others = Actor {
            who: OTHERS.into(),
            client: OTHERS.into(),
        };
        for (action, n) in lost {
            tracing::warn!(action, n, "audit: rejections came faster than they could be written; counted in the action's `*` row");
            self.folder.rejected(
                Utc::now(),
                action,
                &others,
                "*",
                "folded: too many to write one by one",
                n,
            );
        }
    }
}

/// The rejections' rows of the current minute (see the module's doc).
struct Folder {
    store: Arc<Store>,
    f: Folded,
}

impl Folder {
    fn new(store: Arc<Store>) -> Folder {
        Folder {
            store,
            f: Folded::default(),
        }
    }

    /// Records `n` rejections at `now`.
    fn rejected(
        &mut self,
        now: DateTime<Utc>,
        action: &'static str,
        actor: &Actor,
        target: &str,
        outcome: &str,
        n: u64,
    ) {
        let store = &self.store;
        let f = &mut self.f;
        let minute = now.timestamp().div_euclid(60);
        if minute != f.minute {
            write_counts(store, f);
            f.rows.clear();
            f.minute = minute;
        }
        let mut key = (action, actor.who.clone(), actor.client.clone());
        if !f.rows.contains_key(&key) && f.rows.len() >= MAX_ROWS_PER_MINUTE {
            key = (action, OTHERS.to_string(), OTHERS.to_string());
        }
        if let Some(row) = f.rows.get_mut(&key) {
            row.count += n;
            if row.saved_at.elapsed() >= COUNT_EVERY {
                write_count(store, row);
            }
            return;
        }
        let entry = NewAuditEntry {
            at: now,
            who: key.1.clone(),
            action: action.to_string(),
            target: target.to_string(),
            client: key.2.clone(),
            outcome: outcome.to_string(),
        };
        tracing::warn!(who = %actor.who, client = %actor.client, action, target, outcome, "audit");
        match store.append_audit(&entry) {
            Ok(id) => {
                let mut row = Fold {
                    id,
                    count: n,
                    saved: 1,
                    saved_at: Instant::now(),
                };
                write_count(store, &mut row);
                f.rows.insert(key, row);
            }
            Err(e) => tracing::error!(action, error = %e, "could not write the audit log"),
        }
    }

    /// Writes the counts of folded rows not yet written.
    fn write_counts(&mut self) {
        write_counts(&self.store, &mut self.f);
    }
}

fn write_counts(store: &Store, f: &mut Folded) {
    for row in f.rows.values_mut() {
        write_count(store, row);
    }
}

fn write_count(store: &Store, row: &mut Fold) {
    if row.count == row.saved {
        return;
    }
    match store.set_audit_count(row.id, row.count) {
        Ok(()) => {
            row.saved = row.count;
            row.saved_at = Instant::now();
        }
        Err(e) => tracing::error!(error = %e, "could not write the audit log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_folded_per_client_and_bounded() -> Result<(), skyfri_store::StoreError> {
        let dir = tempfile::tempdir().map_err(|_| skyfri_store::StoreError::Poisoned)?;
        let store = Arc::new(Store::open(&dir.path().join("skyfri.db"))?);
        let mut audit = Folder::new(Arc::clone(&store));
        let from = |client: String| Actor {
            who: "basic:admin".into(),
            client,
        };
        let minute = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let fail = |audit: &mut Folder, at, client: String| {
            audit.rejected(
                at,
                "login.failure",
                &from(client),
                "GET /system/info",
                "401",
                1,
            )
        };
        for _ in 0..1000 {
            fail(&mut audit, minute, "10.0.0.1".into());
        }
        for i in 0..500 {
            fail(&mut audit, minute, format!("10.1.{}.{}", i / 250, i % 250));
        }
        audit.write_counts();
        let rows = store.list_audit(None, 10_000)?;
        assert_eq!(
            rows.len(),
            MAX_ROWS_PER_MINUTE + 1,
            "1,500 failures, bounded rows"
        );
        assert_eq!(rows[0].entry.client, "10.0.0.1");
        assert_eq!(rows[0].count, 1000);
        let other = rows.iter().find(|r| r.entry.client == OTHERS);
        assert_eq!(
            other.map(|r| r.count),
            Some(500 - (MAX_ROWS_PER_MINUTE as u64 - 1))
        );
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 1500);

        // The next minute starts new rows, and the last count of the old one is written.
        fail(
            &mut audit,
            minute + chrono::Duration::seconds(59),
            "10.0.0.1".into(),
        );
        fail(
            &mut audit,
            minute + chrono::Duration::seconds(61),
            "10.0.0.1".into(),
        );
        let rows = store.list_audit(None, 10_000)?;
        assert_eq!(rows.len(), MAX_ROWS_PER_MINUTE + 2);
        assert_eq!(rows[0].count, 1001);
        assert_eq!(rows[MAX_ROWS_PER_MINUTE + 1].count, 1);

        // Claiming a new user each time does not escape the bound either.
        let later = minute + chrono::Duration::seconds(180);
        for i in 0..300 {
            let actor = Actor {
                who: format!("basic:user{i}"),
                client: "10.0.0.9".into(),
            };
            audit.rejected(later, "login.failure", &actor, "GET /system/info", "401", 1);
        }
        audit.write_counts();
        let rows = store.list_audit(Some(later), 10_000)?;
        assert_eq!(rows.len(), MAX_ROWS_PER_MINUTE + 1);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 300);
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_leave_the_request_thread_and_reading_waits_for_them(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("skyfri.db");
        let store = Arc::new(Store::open(&path)?);
        let audit = Arc::new(Audit::new(Arc::clone(&store)));
        // Another writer holds the database: a write on this (the request's) thread would
        // wait for it, then fail.
        let other = rusqlite::Connection::open(&path)?;
        other.execute_batch("BEGIN IMMEDIATE")?;

        let actor = Actor {
            who: "token".into(),
            client: "192.0.2.1".into(),
        };
        for _ in 0..300 {
            audit.rejected("login.failure", &actor, "GET /system/info", "401");
        }
        let admin = Actor {
            who: "admin".into(),
            client: "192.0.2.9".into(),
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let writer = Arc::clone(&audit);
        let action = tokio::spawn(async move {
            writer.record(&admin, "secret.create", "db", "ok").await;
            let _ = tx.send(());
        });
        // The thread is free while the admin action's entry waits for the database; the
        // action is not answered before its entry is written.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            rx.try_recv().is_err(),
            "answered before its entry was written"
        );
        other.execute_batch("COMMIT")?;
        action.await?;
        audit.flush().await;
        let rows = store.list_audit(None, 100)?;
        let count = |action: &str| {
            rows.iter()
                .filter(|r| r.entry.action == action)
                .map(|r| r.count)
                .sum::<u64>()
        };
        assert_eq!((count("login.failure"), count("secret.create")), (300, 1));
        Ok(())
    }
}
