//! The checkpointer thread: copies committed WAL frames into `queue.db` on its own
//! connection, so that the writer does not stop to do it (a checkpoint fsyncs twice; done
//! by the writer, it stalled the queue every few hundred enqueues).
//!
//! A passive checkpoint runs beside the writer after its commits. The WAL only starts over
//! once a checkpoint has caught up with it, which a busy writer may never allow; so when
//! the WAL holds more than [`RESTART_FRAMES`], the writer itself runs a restart checkpoint
//! between two batches (little is left to copy by then) and its next commit rewinds the
//! WAL. SQLite's checkpoints are as crash-safe from one thread as from another.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{connect, io, sqlite, BUSY_TIMEOUT};
use crate::QueueError;

/// WAL frames (pages) after which the writer makes the WAL start over: bounds the WAL at
/// about 128 MB of 4 KiB pages.
const RESTART_FRAMES: i64 = 32 * 1024;

/// How long the writer waits for readers to leave the WAL when it restarts it; if they do
/// not, it tries again [`RESTART_RETRY`] later rather than hold up enqueues.
const RESTART_WAIT: Duration = Duration::from_millis(200);
const RESTART_RETRY: Duration = Duration::from_secs(1);

/// What the WAL file is cut back to when it starts over after a burst.
pub(super) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The writer's side of the checkpointer.
pub(super) struct Checkpoints {
    /// Each `()` says "there are new commits"; several coalesce.
    commits: SyncSender<()>,
    /// Frames in the WAL at the last checkpoint.
    wal_frames: Arc<AtomicI64>,
    /// Held for each checkpoint, so that the writer's restart waits for the checkpointer's
    /// pass in progress, then goes first (SQLite's busy handler would let it starve).
    running: Arc<Mutex<()>>,
    /// No restart before this (after one that readers kept from finishing).
    next_restart: std::cell::Cell<Instant>,
}

impl Checkpoints {
    /// Starts the thread, which ends after a last checkpoint when this is dropped.
    pub fn start(path: &Path) -> Result<Checkpoints, QueueError> {
        let conn = connect(path)?;
        let (commits, rx) = sync_channel(1);
        let wal_frames = Arc::new(AtomicI64::new(0));
        let running = Arc::new(Mutex::new(()));
        let (owned, frames, lock) = (path.to_path_buf(), wal_frames.clone(), running.clone());
        std::thread::Builder::new()
            .name("skyfri-queue-checkpointer".into())
            .spawn(move || run(&conn, &owned, &rx, &frames, &lock))
            .map_err(|e| io(path, e))?;
        Ok(Checkpoints {
            commits,
            wal_frames,
            running,
            next_restart: std::cell::Cell::new(Instant::now()),
        })
    }

    /// Called by the writer after each commit, on its connection.
    pub fn committed(&self, writer: &Connection, path: &Path) {
        if self.wal_frames.load(Ordering::Relaxed) >= RESTART_FRAMES
            && Instant::now() >= self.next_restart.get()
        {
            let restart = {
                let _alone = self.running.lock().unwrap_or_else(|e| e.into_inner());
                writer
                    .busy_timeout(RESTART_WAIT)
                    .and_then(|()| checkpoint(writer, "RESTART"))
            };
            match restart {
                Ok((false, frames)) => {
                    tracing::debug!(frames, "queue WAL restarted");
                    self.wal_frames.store(0, Ordering::Relaxed);
                }
                Ok((true, frames)) => {
                    tracing::debug!(frames, "queue WAL restart put off: readers in the way");
                    self.next_restart.set(Instant::now() + RESTART_RETRY);
                }
                Err(e) => {
                    tracing::warn!("{}", sqlite(path, "checkpoint", e));
                    self.next_restart.set(Instant::now() + RESTART_RETRY);
                }
            }
            if let Err(e) = writer.busy_timeout(BUSY_TIMEOUT) {
                tracing::warn!("{}", sqlite(path, "busy_timeout", e));
            }
        }
        // Full: a checkpoint is pending already and will see this commit too.
        let _ = self.commits.try_send(());
    }
}

fn run(
    conn: &Connection,
    path: &Path,
    commits: &Receiver<()>,
    wal_frames: &AtomicI64,
    running: &Mutex<()>,
) {
    let passive = || {
        let _alone = running.lock().unwrap_or_else(|e| e.into_inner());
        match checkpoint(conn, "PASSIVE") {
            Ok((_, frames)) => wal_frames.store(frames, Ordering::Relaxed),
            Err(e) => tracing::warn!("{}", sqlite(path, "checkpoint", e)),
        }
    };
    while commits.recv().is_ok() {
        passive();
    }
    // The queue is closed: leave nothing for the next open to copy.
    passive();
}

/// Returns whether it could not finish (readers or the writer in the way past the busy
/// timeout; not an error, the next one goes on), and the number of frames in the WAL.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(bool, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get(1)?))
    })
}
