//! Instance logs: every line of every container's stdout and stderr, with a timestamp, the
//! stream and the instance id, appended to one file per revision, rotated by size and kept
//! after the instance ends.
//!
//! # Design
//! A container's stdout and stderr are FIFOs in its instance directory. skiff opens each
//! FIFO for reading, and gives the container the FIFO opened read-*write* as its stdout: the
//! container then itself holds a reader, so if the daemon dies it never gets SIGPIPE; its
//! writes only block once the pipe's 64 KiB buffer is full, until the restarted daemon reopens
//! the FIFO and drains it. No line is lost across a daemon restart.
//!
//! Files: `<logs>/<namespace>/<revision>.log`, rotated to `.log.1` … `.log.N`; each line is
//! JSON: `{"ts":"…","stream":"stdout","instance":"…","container":"…","line":"…"}`.
//!
//! The store counts, per revision, the lines it stored by stream and the lines lost
//! ([`LogCounts`], M13): those it could not write, and those deleted with the oldest rotated
//! file. Nothing is dropped for back-pressure: a pump that falls behind leaves the container
//! blocked on a full pipe instead. A line longer than [`MAX_LINE`] is split, not truncated:
//! each piece is stored, and counted, as a line.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use skiff_api::wire::LogLine;
use tokio::io::AsyncBufReadExt;

/// Longest line kept; longer ones are split.
pub const MAX_LINE: usize = 16 * 1024;

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate once the current file is this large.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: 10 << 20,
            keep: 5,
        }
    }
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
}

/// The revision a line belongs to, with its Service: the labels of its counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogSource {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// The revision (whose file the line goes to).
    pub revision: String,
}

/// What happened to one revision's lines since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Lines stored from the containers' stdout.
    pub stdout: u64,
    /// Lines stored from their stderr.
    pub stderr: u64,
    /// Lines deleted with the oldest rotated file, beyond [`Rotation::keep`] (they may have
    /// been stored before the daemon started).
    pub dropped_rotation: u64,
    /// Lines that could not be written (the file could not be opened, or the write failed).
    pub dropped_write_error: u64,
}

#[derive(Default)]
struct State {
    writers: std::collections::HashMap<PathBuf, Writer>,
    counts: std::collections::HashMap<LogSource, LogCounts>,
}

/// Appends log lines to per-revision files.
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    rotation: Rotation,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("dir", &self.dir).finish()
    }
}

/// The file of a revision's current log.
pub fn revision_log(dir: &Path, namespace: &str, revision: &str) -> PathBuf {
    dir.join(namespace).join(format!("{revision}.log"))
}

impl LogStore {
    /// Logs under `dir`.
    pub fn new(dir: &Path, rotation: Rotation) -> Self {
        LogStore {
            dir: dir.to_path_buf(),
            rotation,
            state: Arc::default(),
        }
    }

    /// Each revision's counts so far (revisions that have had a line since the start).
    pub fn counts(&self) -> Vec<(LogSource, LogCounts)> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a line of `source`'s log.
    pub fn append(&self, source: &LogSource, line: &LogLine) {
        let path = revision_log(&self.dir, &source.namespace, &source.revision);
        let mut json = serde_json::to_vec(line).unwrap_or_default();
        json.push(b'\n');
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { writers, counts } = &mut *guard;
        if !counts.contains_key(source) {
            counts.insert(source.clone(), LogCounts::default());
        }
        let Some(counts) = counts.get_mut(source) else {
            return;
        };
        if !writers.contains_key(&path) {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
                counts.dropped_write_error += 1;
                return;
            };
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            writers.insert(
                path.clone(),
                Writer {
                    path: path.clone(),
                    file,
                    size,
                },
            );
        }
        let Some(w) = writers.get_mut(&path) else {
            counts.dropped_write_error += 1;
            return;
        };
        if w.size + json.len() as u64 > self.rotation.max_bytes && w.size > 0 {
            counts.dropped_rotation += lines_rotation_deletes(&w.path, self.rotation.keep);
            // Rotate: .log.(N-1) → .log.N, …, .log → .log.1.
            for i in (1..self.rotation.keep).rev() {
                let _ = std::fs::rename(rotated(&w.path, i), rotated(&w.path, i + 1));
            }
            if self.rotation.keep > 0 {
                let _ = std::fs::rename(&w.path, rotated(&w.path, 1));
            } else {
                let _ = std::fs::remove_file(&w.path);
            }
            if let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&w.path)
            {
                w.file = file;
                w.size = 0;
            }
        }
        if w.file.write_all(&json).is_ok() {
            w.size += json.len() as u64;
            if line.stream == "stderr" {
                counts.stderr += 1;
            } else {
                counts.stdout += 1;
            }
        } else {
            counts.dropped_write_error += 1;
        }
    }

    /// Forgets open files of a revision (it was deleted); the files stay.
    pub fn close(&self, namespace: &str, revision: &str) {
        let path = revision_log(&self.dir, namespace, revision);
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .writers
            .remove(&path);
    }
}

/// The lines a rotation of `current` deletes when `keep` rotated files are kept: those of
/// `.log.<keep>`, which the next file replaces, or of the current file itself when none is
/// kept. Read from the file, so lines stored before the daemon started count too.
fn lines_rotation_deletes(current: &Path, keep: usize) -> u64 {
    let (replaced_by, deleted) = match keep {
        0 => return count_lines(current),
        1 => (current.to_path_buf(), rotated(current, 1)),
        k => (rotated(current, k - 1), rotated(current, k)),
    };
    // A rename only replaces the file when there is one to move onto it.
    if replaced_by.exists() {
        count_lines(&deleted)
    } else {
        0
    }
}

/// The lines of a file (0 if it cannot be read).
fn count_lines(path: &Path) -> u64 {
    use std::io::Read as _;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return n,
            Ok(read) => n += buf[..read].iter().filter(|b| **b == b'\n').count() as u64,
        }
    }
}

/// `<file>.N`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of a revision's log, oldest first.
pub fn files_of(dir: &Path, namespace: &str, revision: &str, keep: usize) -> Vec<PathBuf> {
    let current = revision_log(dir, namespace, revision);
    let mut out: Vec<PathBuf> = (1..=keep.max(16))
        .rev()
        .map(|i| rotated(&current, i))
        .filter(|p| p.exists())
        .collect();
    if current.exists() {
        out.push(current);
    }
    out
}

/// Reads every line of a revision's log, oldest first.
pub fn read_all(dir: &Path, namespace: &str, revision: &str) -> Vec<LogLine> {
    files_of(dir, namespace, revision, 16)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The last lines seen of a container, for crash reports.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// Keeps `line` among the last 20.
    pub fn push(&self, line: &str) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == 20 {
            q.pop_front();
        }
        q.push_back(line.to_owned());
    }

    /// The last `n` lines.
    pub fn last(&self, n: usize) -> Vec<String> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }
}

/// Where a pump's lines go.
#[derive(Debug, Clone)]
pub struct PumpTarget {
    /// The log store.
    pub store: LogStore,
    /// The revision whose log it is.
    pub source: LogSource,
    /// The instance.
    pub instance: String,
    /// The container.
    pub container: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The container's recent lines.
    pub tail: Tail,
}

/// Creates the FIFO at `path` (replacing an old one) and returns (reader for skiff, read-write
/// end to give the container).
pub fn fifo(path: &Path) -> std::io::Result<(tokio::net::unix::pipe::Receiver, std::fs::File)> {
    if !path.exists() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )?;
    }
    let reader = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(false)
        .open_receiver(path)?;
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    Ok((reader, writer))
}

/// Reopens an existing FIFO for reading (after a daemon restart).
pub fn reopen(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(false)
        .open_receiver(path)
}

/// Copies lines from `reader` into the log until the writer side is gone.
pub async fn pump(reader: tokio::net::unix::pipe::Receiver, t: PumpTarget) {
    let mut r = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        t.tail.push(&line);
        t.store.append(
            &t.source,
            &LogLine {
                ts: jiff::Timestamp::now().to_string(),
                stream: t.stream.to_owned(),
                instance: t.instance.clone(),
                container: t.container.clone(),
                line,
            },
        );
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn source(namespace: &str, revision: &str) -> LogSource {
        LogSource {
            namespace: namespace.into(),
            service: "hello".into(),
            revision: revision.into(),
        }
    }

    fn line(stream: &str, text: String) -> LogLine {
        LogLine {
            ts: "t".into(),
            stream: stream.into(),
            instance: "i".into(),
            container: "c".into(),
            line: text,
        }
    }

    fn counts_of(store: &LogStore, s: &LogSource) -> LogCounts {
        store
            .counts()
            .into_iter()
            .find(|(k, _)| k == s)
            .map(|(_, c)| c)
            .unwrap_or_default()
    }

    /// Lines land in the revision's file as JSON; the file rotates by size and keeps N.
    #[test]
    fn appends_and_rotates() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(
            d.path(),
            Rotation {
                max_bytes: 400,
                keep: 2,
            },
        );
        for i in 0..30 {
            store.append(
                &source("default", "hello-00001"),
                &LogLine {
                    ts: "t".into(),
                    stream: "stdout".into(),
                    instance: "i".into(),
                    container: "c".into(),
                    line: format!("line {i}"),
                },
            );
        }
        let files = files_of(d.path(), "default", "hello-00001", 2);
        assert_eq!(files.len(), 3, "current + 2 rotated: {files:?}");
        let lines = read_all(d.path(), "default", "hello-00001");
        assert_eq!(lines.last().map(|l| l.line.as_str()), Some("line 29"));
        assert!(lines.len() < 30, "the oldest were rotated away");
        let first: u32 = lines[0]
            .line
            .trim_start_matches("line ")
            .parse()
            .expect("n");
        let expected: Vec<String> = (first..30).map(|i| format!("line {i}")).collect();
        assert_eq!(
            lines.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            expected,
            "no gap, in order"
        );
        // Every line stored is counted; those rotated away are counted dropped, exactly.
        let c = counts_of(&store, &source("default", "hello-00001"));
        assert_eq!((c.stdout, c.stderr), (30, 0));
        assert_eq!(c.dropped_rotation, 30 - lines.len() as u64);
        assert_eq!(c.dropped_write_error, 0);
    }

    /// Rotation drops count lines of files written before the store started (a daemon
    /// restart), and with no rotated file kept, the current file's; streams count apart.
    #[test]
    fn rotation_drops_count_every_line_deleted() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = source("default", "hello-00001");
        let rotation = Rotation {
            max_bytes: 300,
            keep: 1,
        };
        let before = LogStore::new(d.path(), rotation);
        for i in 0..12 {
            before.append(&s, &line("stdout", format!("before {i}")));
        }
        let kept_before = read_all(d.path(), "default", "hello-00001").len() as u64;
        let dropped_before = counts_of(&before, &s).dropped_rotation;
        assert_eq!(kept_before + dropped_before, 12);
        // A new store over the same files: whatever it deletes counts, old lines included.
        let after = LogStore::new(d.path(), rotation);
        for i in 0..40 {
            let stream = if i % 4 == 0 { "stderr" } else { "stdout" };
            after.append(&s, &line(stream, format!("after {i}")));
        }
        let c = counts_of(&after, &s);
        assert_eq!((c.stdout, c.stderr), (30, 10));
        let kept = read_all(d.path(), "default", "hello-00001").len() as u64;
        assert_eq!(kept + c.dropped_rotation, kept_before + 40);

        let none_kept = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(
            none_kept.path(),
            Rotation {
                max_bytes: 300,
                keep: 0,
            },
        );
        for i in 0..20 {
            store.append(&s, &line("stdout", format!("line {i}")));
        }
        let kept = read_all(none_kept.path(), "default", "hello-00001").len() as u64;
        assert_eq!(kept + counts_of(&store, &s).dropped_rotation, 20);
    }

    /// A line that cannot be written (its file cannot be created) is counted dropped, not
    /// stored.
    #[test]
    fn unwritable_lines_are_counted_dropped() {
        let d = tempfile::tempdir().expect("tempdir");
        // The namespace's directory is a file: the log cannot be created under it.
        std::fs::write(d.path().join("default"), b"").expect("a file in the way");
        let store = LogStore::new(d.path(), Rotation::default());
        let s = source("default", "hello-00001");
        store.append(&s, &line("stdout", "lost".into()));
        let c = counts_of(&store, &s);
        assert_eq!((c.stdout, c.dropped_write_error), (0, 1));
    }

    /// A FIFO pumped into the store keeps every line, and a writer that outlives the reader
    /// never gets SIGPIPE (it holds a reader itself).
    #[tokio::test]
    async fn fifo_pump() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(d.path(), Rotation::default());
        let path = d.path().join("out.fifo");
        let (reader, mut writer) = fifo(&path).expect("fifo");
        let tail = Tail::default();
        let target = PumpTarget {
            store: store.clone(),
            source: source("ns", "r"),
            instance: "i".into(),
            container: "c".into(),
            stream: "stdout",
            tail: tail.clone(),
        };
        let pumping = tokio::spawn(pump(reader, target));
        writer.write_all(b"one\ntwo\n").expect("write");
        skiff_wait(|| read_all(d.path(), "ns", "r").len() == 2).await;
        pumping.abort();
        // The reader is gone; writing still succeeds (buffered), no SIGPIPE.
        writer
            .write_all(b"three\n")
            .expect("write after the reader died");
        let reader = reopen(&path).expect("reopen");
        let store_counts = store.clone();
        let target = PumpTarget {
            store,
            source: source("ns", "r"),
            instance: "i".into(),
            container: "c".into(),
            stream: "stdout",
            tail: tail.clone(),
        };
        tokio::spawn(pump(reader, target));
        skiff_wait(|| read_all(d.path(), "ns", "r").len() == 3).await;
        assert_eq!(tail.last(2), vec!["two".to_owned(), "three".to_owned()]);
        assert_eq!(counts_of(&store_counts, &source("ns", "r")).stdout, 3);
    }

    async fn skiff_wait(cond: impl Fn() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("condition not met within 10 s");
    }
}
