//! The SQLite file: opening it, its schema, and the statements [`crate::History`] runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tracing::info;

use crate::SeriesKey;
use crate::encoding::{Totals, decode, encode};
use crate::error::{BadRow, HistoryError, NotWal, QuickCheckFailed};

/// The schema version this build writes, recorded in `PRAGMA user_version` (as the state store
/// does).
pub const SCHEMA_VERSION: i64 = 1;

/// The file [`crate::History::open`] keeps in the data directory.
pub const FILE_NAME: &str = "history.db";

/// Schema steps: `MIGRATIONS[v]` upgrades a database at version `v` to `v + 1`; a fresh file is
/// at version 0, so the first step creates the schema.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1. samples_10s and samples_5m are keyed by (series, t) WITHOUT ROWID, so one
    // series' rows are contiguous: a query, a roll-up or an expiry is one b-tree seek per
    // series, never a scan of every series. recent_10s is keyed by (t, series) instead, so that
    // a flush appends its rows at the end of one b-tree rather than into one page per series
    // (see "Writes" in the crate documentation). There is no index on t alone for the other
    // two, on purpose: it would cost ~15 bytes per row for the roll-up, which walks the series
    // instead.
    "CREATE TABLE series (
         id        INTEGER PRIMARY KEY,
         namespace TEXT    NOT NULL,
         service   TEXT    NOT NULL,
         revision  TEXT    NOT NULL,
         UNIQUE (namespace, service, revision)
     ) STRICT;
     CREATE TABLE recent_10s (
         t      INTEGER NOT NULL,
         series INTEGER NOT NULL,
         data   BLOB    NOT NULL,
         PRIMARY KEY (t, series)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE samples_10s (
         series INTEGER NOT NULL,
         t      INTEGER NOT NULL,
         data   BLOB    NOT NULL,
         PRIMARY KEY (series, t)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE samples_5m (
         series INTEGER NOT NULL,
         t      INTEGER NOT NULL,
         data   BLOB    NOT NULL,
         PRIMARY KEY (series, t)
     ) STRICT, WITHOUT ROWID;
     CREATE TABLE meta (
         id           INTEGER PRIMARY KEY CHECK (id = 1),
         rolled_until INTEGER NOT NULL
     ) STRICT;
     INSERT INTO meta (id, rolled_until) VALUES (1, 0);",
];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// How long a statement waits for another process's lock (an operator's `sqlite3` shell)
/// before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables holding samples. Each sample is in exactly one of them: `Recent` from the
/// current 5 min on, `Fine` for the 24 h before, `Coarse` before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// 10 s rows of the last few minutes, in time order: what flushes append to.
    Recent,
    /// 10 s rows, by series, for the last 24 h.
    Fine,
    /// 5 min rows, by series, for 35 days.
    Coarse,
}

impl Table {
    /// Every table.
    pub(crate) const ALL: [Table; 3] = [Table::Recent, Table::Fine, Table::Coarse];

    /// The SQL table name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Recent => "recent_10s",
            Table::Fine => "samples_10s",
            Table::Coarse => "samples_5m",
        }
    }

    /// Seconds covered by one row.
    pub(crate) fn width(self) -> i64 {
        match self {
            Table::Recent | Table::Fine => crate::FINE_STEP_SECS,
            Table::Coarse => crate::COARSE_STEP_SECS,
        }
    }
}

/// `recent_10s` rows before a time, in key order: `(before)`.
pub(crate) const RECENT_BEFORE: &str = "SELECT series, t, data FROM recent_10s WHERE t < ?1";
/// Deletes `recent_10s` rows before a time: `(before)`.
pub(crate) const RECENT_DELETE_BEFORE: &str = "DELETE FROM recent_10s WHERE t < ?1";
/// The first and last interval in `recent_10s`. Two subqueries, because SQLite finds a lone
/// `min()` or `max()` by one b-tree descent but scans the table for both at once.
pub(crate) const RECENT_SPAN: &str =
    "SELECT (SELECT min(t) FROM recent_10s), (SELECT max(t) FROM recent_10s)";
/// A Service's `recent_10s` rows (optionally one revision's) at one time, by primary key:
/// `(namespace, service, revision or NULL, t)`.
pub(crate) const RECENT_AT: &str = "SELECT s.id, r.data FROM series s
     JOIN recent_10s r ON r.t = ?4 AND r.series = s.id
     WHERE s.namespace = ?1 AND s.service = ?2 AND (?3 IS NULL OR s.revision = ?3)";

/// The statements that differ only by table, written out once per table when the history
/// opens so that `prepare_cached` finds them by the same text every time. `recent_10s` uses
/// only `insert`, `select_one`, `update`, `delete_service` and `count`: its time-ordered
/// reads have statements of their own (`RECENT_*`).
#[derive(Debug)]
pub(crate) struct TableSql {
    /// Inserts a row unless one exists: `(series, t, data)`.
    pub(crate) insert: String,
    /// One row's data: `(series, t)`.
    pub(crate) select_one: String,
    /// Replaces one row's data: `(series, t, data)`.
    pub(crate) update: String,
    /// A series' rows before a time, oldest first: `(series, before)`.
    pub(crate) select_before: String,
    /// Deletes a series' rows before a time: `(series, before)`.
    pub(crate) delete_before: String,
    /// A Service's rows (optionally one revision's) with `after < t < before`:
    /// `(namespace, service, revision or NULL, after, before)`.
    pub(crate) select_window: String,
    /// Deletes a Service's rows: `(namespace, service)`.
    pub(crate) delete_service: String,
    /// Counts rows.
    pub(crate) count: String,
}

impl TableSql {
    fn new(table: Table) -> TableSql {
        let t = table.name();
        TableSql {
            insert: format!(
                "INSERT INTO {t} (series, t, data) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
            ),
            select_one: format!("SELECT data FROM {t} WHERE series = ?1 AND t = ?2"),
            update: format!("UPDATE {t} SET data = ?3 WHERE series = ?1 AND t = ?2"),
            select_before: format!(
                "SELECT t, data FROM {t} WHERE series = ?1 AND t < ?2 ORDER BY t"
            ),
            delete_before: format!("DELETE FROM {t} WHERE series = ?1 AND t < ?2"),
            select_window: format!(
                "SELECT s.id, r.t, r.data FROM series s JOIN {t} r ON r.series = s.id
                 WHERE s.namespace = ?1 AND s.service = ?2 AND (?3 IS NULL OR s.revision = ?3)
                   AND r.t > ?4 AND r.t < ?5"
            ),
            delete_service: format!(
                "DELETE FROM {t} WHERE series IN
                     (SELECT id FROM series WHERE namespace = ?1 AND service = ?2)"
            ),
            count: format!("SELECT count(*) FROM {t}"),
        }
    }
}

/// A failure inside a database step, before the file's path and the operation are attached.
#[derive(Debug)]
pub(crate) enum DbError {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// A stored row did not decode.
    BadRow(BadRow),
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> Self {
        DbError::Sql(err)
    }
}

impl DbError {
    /// The public error, naming the file and what the history was doing.
    pub(crate) fn at(self, path: &Path, operation: &'static str) -> HistoryError {
        match self {
            DbError::Sql(err) => HistoryError::sqlite(path, operation, err),
            DbError::BadRow(bad) => HistoryError::Corrupt {
                path: path.to_path_buf(),
                source: Box::new(bad),
            },
        }
    }
}

/// The open database.
#[derive(Debug)]
pub(crate) struct Db {
    /// The database file (`:memory:` for an in-memory history), for errors and logs.
    pub(crate) path: PathBuf,
    /// The only connection.
    pub(crate) conn: Connection,
    /// Per-table statements, indexed like [`Table::ALL`].
    sql: [TableSql; 3],
}

impl Db {
    /// Opens (creating if needed) `<dir>/history.db`.
    pub(crate) fn open(dir: &Path) -> Result<Db, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|source| HistoryError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        // No SQLITE_OPEN_URI: a configured path is a path, even if it starts with `file:`.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| HistoryError::sqlite(&path, "opening the file", e))?;
        Db::set_up(path, conn, true)
    }

    /// An empty history that lives only in memory.
    pub(crate) fn open_in_memory() -> Result<Db, HistoryError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory()
            .map_err(|e| HistoryError::sqlite(&path, "opening an in-memory database", e))?;
        Db::set_up(path, conn, false)
    }

    /// Checks the file, configures the connection and brings the schema up to date.
    fn set_up(path: PathBuf, mut conn: Connection, on_disk: bool) -> Result<Db, HistoryError> {
        let at = path.as_path();
        let err = |step| move |e| HistoryError::sqlite(at, step, e);
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy_timeout"))?;
        // SQLite opens lazily: this first read of the header is what fails with SQLITE_NOTADB
        // on a file that is not a database. Nothing is written until every check has passed.
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(err("reading the schema version"))?;
        check_version(at, found)?;
        if found == 0 {
            refuse_foreign(&conn, at)?;
        }
        quick_check(&conn, at)?;
        if on_disk {
            use_wal(&conn, at)?;
        }
        // NORMAL, not the state store's FULL: in WAL mode a commit is then not fsynced, so a
        // power loss (not a crash of the daemon) may lose the last few flushes, but never
        // leaves the file inconsistent. That is worth one fsync fewer every 10 s for data
        // whose last 10 s are volatile anyway.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err("setting synchronous=NORMAL"))?;
        migrate(&mut conn, at)?;
        let sql = Table::ALL.map(TableSql::new);
        Ok(Db { path, conn, sql })
    }

    /// The statements of `table`.
    pub(crate) fn sql(&self, table: Table) -> &TableSql {
        &self.sql[table as usize]
    }

    /// The start of the oldest 10 s row the file may hold (see `History::rolled_until`).
    pub(crate) fn rolled_until(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("SELECT rolled_until FROM meta WHERE id = 1", [], |row| {
                row.get(0)
            })
            .map_err(|e| HistoryError::sqlite(&self.path, "reading the roll-up position", e))
    }
}

/// Switches to WAL, so that readers (another process inspecting the file) never block the
/// flush and a crash mid-flush leaves the last committed state.
fn use_wal(conn: &Connection, path: &Path) -> Result<(), HistoryError> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| HistoryError::sqlite(path, "setting journal_mode=WAL", e))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    Err(HistoryError::Sqlite {
        path: path.to_path_buf(),
        operation: "setting journal_mode=WAL",
        source: Box::new(NotWal { mode }),
    })
}

/// Refuses a damaged database.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), HistoryError> {
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| HistoryError::sqlite(path, "running PRAGMA quick_check", e))?;
    if problems == ["ok"] {
        return Ok(());
    }
    Err(HistoryError::Corrupt {
        path: path.to_path_buf(),
        source: Box::new(QuickCheckFailed { problems }),
    })
}

/// Refuses schema versions this build cannot use.
fn check_version(path: &Path, found: i64) -> Result<(), HistoryError> {
    if found > SCHEMA_VERSION {
        return Err(HistoryError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(HistoryError::NotAHistory {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(())
}

/// Refuses a version-0 file that already has tables: version 0 is also what any other SQLite
/// file reports, and only an empty one is a fresh history.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), HistoryError> {
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|e| HistoryError::sqlite(path, "reading the schema", e))?;
    if objects > 0 {
        return Err(HistoryError::NotAHistory {
            path: path.to_path_buf(),
            found: 0,
        });
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let err = |step| move |e| HistoryError::sqlite(path, step, e);
    // IMMEDIATE, and the version read again inside, so two processes opening a fresh file at
    // once cannot both create the schema.
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
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err("recording the schema version"))?;
    tx.commit().map_err(err("committing the schema"))?;
    info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "metrics history schema migrated");
    Ok(())
}

/// The id of `key`'s series, creating it if needed.
pub(crate) fn series_id(conn: &Connection, key: &SeriesKey) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached(
            "SELECT id FROM series WHERE namespace = ?1 AND service = ?2 AND revision = ?3",
        )?
        .query_row(params![key.namespace, key.service, key.revision], |row| {
            row.get(0)
        })
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO series (namespace, service, revision) VALUES (?1, ?2, ?3)")?
        .execute(params![key.namespace, key.service, key.revision])?;
    Ok(conn.last_insert_rowid())
}

/// Every series id, in order.
pub(crate) fn series_ids(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached("SELECT id FROM series ORDER BY id")?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// Adds `totals` into the row `(series, t)` of `table`, creating it if missing.
///
/// The insert is tried first because it is what almost always happens; a row only exists
/// already for late samples and for a roll-up after the clock went back.
pub(crate) fn merge_row(
    db: &Db,
    table: Table,
    series: i64,
    t: i64,
    totals: &Totals,
) -> Result<(), DbError> {
    let inserted = db
        .conn
        .prepare_cached(&db.sql(table).insert)?
        .execute(params![series, t, encode(totals)])?;
    if inserted == 1 {
        return Ok(());
    }
    merge_into_existing(db, table, series, t, totals)
}

/// [`merge_row`] for a row already encoded (moved from another table): copied as it is unless
/// the row exists.
pub(crate) fn merge_encoded(
    db: &Db,
    table: Table,
    series: i64,
    t: i64,
    data: &[u8],
) -> Result<(), DbError> {
    let inserted = db
        .conn
        .prepare_cached(&db.sql(table).insert)?
        .execute(params![series, t, data])?;
    if inserted == 1 {
        return Ok(());
    }
    let totals = decode_row(table, series, t, data)?;
    merge_into_existing(db, table, series, t, &totals)
}

/// Adds `totals` into the existing row `(series, t)` of `table`.
fn merge_into_existing(
    db: &Db,
    table: Table,
    series: i64,
    t: i64,
    totals: &Totals,
) -> Result<(), DbError> {
    let sql = db.sql(table);
    let stored: Vec<u8> = db
        .conn
        .prepare_cached(&sql.select_one)?
        .query_row(params![series, t], |row| row.get(0))?;
    let mut merged = decode_row(table, series, t, &stored)?;
    merged.add(totals);
    db.conn
        .prepare_cached(&sql.update)?
        .execute(params![series, t, encode(&merged)])?;
    Ok(())
}

/// Decodes a stored row, naming it if it does not decode.
pub(crate) fn decode_row(
    table: Table,
    series: i64,
    t: i64,
    data: &[u8],
) -> Result<Totals, DbError> {
    decode(data).map_err(|source| {
        DbError::BadRow(BadRow {
            table: table.name(),
            series,
            t,
            source,
        })
    })
}
