//! The writer thread: owns the write connection, applies every change in batches (one
//! transaction each) and answers after the commit (invariant 2), and purges old rows between
//! batches (invariant 8).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::checkpointer::Checkpoints;
use super::schema::{CallRow, StateRow, CALL_COLUMNS};
use super::{millis, Clock, EmbeddedOptions, Lease, Shared, MAX_BATCH};
use crate::{Cancelled, Enqueued, Finished, QueueError};

pub(super) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// Rows deleted per purge transaction, so that a purge never holds the writer for long.
const PURGE_CHUNK: i64 = 1000;

/// A change for the writer. `now` is the queue clock when the caller asked.
pub(super) enum Op {
    Enqueue {
        row: CallRow,
        now: i64,
        reply: Reply<Enqueued>,
    },
    /// Lease the first due call of `function`, if any.
    Claim {
        function: String,
        now: i64,
        lease_ms: i64,
        reply: Reply<Claim>,
    },
    Heartbeat {
        id: String,
        lease: Lease,
        now: i64,
        lease_ms: i64,
        reply: Reply<()>,
    },
    Finish {
        id: String,
        function: String,
        lease: Lease,
        now: i64,
        finished: Finished,
        reply: Reply<()>,
    },
    /// A running call handed back unfinished by its worker.
    Release {
        id: String,
        function: String,
        lease: Lease,
        now: i64,
        reply: Reply<()>,
    },
    Cancel {
        id: String,
        now: i64,
        reply: Reply<Cancelled>,
    },
    Redrive {
        id: String,
        now: i64,
        reply: Reply<bool>,
    },
    /// A leased call whose `next` was dropped before it got it.
    GiveBack { prior: Prior },
}

pub(super) enum Claim {
    Got(Box<Leased>),
    /// Nothing is due; `next_due` is when the first call of the function will be.
    Empty {
        next_due: Option<i64>,
    },
}

pub(super) struct Leased {
    pub row: CallRow,
    pub attempt: u32,
    pub lease: Lease,
    /// To give the call back if the lease never reaches a worker.
    pub prior: Prior,
}

/// A leased row as it was before, to put it back if the worker that asked is gone.
pub(super) struct Prior {
    function: String,
    lease: Lease,
    state: String,
    attempt: i64,
    due_ms: Option<i64>,
    updated_ms: i64,
}

/// The answer to one message, held until its batch has committed.
enum Answer {
    Enqueue(Reply<Enqueued>, Result<Enqueued, QueueError>),
    Claim(Reply<Claim>, Result<Claim, QueueError>),
    Unit(Reply<()>, Result<(), QueueError>),
    Cancel(Reply<Cancelled>, Result<Cancelled, QueueError>),
    Redrive(Reply<bool>, Result<bool, QueueError>),
    /// A give-back: nobody waits for it (if it fails, the lease lapses instead).
    Nothing(Result<(), QueueError>),
}

impl Op {
    /// Answers with `error` without applying anything.
    fn fail(self, error: &str) {
        fn send<T>(reply: Reply<T>, error: &str) {
            // A caller that went away needs no answer.
            let _ = reply.send(Err(QueueError::Backend(error.to_owned())));
        }
        match self {
            Op::Enqueue { reply, .. } => send(reply, error),
            Op::Claim { reply, .. } => send(reply, error),
            Op::Heartbeat { reply, .. } | Op::Finish { reply, .. } | Op::Release { reply, .. } => {
                send(reply, error);
            }
            Op::Cancel { reply, .. } => send(reply, error),
            Op::Redrive { reply, .. } => send(reply, error),
            Op::GiveBack { .. } => {}
        }
    }
}

impl Answer {
    fn error(&self) -> Option<String> {
        let e = match self {
            Answer::Enqueue(_, Err(e))
            | Answer::Claim(_, Err(e))
            | Answer::Unit(_, Err(e))
            | Answer::Cancel(_, Err(e))
            | Answer::Redrive(_, Err(e))
            | Answer::Nothing(Err(e)) => e,
            _ => return None,
        };
        Some(e.to_string())
    }

    /// Sends the answer, or the commit's error. Returns the lease to give back when a call
    /// was leased to a caller that is no longer listening.
    fn send(self, committed: &Result<(), String>) -> Option<Prior> {
        fn or_commit<T>(
            result: Result<T, QueueError>,
            committed: &Result<(), String>,
        ) -> Result<T, QueueError> {
            match committed {
                Ok(()) => result,
                Err(e) => Err(QueueError::Backend(e.clone())),
            }
        }
        match self {
            Answer::Enqueue(reply, r) => drop(reply.send(or_commit(r, committed))),
            Answer::Claim(reply, r) => {
                if let Err(Ok(Claim::Got(leased))) = reply.send(or_commit(r, committed)) {
                    return Some(leased.prior);
                }
            }
            Answer::Unit(reply, r) => drop(reply.send(or_commit(r, committed))),
            Answer::Cancel(reply, r) => drop(reply.send(or_commit(r, committed))),
            Answer::Redrive(reply, r) => drop(reply.send(or_commit(r, committed))),
            Answer::Nothing(Err(e)) => {
                // Not lost: its lease lapses and it is handed out again.
                tracing::warn!("giving back a lease: {e}");
            }
            Answer::Nothing(Ok(())) => {}
        }
        None
    }
}

pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    rx: Receiver<Op>,
    /// Told after each commit (see `checkpointer`).
    checkpoints: Checkpoints,
    shared: Arc<Shared>,
    clock: Clock,
    retention_ms: i64,
    dead_retention_ms: i64,
    purge_every: Duration,
}

impl Writer {
    pub fn new(
        conn: Connection,
        path: PathBuf,
        rx: Receiver<Op>,
        checkpoints: Checkpoints,
        shared: Arc<Shared>,
        clock: Clock,
        options: &EmbeddedOptions,
    ) -> Writer {
        conn.set_prepared_statement_cache_capacity(32);
        Writer {
            conn,
            path,
            rx,
            checkpoints,
            shared,
            clock,
            retention_ms: millis(options.retention),
            dead_retention_ms: millis(options.dead_retention),
            purge_every: options.purge_every,
        }
    }

    /// Until the queue is dropped: take what is waiting, apply it, commit, answer; purge
    /// in between when it is time.
    pub fn run(self) {
        let mut next_purge = Instant::now() + self.purge_every;
        let mut purging = false;
        loop {
            let wait = if purging {
                Duration::ZERO
            } else {
                next_purge.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // One chunk after each batch, so a purge neither starves under load nor stalls it.
            if purging || Instant::now() >= next_purge {
                purging = self.purge();
                if !purging {
                    next_purge = Instant::now() + self.purge_every;
                }
            }
        }
        tracing::debug!(path = %self.path.display(), "queue writer stopped");
    }

    fn commit(&self, batch: Vec<Op>) {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let e = self.error("begin", e);
            tracing::error!("{e}");
            for op in batch {
                op.fail(&e);
            }
            return;
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut wake = Vec::new();
        let mut broken: Option<String> = None;
        for op in batch {
            if let Some(e) = &broken {
                op.fail(e);
                continue;
            }
            let answer = self.apply(op, &mut wake);
            if self.conn.is_autocommit() {
                // SQLite rolled the transaction back (disk full, I/O error): none of the
                // batch is stored, so none of it may be answered as done.
                broken = Some(answer.error().unwrap_or_else(|| {
                    format!("{}: the transaction was rolled back", self.path.display())
                }));
            }
            answers.push(answer);
        }
        let committed = match broken {
            Some(e) => Err(e),
            None => self
                .conn
                .execute_batch("COMMIT")
                .map_err(|e| self.error("commit", e)),
        };
        match &committed {
            Ok(()) => {
                self.shared.wake(wake.iter().map(String::as_str));
                self.checkpoint();
            }
            Err(e) => {
                tracing::error!("{e}");
                if !self.conn.is_autocommit() {
                    // Nothing to do if this fails too: the next BEGIN will report it.
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
            }
        }
        let orphans: Vec<Op> = answers
            .into_iter()
            .filter_map(|a| a.send(&committed))
            .map(|prior| Op::GiveBack { prior })
            .collect();
        if !orphans.is_empty() {
            self.commit(orphans);
        }
    }

    fn apply(&self, op: Op, wake: &mut Vec<String>) -> Answer {
        match op {
            Op::Enqueue { row, now, reply } => {
                let r = self.enqueue(&row, now);
                if let Ok(Enqueued::New) = r {
                    wake.push(row.function);
                }
                Answer::Enqueue(reply, r)
            }
            Op::Claim {
                function,
                now,
                lease_ms,
                reply,
            } => Answer::Claim(reply, self.claim(&function, now, lease_ms)),
            Op::Heartbeat {
                id,
                lease,
                now,
                lease_ms,
                reply,
            } => {
                let r = self
                    .settle(
                        "heartbeat",
                        "UPDATE calls SET due_ms = ?3 + ?4
                         WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
                        params![lease.seq, lease.generation, now, lease_ms],
                    )
                    .and_then(|held| held_or_lost(held, id));
                Answer::Unit(reply, r)
            }
            Op::Finish {
                id,
                function,
                lease,
                now,
                finished,
                reply,
            } => {
                let retry = matches!(finished, Finished::Retry { .. });
                let r = self
                    .finish(lease, now, finished)
                    .and_then(|held| held_or_lost(held, id));
                if retry && r.is_ok() {
                    // Waiting workers sleep until the due times they know of: this is a new one.
                    wake.push(function);
                }
                Answer::Unit(reply, r)
            }
            Op::Release {
                id,
                function,
                lease,
                now,
                reply,
            } => {
                let r = self
                    .settle(
                        "release",
                        "UPDATE calls SET attempt = attempt - 1, due_ms = ?3, updated_ms = ?3,
                             state = CASE WHEN status IS NULL THEN 'queued' ELSE 'retrying' END
                         WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
                        params![lease.seq, lease.generation, now],
                    )
                    .and_then(|held| held_or_lost(held, id));
                if r.is_ok() {
                    wake.push(function);
                }
                Answer::Unit(reply, r)
            }
            Op::Cancel { id, now, reply } => Answer::Cancel(reply, self.cancel(id, now)),
            Op::Redrive { id, now, reply } => {
                let r = self.redrive(id, now).map(|function| match function {
                    Some(function) => {
                        wake.push(function);
                        true
                    }
                    None => false,
                });
                Answer::Redrive(reply, r)
            }
            Op::GiveBack { prior } => {
                let r = self.give_back(&prior);
                if r.is_ok() {
                    wake.push(prior.function);
                }
                Answer::Nothing(r)
            }
        }
    }

    fn enqueue(&self, row: &CallRow, now: i64) -> Result<Enqueued, QueueError> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT INTO calls (id, function, method, path, query, headers, body,
                     callback_url, enqueued_ns, state, attempt, lease, due_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', 0, 0, ?10, ?10)
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row.id,
                    row.function,
                    row.method,
                    row.path,
                    row.query,
                    row.headers,
                    &row.body[..],
                    row.callback_url,
                    row.enqueued_ns,
                    now,
                ])
            })
            .map_err(|e| QueueError::Backend(self.error("enqueue", e)))?;
        Ok(if added == 1 {
            Enqueued::New
        } else {
            Enqueued::Duplicate
        })
    }

    /// Leases the first due call of `function` (invariants 4-6).
    fn claim(&self, function: &str, now: i64, lease_ms: i64) -> Result<Claim, QueueError> {
        let err = |e| QueueError::Backend(self.error("next", e));
        let found = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, lease, state, attempt, due_ms, updated_ms, {CALL_COLUMNS}
                 FROM calls
                 WHERE function = ?1 AND due_ms IS NOT NULL AND due_ms <= ?2
                 ORDER BY due_ms, seq LIMIT 1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row(params![function, now], |r| {
                    Ok((
                        Prior {
                            function: function.to_owned(),
                            lease: Lease {
                                seq: r.get(0)?,
                                generation: r.get(1)?,
                            },
                            state: r.get(2)?,
                            attempt: r.get(3)?,
                            due_ms: r.get(4)?,
                            updated_ms: r.get(5)?,
                        },
                        CallRow::read(r, 6)?,
                    ))
                })
                .optional()
            })
            .map_err(err)?;
        let Some((mut prior, row)) = found else {
            let next_due = self
                .conn
                .prepare_cached(
                    "SELECT MIN(due_ms) FROM calls WHERE function = ?1 AND due_ms IS NOT NULL",
                )
                .and_then(|mut stmt| stmt.query_row([function], |r| r.get(0)))
                .map_err(err)?;
            return Ok(Claim::Empty { next_due });
        };
        let attempt = prior.attempt + 1;
        let lease = Lease {
            seq: prior.lease.seq,
            generation: prior.lease.generation + 1,
        };
        self.conn
            .prepare_cached(
                "UPDATE calls SET state = 'running', attempt = ?2, lease = ?3, due_ms = ?4,
                     updated_ms = ?5
                 WHERE seq = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    lease.seq,
                    attempt,
                    lease.generation,
                    now + lease_ms,
                    now
                ])
            })
            .map_err(err)?;
        prior.lease = lease;
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        Ok(Claim::Got(Box::new(Leased {
            row,
            attempt,
            lease,
            prior,
        })))
    }

    /// Records a run's end; `false` when the lease is no longer the worker's.
    fn finish(&self, lease: Lease, now: i64, finished: Finished) -> Result<bool, QueueError> {
        match finished {
            Finished::Done { status, duration } => self.settle(
                "finish",
                "UPDATE calls SET state = 'done', due_ms = NULL, status = ?4, error = NULL,
                     duration_ms = ?5, updated_ms = ?3
                 WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
                params![lease.seq, lease.generation, now, status, millis(duration)],
            ),
            Finished::Retry {
                after,
                status,
                error,
            } => self.settle(
                "finish",
                "UPDATE calls SET state = 'retrying', due_ms = ?3 + ?4, status = ?5, error = ?6,
                     duration_ms = NULL, updated_ms = ?3
                 WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
                params![
                    lease.seq,
                    lease.generation,
                    now,
                    millis(after),
                    status,
                    error
                ],
            ),
            Finished::Dead { status, reason } => self.settle(
                "finish",
                "UPDATE calls SET state = 'dead', due_ms = NULL, status = ?4, error = ?5,
                     duration_ms = NULL, updated_ms = ?3
                 WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
                params![lease.seq, lease.generation, now, status, reason],
            ),
        }
    }

    /// Runs an update guarded by a lease; `true` when it still held.
    fn settle(
        &self,
        what: &str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<bool, QueueError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(args))
            .map(|changed| changed == 1)
            .map_err(|e| QueueError::Backend(self.error(what, e)))
    }

    fn cancel(&self, id: String, now: i64) -> Result<Cancelled, QueueError> {
        let err = |e| QueueError::Backend(self.error("cancel", e));
        let found = self
            .conn
            .prepare_cached(
                "SELECT seq, state, attempt, due_ms, status, error, duration_ms, updated_ms
                 FROM calls WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([&id], |r| Ok((r.get::<_, i64>(0)?, StateRow::read(r, 1)?)))
                    .optional()
            })
            .map_err(err)?;
        let Some((seq, row)) = found else {
            return Ok(Cancelled::NotFound);
        };
        match row.state.as_str() {
            "queued" | "retrying" => {
                self.conn
                    .prepare_cached(
                        "UPDATE calls SET state = 'cancelled', due_ms = NULL, updated_ms = ?2
                         WHERE seq = ?1",
                    )
                    .and_then(|mut stmt| stmt.execute(params![seq, now]))
                    .map_err(err)?;
                Ok(Cancelled::Cancelled)
            }
            "cancelled" => Ok(Cancelled::Cancelled),
            _ => Ok(Cancelled::TooLate(row.decode(&id)?)),
        }
    }

    /// Dead -> queued as new. The function when it was dead, `None` when it was not.
    fn redrive(&self, id: String, now: i64) -> Result<Option<String>, QueueError> {
        let err = |e| QueueError::Backend(self.error("redrive", e));
        let function: Option<String> = self
            .conn
            .prepare_cached(
                "UPDATE calls SET state = 'queued', attempt = 0, due_ms = ?2, status = NULL,
                     error = NULL, duration_ms = NULL, updated_ms = ?2
                 WHERE id = ?1 AND state = 'dead'
                 RETURNING function",
            )
            .and_then(|mut stmt| stmt.query_row(params![id, now], |r| r.get(0)).optional())
            .map_err(err)?;
        if function.is_some() {
            return Ok(function);
        }
        let known = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM calls WHERE id = ?1)")
            .and_then(|mut stmt| stmt.query_row([&id], |r| r.get::<_, bool>(0)))
            .map_err(err)?;
        if known {
            Ok(None)
        } else {
            Err(QueueError::NotFound(id))
        }
    }

    /// Puts back a call leased to a `next` that was dropped before it got the answer
    /// (cancel safety): as it was, so that the attempt does not count.
    fn give_back(&self, p: &Prior) -> Result<(), QueueError> {
        self.conn
            .prepare_cached(
                "UPDATE calls SET state = ?3, attempt = ?4, due_ms = ?5, updated_ms = ?6
                 WHERE seq = ?1 AND lease = ?2 AND state = 'running'",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    p.lease.seq,
                    p.lease.generation,
                    p.state,
                    p.attempt,
                    p.due_ms,
                    p.updated_ms
                ])
            })
            .map(drop)
            .map_err(|e| QueueError::Backend(self.error("giving back a lease", e)))
    }

    /// Deletes one chunk of rows past their retention; `true` when there may be more.
    fn purge(&self) -> bool {
        let now = self.clock.now_ms();
        let result = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            let mut more = false;
            for (state, retention) in [
                ("done", self.retention_ms),
                ("cancelled", self.retention_ms),
                ("dead", self.dead_retention_ms),
            ] {
                let deleted = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM calls WHERE seq IN (
                             SELECT seq FROM calls WHERE state = ?1 AND updated_ms < ?2 LIMIT ?3)",
                    )?
                    .execute(params![state, now.saturating_sub(retention), PURGE_CHUNK])?;
                more |= i64::try_from(deleted).unwrap_or(i64::MAX) >= PURGE_CHUNK;
            }
            self.conn.execute_batch("COMMIT")?;
            self.checkpoint();
            Ok(more)
        });
        result.unwrap_or_else(|e| {
            tracing::warn!("{}", self.error("purging old calls", e));
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            false
        })
    }

    fn checkpoint(&self) {
        self.checkpoints.committed(&self.conn, &self.path);
    }

    fn error(&self, what: &str, e: rusqlite::Error) -> String {
        format!("{}: {what}: {e}", self.path.display())
    }
}

/// `Ok` when a lease-guarded update found its lease, [`QueueError::LeaseLost`] otherwise.
fn held_or_lost(held: bool, id: String) -> Result<(), QueueError> {
    if held {
        Ok(())
    } else {
        Err(QueueError::LeaseLost(id))
    }
}
