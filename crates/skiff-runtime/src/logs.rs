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

/// Appends log lines to per-revision files.
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    rotation: Rotation,
    writers: Arc<Mutex<std::collections::HashMap<PathBuf, Writer>>>,
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
            writers: Arc::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a line.
    pub fn append(&self, namespace: &str, revision: &str, line: &LogLine) {
        let path = revision_log(&self.dir, namespace, revision);
        let mut json = serde_json::to_vec(line).unwrap_or_default();
        json.push(b'\n');
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        if !writers.contains_key(&path) {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            else {
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
            return;
        };
        if w.size + json.len() as u64 > self.rotation.max_bytes && w.size > 0 {
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
        }
    }

    /// Forgets open files of a revision (it was deleted); the files stay.
    pub fn close(&self, namespace: &str, revision: &str) {
        let path = revision_log(&self.dir, namespace, revision);
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&path);
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
    /// The namespace.
    pub namespace: String,
    /// The revision.
    pub revision: String,
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
            &t.namespace,
            &t.revision,
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
                "default",
                "hello-00001",
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
            namespace: "ns".into(),
            revision: "r".into(),
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
        let target = PumpTarget {
            store,
            namespace: "ns".into(),
            revision: "r".into(),
            instance: "i".into(),
            container: "c".into(),
            stream: "stdout",
            tail: tail.clone(),
        };
        tokio::spawn(pump(reader, target));
        skiff_wait(|| read_all(d.path(), "ns", "r").len() == 3).await;
        assert_eq!(tail.last(2), vec!["two".to_owned(), "three".to_owned()]);
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
