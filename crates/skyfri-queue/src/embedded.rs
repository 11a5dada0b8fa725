//! The embedded queue, skyfri's default: async calls in a SQLite database of their own in the
//! data dir (`<data>/queue.db`, WAL mode, readable by its owner only), written by one thread
//! that commits concurrent changes together.
//!
//! # Invariants
//!
//! 1. **An accepted call is on disk.** [`Queue::enqueue`] answers only after the transaction
//!    holding the call's row has committed. In WAL mode with `synchronous=NORMAL` (the
//!    default, [`Durability::ProcessCrash`]) a commit is a `write(2)` of the transaction to
//!    `queue.db-wal`: once it returns the kernel holds the data, so the call survives a
//!    `kill -9` of skyfri at any moment; only a kernel crash or power cut can take the last
//!    commits before it (never a corrupt file). [`Durability::PowerLoss`]
//!    (`synchronous=FULL`) also fsyncs the WAL before answering.
//! 2. **One writer, group commit.** A single thread owns the only write connection, and every
//!    change (enqueue, lease, heartbeat, finish, cancel, redrive, purge) is a message to it.
//!    It takes all the messages waiting (up to 1024), applies them in one transaction,
//!    commits and only then answers each: concurrent enqueues share one commit (and one
//!    fsync), and changes are serialised, so handing a call to exactly one worker needs no
//!    lock. If the commit fails, every message of the batch gets the error. Checkpoints
//!    (copying the WAL into `queue.db`) run on a thread of their own, so that the writer
//!    does not wait for their fsyncs (see `checkpointer`).
//! 3. **An id is a call.** `id` is unique: enqueuing a known id changes nothing and answers
//!    [`Enqueued::Duplicate`]. This holds for as long as the row is kept (see 8).
//! 4. **`due_ms` is the schedule.** It is set exactly while a call may still run: for
//!    `queued` the time it was enqueued, for `retrying` the time of the next attempt, for
//!    `running` the end of the lease. A row is handed out by [`Queue::next`] once `due_ms`
//!    has passed, earliest first, then in enqueue order. So a running call whose worker died
//!    (a lapsed lease) is simply due again: at least once, with no recovery step.
//! 5. **Leases have generations.** `lease` is bumped each time the call is handed out and
//!    never goes back (not even on redrive). A [`Delivery`] carries the generation it was
//!    handed out with; a heartbeat or finish whose generation is no longer the row's, or
//!    whose row is no longer running, changes nothing and is [`QueueError::LeaseLost`].
//! 6. **`attempt` counts hand-outs** since the call was enqueued or redriven: the n-th
//!    delivery has attempt n, also after a lapsed lease, so a call that kills its worker
//!    reaches the worker's retry limit and the dead letters instead of looping. A hand-out
//!    given back unfinished ([`Queue::release`], or a dropped `next`) does not count: the
//!    row goes back to `queued` (or `retrying` if an earlier run failed), due now, with
//!    `attempt` one less.
//! 7. **Recovery is SQLite's.** On open after a crash, SQLite replays the WAL's committed
//!    transactions; a batch that had not committed had answered no one. Calls that were
//!    running have lapsed leases or will have them: nothing else to do.
//! 8. **Rows do not stay forever.** Done and cancelled calls are deleted
//!    [`EmbeddedOptions::retention`] after they ended, dead letters
//!    [`EmbeddedOptions::dead_retention`] after they died, by the writer in small chunks
//!    between batches; waiting and running calls are never deleted.
//! 9. **Time.** The queue's clock is the wall clock read at open plus monotonic time since,
//!    so a clock step while skyfri runs moves no schedule. After a step back between runs,
//!    open makes the queued calls "enqueued in the future" due at once; retries and leases
//!    wait out the step. `enqueued_at` is the caller's and is kept to the nanosecond.
//!
//! # On-disk format (`PRAGMA user_version = 1`)
//!
//! ```sql
//! CREATE TABLE calls (
//!     seq          INTEGER PRIMARY KEY,  -- enqueue order
//!     id           TEXT NOT NULL UNIQUE, -- X-Call-Id
//!     function     TEXT NOT NULL,
//!     method       TEXT NOT NULL,
//!     path         TEXT NOT NULL,
//!     query        TEXT NOT NULL,
//!     headers      TEXT NOT NULL,        -- JSON [[name, value], ...] in arrival order
//!     body         BLOB NOT NULL,
//!     callback_url TEXT,
//!     enqueued_ns  INTEGER NOT NULL,     -- AsyncCall::enqueued_at, Unix nanoseconds
//!     state        TEXT NOT NULL,        -- queued|running|retrying|done|dead|cancelled
//!     attempt      INTEGER NOT NULL,     -- hand-outs since enqueue or redrive
//!     lease        INTEGER NOT NULL,     -- lease generation, see invariant 5
//!     due_ms       INTEGER,              -- see invariant 4; NULL once done/dead/cancelled
//!     status       INTEGER,              -- the function's last HTTP status
//!     error        TEXT,                 -- retrying: last error; dead: reason
//!     duration_ms  INTEGER,              -- done: how long the run took
//!     updated_ms   INTEGER NOT NULL      -- last change of state (Unix milliseconds)
//! );
//! CREATE INDEX calls_due ON calls (function, due_ms) WHERE due_ms IS NOT NULL;
//! CREATE INDEX calls_state ON calls (state, updated_ms);
//! ```
//!
//! `calls_due` holds only the calls that may still run, so handing one out is one index
//! seek however many finished rows there are; `calls_state` serves state listings and the
//! purge. A file with a newer `user_version` is refused rather than misread.
//!
//! Beside `queue.db`, SQLite keeps `queue.db-wal` (the commits not yet copied into
//! `queue.db`; kept under about 128 MB under load, cut back to 64 MB after) and
//! `queue.db-shm` (its index, rebuilt if lost). All three are mode 0600. Move or copy the
//! three together, or none while skyfri runs; `skyfri backup` snapshots the database
//! consistently while it runs.

mod checkpointer;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rusqlite::Connection;
use tokio::sync::{oneshot, Notify};

use crate::{
    AsyncCall, CallRecord, CallState, Cancelled, Delivery, DeliveryToken, Depth, Enqueued,
    Finished, ListFilter, Queue, QueueError,
};
use writer::{Claim, Op, Reply};

/// The most messages the writer applies in one transaction.
const MAX_BATCH: usize = 1024;

/// A waiting [`Queue::next`] re-checks this often even if nothing woke it (it is woken by
/// enqueues, retries and redrives, and sleeps until the earliest due time it knows of).
const RECHECK: Duration = Duration::from_secs(60);

/// Idle read connections kept for `get`, `list` and `depth`.
const READERS: usize = 4;

/// How long a connection waits for another's lock (only a dropped queue's writer finishing
/// its last batch, or a checkpoint, can hold one) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a commit must survive before `enqueue` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a committed call survives any crash of skyfri (`kill -9`, OOM
    /// kill, panic); a power cut or kernel crash may take the last commits before it.
    #[default]
    ProcessCrash,
    /// `synchronous=FULL`: also survives a power cut, at the price of an fsync per commit
    /// (shared by the calls of one batch).
    PowerLoss,
}

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub durability: Durability,
    /// How long done and cancelled calls stay visible (and their ids idempotent).
    pub retention: Duration,
    /// How long dead letters wait for a redrive before they are deleted.
    pub dead_retention: Duration,
    /// How often the writer looks for rows past their retention.
    pub purge_every: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            durability: Durability::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
            purge_every: Duration::from_secs(300),
        }
    }
}

/// The embedded backend of [`Queue`]. See the module documentation for its guarantees.
pub struct EmbeddedQueue {
    path: PathBuf,
    ops: mpsc::Sender<Op>,
    shared: Arc<Shared>,
    readers: Arc<Readers>,
    clock: Clock,
}

/// What the queue's handle and the writer thread share.
#[derive(Default)]
struct Shared {
    /// Per function, the waiting [`Queue::next`] calls.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    closed: AtomicBool,
}

impl Shared {
    fn waker(&self, function: &str) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        wakers.entry(function.to_owned()).or_default().clone()
    }

    /// Wakes the workers waiting for these functions, so they look again.
    fn wake<'a>(&self, functions: impl IntoIterator<Item = &'a str>) {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for function in functions {
            if let Some(notify) = wakers.get(function) {
                notify.notify_waiters();
            }
        }
    }

    fn wake_all(&self) {
        let wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for notify in wakers.values() {
            notify.notify_waiters();
        }
    }
}

/// The queue's notion of now: see invariant 9.
#[derive(Debug, Clone, Copy)]
struct Clock {
    origin_ms: i64,
    origin: tokio::time::Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            origin_ms: Utc::now().timestamp_millis(),
            origin: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.origin_ms + millis(self.origin.elapsed())
    }
}

/// A duration in whole milliseconds, rounded up so that a short wait is never zero.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// What a [`Delivery`] of this backend holds.
#[derive(Debug, Clone, Copy)]
struct Lease {
    seq: i64,
    generation: i64,
}

impl EmbeddedQueue {
    /// Opens (or creates) the queue database at `path` with the default options.
    /// Blocking: call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Arc<EmbeddedQueue>, QueueError> {
        EmbeddedQueue::open_with(path, EmbeddedOptions::default())
    }

    pub fn open_with(
        path: &Path,
        options: EmbeddedOptions,
    ) -> Result<Arc<EmbeddedQueue>, QueueError> {
        create_private(path)?;
        let conn = connect(path)?;
        let synchronous = match options.durability {
            Durability::ProcessCrash => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", synchronous))
            .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", 0))
            .and_then(|()| {
                conn.pragma_update(None, "journal_size_limit", checkpointer::WAL_SIZE_LIMIT)
            })
            .map_err(|e| sqlite(path, "setting WAL mode", e))?;
        let found = schema::migrate(&conn).map_err(|e| sqlite(path, "creating the schema", e))?;
        if found > schema::VERSION {
            return Err(QueueError::Backend(format!(
                "{}: written by a newer skyfri (format {found}, this one reads {}); \
                 run that version or move the file away",
                path.display(),
                schema::VERSION
            )));
        }
        let clock = Clock::start();
        schema::requeue_future(&conn, clock.now_ms())
            .map_err(|e| sqlite(path, "checking the clock", e))?;
        for suffix in ["-wal", "-shm"] {
            let mut p = OsString::from(path);
            p.push(suffix);
            restrict(Path::new(&p))?;
        }

        let shared = Arc::new(Shared::default());
        let (ops, rx) = mpsc::channel();
        let checkpoints = checkpointer::Checkpoints::start(path)?;
        let writer = writer::Writer::new(
            conn,
            path.to_path_buf(),
            rx,
            checkpoints,
            shared.clone(),
            clock,
            &options,
        );
        std::thread::Builder::new()
            .name("skyfri-queue-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| io(path, e))?;
        Ok(Arc::new(EmbeddedQueue {
            path: path.to_path_buf(),
            ops,
            shared,
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            clock,
        }))
    }

    /// Sends a message to the writer and waits for its answer, which comes after the commit.
    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, QueueError> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).map_err(|_| self.writer_gone())?;
        rx.await.map_err(|_| self.writer_gone())?
    }

    /// Asks the writer for a lease. Dropped before the answer is taken, it gives the lease
    /// back, so that `next` is cancel-safe.
    async fn claim(&self, function: &str, now: i64, lease: Duration) -> Result<Claim, QueueError> {
        struct Unclaimed {
            rx: oneshot::Receiver<Result<Claim, QueueError>>,
            ops: mpsc::Sender<Op>,
        }
        impl Drop for Unclaimed {
            fn drop(&mut self) {
                // Either the writer finds nobody to answer and gives the lease back itself,
                // or the answer is already here and is given back from here.
                self.rx.close();
                if let Ok(Ok(Claim::Got(leased))) = self.rx.try_recv() {
                    let _ = self.ops.send(Op::GiveBack {
                        prior: leased.prior,
                    });
                }
            }
        }
        let (reply, rx) = oneshot::channel();
        self.ops
            .send(Op::Claim {
                function: function.to_owned(),
                now,
                lease_ms: millis(lease),
                reply,
            })
            .map_err(|_| self.writer_gone())?;
        let mut pending = Unclaimed {
            rx,
            ops: self.ops.clone(),
        };
        (&mut pending.rx).await.map_err(|_| self.writer_gone())?
    }

    fn writer_gone(&self) -> QueueError {
        QueueError::Backend(format!(
            "{}: the writer thread stopped (see the log for why)",
            self.path.display()
        ))
    }

    /// Runs a query on a read connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, QueueError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(what, f))
            .await
            .map_err(|e| QueueError::Backend(format!("queue: {what}: {e}")))?
    }
}

#[async_trait::async_trait]
impl Queue for EmbeddedQueue {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn enqueue(&self, call: AsyncCall) -> Result<Enqueued, QueueError> {
        // Encoded here rather than in the writer, which is the one thread every call waits on.
        let row = schema::CallRow::encode(call)?;
        let now = self.clock.now_ms();
        self.write(|reply| Op::Enqueue { row, now, reply }).await
    }

    async fn next(&self, function: &str, lease: Duration) -> Result<Delivery, QueueError> {
        let waker = self.shared.waker(function);
        loop {
            // Registered before looking, so a wake-up between the look and the wait counts.
            let woken = waker.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            let now = self.clock.now_ms();
            match self.claim(function, now, lease).await? {
                Claim::Got(leased) => {
                    return Ok(Delivery {
                        call: leased.row.decode()?,
                        attempt: leased.attempt,
                        token: DeliveryToken(Box::new(leased.lease)),
                    });
                }
                Claim::Empty { next_due } => {
                    let wait = next_due
                        .map(|due| Duration::from_millis((due - now).max(1).unsigned_abs()))
                        .map_or(RECHECK, |wait| wait.min(RECHECK));
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn heartbeat(&self, delivery: &Delivery, lease: Duration) -> Result<(), QueueError> {
        let held = lease_of(delivery)?;
        let now = self.clock.now_ms();
        let id = delivery.call.id.clone();
        self.write(|reply| Op::Heartbeat {
            id,
            lease: held,
            now,
            lease_ms: millis(lease),
            reply,
        })
        .await
    }

    async fn finish(&self, delivery: Delivery, finished: Finished) -> Result<(), QueueError> {
        let lease = lease_of(&delivery)?;
        let now = self.clock.now_ms();
        let Delivery { call, .. } = delivery;
        self.write(|reply| Op::Finish {
            id: call.id,
            function: call.function,
            lease,
            now,
            finished,
            reply,
        })
        .await
    }

    async fn release(&self, delivery: Delivery) -> Result<(), QueueError> {
        let lease = lease_of(&delivery)?;
        let now = self.clock.now_ms();
        let Delivery { call, .. } = delivery;
        self.write(|reply| Op::Release {
            id: call.id,
            function: call.function,
            lease,
            now,
            reply,
        })
        .await
    }

    async fn cancel(&self, id: &str) -> Result<Cancelled, QueueError> {
        let now = self.clock.now_ms();
        let id = id.to_owned();
        self.write(|reply| Op::Cancel { id, now, reply }).await
    }

    async fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let id = id.to_owned();
        let row = self.read("get", move |c| schema::get(c, &id)).await?;
        row.map(schema::StoredCall::decode).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<CallRecord>, QueueError> {
        if let Some(state) = &filter.state {
            if !CallState::NAMES.contains(&state.as_str()) {
                return Err(QueueError::UnknownState(state.clone()));
            }
        }
        let filter = filter.clone();
        let rows = self.read("list", move |c| schema::list(c, &filter)).await?;
        rows.into_iter().map(schema::StoredCall::decode).collect()
    }

    async fn redrive(&self, id: &str) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
        let id = id.to_owned();
        self.write(|reply| Op::Redrive { id, now, reply }).await
    }

    async fn depth(&self) -> Result<Vec<Depth>, QueueError> {
        let rows = self.read("depth", schema::depth).await?;
        let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        Ok(rows
            .into_iter()
            .map(|(function, waiting, oldest_ns)| Depth {
                function,
                waiting,
                oldest: oldest_ns.map(|ns| Duration::from_nanos((now - ns).max(0).unsigned_abs())),
            })
            .collect())
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_all();
    }
}

fn lease_of(delivery: &Delivery) -> Result<Lease, QueueError> {
    delivery
        .token
        .0
        .downcast_ref::<Lease>()
        .copied()
        .ok_or_else(|| {
            QueueError::Backend(format!(
                "call {:?}: the delivery was not made by the embedded queue",
                delivery.call.id
            ))
        })
}

/// Read connections, opened when needed and kept for the next read. WAL readers see the
/// last commit and never wait for the writer.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, QueueError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = connect(&self.path)?;
                conn.pragma_update(None, "query_only", true)
                    .map_err(|e| sqlite(&self.path, "opening a reader", e))?;
                conn
            }
        };
        let result = f(&conn).map_err(|e| sqlite(&self.path, what, e));
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < READERS {
            idle.push(conn);
        }
        result
    }
}

fn connect(path: &Path) -> Result<Connection, QueueError> {
    let conn = Connection::open(path).map_err(|e| sqlite(path, "open", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sqlite(path, "open", e))?;
    Ok(conn)
}

/// Creates the database file owner-only before SQLite does: SQLite gives the `-wal` and
/// `-shm` files the database file's mode.
fn create_private(path: &Path) -> Result<(), QueueError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    restrict(path)
}

/// Makes an existing file readable and writable by its owner only.
fn restrict(path: &Path) -> Result<(), QueueError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(path, e))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, e)),
    }
}

fn sqlite(path: &Path, what: &str, e: rusqlite::Error) -> QueueError {
    QueueError::Backend(format!("{}: {what}: {e}", path.display()))
}

fn io(path: &Path, e: std::io::Error) -> QueueError {
    QueueError::Backend(format!("{}: {e}", path.display()))
}
