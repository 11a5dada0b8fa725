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
//!
//! Reading never holds up the writer: a read takes the sink's lock only to open the files
//! (and note the live file's length then, all whole lines since writes hold the lock), then
//! reads the open files after releasing it, so a rotation meanwhile (renames, removal of the
//! oldest) does not change what it reads. Lines are read as they are asked for, never the
//! whole history at once. A tail is found by reading the files backwards from their end,
//! `--since` skips the files last written well before the cut, and a line is never longer
//! than [`MAX_READ_LINE`] (longer ones, which the supervisor never writes, are skipped).

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::provider::{LogLine, LogQuery, LogRead, RuntimeError};

/// Default size of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Default number of files kept per function, the live one included.
pub const DEFAULT_FILES: usize = 4;
/// Lines a slow follower may lag behind before it starts missing some.
const FOLLOW_BUFFER: usize = 1024;
/// The longest line a reader takes (a JSON line of the longest text the supervisor writes is
/// far shorter); longer ones are skipped.
pub const MAX_READ_LINE: usize = 1 << 20;
/// How much of a file a reader takes at a time.
const READ_CHUNK: usize = 64 * 1024;
/// A file last written this long before a `since` cut holds no line at or after it (file
/// times can lag the clock by a tick).
const MTIME_SLACK: Duration = Duration::from_secs(1);

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

    /// A read of a function's stored lines (see the module's doc), and with `follow` the
    /// lines written after them. Blocks while it opens the files; iterating the lines reads
    /// them.
    pub fn read(&self, name: &str, query: &LogQuery) -> LogRead {
        let Some(sink) = self.sink(name) else {
            return LogRead {
                stored: Box::new(std::iter::empty()),
                live: query.follow.then(|| broadcast::channel(1).1),
            };
        };
        let (parts, live) = {
            let file = sink.file.lock().unwrap_or_else(PoisonError::into_inner);
            let parts: Vec<Part> = file.paths().iter().filter_map(|p| Part::open(p)).collect();
            // Under the lock, as the writer sends: a line is either in the files or to come.
            (parts, query.follow.then(|| sink.follow()))
        };
        LogRead {
            stored: Box::new(Lines::new(parts, query)),
            live,
        }
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
                // Under the lock, so that a reader's files and its live lines meet exactly.
                self.publish(line);
            }
            Err(e) => {
                tracing::warn!("encoding a log line: {e}");
                self.publish(line);
            }
        }
    }

    /// Hands `line` to the followers, if any; drops the ring once the last one has left.
    fn publish(&self, line: LogLine) {
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

/// One file of a log as a read found it: open, with its length then and when it was last
/// written.
struct Part {
    file: File,
    len: u64,
    modified: Option<SystemTime>,
    /// Where the read starts (after the lines a tail leaves out).
    start: u64,
}

impl Part {
    fn open(path: &Path) -> Option<Part> {
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        Some(Part {
            len: meta.len(),
            modified: meta.modified().ok(),
            file,
            start: 0,
        })
    }

    /// Whether it may hold lines at or after `since`.
    fn reaches(&self, since: DateTime<Utc>) -> bool {
        self.modified
            .and_then(|m| m.checked_add(MTIME_SLACK))
            .is_none_or(|m| DateTime::<Utc>::from(m) >= since)
    }
}

/// Which stored lines a read keeps.
struct Filter {
    since: Option<DateTime<Utc>>,
    instance: Option<String>,
}

impl Filter {
    /// The line, if it is whole and kept. A torn line (a crash mid-write) is not.
    fn keep(&self, raw: &[u8]) -> Option<LogLine> {
        let line: LogLine = serde_json::from_slice(raw).ok()?;
        let kept = self.since.is_none_or(|s| line.timestamp >= s)
            && self.instance.as_ref().is_none_or(|i| &line.instance == i);
        kept.then_some(line)
    }
}

/// The lines of a read, oldest first, read from the files as they are asked for.
struct Lines {
    parts: VecDeque<Part>,
    filter: Filter,
    /// Still to be found: where the last `n` kept lines start.
    tail: Option<usize>,
    reading: Option<BufReader<std::io::Take<File>>>,
    buf: Vec<u8>,
}

impl Lines {
    fn new(mut parts: Vec<Part>, query: &LogQuery) -> Lines {
        if let Some(since) = query.since {
            parts.retain(|p| p.reaches(since));
        }
        Lines {
            parts: parts.into(),
            filter: Filter {
                since: query.since,
                instance: query.instance.clone(),
            },
            tail: query.tail,
            reading: None,
            buf: Vec::new(),
        }
    }

    /// Reads backwards from the end of the newest file for the `n`th last kept line, and
    /// starts the read there.
    fn find_tail(&mut self, n: usize) {
        if n == 0 {
            self.parts.clear();
            return;
        }
        let mut found = 0;
        for i in (0..self.parts.len()).rev() {
            let part = &self.parts[i];
            let mut lines = Backwards::new(&part.file, part.len);
            while let Some((start, raw)) = lines.next_back() {
                if self.filter.keep(&raw).is_none() {
                    continue;
                }
                found += 1;
                if found == n {
                    self.parts[i].start = start;
                    self.parts.drain(..i);
                    return;
                }
            }
        }
    }

    /// The next file to read, positioned at its start.
    fn open_next(&mut self) -> Option<()> {
        let Part {
            mut file,
            len,
            start,
            ..
        } = self.parts.pop_front()?;
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let rest = file.take(len.saturating_sub(start));
            self.reading = Some(BufReader::with_capacity(READ_CHUNK, rest));
        }
        Some(())
    }
}

impl Iterator for Lines {
    type Item = LogLine;

    fn next(&mut self) -> Option<LogLine> {
        if let Some(n) = self.tail.take() {
            self.find_tail(n);
        }
        loop {
            let Some(reader) = self.reading.as_mut() else {
                self.open_next()?;
                continue;
            };
            match next_line(reader, &mut self.buf) {
                Ok(true) => {
                    if let Some(line) = self.filter.keep(&self.buf) {
                        return Some(line);
                    }
                }
                Ok(false) | Err(_) => self.reading = None,
            }
        }
    }
}

/// Reads the next line into `buf`, without its newline; `false` at the end. A line longer
/// than [`MAX_READ_LINE`] is skipped (`buf` is left empty).
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_READ_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_READ_LINE {
        buf.clear();
        reader.skip_until(b'\n')?;
    }
    Ok(true)
}

/// The lines of the first `len` bytes of a file, last first, with where each starts; read
/// a chunk at a time from the end.
struct Backwards<'a> {
    file: &'a File,
    /// `buf` holds the file's bytes from here to the end of the lines not yet returned.
    pos: u64,
    buf: Vec<u8>,
    /// The line being collected is over [`MAX_READ_LINE`]: its bytes were dropped.
    long: bool,
}

impl<'a> Backwards<'a> {
    fn new(file: &'a File, len: u64) -> Backwards<'a> {
        Backwards {
            file,
            pos: len,
            buf: Vec::new(),
            long: false,
        }
    }

    /// The previous line (empty for one too long) and its offset; `None` at the start of
    /// the file or on a read error.
    fn next_back(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            // The newline that ends the line being collected is not its start (once its
            // bytes were dropped, the newline there was too).
            let end = match self.buf.last() {
                Some(b'\n') if !self.long => self.buf.len() - 1,
                _ => self.buf.len(),
            };
            let newline = self.buf[..end].iter().rposition(|&b| b == b'\n');
            if newline.is_some() || self.pos == 0 {
                if newline.is_none() && self.buf.is_empty() && !self.long {
                    return None;
                }
                let from = newline.map_or(0, |i| i + 1);
                let line = match std::mem::take(&mut self.long) {
                    true => Vec::new(),
                    false => self.buf[from..end].to_vec(),
                };
                self.buf.truncate(from);
                return Some((self.pos + from as u64, line));
            }
            if self.buf.len() > MAX_READ_LINE {
                self.buf.clear();
                self.long = true;
            }
            let n = READ_CHUNK.min(usize::try_from(self.pos).unwrap_or(READ_CHUNK));
            self.pos -= n as u64;
            let mut chunk = vec![0; n];
            self.file.read_exact_at(&mut chunk, self.pos).ok()?;
            self.buf.splice(0..0, chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        line_of("f-1", text)
    }

    fn line_of(instance: &str, text: &str) -> LogLine {
        LogLine {
            name: "f".into(),
            instance: instance.into(),
            timestamp: Utc::now(),
            text: text.into(),
        }
    }

    fn read(store: &LogStore, since: Option<DateTime<Utc>>, tail: Option<usize>) -> Vec<LogLine> {
        let query = LogQuery {
            since,
            tail,
            ..LogQuery::default()
        };
        store.read("f", &query).stored.collect()
    }

    fn texts(lines: impl Iterator<Item = LogLine>) -> Vec<String> {
        lines.map(|l| l.text).collect()
    }

    fn rotating(dir: &Path, max_bytes: u64, files: usize) -> Result<LogStore, RuntimeError> {
        LogStore::open(LogConfig {
            dir: dir.to_path_buf(),
            rotation: Rotation { max_bytes, files },
        })
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
        let all = read(&reopened, None, None);
        assert_eq!(all.len(), 3);
        let since = read(&reopened, Some(cut), None);
        assert_eq!(since.len(), 2);
        let tail = read(&reopened, None, Some(1));
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
        assert_eq!(read(&store, None, None).len(), 5);
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
        let all = read(&store, None, None);
        let numbers: Vec<usize> = all
            .iter()
            .map(|l| l.text[5..].parse())
            .collect::<Result<_, _>>()?;
        // The newest lines, contiguous and in order, across the three files.
        assert_eq!(numbers.last(), Some(&199));
        assert!(numbers.len() > 20, "{}", numbers.len());
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        let tail = read(&store, None, Some(5));
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

    #[test]
    fn a_tail_of_one_instance_is_its_own_last_lines() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = rotating(dir.path(), 1024, 30)?;
        let sink = store.sink("f").ok_or("no sink")?;
        // f-a's lines are early and few; f-b's fill several files after them.
        for i in 0..5 {
            sink.write(line_of("f-a", &format!("a {i}")));
        }
        for i in 0..100 {
            sink.write(line_of("f-b", &format!("b {i}")));
        }
        let query = |instance: &str, tail| LogQuery {
            instance: Some(instance.into()),
            tail: Some(tail),
            ..LogQuery::default()
        };
        let a = texts(store.read("f", &query("f-a", 2)).stored);
        assert_eq!(a, ["a 3", "a 4"]);
        let a = texts(store.read("f", &query("f-a", 50)).stored);
        assert_eq!(a.len(), 5, "{a:?}");
        let b = texts(store.read("f", &query("f-b", 3)).stored);
        assert_eq!(b, ["b 97", "b 98", "b 99"]);
        assert!(texts(store.read("f", &query("f-c", 3)).stored).is_empty());
        Ok(())
    }

    #[test]
    fn since_skips_the_files_last_written_before_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = rotating(dir.path(), 1024, 4)?;
        let sink = store.sink("f").ok_or("no sink")?;
        for i in 0..40 {
            sink.write(line(&format!("line {i:02}")));
        }
        assert!(dir.path().join("f.jsonl.1").exists());
        // The rotated files say they were last written an hour ago: their lines (which say
        // otherwise) are not even read.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for n in 1..4 {
            if let Ok(f) = File::options()
                .write(true)
                .open(rotated(&dir.path().join("f.jsonl"), n))
            {
                f.set_modified(hour_ago)?;
            }
        }
        let cut = Utc::now() - chrono::Duration::minutes(1);
        let since = read(&store, Some(cut), None);
        let live = fs::read_to_string(dir.path().join("f.jsonl"))?
            .lines()
            .count();
        assert_eq!(since.len(), live);
        assert_eq!(since.last().map(|l| l.text.as_str()), Some("line 39"));
        assert!(read(&store, None, None).len() > live);
        Ok(())
    }

    #[test]
    fn a_read_does_not_hold_up_the_writer_and_follows_exactly(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = rotating(dir.path(), 1024, 3)?;
        let sink = store.sink("f").ok_or("no sink")?;
        for i in 0..10 {
            sink.write(line(&format!("old {i}")));
        }
        let query = LogQuery {
            follow: true,
            ..LogQuery::default()
        };
        let mut read = store.read("f", &query);
        assert_eq!(read.stored.next().map(|l| l.text), Some("old 0".into()));
        // Written (and rotated away several times) mid-read: the writer does not wait for
        // the reader, the read still has what was there when it began, and the new lines
        // come live, once.
        for i in 0..60 {
            sink.write(line(&format!("new {i}")));
        }
        let rest = texts(read.stored);
        assert_eq!(
            rest,
            (1..10).map(|i| format!("old {i}")).collect::<Vec<_>>()
        );
        let mut live = read.live.ok_or("not following")?;
        assert_eq!(live.try_recv()?.text, "new 0");
        Ok(())
    }

    #[test]
    fn backwards_reads_every_line_with_its_offset() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let long = "x".repeat(READ_CHUNK * 2 + 7);
        let text = format!("one\n\n{long}\nthree\nfour");
        fs::write(&path, &text)?;
        let file = File::open(&path)?;
        let mut back = Backwards::new(&file, text.len() as u64);
        let mut got = Vec::new();
        while let Some((at, line)) = back.next_back() {
            assert!(text[at as usize..].starts_with(std::str::from_utf8(&line)?));
            got.push(String::from_utf8(line)?);
        }
        assert_eq!(got, ["four", "three", long.as_str(), "", "one"]);
        Ok(())
    }
}
