//! skiff's embedded metrics history: what each revision served and used, kept in the daemon's
//! data directory so that SLO error budgets, costs, `skiff top`, `skiff metrics SERVICE
//! --since 1h` and the dashboard survive restarts without a Prometheus.
//!
//! # Design
//!
//! ## What is kept
//!
//! One series per revision ([`SeriesKey`]); each interval holds a [`Sample`]: requests by
//! status class, a 23-bucket latency histogram ([`LATENCY_BOUNDS`]), cold starts, refusals,
//! instance / vCPU / GiB / used-CPU seconds (counters, added), and the most instances and memory
//! (gauges, maxed). Queries name a Service ([`ServiceKey`]) and add up its revisions, so a
//! Service's error budget is not reset by a new revision: a deleted revision's history stays
//! until it ages out. [`History::forget_service`] drops everything when the Service itself goes.
//!
//! ## Resolutions
//!
//! - **10 s for 24 h, 5 min for 35 days.** Times are unix seconds (UTC); a 10 s row covers
//!   `[t, t + 10)` with `t` a multiple of 10, a 5 min row `[t, t + 300)` with `t` a multiple of
//!   300. Every sample is in exactly one table, so nothing is counted twice:
//!
//!   | table         | key         | holds                                     |
//!   |---------------|-------------|-------------------------------------------|
//!   | `recent_10s`  | (t, series) | 10 s rows from the current 5 min on       |
//!   | `samples_10s` | (series, t) | 10 s rows of the 24 h before              |
//!   | `samples_5m`  | (series, t) | 5 min rows of the 35 days before that     |
//!
//! - **Maintenance** happens in the flush that crosses a multiple of 300 s (every 30th): it
//!   moves `recent_10s` rows into `samples_10s`, rolls the 10 s rows of every 5 min that ended
//!   more than 24 h ago into their 5 min row (so a 10 s row lives 24 h to 24 h 5 min), and
//!   deletes 5 min rows that ended more than 35 days ago. Roll-ups add integers (see below), so a
//!   day's totals are identical before and after.
//! - **Window edges.** [`History::sum`] counts every row that overlaps `[from, to)` whole: in
//!   the 24 h of 10 s rows the window is in effect widened to multiples of 10 s; where only
//!   5 min rows exist, to multiples of 300 s. The error is therefore at most one 5 min row's
//!   worth (up to 4 min 50 s of extra traffic) at each edge that falls in the 5 min region,
//!   always an over-count, and none for windows aligned to 5 min. A 30-day SLO window starting
//!   at an arbitrary second thus counts up to 0.01 % too much time. [`History::range`] aligns
//!   its steps to multiples of the step and puts a 5 min row into the step holding its start.
//!
//! ## Writes
//!
//! [`History::record`] only adds into the open 10 s interval in memory; empty samples are not
//! even kept, so idle revisions cost nothing anywhere. [`History::flush`] writes the intervals
//! that closed, plus any maintenance due, in one `BEGIN IMMEDIATE` transaction of cached
//! prepared statements; with nothing closed and no boundary crossed it does not touch the file.
//!
//! Flushes append to `recent_10s`, keyed by time, rather than to `samples_10s`, keyed by series,
//! because of SQLite's write unit: appending one row to each busy series' own b-tree page
//! rewrote one 4 KiB page per revision into the WAL on every flush (and again at checkpoint).
//! For 100 busy revisions that was 660 KiB written per flush (5.4 GiB a day) for 6.8 KiB of
//! samples; appending at the end of one b-tree and moving rows in series order every 5 min
//! brought it to 174 KiB (below). Late samples (for an interval already flushed) are added to
//! their row wherever it now is; samples older than 35 days are dropped.
//!
//! ## Encoding
//!
//! A row is a sparse, versioned varint encoding of the sample (format in `encoding.rs`):
//! a version byte, a bit mask of the non-zero values, then those values as LEB128. Durations are
//! whole microseconds, so they encode as integers and add up exactly in roll-ups and queries.
//! A busy 10 s row with every field non-zero takes 68 bytes on average in the size example
//! (5 min rows: 91); a typical busy row (2xx and a few 4xx over five latency buckets) takes 39.
//! `postcard` was considered and rejected: it writes every array element and 8-byte floats.
//!
//! ## Durability
//!
//! The file follows the state store (`skiff-store`): schema version in `PRAGMA user_version`
//! (a newer version is [`HistoryError::NewerSchema`], never a silent reset), a foreign SQLite
//! file is refused, `PRAGMA quick_check` at open ([`HistoryError::Corrupt`] names the file, as
//! do undecodable rows met later), WAL mode, a 5 s busy timeout. Unlike the store it runs with
//! `synchronous=NORMAL`: a crash of the daemon loses nothing committed, a power loss may lose
//! the last flushes. After a restart, [`History::open`] sees every flushed row; what was
//! recorded but not flushed (at most the last 10 s) is lost.
//!
//! # Costs
//!
//! Measured with `cargo run -p skiff-history --example size --release -- N` (every revision
//! busy all the time, every field non-zero; a 2-core machine busy with other builds):
//!
//! - **Disk:** a busy revision keeps 8,640 10 s rows and 9,792 5 min rows (the 34 days before
//!   those 24 h), about 105 bytes a row with SQLite's overhead: **1.85 MiB per busy revision**
//!   (1.8 GiB for 1,000). Idle revisions write nothing; a revision busy 1 h a day keeps 1/24 of
//!   that.
//! - **Memory:** one interval (a 288-byte `Totals`, a key and map overhead, about 0.5 KiB) per
//!   revision that recorded since the last flush, plus SQLite's page cache (2 MiB default).
//! - **Flush:** with 100 busy revisions 0.36 ms on average (p99 10 ms), and 20 ms (p99 38 ms)
//!   for the maintenance flush every 5 min; with 1,000, 3.5 ms (p99 11 ms) and 390 ms (p99
//!   560 ms). The process writes about 1.7 KiB per busy revision per flush (WAL and
//!   checkpoints): 174 KiB per flush, 1.4 GiB a day, for 100; 2 MiB and 17 GiB for 1,000.
//! - **Queries** (one single-revision Service, history of 1,000, warm cache): sum over 1 h
//!   0.2 ms, 24 h 3.8 ms, 30 days 5.7 ms; cold, 2.6, 23 and 19 ms.
//! - **Open:** `quick_check` reads the whole file: 0.4 s for 100 busy revisions, 5 s for
//!   1,000.
//!
//! # Limitations
//!
//! - Calls block on SQLite and `History` is not `Sync`: the daemon keeps it behind a mutex and
//!   calls it from a blocking thread. A maintenance flush holds it for up to ~0.5 s with 1,000
//!   busy revisions.
//! - Long windows are read row by row (18,432 rows for a busy revision over 35 days). A caller
//!   evaluating many 30-day SLOs often should keep its own per-day partial sums.
//! - Durations are kept to the microsecond; negative or non-finite ones count as zero.
//! - Timestamps are the caller's clock. A clock going back loses nothing (flushes write what
//!   is closed, maintenance waits for the clock to pass its last boundary).
//! - If flushes keep failing, the closed intervals stay in memory: one per active revision per
//!   10 s.
#![forbid(unsafe_code)]

mod db;
mod encoding;
mod error;
mod history;
mod sample;

pub use db::{FILE_NAME, SCHEMA_VERSION};
pub use encoding::DecodeError;
pub use error::{BoxError, HistoryError};
pub use history::{Flushed, History, Stats};
pub use sample::{LATENCY_BOUNDS, LATENCY_BUCKETS, Sample, latency_bound_index, latency_bucket};

/// Width of the fine intervals, in seconds: what [`History::record`] adds into.
pub const FINE_STEP_SECS: i64 = 10;
/// How long fine rows are kept before being rolled up: 24 h.
pub const FINE_RETENTION_SECS: i64 = 24 * 3600;
/// Width of the coarse intervals, in seconds: 5 min.
pub const COARSE_STEP_SECS: i64 = 300;
/// How long coarse rows are kept: 35 days, enough for a 30-day SLO window and a month's bill.
pub const COARSE_RETENTION_SECS: i64 = 35 * 24 * 3600;
/// The latest timestamp [`History::record`] accepts (2^40 s, in the year 36812); bounding
/// timestamps keeps every interval computation far from overflow.
pub const MAX_TIMESTAMP: i64 = 1 << 40;
/// The most points [`History::range`] returns: 35 days at 5 min is 10,080.
pub const MAX_RANGE_POINTS: i64 = 20_000;
/// The longest step [`History::range`] accepts: a year.
pub const MAX_RANGE_STEP_SECS: i64 = 366 * 24 * 3600;

/// One revision's series: what [`History::record`] is given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The revision's name.
    pub revision: String,
}

impl SeriesKey {
    /// The key of `revision` of `namespace/service`.
    pub fn new(
        namespace: impl Into<String>,
        service: impl Into<String>,
        revision: impl Into<String>,
    ) -> SeriesKey {
        SeriesKey {
            namespace: namespace.into(),
            service: service.into(),
            revision: revision.into(),
        }
    }

    /// The Service this revision belongs to.
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey::new(self.namespace.clone(), self.service.clone())
    }
}

/// A Service: what queries aggregate over, across all its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
}

impl ServiceKey {
    /// The key of `namespace/service`.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            service: service.into(),
        }
    }
}
