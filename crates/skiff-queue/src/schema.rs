//! Opening the database file: checks, pragmas and schema migrations.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tracing::info;

use crate::error::{NotWal, QueueError, QuickCheckFailed};

/// The schema version this build writes, recorded in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

/// Schema steps. `MIGRATIONS[v]` upgrades a database at version `v` to `v + 1`; a fresh file is
/// at version 0, so the first step creates the schema. The crate documentation explains each
/// table and index.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the initial schema. STRICT makes SQLite reject values of the wrong type instead
    // of silently storing them; AUTOINCREMENT keeps ids from ever being reused, so a stale
    // `LeaseRef` or a logged id never names a newer row.
    "CREATE TABLE events (
         id          INTEGER PRIMARY KEY AUTOINCREMENT,
         accepted_at INTEGER NOT NULL,
         source_key  TEXT,
         payload     BLOB    NOT NULL
     ) STRICT;
     CREATE TABLE deliveries (
         id           INTEGER PRIMARY KEY AUTOINCREMENT,
         event_id     INTEGER NOT NULL REFERENCES events (id),
         subscription TEXT    NOT NULL,
         state        TEXT    NOT NULL CHECK (state IN ('ready', 'leased', 'done', 'dead')),
         due_at       INTEGER NOT NULL,
         attempt      INTEGER NOT NULL CHECK (attempt >= 0),
         lease_token  INTEGER,
         last_error   TEXT,
         created_at   INTEGER NOT NULL,
         finished_at  INTEGER,
         CHECK ((state = 'leased') = (lease_token IS NOT NULL)),
         CHECK ((state IN ('done', 'dead')) = (finished_at IS NOT NULL))
     ) STRICT;
     CREATE INDEX deliveries_due ON deliveries (subscription, due_at)
         WHERE state IN ('ready', 'leased');
     CREATE INDEX deliveries_done ON deliveries (finished_at) WHERE state = 'done';
     CREATE INDEX deliveries_dead ON deliveries (subscription, finished_at) WHERE state = 'dead';
     CREATE UNIQUE INDEX deliveries_event ON deliveries (event_id, subscription);
     CREATE TABLE meta (
         id        INTEGER PRIMARY KEY CHECK (id = 1),
         lease_seq INTEGER NOT NULL
     ) STRICT;
     INSERT INTO meta (id, lease_seq) VALUES (1, 0);",
];

// Every version up to SCHEMA_VERSION must have a migration step.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// How long a statement waits for another process's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint, so that a burst of large payloads
/// does not leave a huge `-wal` file behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Prepared statements kept per connection; the queue uses about twenty.
const STATEMENT_CACHE: usize = 64;

/// SQLite's page cache, in KiB (a negative `cache_size` is KiB). The default 2 MiB is smaller
/// than the working set of a busy queue (the indexes, the newest rows, the payloads being
/// claimed): with it, claim + ack cost 2.5 times as much CPU in `examples/rates.rs`.
const CACHE_KIB: i64 = 16 * 1024;

/// Opens and checks the file, applies the pragmas and brings the schema up to date.
pub(crate) fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| QueueError::CreateDir {
            path: parent.to_path_buf(),
            source: Arc::new(source),
        })?;
    }
    let err = |step| move |e| QueueError::open(path, step, e);

    // No SQLITE_OPEN_URI: a configured path is a path, even if it starts with `file:`.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(err("opening the file"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("setting busy_timeout"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: plans never depend on the values bound to `?`
    // parameters. Without it SQLite plans some statements with their bound values (a `LIMIT
    // ?`, or `subscription = ?` checked against the partial indexes' `state = 'done'`) and
    // re-prepares them whenever a different value is bound; rusqlite clears the bindings of a
    // cached statement, so that was every call, and parsing and planning the claim statement
    // again was most of a claim's cost. Our plans do not gain from the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(err("enabling the query planner stability guarantee"))?;

    // SQLite opens lazily: this first read of the header is what fails with SQLITE_NOTADB on a
    // file that is not a database. Nothing is written until the file has passed every check.
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
        return Err(QueueError::Open {
            path: path.to_path_buf(),
            step: "setting journal_mode=WAL",
            source: Arc::new(NotWal { mode }),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err("setting synchronous=FULL"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err("setting foreign_keys=ON"))?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(err("setting journal_size_limit"))?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(err("setting cache_size"))?;

    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Refuses a damaged database.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| QueueError::open(path, "running PRAGMA quick_check", e))?;
    if problems == ["ok"] {
        return Ok(());
    }
    Err(QueueError::Corrupt {
        path: path.to_path_buf(),
        source: Arc::new(QuickCheckFailed { problems }),
    })
}

/// Refuses schema versions this build cannot use.
fn check_version(path: &Path, found: i64) -> Result<(), QueueError> {
    if found > SCHEMA_VERSION {
        return Err(QueueError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(QueueError::NotAQueue {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Refuses a version-0 file that already has tables: version 0 is also what any other SQLite
/// file reports, and only an empty one is a fresh queue.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|e| QueueError::open(path, "reading the schema", e))?;
    if objects > 0 {
        return Err(QueueError::NotAQueue {
            path: path.to_path_buf(),
            found: 0,
        });
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), QueueError> {
    let err = |step| move |e| QueueError::open(path, step, e);
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
        "delivery queue schema migrated"
    );
    Ok(())
}
