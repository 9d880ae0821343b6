//! [`HistoryError`]: everything a [`crate::History`] call can fail with.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::encoding::DecodeError;

/// The boxed source carried by [`HistoryError::Corrupt`] and [`HistoryError::Sqlite`].
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A metrics history operation failed.
///
/// Every variant about the file names it. [`HistoryError::NotADatabase`],
/// [`HistoryError::Corrupt`], [`HistoryError::NewerSchema`] and [`HistoryError::NotAHistory`]
/// mean the file cannot be used as it is: the daemon decides whether to stop or to move it
/// aside and start an empty history (nothing in it is needed to run Services).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The directory that should hold the database could not be created.
    #[error("creating metrics history directory `{}`", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a SQLite database.
    #[error("`{}` is not a SQLite database; refusing to use it as the metrics history", path.display())]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a SQLite database, but damaged, or it holds a row this build cannot decode.
    #[error("metrics history `{}` is corrupt", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite, `PRAGMA quick_check` or the row decoder reported.
        #[source]
        source: BoxError,
    },
    /// The file was written by a newer skiff, with a schema this build does not know.
    #[error(
        "metrics history `{}` has schema version {found}, but this skiff knows only versions up \
         to {supported}: a newer skiff wrote it",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows ([`crate::SCHEMA_VERSION`]).
        supported: i64,
    },
    /// The file is a SQLite database, but not one skiff's history created.
    #[error(
        "`{}` is a SQLite database but not a skiff metrics history (schema version {found})",
        path.display()
    )]
    NotAHistory {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
    },
    /// Any other SQLite failure.
    #[error("metrics history `{}`: {operation}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What the history was doing.
        operation: &'static str,
        /// SQLite's error.
        #[source]
        source: BoxError,
    },
    /// A range query's step is not a positive multiple of 10 s.
    #[error("range step {step} s is not a positive multiple of 10 s")]
    InvalidStep {
        /// The step asked for.
        step: i64,
    },
    /// A range query would return more points than [`crate::MAX_RANGE_POINTS`].
    #[error("a range of {points} points is more than the {max} allowed; use a longer step")]
    TooManyPoints {
        /// The points the query would return.
        points: i64,
        /// The limit.
        max: i64,
    },
}

impl HistoryError {
    /// Sorts a SQLite error from `operation` on `path` into the variant an operator can act on.
    pub(crate) fn sqlite(path: &Path, operation: &'static str, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => HistoryError::NotADatabase { path, source },
            Some(ErrorCode::DatabaseCorrupt) => HistoryError::Corrupt {
                path,
                source: Box::new(source),
            },
            _ => HistoryError::Sqlite {
                path,
                operation,
                source: Box::new(source),
            },
        }
    }

    /// Whether the file cannot be used as it is (see the type's documentation).
    pub fn is_unusable_file(&self) -> bool {
        matches!(
            self,
            HistoryError::NotADatabase { .. }
                | HistoryError::Corrupt { .. }
                | HistoryError::NewerSchema { .. }
                | HistoryError::NotAHistory { .. }
        )
    }
}

/// A stored row that did not decode.
#[derive(Debug)]
pub(crate) struct BadRow {
    /// The table holding it.
    pub(crate) table: &'static str,
    /// Its series id.
    pub(crate) series: i64,
    /// Its interval start.
    pub(crate) t: i64,
    /// Why it did not decode.
    pub(crate) source: DecodeError,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "row (series {}, t {}) of table {} does not decode",
            self.series, self.t, self.table
        )
    }
}

impl StdError for BadRow {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}

/// `PRAGMA quick_check` found problems.
#[derive(Debug)]
pub(crate) struct QuickCheckFailed {
    /// The rows `quick_check` returned (at most 100).
    pub(crate) problems: Vec<String>,
}

impl fmt::Display for QuickCheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PRAGMA quick_check reported: {}",
            self.problems.join("; ")
        )
    }
}

impl StdError for QuickCheckFailed {}

/// SQLite refused to switch to WAL mode (for example on a filesystem without shared memory).
#[derive(Debug)]
pub(crate) struct NotWal {
    /// The journal mode SQLite kept.
    pub(crate) mode: String,
}

impl fmt::Display for NotWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SQLite kept journal_mode `{}` instead of WAL", self.mode)
    }
}

impl StdError for NotWal {}
