//! skiff's embedded metrics history: what each revision served and used, kept in the daemon's
//! data directory so that SLO error budgets, costs, `skiff top`, `skiff metrics SERVICE
//! --since 1h` and the dashboard survive restarts without a Prometheus.
//!
//! # Design
//!
//! One series per revision; [`History::record`] adds samples into open 10 s intervals in
//! memory, [`History::flush`] writes the closed ones to SQLite (`history.db`), rolls 10 s rows
//! older than 24 h into 5 min rows and deletes 5 min rows older than 35 days. Queries add up a
//! Service's revisions over a window, flushed or not. Rows are a sparse varint encoding (see
//! `encoding.rs`).
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
