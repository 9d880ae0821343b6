//! [`QueueError`]: everything a queue call can fail with.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::ErrorCode;

use crate::{DeliveryId, DeliveryState};

/// The shared source carried by [`QueueError`] variants. It is an `Arc` so that one failed
/// group commit can be reported to every caller whose events were in it (see
/// [`crate::Queue::enqueue`]), which makes `QueueError` cheap to clone.
pub type ErrorSource = Arc<dyn StdError + Send + Sync>;

/// A queue call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The directory that should hold the database could not be created.
    #[error("creating delivery queue directory `{}`", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: ErrorSource,
    },
    /// The file exists but is not a SQLite database.
    #[error("`{}` is not a SQLite database; refusing to use it as the delivery queue", path.display())]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: ErrorSource,
    },
    /// The file is a SQLite database, but damaged.
    #[error(
        "delivery queue `{}` is corrupt; refusing to open it (move it aside to start empty, \
         or restore it from a backup)",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What `PRAGMA quick_check` or SQLite reported.
        #[source]
        source: ErrorSource,
    },
    /// The file was written by a newer skiff, with a schema this build does not know.
    #[error(
        "delivery queue `{}` has schema version {found}, but this skiff knows only versions up \
         to {supported}: a newer skiff wrote it, so run that skiff or move the file aside",
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
    /// The file is a SQLite database, but not one skiff created as a queue.
    #[error(
        "`{}` is a SQLite database but not a skiff delivery queue (schema version {found}); \
         refusing to use it",
        path.display()
    )]
    NotAQueue {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
    },
    /// Any other SQLite failure while opening, configuring or migrating the database.
    #[error("opening delivery queue `{}`: {step}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What `open` was doing.
        step: &'static str,
        /// SQLite's error.
        #[source]
        source: ErrorSource,
    },
    /// SQLite failed during a call. Nothing of the call was applied unless it says otherwise.
    #[error("delivery queue {operation} failed")]
    Sqlite {
        /// The call (`enqueue`, `claim`, ...).
        operation: &'static str,
        /// SQLite's error.
        #[source]
        source: ErrorSource,
    },
    /// A stored row holds a value this build cannot read (a state it does not know, a time out
    /// of range): the file was edited by hand or is damaged.
    #[error("delivery queue {operation}: unreadable row: {detail}")]
    CorruptRow {
        /// The call.
        operation: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// `ack`, `retry` or `dead` presented a lease that is no longer held: it expired and another
    /// consumer claimed the delivery, or the delivery was already finished or dropped. Nothing
    /// was changed; the current holder (if any) decides the delivery's fate.
    #[error("the lease on delivery {delivery} is no longer held ({})", StaleReason(*state))]
    StaleLease {
        /// The delivery.
        delivery: DeliveryId,
        /// Its state now, or `None` if it no longer exists (dropped or compacted).
        state: Option<DeliveryState>,
    },
    /// An event's payload is larger than [`crate::MAX_PAYLOAD_BYTES`].
    #[error("event payload of {len} bytes is larger than the queue's limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An event's `source_key` is longer than [`crate::MAX_SOURCE_KEY_BYTES`].
    #[error("event source key of {len} bytes is longer than the queue's limit of {max} bytes")]
    SourceKeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A subscription name is empty, too long, or listed twice for one event.
    #[error("invalid subscription {subscription:?}: {reason}")]
    InvalidSubscription {
        /// The name as given (cut to [`crate::MAX_SUBSCRIPTION_BYTES`] if longer).
        subscription: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A time computed from the caller's `now` (a lease's end) is outside what the queue can
    /// store (about ±9999 years).
    #[error("delivery queue {operation}: {what} is out of range")]
    TimeOutOfRange {
        /// The call.
        operation: &'static str,
        /// Which time.
        what: &'static str,
    },
    /// [`crate::Queue::close`] was called.
    #[error("the delivery queue is closed")]
    Closed,
    /// An earlier call panicked while holding the connection, so its state is unknown. The
    /// queue refuses further calls; reopen it (SQLite rolls back whatever was half done).
    #[error("an earlier delivery queue call panicked while holding the connection")]
    Poisoned,
}

/// Formats a [`QueueError::StaleLease`]'s state.
struct StaleReason(Option<DeliveryState>);

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("it no longer exists"),
            Some(DeliveryState::Leased) => f.write_str("another consumer leased it"),
            Some(DeliveryState::Ready) => f.write_str("it was released for another attempt"),
            Some(DeliveryState::Done) => f.write_str("it is already done"),
            Some(DeliveryState::Dead) => f.write_str("it is already dead-lettered"),
        }
    }
}

impl QueueError {
    /// Sorts a SQLite error from `open`'s `step` into the variant an operator can act on.
    pub(crate) fn open(path: &Path, step: &'static str, err: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        let code = err.sqlite_error_code();
        let source: ErrorSource = Arc::new(err);
        match code {
            Some(ErrorCode::NotADatabase) => QueueError::NotADatabase { path, source },
            Some(ErrorCode::DatabaseCorrupt) => QueueError::Corrupt { path, source },
            _ => QueueError::Open { path, step, source },
        }
    }

    /// A SQLite failure during `operation`.
    pub(crate) fn sqlite(operation: &'static str, err: rusqlite::Error) -> Self {
        QueueError::Sqlite {
            operation,
            source: Arc::new(err),
        }
    }
}

/// Attaches the operation name to a SQLite error.
pub(crate) trait During<T> {
    fn during(self, operation: &'static str) -> Result<T, QueueError>;
}

impl<T> During<T> for rusqlite::Result<T> {
    fn during(self, operation: &'static str) -> Result<T, QueueError> {
        self.map_err(|err| QueueError::sqlite(operation, err))
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
