//! Function logs: one JSON-lines file per function (so logs survive replica and skyfri
//! restarts) plus a broadcast channel for followers.
//!
//! The channel holds a ring of [`FOLLOW_BUFFER`] lines (over 100 KiB), so it exists only
//! while someone follows: it is made by the first follower and dropped at the first line
//! written (or follower arriving) after the last one left. A thousand functions nobody
//! follows cost a thousand small structs, not a hundred megabytes of empty rings.
//!
//! On disk: `<dir>/<function>.jsonl` is written; when the next line would take it over
//! [`Rotation::max_bytes`] it becomes `<function>.jsonl.1`, the older ones move up
//! (`.1` to `.2`, ...) and the oldest beyond [`Rotation::files`] is deleted. So a function
//! holds at most `files` files of at most `max_bytes` each (a single longer line gets a file
//! of its own), and readers go from the highest suffix down to the live file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::provider::{LogLine, RuntimeError};

/// Default size of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Default number of files kept per function, the live one included.
pub const DEFAULT_FILES: usize = 4;
/// Lines a slow follower may lag behind before it starts missing some.
const FOLLOW_BUFFER: usize = 1024;

/// How big a function's log may grow, so a chatty function cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Size at which the live file is rotated.
    pub max_bytes: u64,
    /// Files kept per function, the live one included (at least 1).
    pub files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_BYTES,
            files: DEFAULT_FILES,
        }
    }
}

impl Rotation {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes < 1024 {
            return Err(format!(
                "--log-max-bytes {}: must be at least 1024",
                self.max_bytes
            ));
        }
        if self.files == 0 || self.files > 1000 {
            return Err(format!("--log-files {}: must be 1 to 1000", self.files));
        }
        Ok(())
    }
}

/// Where function logs go and how they rotate.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub rotation: Rotation,
}

impl From<PathBuf> for LogConfig {
    fn from(dir: PathBuf) -> Self {
        LogConfig {
            dir,
            rotation: Rotation::default(),
        }
    }
}

/// All functions' logs.
pub struct LogStore {
    dir: PathBuf,
    rotation: Rotation,
    sinks: Mutex<HashMap<String, Arc<LogSink>>>,
}

/// One function's log: its file and its followers.
pub struct LogSink {
    file: Mutex<RotatingFile>,
    /// The followers' channel, while there are followers (see the module's docs).
    followers: Mutex<Option<broadcast::Sender<LogLine>>>,
}

impl LogStore {
    pub fn open(config: LogConfig) -> Result<LogStore, RuntimeError> {
        let LogConfig { dir, rotation } = config;
        rotation.validate().map_err(RuntimeError::Invalid)?;
        fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        // What functions print is theirs: not for other users of the host.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| RuntimeError::io(format!("protecting {}", dir.display()), e))?;
        Ok(LogStore {
            dir,
            rotation,
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
                file: Mutex::new(RotatingFile::new(
                    self.dir.join(format!("{name}.jsonl")),
                    self.rotation,
                )),
                followers: Mutex::new(None),
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
        let file = sink.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines = Vec::new();
        for path in file.paths() {
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
            Some(sink) => sink.follow(),
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
                if let Err(e) = file.append(json.as_bytes()) {
                    tracing::warn!("writing {}: {e}", file.path.display());
                }
            }
            Err(e) => tracing::warn!("encoding a log line: {e}"),
        }
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = followers.as_ref() {
            if tx.receiver_count() == 0 {
                *followers = None;
            } else {
                // A follower that left since the count is not an error.
                let _ = tx.send(line);
            }
        }
    }

    /// A receiver of the lines written from now on; makes the channel when there is none,
    /// or when the one there has lost all its followers.
    fn follow(&self) -> broadcast::Receiver<LogLine> {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match followers.as_ref() {
            Some(tx) if tx.receiver_count() > 0 => tx.subscribe(),
            _ => {
                let (tx, rx) = broadcast::channel(FOLLOW_BUFFER);
                *followers = Some(tx);
                rx
            }
        }
    }

    #[cfg(test)]
    fn has_followers_channel(&self) -> bool {
        self.followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// An append-only file that rotates by size (see the module's on-disk format). Its owner
/// serialises the writes (one `append` per line keeps lines whole).
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    /// The live file and its size, opened on the first write.
    file: Option<(File, u64)>,
}

impl RotatingFile {
    pub fn new(path: PathBuf, rotation: Rotation) -> RotatingFile {
        RotatingFile {
            path,
            rotation,
            file: None,
        }
    }

    /// Appends `bytes` (whole lines), rotating first when they would take the live file over
    /// the size. After a failure the file is opened again at the next append.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let result = self.try_append(bytes);
        if result.is_err() {
            self.file = None;
        }
        result
    }

    fn try_append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        let (mut f, mut size) = match self.file.take() {
            Some(open) => open,
            None => self.open_live()?,
        };
        if size > 0 && size + len > self.rotation.max_bytes {
            drop(f);
            self.rotate()?;
            (f, size) = self.open_live()?;
        }
        f.write_all(bytes)?;
        size += len;
        self.file = Some((f, size));
        Ok(())
    }

    /// The files that exist or may, oldest first: the rotated ones (also those past the
    /// current count, left by a larger `--log-files`), then the live one.
    pub fn paths(&self) -> Vec<PathBuf> {
        let oldest = self.rotation.files.max(MAX_LEFTOVER);
        (1..=oldest)
            .rev()
            .map(|n| rotated(&self.path, n))
            .chain(std::iter::once(self.path.clone()))
            .collect()
    }

    fn open_live(&self) -> std::io::Result<(File, u64)> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let size = f.metadata()?.len();
        Ok((f, size))
    }

    /// Shifts `.1` to `.2` and so on, dropping the oldest, and makes the live file `.1`.
    fn rotate(&self) -> std::io::Result<()> {
        let kept = self.rotation.files - 1;
        if kept == 0 {
            return fs::remove_file(&self.path);
        }
        let gone_is_fine = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        // Also files beyond the limit, left by an earlier larger `--log-files`.
        for n in kept..=kept.max(MAX_LEFTOVER) {
            gone_is_fine(fs::remove_file(rotated(&self.path, n)))?;
        }
        for n in (1..kept).rev() {
            gone_is_fine(fs::rename(
                rotated(&self.path, n),
                rotated(&self.path, n + 1),
            ))?;
        }
        fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// How far beyond the configured count readers and rotation look for old files: those a
/// previous run with a larger `--log-files` left behind.
const MAX_LEFTOVER: usize = 16;

/// The `n`th rotated file of `path` (1 is the newest).
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
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
        let store = LogStore::open(dir.path().to_path_buf().into())?;
        let sink = store.sink("f").ok_or("no sink")?;
        let mut rx = store.subscribe("f");
        sink.write(line("one"));
        let cut = Utc::now();
        sink.write(line("two"));
        sink.write(line("three"));
        assert_eq!(rx.try_recv()?.text, "one");

        let reopened = LogStore::open(dir.path().to_path_buf().into())?;
        let all: Vec<_> = reopened.read("f", None, None);
        assert_eq!(all.len(), 3);
        let since = reopened.read("f", Some(cut), None);
        assert_eq!(since.len(), 2);
        let tail = reopened.read("f", None, Some(1));
        assert_eq!(tail[0].text, "three");
        assert!(store.sink("../x").is_none());
        Ok(())
    }

    #[test]
    fn no_follower_ring_until_someone_follows() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = LogStore::open(dir.path().to_path_buf().into())?;
        let sink = store.sink("f").ok_or("no sink")?;
        sink.write(line("nobody follows"));
        assert!(!sink.has_followers_channel(), "a ring without followers");

        let mut first = store.subscribe("f");
        let mut second = store.subscribe("f");
        assert!(sink.has_followers_channel());
        sink.write(line("both see it"));
        assert_eq!(first.try_recv()?.text, "both see it");
        assert_eq!(second.try_recv()?.text, "both see it");
        drop(first);
        sink.write(line("one is left"));
        assert_eq!(second.try_recv()?.text, "one is left");
        assert!(sink.has_followers_channel());

        drop(second);
        sink.write(line("gone"));
        assert!(
            !sink.has_followers_channel(),
            "the ring outlived its followers"
        );
        // A new follower gets a new channel, and the lines from then on.
        let mut again = store.subscribe("f");
        sink.write(line("back"));
        assert_eq!(again.try_recv()?.text, "back");
        assert_eq!(store.read("f", None, None).len(), 5);
        Ok(())
    }

    #[test]
    fn rotates_within_the_cap_and_reads_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let rotation = Rotation {
            max_bytes: 1024,
            files: 3,
        };
        let store = LogStore::open(LogConfig {
            dir: dir.path().to_path_buf(),
            rotation,
        })?;
        let sink = store.sink("f").ok_or("no sink")?;
        for i in 0..200 {
            sink.write(line(&format!("line {i:04}")));
        }
        let files: Vec<_> = fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(f.metadata()?.len() <= 1024, "{:?} over the cap", f.path());
        }
        let read = store.read("f", None, None);
        let numbers: Vec<usize> = read
            .iter()
            .map(|l| l.text[5..].parse())
            .collect::<Result<_, _>>()?;
        // The newest lines, contiguous and in order, across the three files.
        assert_eq!(numbers.last(), Some(&199));
        assert!(numbers.len() > 20, "{}", numbers.len());
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        let tail = store.read("f", None, Some(5));
        assert_eq!(tail.first().map(|l| l.text.as_str()), Some("line 0195"));

        let bad = LogStore::open(LogConfig {
            dir: dir.path().to_path_buf(),
            rotation: Rotation {
                max_bytes: 10,
                files: 3,
            },
        });
        assert!(bad.is_err());
        Ok(())
    }
}
