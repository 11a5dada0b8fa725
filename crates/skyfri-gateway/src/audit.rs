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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skyfri_store::{NewAuditEntry, Store};

use crate::error::GatewayError;

/// Rejection rows made per minute before the rest are folded into one per action.
pub const MAX_ROWS_PER_MINUTE: usize = 64;
/// The longest outcome recorded.
const MAX_OUTCOME_CHARS: usize = 500;
/// How often a folded row's count is written, at most.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// The who and client of the row that folds the rejections beyond the limit.
const OTHERS: &str = "*";

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

pub struct Audit {
    store: Arc<Store>,
    folded: Mutex<Folded>,
}

impl Audit {
    pub fn new(store: Arc<Store>) -> Audit {
        Audit {
            store,
            folded: Mutex::new(Folded::default()),
        }
    }

    /// Appends one entry. A store failure is logged: the action itself has happened.
    pub fn record(&self, actor: &Actor, action: &str, target: &str, outcome: &str) {
        let entry = NewAuditEntry {
            at: Utc::now(),
            who: actor.who.clone(),
            action: action.to_string(),
            target: target.to_string(),
            client: actor.client.clone(),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.store.append_audit(&entry) {
            tracing::error!(action, target, error = %e, "could not write the audit log");
        }
        tracing::info!(who = %actor.who, client = %actor.client, action, target, outcome, "audit");
    }

    /// Records the outcome of an action and passes its result on.
    pub fn outcome<T>(
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
        self.record(actor, action, target, &outcome);
        result
    }

    /// Records a rejected request, folded per client and minute.
    pub fn rejected(&self, action: &'static str, actor: &Actor, target: &str, outcome: &str) {
        self.rejected_at(Utc::now(), action, actor, target, outcome);
    }

    fn rejected_at(
        &self,
        now: DateTime<Utc>,
        action: &'static str,
        actor: &Actor,
        target: &str,
        outcome: &str,
    ) {
        let Ok(mut f) = self.folded.lock() else {
            return;
        };
        let minute = now.timestamp().div_euclid(60);
        if minute != f.minute {
            self.write_counts(&mut f);
            f.rows.clear();
            f.minute = minute;
        }
        let mut key = (action, actor.who.clone(), actor.client.clone());
        if !f.rows.contains_key(&key) && f.rows.len() >= MAX_ROWS_PER_MINUTE {
            key = (action, OTHERS.to_string(), OTHERS.to_string());
        }
        if let Some(row) = f.rows.get_mut(&key) {
            row.count += 1;
            if row.saved_at.elapsed() >= COUNT_EVERY {
                self.write_count(row);
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
        match self.store.append_audit(&entry) {
            Ok(id) => {
                f.rows.insert(
                    key,
                    Fold {
                        id,
                        count: 1,
                        saved: 1,
                        saved_at: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::error!(action, error = %e, "could not write the audit log"),
        }
    }

    /// Writes the counts of folded rows not yet written (before the log is read).
    pub fn flush(&self) {
        if let Ok(mut f) = self.folded.lock() {
            self.write_counts(&mut f);
        }
    }

    fn write_counts(&self, f: &mut Folded) {
        for row in f.rows.values_mut() {
            self.write_count(row);
        }
    }

    fn write_count(&self, row: &mut Fold) {
        if row.count == row.saved {
            return;
        }
        match self.store.set_audit_count(row.id, row.count) {
            Ok(()) => {
                row.saved = row.count;
                row.saved_at = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "could not write the audit log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_folded_per_client_and_bounded() -> Result<(), skyfri_store::StoreError> {
        let dir = tempfile::tempdir().map_err(|_| skyfri_store::StoreError::Poisoned)?;
        let store = Arc::new(Store::open(&dir.path().join("skyfri.db"))?);
        let audit = Audit::new(Arc::clone(&store));
        let from = |client: String| Actor {
            who: "basic:admin".into(),
            client,
        };
        let minute = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let fail = |at, client: String| {
            audit.rejected_at(
                at,
                "login.failure",
                &from(client),
                "GET /system/info",
                "401",
            )
        };
        for _ in 0..1000 {
            fail(minute, "10.0.0.1".into());
        }
        for i in 0..500 {
            fail(minute, format!("10.1.{}.{}", i / 250, i % 250));
        }
        audit.flush();
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
        fail(minute + chrono::Duration::seconds(59), "10.0.0.1".into());
        fail(minute + chrono::Duration::seconds(61), "10.0.0.1".into());
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
            audit.rejected_at(later, "login.failure", &actor, "GET /system/info", "401");
        }
        audit.flush();
        let rows = store.list_audit(Some(later), 10_000)?;
        assert_eq!(rows.len(), MAX_ROWS_PER_MINUTE + 1);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 300);
        Ok(())
    }
}
