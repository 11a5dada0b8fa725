//! The `calls` table: its SQL (documented in the parent module), and rows to and from
//! [`AsyncCall`] / [`CallState`].

use bytes::Bytes;
use chrono::DateTime;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row};

use crate::{AsyncCall, CallRecord, CallState, ListFilter, QueueError};

/// The format this code reads and writes (`PRAGMA user_version`).
pub(super) const VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    function     TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    query        TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         BLOB NOT NULL,
    callback_url TEXT,
    enqueued_ns  INTEGER NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    lease        INTEGER NOT NULL,
    due_ms       INTEGER,
    status       INTEGER,
    error        TEXT,
    duration_ms  INTEGER,
    updated_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_due ON calls (function, due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_state ON calls (state, updated_ms);
";

/// The request columns, in [`CallRow::read`]'s order.
pub(super) const CALL_COLUMNS: &str =
    "id, function, method, path, query, headers, body, callback_url, enqueued_ns";
const CALL_COUNT: usize = 9;
/// The state columns, in [`StateRow::read`]'s order.
const STATE_COLUMNS: &str = "state, attempt, due_ms, status, error, duration_ms, updated_ms";

/// Creates the table in a new file. Returns the format found, which the caller refuses when
/// it is newer than [`VERSION`].
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<i64> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found == 0 {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {VERSION}; COMMIT;"
        ))?;
        return Ok(VERSION);
    }
    Ok(found)
}

/// Makes queued calls due now when the clock has gone back since they were enqueued
/// (invariant 9).
pub(super) fn requeue_future(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE calls SET due_ms = ?1 WHERE state = 'queued' AND due_ms > ?1",
        [now],
    )
}

/// A call's request as stored: [`AsyncCall`] with its headers as JSON and its time in
/// nanoseconds. Encoded and decoded outside the writer thread.
#[derive(Debug)]
pub(super) struct CallRow {
    pub id: String,
    pub function: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: String,
    pub body: Bytes,
    pub callback_url: Option<String>,
    pub enqueued_ns: i64,
}

impl CallRow {
    pub fn encode(call: AsyncCall) -> Result<CallRow, QueueError> {
        let enqueued_ns = call.enqueued_at.timestamp_nanos_opt().ok_or_else(|| {
            QueueError::Backend(format!(
                "call {:?}: enqueued_at {} is outside 1677-2262",
                call.id, call.enqueued_at
            ))
        })?;
        let headers = serde_json::to_string(&call.headers)
            .map_err(|e| QueueError::Backend(format!("call {:?}: headers: {e}", call.id)))?;
        Ok(CallRow {
            id: call.id,
            function: call.function,
            method: call.method,
            path: call.path,
            query: call.query,
            headers,
            body: call.body,
            callback_url: call.callback_url,
            enqueued_ns,
        })
    }

    pub fn decode(self) -> Result<AsyncCall, QueueError> {
        let headers = serde_json::from_str(&self.headers).map_err(|e| {
            QueueError::Backend(format!("call {:?}: corrupt headers column: {e}", self.id))
        })?;
        Ok(AsyncCall {
            id: self.id,
            function: self.function,
            method: self.method,
            path: self.path,
            query: self.query,
            headers,
            body: self.body,
            callback_url: self.callback_url,
            enqueued_at: DateTime::from_timestamp_nanos(self.enqueued_ns),
        })
    }

    /// Reads [`CALL_COLUMNS`] starting at column `first`.
    pub fn read(row: &Row, first: usize) -> rusqlite::Result<CallRow> {
        Ok(CallRow {
            id: row.get(first)?,
            function: row.get(first + 1)?,
            method: row.get(first + 2)?,
            path: row.get(first + 3)?,
            query: row.get(first + 4)?,
            headers: row.get(first + 5)?,
            body: Bytes::from(row.get::<_, Vec<u8>>(first + 6)?),
            callback_url: row.get(first + 7)?,
            enqueued_ns: row.get(first + 8)?,
        })
    }
}

/// The columns that say where a call stands.
#[derive(Debug)]
pub(super) struct StateRow {
    pub state: String,
    pub attempt: i64,
    pub due_ms: Option<i64>,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    pub updated_ms: i64,
}

impl StateRow {
    /// Reads [`STATE_COLUMNS`] starting at column `first`.
    pub fn read(row: &Row, first: usize) -> rusqlite::Result<StateRow> {
        Ok(StateRow {
            state: row.get(first)?,
            attempt: row.get(first + 1)?,
            due_ms: row.get(first + 2)?,
            status: row.get(first + 3)?,
            error: row.get(first + 4)?,
            duration_ms: row.get(first + 5)?,
            updated_ms: row.get(first + 6)?,
        })
    }

    pub fn decode(&self, id: &str) -> Result<CallState, QueueError> {
        let corrupt = |what: &str| {
            QueueError::Backend(format!(
                "call {id:?}: corrupt {what} in state {:?}",
                self.state
            ))
        };
        let attempt = u32::try_from(self.attempt).map_err(|_| corrupt("attempt"))?;
        let status = || {
            self.status
                .and_then(|s| u16::try_from(s).ok())
                .ok_or_else(|| corrupt("status"))
        };
        Ok(match self.state.as_str() {
            "queued" => CallState::Queued,
            "running" => CallState::Running { attempt },
            "retrying" => CallState::Retrying {
                attempt,
                next_at: self
                    .due_ms
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(|| corrupt("due_ms"))?,
                last_status: status()?,
                last_error: self.error.clone(),
            },
            "done" => CallState::Done {
                attempt,
                status: status()?,
                duration_ms: self
                    .duration_ms
                    .and_then(|d| u64::try_from(d).ok())
                    .ok_or_else(|| corrupt("duration_ms"))?,
            },
            "dead" => CallState::Dead {
                attempt,
                status: status()?,
                reason: self.error.clone().unwrap_or_default(),
            },
            "cancelled" => CallState::Cancelled,
            _ => return Err(corrupt("state")),
        })
    }
}

/// A whole row, as `get` and `list` read it.
#[derive(Debug)]
pub(super) struct StoredCall {
    call: CallRow,
    state: StateRow,
}

impl StoredCall {
    fn read(row: &Row) -> rusqlite::Result<StoredCall> {
        Ok(StoredCall {
            call: CallRow::read(row, 0)?,
            state: StateRow::read(row, CALL_COUNT)?,
        })
    }

    pub fn decode(self) -> Result<CallRecord, QueueError> {
        let state = self.state.decode(&self.call.id)?;
        let updated_at =
            DateTime::from_timestamp_millis(self.state.updated_ms).ok_or_else(|| {
                QueueError::Backend(format!("call {:?}: corrupt updated_ms", self.call.id))
            })?;
        Ok(CallRecord {
            call: self.call.decode()?,
            state,
            updated_at,
        })
    }
}

pub(super) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<StoredCall>> {
    conn.prepare_cached(&format!(
        "SELECT {CALL_COLUMNS}, {STATE_COLUMNS} FROM calls WHERE id = ?1"
    ))?
    .query_row([id], StoredCall::read)
    .optional()
}

pub(super) fn list(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<StoredCall>> {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    if let Some(function) = &filter.function {
        clauses.push("function = ?");
        args.push(Value::Text(function.clone()));
    }
    if let Some(state) = &filter.state {
        clauses.push("state = ?");
        args.push(Value::Text(state.clone()));
    }
    let mut sql = format!("SELECT {CALL_COLUMNS}, {STATE_COLUMNS} FROM calls");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    // Within one state, `calls_state` gives the order by time of entry for free.
    sql.push_str(if filter.state.is_some() {
        " ORDER BY updated_ms DESC, seq DESC LIMIT ?"
    } else {
        " ORDER BY seq DESC LIMIT ?"
    });
    let limit = match filter.limit {
        0 => ListFilter::DEFAULT_LIMIT,
        n => n,
    };
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), StoredCall::read)?;
    rows.collect()
}

/// Per function with waiting calls: how many, and the oldest's `enqueued_ns`.
pub(super) fn depth(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, Option<i64>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT function, COUNT(*), MIN(enqueued_ns) FROM calls
         WHERE state IN ('queued', 'retrying') GROUP BY function ORDER BY function",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            r.get(2)?,
        ))
    })?;
    rows.collect()
}
