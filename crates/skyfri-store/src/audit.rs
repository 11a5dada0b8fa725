//! The audit log: one row per admin action (who, what, when, from where, outcome). Rows are
//! only appended; `count` lets a caller fold repeated events (failed logins from one client
//! in one minute) into one row, so that an attacker cannot grow the log at the rate of
//! their requests.

use chrono::{DateTime, Utc};
use rusqlite::{params, Row};

use crate::{parse_time, time_text, Store, StoreError};

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub at: DateTime<Utc>,
    /// `admin`, `token:NAME`, or what a failed login presented.
    pub who: String,
    /// `function.deploy`, `secret.create`, `login.failure`, ...
    pub action: String,
    pub target: String,
    /// The client's IP address.
    pub client: String,
    /// `ok`, or the error status and message.
    pub outcome: String,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub entry: NewAuditEntry,
    /// How many events this row stands for (more than one only for folded events).
    pub count: u64,
}

fn entry(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    let at: String = r.get(1)?;
    Ok(AuditEntry {
        id: r.get(0)?,
        entry: NewAuditEntry {
            at: parse_time(&at).unwrap_or_default(),
            who: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            client: r.get(5)?,
            outcome: r.get(6)?,
        },
        count: r.get(7)?,
    })
}

impl Store {
    /// Appends an entry; returns its id.
    pub fn append_audit(&self, e: &NewAuditEntry) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, who, action, target, client, outcome, count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)",
                params![
                    time_text(e.at),
                    e.who,
                    e.action,
                    e.target,
                    e.client,
                    e.outcome
                ],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Sets how many events a folded entry stands for.
    pub fn set_audit_count(&self, id: i64, count: u64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET count = ?2 WHERE id = ?1",
                params![id, count],
            )?;
            Ok(())
        })
    }

    /// The latest `limit` entries at or after `since`, oldest first.
    pub fn list_audit(
        &self,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let since = since.map(time_text).unwrap_or_default();
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, who, action, target, client, outcome, count FROM audit
                 WHERE at >= ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let mut rows: Vec<AuditEntry> = stmt
                .query_map(params![since, limit], entry)?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            Ok(rows)
        })
    }
}
