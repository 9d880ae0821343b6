//! The request log: one JSON line per request ([`RequestLogLine`]) in
//! `<logs>/<namespace>/<revision>.requests.log`, beside the revision's container log, rotated
//! by size like it (`.requests.log.1` … `.N`).
//!
//! Written by one thread only (the [`crate::RequestTelemetry`] worker), through a buffer
//! flushed when the worker has nothing left to do, so a line is readable within a fraction
//! of a second of its request's end.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use skiff_api::wire::RequestLogLine;
use skiff_router::record::RequestRecord;

/// A file not written for this long is closed (its revision is idle or gone).
const IDLE_CLOSE: Duration = Duration::from_secs(300);

/// The current request log of a revision.
pub fn path(dir: &Path, namespace: &str, revision: &str) -> PathBuf {
    dir.join(namespace).join(format!("{revision}.requests.log"))
}

/// `<file>.N`.
fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// A request's log line.
pub fn line(r: RequestRecord) -> RequestLogLine {
    let ts = jiff::Timestamp::try_from(r.at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    RequestLogLine {
        ts: ts.to_string(),
        request_id: r.request_id,
        trace_id: r.trace_id,
        method: r.method,
        host: r.host,
        path: r.path,
        status: r.status,
        duration_ms: r.duration.as_secs_f64() * 1e3,
        bytes: r.bytes,
        revision: r.revision,
        instance: r.instance,
        cold_start: r.cold_start.is_some(),
        cold_start_ms: r.cold_start.map(|d| d.as_secs_f64() * 1e3),
        throttled: r.throttled.map(|t| t.as_str().to_owned()),
        incomplete: !r.complete,
    }
}

struct Open {
    out: BufWriter<std::fs::File>,
    size: u64,
    used: Instant,
}

/// Appends request lines to each revision's request log.
#[derive(Debug)]
pub struct RequestLog {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    open: HashMap<PathBuf, Open>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open").field("size", &self.size).finish()
    }
}

impl RequestLog {
    /// Logs under `dir`, rotated once a file reaches `max_bytes`, `keep` old files kept.
    pub fn new(dir: &Path, max_bytes: u64, keep: usize) -> Self {
        RequestLog {
            dir: dir.to_path_buf(),
            max_bytes,
            keep,
            open: HashMap::new(),
        }
    }

    /// Appends `r`'s line to its revision's log.
    pub fn append(&mut self, r: RequestRecord) -> std::io::Result<()> {
        let p = path(&self.dir, &r.namespace, &r.revision);
        let mut json = serde_json::to_vec(&line(r)).map_err(std::io::Error::other)?;
        json.push(b'\n');
        if !self.open.contains_key(&p) {
            let o = open(&p)?;
            self.open.insert(p.clone(), o);
        }
        let (max, keep) = (self.max_bytes, self.keep);
        let Some(o) = self.open.get_mut(&p) else {
            return Ok(());
        };
        if o.size > 0 && o.size + json.len() as u64 > max {
            o.out.flush()?;
            for i in (1..keep).rev() {
                let _ = std::fs::rename(rotated(&p, i), rotated(&p, i + 1));
            }
            if keep > 0 {
                std::fs::rename(&p, rotated(&p, 1))?;
            } else {
                std::fs::remove_file(&p)?;
            }
            *o = open(&p)?;
        }
        o.out.write_all(&json)?;
        o.size += json.len() as u64;
        o.used = Instant::now();
        Ok(())
    }

    /// Writes what is buffered, and closes files idle for a while.
    pub fn flush(&mut self) {
        let now = Instant::now();
        self.open.retain(|p, o| {
            if let Err(e) = o.out.flush() {
                tracing::warn!(file = %p.display(), error = %e, "writing the request log failed");
            }
            now.duration_since(o.used) < IDLE_CLOSE
        });
    }
}

fn open(p: &Path) -> std::io::Result<Open> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)?;
    let size = file.metadata()?.len();
    Ok(Open {
        out: BufWriter::with_capacity(64 << 10, file),
        size,
        used: Instant::now(),
    })
}

/// The request log files of a revision, oldest first.
pub fn files(dir: &Path, namespace: &str, revision: &str) -> Vec<PathBuf> {
    let current = path(dir, namespace, revision);
    let mut out: Vec<PathBuf> = (1..=16)
        .rev()
        .map(|i| rotated(&current, i))
        .filter(|p| p.exists())
        .collect();
    if current.exists() {
        out.push(current);
    }
    out
}

/// Every line of a revision's request log, oldest first, that `keep` accepts (lines that
/// are not request lines are skipped). Blocking.
pub fn read(
    dir: &Path,
    namespace: &str,
    revision: &str,
    mut keep: impl FnMut(&RequestLogLine) -> bool,
) -> Vec<RequestLogLine> {
    let mut out = Vec::new();
    for f in files(dir, namespace, revision) {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        for l in std::io::BufReader::new(file).lines() {
            let Ok(l) = l else { break };
            if let Ok(line) = serde_json::from_str::<RequestLogLine>(&l)
                && keep(&line)
            {
                out.push(line);
            }
        }
    }
    out
}

/// When a request log line's request arrived and ended.
pub fn span_of(l: &RequestLogLine) -> Option<(SystemTime, SystemTime)> {
    let at: SystemTime = l.ts.parse::<jiff::Timestamp>().ok()?.into();
    let end = at + Duration::from_secs_f64(l.duration_ms.max(0.0) / 1e3);
    Some((at, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    #[test]
    fn lines_are_appended_rotated_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RequestLog::new(dir.path(), 600, 2);
        for i in 0..10 {
            let mut r = record(200, false);
            r.request_id = format!("req-{i}");
            log.append(r).expect("append");
        }
        log.flush();
        let files = files(dir.path(), "default", "hello-00001");
        assert_eq!(files.len(), 3, "{files:?}");
        let lines = read(dir.path(), "default", "hello-00001", |_| true);
        let ids: Vec<&str> = lines.iter().map(|l| l.request_id.as_str()).collect();
        // The oldest went with the file rotated out; the rest are in order.
        assert!(ids.len() < 10 && ids.len() >= 4, "{ids:?}");
        assert_eq!(ids.last(), Some(&"req-9"));
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| id[4..].parse::<u32>().unwrap_or(0));
        assert_eq!(ids, sorted);
        for l in &lines {
            assert_eq!(l.path, "/hello");
            assert!(!l.cold_start);
        }
    }

    #[test]
    fn a_line_says_what_the_request_got() {
        let mut r = record(503, false);
        r.cold_start = Some(Duration::from_millis(42));
        r.throttled = Some(skiff_router::Throttle::QueueTimeout);
        r.complete = false;
        let l = line(r.clone());
        assert_eq!(l.status, 503);
        assert!(l.cold_start);
        assert_eq!(l.cold_start_ms, Some(42.0));
        assert_eq!(l.throttled.as_deref(), Some("queue_timeout"));
        assert!(l.incomplete);
        let (at, end) = span_of(&l).expect("times");
        assert_eq!(at, r.at);
        assert!(end > at);
        let json = serde_json::to_string(&l).expect("json");
        assert!(json.contains(r#""requestId":"req-1""#), "{json}");
    }
}
