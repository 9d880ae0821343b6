//! The embedded [`Store`] backend: one SQLite database file in WAL mode.
//!
//! # Design
//!
//! The whole store is one file (plus SQLite's `-wal` and `-shm` companions) with two tables:
//!
//! - `kv(key, value, create_revision, mod_revision, version)`: one row per live key. Deleted
//!   keys are removed; there is no history on disk. Watch history is the in-memory
//!   [`History`] of the last [`HISTORY_CAPACITY`] changes (see [`crate::watch`] for why
//!   memory is enough); after a restart it starts empty at the stored revision.
//! - `meta(id = 1, revision)`: the store-wide revision counter, bumped by exactly one in every
//!   transaction that has at least one operation.
//!
//! There is a single [`rusqlite::Connection`], behind a [`std::sync::Mutex`]. Every call takes
//! the mutex on a `spawn_blocking` thread, so SQLite's fsyncs never stall a tokio worker, and
//! calls are serialized: reads and writes are linearizable because they run one at a time on
//! one connection. A transaction runs under `BEGIN IMMEDIATE`, which takes SQLite's write lock
//! before its first read, so another process sharing the file (an operator's `sqlite3` shell)
//! cannot slip a write between the comparisons and the operations. Watch events are published
//! to the history after `COMMIT` returns and while the mutex is still held, so watchers see
//! transactions in revision order, never see one that was rolled back, and a [`Store::list`]
//! (which reads its rows and the revision in one SQLite read transaction, under the same
//! mutex) never reads a revision whose events are not yet in the history.
//!
//! The schema version lives in `PRAGMA user_version`. [`SqliteStore::open`] applies the
//! missing steps of `MIGRATIONS` in one transaction (a fresh file is version 0, so creating the
//! schema is simply the first migration) and refuses files written by a newer skiff.
//!
//! # Crash safety
//!
//! The store runs with `journal_mode=WAL` and `synchronous=FULL`:
//!
//! - In WAL mode a commit appends the transaction's pages to the `-wal` file; the last frame is
//!   marked as a commit frame, and every frame carries a checksum chained from the previous
//!   one. The main database file is only changed later, by a checkpoint, from frames that are
//!   already committed.
//! - With `synchronous=FULL`, SQLite fsyncs the WAL at every commit before `COMMIT` returns.
//!   [`Store::txn`] returns [`TxnOutcome::Committed`] only after that, so an acknowledged
//!   transaction is on stable storage.
//! - On the next open SQLite replays the WAL only up to the last commit frame whose checksum
//!   chain is intact. Frames of a transaction that was being written when the process died (or
//!   the power failed) are ignored. A crash at any moment therefore leaves either the whole
//!   transaction or none of it, never a half-written value.
//!
//! `PRAGMA quick_check` runs at every open, so a file damaged by something outside SQLite's
//! guarantees (a lying disk, a stray write) is refused with [`OpenError::Corrupt`] instead of
//! being served.
//!
//! # Limitations
//!
//! - Durability across power loss relies on `fsync` reaching the medium. That holds on Linux
//!   with honest disks. On macOS it would also need `PRAGMA fullfsync`, but skiff does not
//!   target macOS.
//! - The crash test here (`kill9_never_loses_an_acknowledged_write`) SIGKILLs a writer at
//!   random points. That proves atomicity and that nothing acknowledged is lost when the
//!   process dies, but the kernel's page cache survives a SIGKILL, so power loss is covered by
//!   SQLite's guarantees and the fsync per commit, not by a test.
//! - One connection means one operation at a time. That is plenty for a single-node control
//!   plane, and it is what makes the store linearizable without further locking.
//! - Dropping a `txn` future does not cancel the transaction: its blocking half runs to
//!   completion, and the caller cannot know whether it committed (like an etcd client whose
//!   request timed out). Callers re-read before retrying.
//! - A transaction whose operations change nothing (deleting only absent keys) still takes a
//!   new revision. etcd would not bump its revision for such a transaction.
//! - `open` runs `quick_check`, which reads the whole file. It takes time proportional to the
//!   store's size, once per daemon start.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tracing::{debug, info, warn};

use crate::watch::{History, Watch};
use crate::{Compare, Event, EventKind, KeyValue, Listing, Op, Store, StoreError, Txn, TxnOutcome};

/// The schema version this build writes, recorded in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Schema steps. `MIGRATIONS[v]` upgrades a database at version `v` to `v + 1`; a fresh file is
/// at version 0, so the first step creates the schema.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema. STRICT makes SQLite reject values of the wrong type instead of
    // silently storing them.
    "CREATE TABLE kv (
         key             TEXT    PRIMARY KEY NOT NULL,
         value           BLOB    NOT NULL,
         create_revision INTEGER NOT NULL,
         mod_revision    INTEGER NOT NULL,
         version         INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE meta (
         id       INTEGER PRIMARY KEY CHECK (id = 1),
         revision INTEGER NOT NULL
     ) STRICT;
     INSERT INTO meta (id, revision) VALUES (1, 0);",
];

// Every version up to SCHEMA_VERSION must have a migration step.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// How long a statement waits for another process's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many recent changes [`SqliteStore::open`] keeps for watchers: a watcher may fall this
/// far behind, or start this far back, before it sees [`crate::WatchError::Compacted`]. An
/// event is a key and two words, so this is about 1 MB; it covers several full passes over a
/// thousand Services.
pub const HISTORY_CAPACITY: usize = 8192;

/// The boxed source carried by [`OpenError`] variants.
type BoxError = Box<dyn StdError + Send + Sync>;

/// Opening the SQLite state store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory that should hold the database could not be created.
    #[error("creating state store directory `{}`", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a SQLite database.
    #[error("`{}` is not a SQLite database; refusing to use it as the state store", path.display())]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: BoxError,
    },
    /// The file is a SQLite database, but damaged.
    #[error(
        "state store `{}` is corrupt; refusing to open it (restore it from a backup)",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What `PRAGMA quick_check` or SQLite reported.
        #[source]
        source: BoxError,
    },
    /// The file was written by a newer skiff, with a schema this build does not know.
    #[error(
        "state store `{}` has schema version {found}, but this skiff knows only versions up to \
         {supported}: a newer skiff wrote it, so run that skiff or restore a backup",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build knows ([`SCHEMA_VERSION`]).
        supported: i64,
    },
    /// The file is a SQLite database, but not one skiff created.
    #[error(
        "`{}` is a SQLite database but not a skiff state store (schema version {found}); \
         refusing to use it",
        path.display()
    )]
    NotAStore {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
    },
    /// Any other SQLite failure while opening, configuring or migrating the database.
    #[error("opening state store `{}`: {step}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What `open` was doing.
        step: &'static str,
        /// SQLite's error.
        #[source]
        source: BoxError,
    },
}

impl OpenError {
    /// Sorts a SQLite error from `step` into the variant an operator can act on.
    fn sqlite(path: &Path, step: &'static str, err: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        let source = Box::new(err);
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => OpenError::NotADatabase { path, source },
            Some(ErrorCode::DatabaseCorrupt) => OpenError::Corrupt { path, source },
            _ => OpenError::Sqlite { path, step, source },
        }
    }
}

/// `PRAGMA quick_check` found problems.
#[derive(Debug)]
struct QuickCheckFailed {
    /// The rows `quick_check` returned (at most 100).
    problems: Vec<String>,
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
struct NotWal {
    /// The journal mode SQLite kept.
    mode: String,
}

impl fmt::Display for NotWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SQLite kept journal_mode `{}` instead of WAL", self.mode)
    }
}

impl StdError for NotWal {}

/// A call panicked while holding the connection, so its state is unknown.
#[derive(Debug)]
struct LockPoisoned;

impl fmt::Display for LockPoisoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an earlier store call panicked while holding the connection")
    }
}

impl StdError for LockPoisoned {}

/// Attaches the operation name to a SQLite error.
trait During<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> During<T> for rusqlite::Result<T> {
    fn during(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|err| backend(operation, err))
    }
}

fn backend(operation: &'static str, err: impl StdError + Send + Sync + 'static) -> StoreError {
    StoreError::Backend {
        operation,
        source: Box::new(err),
    }
}

/// The embedded state store: a SQLite database in WAL mode with `synchronous=FULL`.
///
/// Cloning is not offered; share it behind an `Arc` (or as `Arc<dyn Store>`).
pub struct SqliteStore {
    /// Shared with the `spawn_blocking` closures, which must own what they use.
    inner: Arc<Inner>,
}

struct Inner {
    /// The database file, for logs and errors.
    path: PathBuf,
    /// The only connection; `None` once the store is closed.
    conn: Mutex<Option<Connection>>,
    /// Recent committed changes, published after each commit while `conn` is still locked so
    /// that watchers see revisions in order and lists never get ahead of it.
    history: History,
}

impl Inner {
    /// Locks the connection, turning a poisoned mutex into an error instead of a panic.
    fn lock(
        &self,
        operation: &'static str,
    ) -> Result<MutexGuard<'_, Option<Connection>>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| backend(operation, LockPoisoned))
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file and its parent directory if missing.
    ///
    /// This blocks (it runs `PRAGMA quick_check` over the whole file and may migrate the schema);
    /// call it once at startup, before serving, or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, OpenError> {
        Self::open_with_history(path, HISTORY_CAPACITY)
    }

    /// [`SqliteStore::open`], keeping `history` recent changes for watchers instead of
    /// [`HISTORY_CAPACITY`].
    pub fn open_with_history(path: &Path, history: usize) -> Result<SqliteStore, OpenError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| OpenError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let err = |step| move |e| OpenError::sqlite(path, step, e);

        // No SQLITE_OPEN_URI: a configured path is a path, even if it starts with `file:`.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(err("opening the file"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy_timeout"))?;

        // SQLite opens lazily: this first read of the header is what fails with SQLITE_NOTADB
        // on a file that is not a database. Nothing has been written yet at this point, and
        // nothing is written until the file has passed every check below.
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(err("reading the schema version"))?;
        quick_check(&conn, path)?;
        check_version(path, found)?;
        if found == 0 {
            refuse_foreign(&conn, path)?;
        }

        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err("setting journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Sqlite {
                path: path.to_path_buf(),
                step: "setting journal_mode=WAL",
                source: Box::new(NotWal { mode }),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("setting synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err("setting foreign_keys=ON"))?;

        migrate(&mut conn, path)?;

        let revision = read_revision(&conn).map_err(err("reading the store revision"))?;
        info!(
            path = %path.display(),
            revision,
            schema_version = SCHEMA_VERSION,
            "state store opened"
        );
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(Some(conn)),
                history: History::new(revision, history),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with_conn<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock(operation)?;
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            f(&inner, conn)
        })
        .await
        .map_err(|err| backend(operation, err))?
    }
}

/// Refuses a damaged database.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| OpenError::sqlite(path, "running PRAGMA quick_check", e))?;
    if problems == ["ok"] {
        return Ok(());
    }
    Err(OpenError::Corrupt {
        path: path.to_path_buf(),
        source: Box::new(QuickCheckFailed { problems }),
    })
}

/// Refuses schema versions this build cannot use.
fn check_version(path: &Path, found: i64) -> Result<(), OpenError> {
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(OpenError::NotAStore {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Refuses a version-0 file that already has tables: version 0 is also what any other SQLite
/// file reports, and only an empty one is a fresh skiff store.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|e| OpenError::sqlite(path, "reading the schema", e))?;
    if objects > 0 {
        return Err(OpenError::NotAStore {
            path: path.to_path_buf(),
            found: 0,
        });
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), OpenError> {
    let err = |step| move |e| OpenError::sqlite(path, step, e);
    // IMMEDIATE, and the version is read again inside the transaction, so two processes
    // opening a fresh file at once cannot both create the schema.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("starting the schema transaction"))?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err("reading the schema version"))?;
    check_version(path, found)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found == 0 {
        refuse_foreign(&tx, path)?;
    }
    // `found` is in 0..SCHEMA_VERSION here, so the conversion cannot fail.
    let from = usize::try_from(found).unwrap_or(0);
    for step in MIGRATIONS.iter().skip(from) {
        tx.execute_batch(step)
            .map_err(err("migrating the schema"))?;
    }
    // user_version lives in the database header, which is written under this transaction.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err("recording the schema version"))?;
    tx.commit().map_err(err("committing the schema"))?;
    info!(
        path = %path.display(),
        from = found,
        to = SCHEMA_VERSION,
        "state store schema migrated"
    );
    Ok(())
}

fn read_revision(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT revision FROM meta WHERE id = 1")?
        .query_row([], |row| row.get(0))
}

fn row_to_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        version: row.get(4)?,
    })
}

/// Applies `txn` in one SQLite transaction; returns the outcome and the events to publish.
fn apply_txn(conn: &mut Connection, txn: &Txn) -> Result<(TxnOutcome, Vec<Event>), StoreError> {
    const OP: &str = "txn";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .during(OP)?;

    for compare in &txn.compares {
        match compare {
            Compare::ModRevision { key, revision } => {
                let actual: i64 = tx
                    .prepare_cached("SELECT mod_revision FROM kv WHERE key = ?1")
                    .during(OP)?
                    .query_row([key], |row| row.get(0))
                    .optional()
                    .during(OP)?
                    .unwrap_or(0);
                if actual != *revision {
                    tx.rollback().during(OP)?;
                    return Ok((
                        TxnOutcome::Conflict {
                            key: key.clone(),
                            expected: *revision,
                            actual,
                        },
                        Vec::new(),
                    ));
                }
            }
        }
    }

    let current = read_revision(&tx).during(OP)?;
    if txn.ops.is_empty() {
        // Nothing to write: the comparisons held, and the store stays at its revision.
        tx.rollback().during(OP)?;
        return Ok((TxnOutcome::Committed { revision: current }, Vec::new()));
    }
    let revision = current.checked_add(1).ok_or_else(|| StoreError::Backend {
        operation: OP,
        source: "the store revision counter overflowed".into(),
    })?;
    tx.prepare_cached("UPDATE meta SET revision = ?1 WHERE id = 1")
        .during(OP)?
        .execute([revision])
        .during(OP)?;

    let mut events = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => {
                tx.prepare_cached(
                    "INSERT INTO kv (key, value, create_revision, mod_revision, version)
                     VALUES (?1, ?2, ?3, ?3, 1)
                     ON CONFLICT (key) DO UPDATE SET
                         value = excluded.value,
                         mod_revision = excluded.mod_revision,
                         version = kv.version + 1",
                )
                .during(OP)?
                .execute(params![key, value, revision])
                .during(OP)?;
                events.push(Event {
                    revision,
                    kind: EventKind::Put,
                    key: key.clone(),
                });
            }
            Op::Delete { key } => {
                let removed = tx
                    .prepare_cached("DELETE FROM kv WHERE key = ?1")
                    .during(OP)?
                    .execute([key])
                    .during(OP)?;
                if removed > 0 {
                    events.push(Event {
                        revision,
                        kind: EventKind::Delete,
                        key: key.clone(),
                    });
                }
            }
        }
    }
    tx.commit().during(OP)?;
    Ok((TxnOutcome::Committed { revision }, events))
}

/// Checkpoints the WAL into the main file and closes the connection.
fn close_connection(path: &Path, conn: Connection) -> Result<(), StoreError> {
    const OP: &str = "close";
    // TRUNCATE copies every committed frame into the main file, fsyncs it and empties the
    // WAL, so the file is self-contained for backups once the daemon has stopped.
    let checkpoint = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
        .during(OP);
    match &checkpoint {
        Ok(0) => {}
        // Another process (an operator's sqlite3 shell) is reading: the frames stay in the
        // WAL, which is still durable, and the next open or checkpoint picks them up.
        Ok(_) => warn!(path = %path.display(), "state store wal checkpoint incomplete"),
        Err(_) => {}
    }
    let closed = conn.close().map_err(|(_conn, err)| backend(OP, err));
    match (checkpoint, closed) {
        (Ok(_), Ok(())) => {
            info!(path = %path.display(), "state store closed");
            Ok(())
        }
        (Err(err), Ok(())) | (Ok(_), Err(err)) => Err(err),
        (Err(checkpoint_err), Err(close_err)) => {
            // Report the first failure; keep the second in the log rather than lose it.
            warn!(
                path = %path.display(),
                error = %close_err,
                "closing state store after failed checkpoint also failed"
            );
            Err(checkpoint_err)
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.with_conn("get", move |_, conn| {
            conn.prepare_cached(
                "SELECT key, value, create_revision, mod_revision, version FROM kv WHERE key = ?1",
            )
            .during("get")?
            .query_row([key], row_to_kv)
            .optional()
            .during("get")
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        const OP: &str = "list";
        let prefix = prefix.to_owned();
        self.with_conn(OP, move |_, conn| {
            // One read transaction, so that the rows and the revision are one snapshot even if
            // another process (an operator's sqlite3 shell) writes the file meanwhile.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .during(OP)?;
            let revision = read_revision(&tx).during(OP)?;
            let mut kvs = Vec::new();
            {
                // Keys compare bytewise (BINARY collation on UTF-8, the same order as Rust's
                // `str`), so the keys with this prefix are one contiguous run of the
                // primary-key index starting at the prefix itself: scan from there and stop at
                // the first key outside it.
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT key, value, create_revision, mod_revision, version FROM kv
                         WHERE key >= ?1 ORDER BY key",
                    )
                    .during(OP)?;
                let rows = stmt.query_map([&prefix], row_to_kv).during(OP)?;
                for row in rows {
                    let kv = row.during(OP)?;
                    if !kv.key.starts_with(&prefix) {
                        break;
                    }
                    kvs.push(kv);
                }
            }
            // Nothing was written; ending the read transaction is all that is left.
            tx.rollback().during(OP)?;
            Ok(Listing { revision, kvs })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.with_conn("txn", move |inner, conn| {
            let (outcome, events) = apply_txn(conn, &txn)?;
            match &outcome {
                TxnOutcome::Committed { revision } => {
                    debug!(revision, ops = txn.ops.len(), "txn committed");
                }
                TxnOutcome::Conflict {
                    key,
                    expected,
                    actual,
                } => debug!(key, expected, actual, "txn conflict"),
            }
            inner.history.publish(events);
            Ok(outcome)
        })
        .await
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.with_conn("revision", |_, conn| read_revision(conn).during("revision"))
            .await
    }

    fn watch(&self, prefix: &str, from_revision: i64) -> Watch {
        self.inner.history.watch(prefix, from_revision)
    }

    async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.lock("close")?.take().ok_or(StoreError::Closed)?;
            // The mutex is released here: from now on every call sees `Closed`, and nothing
            // more is published, so watchers can be told.
            inner.history.close();
            close_connection(&inner.path, conn)
        })
        .await
        .map_err(|err| backend("close", err))?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    use proptest::prelude::*;

    use super::*;
    use crate::WatchError;

    /// Formats an error with its whole source chain, for assertion messages.
    fn chain(err: &(dyn StdError + 'static)) -> String {
        let mut out = err.to_string();
        let mut source = err.source();
        while let Some(err) = source {
            out.push_str(": ");
            out.push_str(&err.to_string());
            source = err.source();
        }
        out
    }

    fn open(path: &Path) -> SqliteStore {
        SqliteStore::open(path).unwrap_or_else(|err| panic!("opening {path:?}: {}", chain(&err)))
    }

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let store = open(&dir.path().join("store.db"));
        (dir, store)
    }

    /// Runs a transaction that must commit and returns its revision.
    async fn commit(store: &SqliteStore, txn: Txn) -> i64 {
        match store.txn(txn).await.expect("txn") {
            TxnOutcome::Committed { revision } => revision,
            conflict => panic!("expected a commit, got {conflict:?}"),
        }
    }

    async fn get(store: &SqliteStore, key: &str) -> Option<KeyValue> {
        store.get(key).await.expect("get")
    }

    fn kv(key: &str, value: &[u8], create: i64, modified: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: modified,
            version,
        }
    }

    #[tokio::test]
    async fn put_get_list_delete_keep_revision_bookkeeping() {
        // Puts, gets, prefix lists and deletes behave like etcd, including create/mod revision
        // and version bookkeeping, and every non-empty transaction takes exactly one revision.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        // A missing parent directory is created.
        let store = open(&dir.path().join("nested").join("dir").join("store.db"));
        assert_eq!(store.revision().await.expect("revision"), 0);
        assert_eq!(get(&store, "a/1").await, None);
        assert_eq!(store.list("").await.expect("list").kvs, vec![]);

        assert_eq!(commit(&store, Txn::new().put("a/2", "two")).await, 1);
        assert_eq!(
            commit(&store, Txn::new().put("a/1", "one").put("b", "bee")).await,
            2
        );
        assert_eq!(commit(&store, Txn::new().put("a/10", "ten")).await, 3);
        assert_eq!(commit(&store, Txn::new().put("a/1", "uno")).await, 4);
        assert_eq!(commit(&store, Txn::new().put("a/1", "eins")).await, 5);
        // A key sorting just after the prefix range must not leak into the list.
        assert_eq!(commit(&store, Txn::new().put("a0", "not a/")).await, 6);

        assert_eq!(get(&store, "a/1").await, Some(kv("a/1", b"eins", 2, 5, 3)));
        assert_eq!(
            store.list("a/").await.expect("list").kvs,
            vec![
                kv("a/1", b"eins", 2, 5, 3),
                kv("a/10", b"ten", 3, 3, 1),
                kv("a/2", b"two", 1, 1, 1),
            ]
        );
        assert_eq!(store.list("").await.expect("list").kvs.len(), 5);
        assert_eq!(store.list("c").await.expect("list").kvs, vec![]);

        assert_eq!(commit(&store, Txn::new().delete("a/1")).await, 7);
        assert_eq!(get(&store, "a/1").await, None);
        // Re-creating a deleted key starts its bookkeeping afresh.
        assert_eq!(commit(&store, Txn::new().put("a/1", "new")).await, 8);
        assert_eq!(get(&store, "a/1").await, Some(kv("a/1", b"new", 8, 8, 1)));
        assert_eq!(store.revision().await.expect("revision"), 8);
    }

    #[test]
    fn open_configures_crash_safety() {
        // The open connection runs in WAL mode with synchronous=FULL, foreign keys on, a busy
        // timeout, and the current schema version recorded.
        let (_dir, store) = temp_store();
        let guard = store.inner.conn.lock().expect("lock");
        let conn = guard.as_ref().expect("open");
        let pragma = |name: &str| -> String {
            conn.pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| format!("{value:?}"))
                .expect("reading a pragma")
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        // 2 is FULL.
        assert_eq!(pragma("synchronous"), "Integer(2)");
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
        assert_eq!(pragma("user_version"), format!("Integer({SCHEMA_VERSION})"));
    }

    #[tokio::test]
    async fn empty_txn_and_absent_delete() {
        // A transaction without operations keeps the revision, and deleting an absent key
        // succeeds (taking a revision, as every non-empty transaction does).
        let (_dir, store) = temp_store();
        commit(&store, Txn::new().put("a", "1")).await;
        assert_eq!(commit(&store, Txn::new()).await, 1);
        assert_eq!(
            commit(&store, Txn::new().when_mod_revision("a", 1)).await,
            1
        );
        assert_eq!(store.revision().await.expect("revision"), 1);
        assert_eq!(commit(&store, Txn::new().delete("missing")).await, 2);
        assert_eq!(get(&store, "a").await, Some(kv("a", b"1", 1, 1, 1)));
    }

    #[tokio::test]
    async fn create_if_absent_conflicts_when_present() {
        // Comparing against revision 0 creates a key only if it does not exist yet.
        let (_dir, store) = temp_store();
        assert_eq!(
            commit(
                &store,
                Txn::new().when_mod_revision("k", 0).put("k", "first")
            )
            .await,
            1
        );
        let outcome = store
            .txn(Txn::new().when_mod_revision("k", 0).put("k", "second"))
            .await
            .expect("txn");
        assert_eq!(
            outcome,
            TxnOutcome::Conflict {
                key: "k".into(),
                expected: 0,
                actual: 1
            }
        );
        assert_eq!(get(&store, "k").await, Some(kv("k", b"first", 1, 1, 1)));
        assert_eq!(store.revision().await.expect("revision"), 1);
    }

    #[tokio::test]
    async fn stale_mod_revision_conflicts_and_writes_nothing() {
        // A CAS with an out-of-date mod_revision reports expected and actual and changes
        // nothing, not even the revision counter; the current mod_revision succeeds.
        let (_dir, store) = temp_store();
        commit(&store, Txn::new().put("k", "v1")).await;
        commit(&store, Txn::new().put("k", "v2")).await;
        let outcome = store
            .txn(Txn::new().when_mod_revision("k", 1).put("k", "stale"))
            .await
            .expect("txn");
        assert_eq!(
            outcome,
            TxnOutcome::Conflict {
                key: "k".into(),
                expected: 1,
                actual: 2
            }
        );
        assert_eq!(store.revision().await.expect("revision"), 2);
        assert_eq!(get(&store, "k").await, Some(kv("k", b"v2", 1, 2, 2)));

        // Expecting a key that does not exist reports actual = 0.
        let outcome = store
            .txn(Txn::new().when_mod_revision("absent", 2).delete("k"))
            .await
            .expect("txn");
        assert_eq!(
            outcome,
            TxnOutcome::Conflict {
                key: "absent".into(),
                expected: 2,
                actual: 0
            }
        );

        assert_eq!(
            commit(&store, Txn::new().when_mod_revision("k", 2).put("k", "v3")).await,
            3
        );
        assert_eq!(get(&store, "k").await, Some(kv("k", b"v3", 1, 3, 3)));
    }

    #[tokio::test]
    async fn multi_op_txn_is_atomic() {
        // When any comparison fails, none of the transaction's operations are applied.
        let (_dir, store) = temp_store();
        commit(
            &store,
            Txn::new().put("a", "a1").put("b", "b1").put("c", "c1"),
        )
        .await;
        let before = store.list("").await.expect("list").kvs;

        let outcome = store
            .txn(
                Txn::new()
                    .when_mod_revision("a", 1)
                    .when_mod_revision("b", 1)
                    .when_mod_revision("c", 7)
                    .put("a", "a2")
                    .delete("b")
                    .put("d", "d1"),
            )
            .await
            .expect("txn");
        assert_eq!(
            outcome,
            TxnOutcome::Conflict {
                key: "c".into(),
                expected: 7,
                actual: 1
            }
        );
        assert_eq!(store.list("").await.expect("list").kvs, before);
        assert_eq!(store.revision().await.expect("revision"), 1);

        // With every comparison holding, all operations land under one revision.
        assert_eq!(
            commit(
                &store,
                Txn::new()
                    .when_mod_revision("a", 1)
                    .when_mod_revision("c", 1)
                    .put("a", "a2")
                    .delete("b")
                    .put("d", "d1"),
            )
            .await,
            2
        );
        assert_eq!(
            store.list("").await.expect("list").kvs,
            vec![
                kv("a", b"a2", 1, 2, 2),
                kv("c", b"c1", 1, 1, 1),
                kv("d", b"d1", 2, 2, 1),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_cas_increments_lose_no_update() {
        // Twenty tasks doing read-modify-CAS-retry increments on one key never lose an update.
        const TASKS: u64 = 20;
        const INCREMENTS: u64 = 25;
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let (value, revision) = match store.get("counter").await.expect("get") {
                            Some(kv) => (parse_u64(&kv.value), kv.mod_revision),
                            None => (0, 0),
                        };
                        let txn = Txn::new()
                            .when_mod_revision("counter", revision)
                            .put("counter", (value + 1).to_string());
                        match store.txn(txn).await.expect("txn") {
                            TxnOutcome::Committed { .. } => break,
                            TxnOutcome::Conflict { .. } => conflicts += 1,
                        }
                    }
                }
                conflicts
            });
        }
        let mut conflicts = 0;
        while let Some(result) = tasks.join_next().await {
            conflicts += result.expect("increment task");
        }
        let counter = get(&store, "counter").await.expect("counter exists");
        assert_eq!(parse_u64(&counter.value), TASKS * INCREMENTS);
        assert_eq!(counter.version, (TASKS * INCREMENTS) as i64);
        // Conflicts wrote nothing, so the revision counts only the successful increments.
        assert_eq!(
            store.revision().await.expect("revision"),
            (TASKS * INCREMENTS) as i64
        );
        // Not asserted (scheduling decides), but shows the test exercised contention.
        eprintln!("{conflicts} conflicts retried");
    }

    fn parse_u64(value: &[u8]) -> u64 {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a number: {value:?}"))
    }

    #[tokio::test]
    async fn watch_sees_only_committed_changes_in_order() {
        // Watchers get one event per applied operation with the transaction's revision, only
        // after the commit, and nothing for conflicts, no-op deletes or rolled-back writes.
        let (_dir, store) = temp_store();
        let mut rx = store.watch("", 0);

        commit(&store, Txn::new().put("a", "1").put("b", "1")).await;
        for key in ["a", "b"] {
            let event = rx
                .try_next()
                .expect("watching")
                .expect("event after commit");
            assert_eq!(
                event,
                Event {
                    revision: 1,
                    kind: EventKind::Put,
                    key: key.into()
                }
            );
            // The change is visible by the time its event arrives.
            let stored = get(&store, key).await.expect("key is visible");
            assert_eq!(stored.mod_revision, event.revision);
        }

        // A conflict publishes nothing.
        let outcome = store
            .txn(Txn::new().when_mod_revision("a", 0).put("c", "1"))
            .await
            .expect("txn");
        assert!(matches!(outcome, TxnOutcome::Conflict { .. }));
        assert_eq!(rx.try_next(), Ok(None));

        // A write that fails mid-transaction is rolled back and publishes nothing, although
        // its first operation had already been applied inside the transaction.
        {
            let guard = store.inner.conn.lock().expect("lock");
            let conn = guard.as_ref().expect("open");
            conn.execute_batch(
                "CREATE TEMP TRIGGER fail_on_boom BEFORE INSERT ON main.kv
                 WHEN NEW.key = 'boom' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("installing the failure trigger");
        }
        let err = store
            .txn(Txn::new().put("c", "1").put("boom", "1"))
            .await
            .expect_err("the trigger aborts the transaction");
        assert!(matches!(
            err,
            StoreError::Backend {
                operation: "txn",
                ..
            }
        ));
        assert_eq!(rx.try_next(), Ok(None));
        assert_eq!(get(&store, "c").await, None);
        assert_eq!(store.revision().await.expect("revision"), 1);

        // Deleting an absent key publishes nothing; the present one does.
        commit(&store, Txn::new().delete("missing").delete("a")).await;
        assert_eq!(
            rx.try_next(),
            Ok(Some(Event {
                revision: 2,
                kind: EventKind::Delete,
                key: "a".into()
            }))
        );
        assert_eq!(rx.try_next(), Ok(None));
    }

    /// Waits for a watch's next change, failing the test after a generous deadline.
    async fn next_event(watch: &mut Watch) -> Result<Event, WatchError> {
        tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("a watch event within 30 s")
    }

    fn event(revision: i64, kind: EventKind, key: &str) -> Event {
        Event {
            revision,
            kind,
            key: key.to_owned(),
        }
    }

    /// `list` returns the store revision it read at: the latest one, even when the listed
    /// keys were last written earlier, and 0 for a never-written store.
    #[tokio::test]
    async fn list_returns_the_revision_it_read_at() {
        let (_dir, store) = temp_store();
        assert_eq!(store.list("").await.expect("list"), Listing::default());
        commit(&store, Txn::new().put("a/1", "1")).await;
        commit(&store, Txn::new().put("b/1", "1")).await;
        // A delete of an absent key changes nothing but still takes a revision.
        commit(&store, Txn::new().delete("missing")).await;
        let listing = store.list("a/").await.expect("list");
        assert_eq!(listing.revision, 3);
        assert_eq!(listing.kvs, vec![kv("a/1", b"1", 1, 1, 1)]);
        let listing = store.list("c/").await.expect("list");
        assert_eq!(
            listing,
            Listing {
                revision: 3,
                kvs: vec![]
            }
        );
    }

    /// A watch from a past revision replays every later change under its prefix, in
    /// revision order, and then follows new commits live; other keys (including ones that
    /// merely sort next to the prefix) never show up.
    #[tokio::test]
    async fn watch_replays_from_a_past_revision_then_follows_live() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        commit(&store, Txn::new().put("a/1", "1")).await; // 1
        commit(&store, Txn::new().put("a/2", "1").put("b", "1")).await; // 2
        commit(&store, Txn::new().put("a0", "1").put("a", "1")).await; // 3
        commit(&store, Txn::new().delete("a/1").put("a/3", "1")).await; // 4
        commit(&store, Txn::new().put("ab/1", "1")).await; // 5

        let mut watch = store.watch("a/", 1);
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(2, EventKind::Put, "a/2"))
        );
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(4, EventKind::Delete, "a/1"))
        );
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(4, EventKind::Put, "a/3"))
        );
        assert_eq!(watch.try_next(), Ok(None));

        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                commit(&store, Txn::new().put("b/2", "1")).await; // 6
                commit(&store, Txn::new().put("a/2", "2")).await // 7
            })
        };
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(7, EventKind::Put, "a/2"))
        );
        assert_eq!(writer.await.expect("writer"), 7);

        // The empty prefix is every key; a prefix without keys sees nothing.
        let mut everything = store.watch("", 5);
        assert_eq!(
            next_event(&mut everything).await,
            Ok(event(6, EventKind::Put, "b/2"))
        );
        assert_eq!(
            next_event(&mut everything).await,
            Ok(event(7, EventKind::Put, "a/2"))
        );
        assert_eq!(store.watch("c", 0).try_next(), Ok(None));
    }

    /// Under concurrent writers, list-then-watch from the listing's revision sees every later
    /// change exactly once and in order: each reader, started at a different moment, ends with
    /// precisely the events the writers committed after its listing, and the listing itself is
    /// exactly the state at its revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn list_then_watch_misses_nothing_under_concurrent_writers() {
        const WRITERS: usize = 4;
        const TXNS: usize = 60;
        const READERS: i64 = 5;
        const DONE: &str = "w/~done";
        /// Every writer transaction takes one revision.
        const TOTAL: i64 = (WRITERS * TXNS) as i64;
        let (_dir, store) = temp_store();
        let store = Arc::new(store);

        // Each writer owns its keys, so it knows exactly which events its transactions cause.
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let store = Arc::clone(&store);
            writers.spawn(async move {
                let mut live = std::collections::BTreeSet::new();
                let mut log: Vec<(i64, Vec<Event>)> = Vec::new();
                for i in 0..TXNS {
                    let put_key = format!("w/{w}/{}", i % 5);
                    let del_key = format!("w/{w}/{}", (i + 2) % 5);
                    let mut txn = Txn::new().put(&put_key, i.to_string());
                    if i % 3 == 0 {
                        txn = txn.delete(&del_key);
                    }
                    // A key outside the prefix, in the same transaction.
                    txn = txn.put(format!("x/{w}"), i.to_string());
                    let revision = commit(&store, txn).await;
                    let mut events = vec![event(revision, EventKind::Put, &put_key)];
                    live.insert(put_key);
                    if i % 3 == 0 && live.remove(&del_key) {
                        events.push(event(revision, EventKind::Delete, &del_key));
                    }
                    log.push((revision, events));
                }
                log
            });
        }

        let mut readers = tokio::task::JoinSet::new();
        for r in 0..READERS {
            let store = Arc::clone(&store);
            readers.spawn(async move {
                let wait_for = |revision: i64| {
                    let store = Arc::clone(&store);
                    async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                        while store.revision().await.expect("revision") < revision {
                            assert!(tokio::time::Instant::now() < deadline, "writers stalled");
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                };
                // Start at a different point of the writes for each reader.
                wait_for(r * TOTAL / READERS).await;
                let listing = store.list("w/").await.expect("list");
                // Let writers commit between the list and the watch: those changes must come
                // from the history.
                wait_for((listing.revision + 10).min(TOTAL)).await;
                let mut watch = store.watch("w/", listing.revision);
                let mut seen = Vec::new();
                loop {
                    let event = next_event(&mut watch).await.expect("watching");
                    if event.key == DONE {
                        break;
                    }
                    seen.push(event);
                }
                (listing, seen)
            });
        }

        let mut log = Vec::new();
        while let Some(result) = writers.join_next().await {
            log.extend(result.expect("writer"));
        }
        commit(&store, Txn::new().put(DONE, "")).await;
        log.sort_by_key(|(revision, _)| *revision);
        let all: Vec<Event> = log.into_iter().flat_map(|(_, events)| events).collect();

        while let Some(result) = readers.join_next().await {
            let (listing, seen) = result.expect("reader");
            let want: Vec<Event> = all
                .iter()
                .filter(|e| e.revision > listing.revision)
                .cloned()
                .collect();
            assert_eq!(seen, want, "reader that listed at {}", listing.revision);
            // Replaying the writers' events up to the listing's revision gives its keys.
            let mut state = BTreeMap::new();
            for e in all.iter().filter(|e| e.revision <= listing.revision) {
                match e.kind {
                    EventKind::Put => state.insert(e.key.clone(), e.revision),
                    EventKind::Delete => state.remove(&e.key),
                };
            }
            let listed: BTreeMap<String, i64> = listing
                .kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.mod_revision))
                .collect();
            assert_eq!(listed, state, "listing at {}", listing.revision);
        }
    }

    /// A watcher that falls further behind than the store's history gets `Compacted` (naming
    /// what it needed and what is left), not a silent gap; re-listing and watching from the
    /// new listing's revision then works.
    #[tokio::test]
    async fn lagging_watcher_gets_compacted() {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        let store = SqliteStore::open_with_history(&path, 4).expect("opening");
        let mut watch = store.watch("k/", 0);
        commit(&store, Txn::new().put("k/1", "1")).await;
        commit(&store, Txn::new().put("k/2", "1")).await;
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(1, EventKind::Put, "k/1"))
        );
        for n in 3..=10 {
            commit(&store, Txn::new().put(format!("k/{n}"), "1")).await;
        }
        // Revisions 7 to 10 are retained; the watcher had delivered everything up to 1.
        let compacted = Err(WatchError::Compacted {
            requested: 1,
            oldest: 6,
        });
        assert_eq!(next_event(&mut watch).await, compacted);
        assert_eq!(
            next_event(&mut watch).await,
            compacted,
            "the error is final"
        );

        let listing = store.list("k/").await.expect("list");
        assert_eq!(listing.kvs.len(), 10);
        let mut watch = store.watch("k/", listing.revision);
        commit(&store, Txn::new().delete("k/1")).await;
        assert_eq!(
            next_event(&mut watch).await,
            Ok(event(11, EventKind::Delete, "k/1"))
        );
    }

    /// A watch from a revision older than the retained history gets `Compacted`: after a
    /// restart the history starts empty at the stored revision, and a full ring has dropped
    /// its oldest changes.
    #[tokio::test]
    async fn watch_from_before_the_history_gets_compacted() {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        {
            let store = open(&path);
            commit(&store, Txn::new().put("a", "1")).await;
            commit(&store, Txn::new().put("a", "2")).await;
            store.close().await.expect("close");
        }
        let store = SqliteStore::open_with_history(&path, 2).expect("reopening");
        assert_eq!(
            store.watch("", 1).try_next(),
            Err(WatchError::Compacted {
                requested: 1,
                oldest: 2
            })
        );
        // From the stored revision on, nothing is missing.
        let mut from_now = store.watch("", 2);
        for n in 3..=5 {
            commit(&store, Txn::new().put("a", n.to_string())).await;
        }
        assert_eq!(
            store.watch("", 2).try_next(),
            Err(WatchError::Compacted {
                requested: 2,
                oldest: 3
            })
        );
        assert_eq!(
            store.watch("", 3).try_next(),
            Ok(Some(event(4, EventKind::Put, "a")))
        );
        // A watcher created in time but not read since has fallen behind the same way.
        assert!(matches!(
            from_now.try_next(),
            Err(WatchError::Compacted { .. })
        ));
    }

    /// Closing the store wakes a waiting watcher with `Closed`, after it has delivered every
    /// change committed before the close; a watch started after the close is closed too.
    #[tokio::test]
    async fn close_ends_watches() {
        let (_dir, store) = temp_store();
        let store = Arc::new(store);
        let mut watch = store.watch("", 0);
        commit(&store, Txn::new().put("a", "1")).await;
        let waiter = tokio::spawn(async move {
            let first = next_event(&mut watch).await;
            let second = next_event(&mut watch).await;
            (first, second)
        });
        store.close().await.expect("close");
        assert_eq!(
            waiter.await.expect("waiter"),
            (Ok(event(1, EventKind::Put, "a")), Err(WatchError::Closed))
        );
        assert_eq!(store.watch("", 1).try_next(), Err(WatchError::Closed));
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_revision() {
        // Data and the revision counter survive dropping the store without close and
        // reopening it, and again after an explicit close.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        {
            let store = open(&path);
            commit(&store, Txn::new().put("a", "1")).await;
            commit(&store, Txn::new().put("a", "2").put("b", "3")).await;
        }
        let store = open(&path);
        assert_eq!(store.revision().await.expect("revision"), 2);
        assert_eq!(get(&store, "a").await, Some(kv("a", b"2", 1, 2, 2)));
        assert_eq!(commit(&store, Txn::new().delete("b")).await, 3);
        store.close().await.expect("close");

        let store = open(&path);
        assert_eq!(store.revision().await.expect("revision"), 3);
        assert_eq!(
            store.list("").await.expect("list").kvs,
            vec![kv("a", b"2", 1, 2, 2)]
        );
    }

    #[tokio::test]
    async fn close_checkpoints_and_later_calls_fail_closed() {
        // After close the WAL is folded into the main file and every call reports Closed.
        let (dir, store) = temp_store();
        commit(&store, Txn::new().put("a", "1")).await;
        store.close().await.expect("close");

        let wal = dir.path().join("store.db-wal");
        let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal_len, 0, "the WAL is empty or gone after close");

        assert!(matches!(store.get("a").await, Err(StoreError::Closed)));
        assert!(matches!(store.list("").await, Err(StoreError::Closed)));
        assert!(matches!(
            store.txn(Txn::new().put("a", "2")).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(store.revision().await, Err(StoreError::Closed)));
        assert!(matches!(store.close().await, Err(StoreError::Closed)));
    }

    #[tokio::test]
    async fn poisoned_lock_is_an_error_not_a_panic() {
        // A panic while holding the connection makes later calls fail with a backend error
        // instead of propagating the panic into the daemon.
        let (_dir, store) = temp_store();
        let inner = Arc::clone(&store.inner);
        let panicked = std::thread::spawn(move || {
            let _guard = inner.conn.lock();
            panic!("deliberate panic to poison the store mutex");
        })
        .join();
        assert!(panicked.is_err());
        let err = store.get("a").await.expect_err("poisoned");
        assert!(matches!(
            err,
            StoreError::Backend {
                operation: "get",
                ..
            }
        ));
        assert!(chain(&err).contains("panicked"), "{}", chain(&err));
    }

    #[test]
    fn newer_schema_is_refused() {
        // A file whose schema version is newer than this build's is refused, naming both
        // versions and blaming a newer skiff.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        drop(open(&path));
        {
            let conn = Connection::open(&path).expect("raw open");
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .expect("bumping user_version");
        }
        let err = SqliteStore::open(&path).expect_err("newer schema");
        assert!(
            matches!(err, OpenError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)));
        assert!(message.contains(&format!("up to {SCHEMA_VERSION}")));
        assert!(message.contains("a newer skiff wrote it"), "{message}");
    }

    #[test]
    fn garbage_file_is_refused() {
        // A file that is not a SQLite database is refused with an error naming the file, and
        // is left untouched.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &garbage).expect("writing garbage");
        let err = SqliteStore::open(&path).expect_err("garbage file");
        assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::read(&path).expect("reading back"), garbage);
    }

    #[test]
    fn foreign_sqlite_database_is_refused() {
        // A SQLite database that skiff did not create is refused, untouched, rather than
        // adopted.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("other.db");
        {
            let conn = Connection::open(&path).expect("raw open");
            conn.execute_batch("CREATE TABLE t (x INTEGER)")
                .expect("creating a table");
        }
        let before = std::fs::read(&path).expect("reading the file");
        let err = SqliteStore::open(&path).expect_err("foreign database");
        assert!(
            matches!(err, OpenError::NotAStore { found: 0, .. }),
            "{err:?}"
        );
        // Not even switched to WAL mode.
        assert_eq!(std::fs::read(&path).expect("reading the file"), before);
    }

    #[tokio::test]
    async fn corrupt_database_is_refused() {
        // A database whose pages were damaged behind SQLite's back fails quick_check at open
        // and is refused with an error naming the file.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        {
            let store = open(&path);
            for i in 0..200 {
                commit(
                    &store,
                    Txn::new().put(format!("key/{i:04}"), vec![b'x'; 500]),
                )
                .await;
            }
            store.close().await.expect("close");
        }
        let (page_size, root): (i64, i64) = {
            let conn = Connection::open(&path).expect("raw open");
            let page_size = conn
                .pragma_query_value(None, "page_size", |row| row.get(0))
                .expect("page_size");
            let root = conn
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'kv'",
                    [],
                    |row| row.get(0),
                )
                .expect("kv root page");
            (page_size, root)
        };
        // Scribble over the kv table's root page (an interior b-tree page by now).
        let mut bytes = std::fs::read(&path).expect("reading the database");
        let start = usize::try_from((root - 1) * page_size).expect("offset is positive");
        for b in &mut bytes[start..start + 64] {
            *b = 0xa5;
        }
        std::fs::write(&path, &bytes).expect("writing the damage");

        let err = SqliteStore::open(&path).expect_err("corrupt database");
        assert!(matches!(err, OpenError::Corrupt { .. }), "{}", chain(&err));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[tokio::test]
    async fn btree_damage_fails_quick_check() {
        // Damage that SQLite can read past but quick_check detects (a row out of order) is
        // refused, and the error carries quick_check's report.
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("store.db");
        {
            let store = open(&path);
            for i in 0..50 {
                commit(
                    &store,
                    Txn::new().put(format!("key/{i:04}"), vec![b'x'; 500]),
                )
                .await;
            }
            store.close().await.expect("close");
        }
        // Find a table leaf page (type 0x0d) with at least two cells whose first cell has a
        // one-byte rowid, and raise that rowid to 127 so it sorts after its neighbour. See
        // https://www.sqlite.org/fileformat2.html#b_tree_pages for the layout.
        let mut bytes = std::fs::read(&path).expect("reading the database");
        let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        let rowid_at = (1..bytes.len() / page_size)
            .map(|page| page * page_size)
            .find_map(|page| {
                let cells = u16::from_be_bytes([bytes[page + 3], bytes[page + 4]]);
                if bytes[page] != 0x0d || cells < 2 {
                    return None;
                }
                let cell =
                    page + usize::from(u16::from_be_bytes([bytes[page + 8], bytes[page + 9]]));
                // Skip the payload-size varint; the rowid varint follows.
                let size_len = bytes[cell..].iter().position(|b| b & 0x80 == 0)? + 1;
                let rowid_at = cell + size_len;
                (bytes[rowid_at] < 0x7f).then_some(rowid_at)
            })
            .expect("a table leaf page with two cells");
        bytes[rowid_at] = 0x7f;
        std::fs::write(&path, &bytes).expect("writing the damage");

        let err = SqliteStore::open(&path).expect_err("damaged database");
        assert!(matches!(err, OpenError::Corrupt { .. }), "{}", chain(&err));
        assert!(
            chain(&err).contains("quick_check reported"),
            "{}",
            chain(&err)
        );
        assert!(chain(&err).contains("out of order"), "{}", chain(&err));
    }

    /// An in-memory model of the store's semantics, for the property test.
    #[derive(Debug, Default)]
    struct Model {
        kv: BTreeMap<String, KeyValue>,
        revision: i64,
    }

    impl Model {
        fn mod_revision(&self, key: &str) -> i64 {
            self.kv.get(key).map_or(0, |kv| kv.mod_revision)
        }

        fn apply(&mut self, txn: &Txn) -> (TxnOutcome, Vec<Event>) {
            for Compare::ModRevision { key, revision } in &txn.compares {
                let actual = self.mod_revision(key);
                if actual != *revision {
                    let conflict = TxnOutcome::Conflict {
                        key: key.clone(),
                        expected: *revision,
                        actual,
                    };
                    return (conflict, Vec::new());
                }
            }
            if txn.ops.is_empty() {
                return (
                    TxnOutcome::Committed {
                        revision: self.revision,
                    },
                    Vec::new(),
                );
            }
            self.revision += 1;
            let revision = self.revision;
            let mut events = Vec::new();
            for op in &txn.ops {
                match op {
                    Op::Put { key, value } => {
                        let entry = self.kv.entry(key.clone()).or_insert_with(|| KeyValue {
                            key: key.clone(),
                            value: Vec::new(),
                            create_revision: revision,
                            mod_revision: revision,
                            version: 0,
                        });
                        entry.value = value.clone();
                        entry.mod_revision = revision;
                        entry.version += 1;
                        events.push(Event {
                            revision,
                            kind: EventKind::Put,
                            key: key.clone(),
                        });
                    }
                    Op::Delete { key } => {
                        if self.kv.remove(key).is_some() {
                            events.push(Event {
                                revision,
                                kind: EventKind::Delete,
                                key: key.clone(),
                            });
                        }
                    }
                }
            }
            (TxnOutcome::Committed { revision }, events)
        }
    }

    /// Keys chosen so that prefixes overlap (`a` is a prefix of `a/1` and `ab`).
    const KEYS: &[&str] = &["a", "a/1", "a/2", "ab", "b"];

    /// What a generated comparison expects, resolved against the model when it runs.
    #[derive(Debug, Clone)]
    enum Expect {
        /// The key's current mod_revision (usually holds).
        Current,
        /// Absent (revision 0).
        Absent,
        /// An arbitrary revision (usually stale or from the future).
        Literal(i64),
    }

    #[derive(Debug, Clone)]
    enum GenOp {
        Put(usize, Vec<u8>),
        Delete(usize),
    }

    #[derive(Debug, Clone)]
    struct GenTxn {
        compares: Vec<(usize, Expect)>,
        ops: Vec<GenOp>,
    }

    fn gen_txn() -> impl Strategy<Value = GenTxn> {
        let key = 0..KEYS.len();
        let expect = prop_oneof![
            4 => Just(Expect::Current),
            1 => Just(Expect::Absent),
            1 => (0i64..12).prop_map(Expect::Literal),
        ];
        let op = prop_oneof![
            3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(k, v)| GenOp::Put(k, v)),
            1 => key.clone().prop_map(GenOp::Delete),
        ];
        (
            proptest::collection::vec((key, expect), 0..3),
            proptest::collection::vec(op, 0..4),
        )
            .prop_map(|(compares, ops)| GenTxn { compares, ops })
    }

    fn resolve(model: &Model, gen_txn: &GenTxn) -> Txn {
        let mut txn = Txn::new();
        for (key, expect) in &gen_txn.compares {
            let key = KEYS[*key];
            let revision = match expect {
                Expect::Current => model.mod_revision(key),
                Expect::Absent => 0,
                Expect::Literal(revision) => *revision,
            };
            txn = txn.when_mod_revision(key, revision);
        }
        for op in &gen_txn.ops {
            txn = match op {
                GenOp::Put(key, value) => txn.put(KEYS[*key], value.clone()),
                GenOp::Delete(key) => txn.delete(KEYS[*key]),
            };
        }
        txn
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn store_agrees_with_model(txns in proptest::collection::vec(gen_txn(), 1..30)) {
            // Any sequence of puts, deletes and CAS transactions leaves the store and a
            // BTreeMap model agreeing on outcomes, events, every key and the revision.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime");
            runtime.block_on(async {
                let (_dir, store) = temp_store();
                let mut rx = store.watch("", 0);
                let mut model = Model::default();
                for gen_txn in &txns {
                    let txn = resolve(&model, gen_txn);
                    let (want, want_events) = model.apply(&txn);
                    let got = store.txn(txn).await.expect("txn");
                    prop_assert_eq!(got, want);
                    let mut got_events = Vec::new();
                    while let Some(event) = rx.try_next().expect("watching") {
                        got_events.push(event);
                    }
                    prop_assert_eq!(got_events, want_events);
                    prop_assert_eq!(store.revision().await.expect("revision"), model.revision);
                    let everything: Vec<KeyValue> = model.kv.values().cloned().collect();
                    let listing = store.list("").await.expect("list");
                    prop_assert_eq!(listing.revision, model.revision);
                    prop_assert_eq!(listing.kvs, everything);
                }
                for prefix in ["a", "a/", "ab", "b", "c"] {
                    let want: Vec<KeyValue> = model
                        .kv
                        .values()
                        .filter(|kv| kv.key.starts_with(prefix))
                        .cloned()
                        .collect();
                    prop_assert_eq!(store.list(prefix).await.expect("list").kvs, want);
                }
                for key in KEYS {
                    prop_assert_eq!(get(&store, key).await, model.kv.get(*key).cloned());
                }
                Ok(())
            })?;
        }
    }

    /// Set (to the database path) only in the child process of the crash test.
    const CRASH_CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD";
    /// Overrides the crash test's random seed, to replay a failure.
    const CRASH_SEED_ENV: &str = "SKIFF_STORE_CRASH_SEED";
    const CRASH_CYCLES: usize = 50;
    /// A child stops by itself after this many transactions, in case its parent is gone.
    const CHILD_MAX_TXNS: u64 = 5_000;

    /// xorshift64*: enough randomness to vary kill points, reproducible from a seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn range(&mut self, low: u64, high: u64) -> u64 {
            low + self.next() % (high - low)
        }
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
            (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    fn crash_key(n: u64) -> String {
        format!("k/{n:08}")
    }

    /// The value the child writes for `n`: a header naming `n`, the payload length and its
    /// checksum, then 1-4 KiB of pseudo-random payload. It is a pure function of `n`, so the
    /// parent can check every stored value byte for byte.
    fn crash_value(n: u64) -> Vec<u8> {
        let mut rng = Rng(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let len = rng.range(1024, 4097) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut value = format!("n={n};len={len};sum={:016x};", fnv1a(&payload)).into_bytes();
        value.extend_from_slice(&payload);
        value
    }

    /// Describes how a stored value differs from the expected one.
    fn describe_damage(value: &[u8]) -> String {
        let text = String::from_utf8_lossy(&value[..value.len().min(48)]).into_owned();
        format!("{} bytes starting {text:?}", value.len())
    }

    /// The libtest name of a test function in this module (`sqlite::tests::<name>`).
    fn test_name(function: &str) -> String {
        let module = module_path!();
        let path = module.split_once("::").map_or(module, |(_, rest)| rest);
        format!("{path}::{function}")
    }

    #[test]
    fn crash_child_writer() {
        // Runs only as the child of `kill9_never_loses_an_acknowledged_write` (a no-op
        // otherwise): writes numbered keys plus a CAS counter, acknowledging each commit.
        let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a runtime");
        runtime.block_on(async move {
            let store = open(Path::new(&path));
            let (mut next, mut counter_revision) = match get(&store, "counter").await {
                Some(kv) => (parse_u64(&kv.value), kv.mod_revision),
                None => (0, 0),
            };
            let mut stdout = std::io::stdout();
            for _ in 0..CHILD_MAX_TXNS {
                let n = next;
                let txn = Txn::new()
                    .when_mod_revision("counter", counter_revision)
                    .put(crash_key(n), crash_value(n))
                    .put("counter", (n + 1).to_string());
                match store.txn(txn).await.expect("child txn") {
                    TxnOutcome::Committed { revision } => counter_revision = revision,
                    conflict => panic!("the only writer saw a conflict: {conflict:?}"),
                }
                next = n + 1;
                if writeln!(stdout, "ACK {n} {next}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // The parent is gone; stop writing.
                    return;
                }
            }
        });
    }

    /// Kills the child if the test fails before it does.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// When a cycle's child is killed.
    #[derive(Debug, Clone, Copy)]
    enum KillAt {
        /// After the parent has read this many acknowledgements.
        Acks(u64),
        /// This many milliseconds after spawning: sometimes during open or recovery.
        Millis(u64),
    }

    #[test]
    fn kill9_never_loses_an_acknowledged_write() {
        // SIGKILLing a writer at random points, 50 times over one file, never loses or tears an
        // acknowledged transaction: every reopen passes quick_check, every acked key holds its
        // exact value, and the counter and keys written in the same transaction agree.
        let seed = match std::env::var(CRASH_SEED_ENV) {
            Ok(seed) => seed.parse().expect("SKIFF_STORE_CRASH_SEED is a u64"),
            Err(_) => {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            }
        };
        eprintln!("crash test seed {seed} (replay with {CRASH_SEED_ENV}={seed})");
        let mut rng = Rng(seed);

        let dir = tempfile::tempdir().expect("creating a temp dir");
        let db = dir.path().join("state").join("store.db");
        let exe = std::env::current_exe().expect("locating the test binary");
        let helper = test_name("crash_child_writer");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a runtime");

        let started = tokio::time::Instant::now();
        // The counter verified after the previous cycle; each writer continues from it.
        let mut stored_counter = 0u64;
        let mut total_acks = 0u64;
        // Cycles whose writer died before acknowledging anything (often while opening).
        let mut killed_before_first_ack = 0u64;
        for cycle in 0..CRASH_CYCLES {
            let kill_at = if rng.next().is_multiple_of(2) {
                KillAt::Acks(rng.range(5, 61))
            } else {
                KillAt::Millis(rng.range(1, 60))
            };
            let mut child = KillOnDrop(
                Command::new(&exe)
                    .args(["--exact", &helper, "--nocapture", "--test-threads=1"])
                    .env(CRASH_CHILD_ENV, &db)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawning the writer"),
            );
            let spawned = tokio::time::Instant::now();
            let stdout = child.0.stdout.take().expect("piped stdout");

            // A reader thread turns complete `ACK n counter` lines into messages, so the
            // parent can stop at a deadline. It runs until the pipe closes, so acks written
            // just before the kill are still collected.
            let (tx, rx) = mpsc::channel::<(u64, u64)>();
            let reader = std::thread::spawn(move || {
                let mut stdout = BufReader::new(stdout);
                let mut line = String::new();
                loop {
                    line.clear();
                    match stdout.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    // libtest prints its own lines too, and `test <name> ... ` has no newline,
                    // so the first ack shares its line. An unterminated line is not an ack.
                    let Some(ack) = line
                        .find("ACK ")
                        .and_then(|at| line[at + 4..].strip_suffix('\n'))
                    else {
                        continue;
                    };
                    let mut fields = ack.split(' ').map(str::parse::<u64>);
                    if let (Some(Ok(n)), Some(Ok(counter))) = (fields.next(), fields.next())
                        && tx.send((n, counter)).is_err()
                    {
                        break;
                    }
                }
            });

            let mut acks = Vec::new();
            let early_exit = |child: &mut KillOnDrop| {
                panic!(
                    "cycle {cycle}: the writer exited before being killed: {:?}",
                    child.0.wait()
                )
            };
            match kill_at {
                KillAt::Acks(target) => {
                    while (acks.len() as u64) < target {
                        match rx.recv() {
                            Ok(ack) => acks.push(ack),
                            Err(_) => early_exit(&mut child),
                        }
                    }
                }
                KillAt::Millis(ms) => {
                    let deadline = spawned + Duration::from_millis(ms);
                    loop {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(ack) => acks.push(ack),
                            Err(mpsc::RecvTimeoutError::Timeout) => break,
                            Err(mpsc::RecvTimeoutError::Disconnected) => early_exit(&mut child),
                        }
                    }
                }
            }
            child.0.kill().expect("SIGKILL the writer");
            let status = child.0.wait().expect("reaping the writer");
            assert!(!status.success(), "cycle {cycle}: writer was not killed");
            reader.join().expect("ack reader");
            acks.extend(rx.try_iter());

            // Acks arrive in order, continuing from the counter stored after the last cycle.
            for (i, (n, counter)) in (1u64..).zip(&acks) {
                assert_eq!(
                    *n,
                    stored_counter + i - 1,
                    "cycle {cycle}: ack out of sequence"
                );
                assert_eq!(*counter, n + 1, "cycle {cycle}: malformed ack");
            }
            let last_acked_counter = acks.last().map_or(stored_counter, |(_, counter)| *counter);
            total_acks += acks.len() as u64;
            if acks.is_empty() {
                killed_before_first_ack += 1;
            }

            runtime.block_on(async {
                let store = SqliteStore::open(&db).unwrap_or_else(|err| {
                    panic!(
                        "cycle {cycle} ({kill_at:?}): reopening after SIGKILL failed: {}",
                        chain(&err)
                    )
                });
                let counter = get(&store, "counter")
                    .await
                    .map_or(0, |kv| parse_u64(&kv.value));
                assert!(
                    counter >= last_acked_counter,
                    "cycle {cycle} ({kill_at:?}): counter {counter} is behind the last ack \
                     {last_acked_counter}"
                );
                // The counter and the numbered keys are written in one transaction, so the
                // keys must be exactly k/0..k/counter-1, each with its exact value.
                let keys = store.list("k/").await.expect("listing keys").kvs;
                assert_eq!(
                    keys.len() as u64,
                    counter,
                    "cycle {cycle} ({kill_at:?}): keys and counter disagree"
                );
                for (n, kv) in (0u64..).zip(&keys) {
                    assert_eq!(
                        kv.key,
                        crash_key(n),
                        "cycle {cycle}: key sequence has a gap"
                    );
                    assert!(
                        kv.value == crash_value(n),
                        "cycle {cycle} ({kill_at:?}): value of {} is damaged: {}",
                        kv.key,
                        describe_damage(&kv.value)
                    );
                }
                // One revision per child transaction, and nothing else writes.
                assert_eq!(store.revision().await.expect("revision"), counter as i64);
                stored_counter = counter;
                // Alternate between leaving the WAL for the next writer and checkpointing it.
                if cycle.is_multiple_of(2) {
                    store.close().await.expect("closing after verification");
                }
            });
        }
        eprintln!(
            "crash test: {CRASH_CYCLES} SIGKILL cycles ({killed_before_first_ack} before the \
             first ack), {total_acks} acknowledged transactions verified, {stored_counter} keys \
             stored, in {:?}",
            started.elapsed()
        );
    }
}
