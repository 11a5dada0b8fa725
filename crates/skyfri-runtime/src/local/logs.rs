//! Function logs: one JSON-lines file per function (so logs survive replica and skyfri
//! restarts) plus a broadcast channel for followers.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::provider::{LogLine, RuntimeError};

/// Above this size the file is rotated to `.1`, so a chatty function cannot fill the disk.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Lines a slow follower may lag behind before it starts missing some.
const FOLLOW_BUFFER: usize = 1024;

/// All functions' logs.
pub struct LogStore {
    dir: PathBuf,
    sinks: Mutex<HashMap<String, Arc<LogSink>>>,
}

/// One function's log: its file and its followers.
pub struct LogSink {
    path: PathBuf,
    file: Mutex<Option<(File, u64)>>,
    tx: broadcast::Sender<LogLine>,
}

impl LogStore {
    pub fn open(dir: PathBuf) -> Result<LogStore, RuntimeError> {
        fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        // What functions print is theirs: not for other users of the host.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| RuntimeError::io(format!("protecting {}", dir.display()), e))?;
        Ok(LogStore {
            dir,
            sinks: Mutex::new(HashMap::new()),
        })
    }

    /// The sink of a function, created on first use. `None` for names that are not valid
    /// function names, because the name becomes a file name.
    pub fn sink(&self, name: &str) -> Option<Arc<LogSink>> {
        skyfri_core::validate_name(name).ok()?;
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        let sink = sinks.entry(name.to_string()).or_insert_with(|| {
            Arc::new(LogSink {
                path: self.dir.join(format!("{name}.jsonl")),
                file: Mutex::new(None),
                tx: broadcast::channel(FOLLOW_BUFFER).0,
            })
        });
        Some(Arc::clone(sink))
    }

    /// Stored lines of a function, oldest first: those at or after `since`, then the last `tail`.
    pub fn read(
        &self,
        name: &str,
        since: Option<DateTime<Utc>>,
        tail: Option<usize>,
    ) -> Vec<LogLine> {
        let Some(sink) = self.sink(name) else {
            return Vec::new();
        };
        // Hold the writer lock so we never read a half-written line.
        let _guard = sink.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = Vec::new();
        for path in [rotated(&sink.path), sink.path.clone()] {
            read_file(&path, since, &mut lines);
        }
        if let Some(tail) = tail {
            let skip = lines.len().saturating_sub(tail);
            lines.drain(..skip);
        }
        lines
    }

    pub fn subscribe(&self, name: &str) -> broadcast::Receiver<LogLine> {
        match self.sink(name) {
            Some(sink) => sink.tx.subscribe(),
            // An invalid name never gets lines; a receiver of a dropped channel says so.
            None => broadcast::channel(1).1,
        }
    }
}

impl LogSink {
    /// Appends a line to the file and hands it to followers. Failures to write are logged and
    /// otherwise ignored: losing a log line must not take a replica down.
    pub fn write(&self, line: LogLine) {
        match serde_json::to_string(&line) {
            Ok(mut json) => {
                json.push('\n');
                let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
                if let Err(e) = self.append(&mut file, json.as_bytes()) {
                    tracing::warn!("writing {}: {e}", self.path.display());
                    *file = None;
                }
            }
            Err(e) => tracing::warn!("encoding a log line: {e}"),
        }
        // No followers is the normal case, not an error.
        let _ = self.tx.send(line);
    }

    fn append(&self, file: &mut Option<(File, u64)>, bytes: &[u8]) -> std::io::Result<()> {
        if file.as_ref().is_some_and(|(_, size)| *size > ROTATE_BYTES) {
            *file = None;
            fs::rename(&self.path, rotated(&self.path))?;
        }
        if file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let size = f.metadata()?.len();
            *file = Some((f, size));
        }
        if let Some((f, size)) = file.as_mut() {
            // One write per line, so lines of concurrent writers never interleave.
            f.write_all(bytes)?;
            *size += bytes.len() as u64;
        }
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn read_file(path: &Path, since: Option<DateTime<Utc>>, out: &mut Vec<LogLine>) {
    let Ok(file) = File::open(path) else {
        return;
    };
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else {
            break;
        };
        // A torn last line (crash mid-write) is skipped rather than failing the whole read.
        let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
            continue;
        };
        if since.is_none_or(|s| entry.timestamp >= s) {
            out.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            name: "f".into(),
            instance: "f-1".into(),
            timestamp: Utc::now(),
            text: text.into(),
        }
    }

    #[test]
    fn persists_filters_and_tails() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = LogStore::open(dir.path().to_path_buf())?;
        let sink = store.sink("f").ok_or("no sink")?;
        let mut rx = store.subscribe("f");
        sink.write(line("one"));
        let cut = Utc::now();
        sink.write(line("two"));
        sink.write(line("three"));
        assert_eq!(rx.try_recv()?.text, "one");

        let reopened = LogStore::open(dir.path().to_path_buf())?;
        let all: Vec<_> = reopened.read("f", None, None);
        assert_eq!(all.len(), 3);
        let since = reopened.read("f", Some(cut), None);
        assert_eq!(since.len(), 2);
        let tail = reopened.read("f", None, Some(1));
        assert_eq!(tail[0].text, "three");
        assert!(store.sink("../x").is_none());
        Ok(())
    }
}
