//! [`History`]: recording, flushing and querying.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use rusqlite::types::Type;
use rusqlite::{Row, Transaction, TransactionBehavior, params};
use tracing::info;

use crate::db::{self, Db, DbError, Table, merge_encoded, merge_row, series_id, series_ids};
use crate::encoding::Totals;
use crate::error::HistoryError;
use crate::sample::Sample;
use crate::{
    COARSE_RETENTION_SECS, COARSE_STEP_SECS, FINE_RETENTION_SECS, FINE_STEP_SECS, MAX_RANGE_POINTS,
    MAX_RANGE_STEP_SECS, MAX_TIMESTAMP, SeriesKey, ServiceKey,
};

/// What one [`History::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Closed intervals written: appended as 10 s rows, or merged into an older row when they
    /// arrived late.
    pub written: usize,
    /// 10 s rows moved from the append-only table to the per-series one.
    pub moved: usize,
    /// 10 s rows rolled up into 5 min rows (and deleted).
    pub rolled_up: usize,
    /// 5 min rows deleted for being older than 35 days.
    pub expired: usize,
}

/// Sizes, for benchmarks and the daemon's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Series (revisions) with a row.
    pub series: u64,
    /// 10 s rows, in either table.
    pub rows_10s: u64,
    /// Of `rows_10s`, those still in the append-only table (the last few minutes).
    pub rows_recent: u64,
    /// 5 min rows.
    pub rows_5m: u64,
    /// Intervals recorded in memory and not yet flushed.
    pub open_intervals: u64,
    /// Size of the database (`page_count × page_size`): the main file once the WAL is
    /// checkpointed. Free pages are included; SQLite reuses them for new rows.
    pub bytes: u64,
    /// Of `bytes`, the free pages.
    pub free_bytes: u64,
}

/// The metrics history: a SQLite file plus the intervals recorded since the last flush.
///
/// Calls block on SQLite (a flush is one transaction, a query reads up to 35 days of rows), so
/// the daemon calls them from a blocking thread, behind a mutex: `History` is `Send` but not
/// `Sync`. See the crate documentation for the design.
pub struct History {
    /// The database and its statements.
    db: Db,
    /// Intervals recorded and not yet written, by series. Only series with something recorded
    /// since the last flush have an entry, usually holding one interval.
    open: HashMap<SeriesKey, Intervals>,
    /// Where the resolutions meet, a multiple of 300: every 10 s row starts at or after it and
    /// every 5 min row before it. Stored in the `meta` table.
    rolled_until: i64,
    /// A multiple of 300: every row of `recent_10s` starts at or after it, and every row of
    /// `samples_10s` before it. Kept only in memory: the first flush after opening moves
    /// whatever the last process left in `recent_10s`.
    moved_until: i64,
    /// Every 5 min row starting before this has been deleted. Kept only in memory: the first
    /// flush after opening runs the expiry again, which costs one seek per series.
    expired_until: i64,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("path", &self.db.path)
            .field("open_series", &self.open.len())
            .field("rolled_until", &self.rolled_until)
            .finish_non_exhaustive()
    }
}

impl History {
    /// Opens the history in `dir` (the file `history.db`), creating both if missing.
    ///
    /// It sees everything flushed before, and nothing that was only recorded: the intervals
    /// not flushed when the last process stopped (at most the last 10 s) are lost. The file is
    /// checked with `PRAGMA quick_check`, which reads all of it (see the crate documentation
    /// for the time this takes).
    pub fn open(dir: &Path) -> Result<History, HistoryError> {
        History::with_db(Db::open(dir)?)
    }

    /// An empty history kept in memory only, for tests.
    pub fn open_in_memory() -> Result<History, HistoryError> {
        History::with_db(Db::open_in_memory()?)
    }

    fn with_db(db: Db) -> Result<History, HistoryError> {
        let rolled_until = db.rolled_until()?;
        info!(path = %db.path.display(), rolled_until, "metrics history opened");
        Ok(History {
            db,
            open: HashMap::new(),
            rolled_until,
            moved_until: i64::MIN,
            expired_until: i64::MIN,
        })
    }

    /// The database file (`:memory:` for an in-memory history).
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// Adds `sample` into `key`'s open 10 s interval containing `at_unix`.
    ///
    /// Nothing is written until [`History::flush`], but queries already count it. An empty
    /// sample is ignored, so idle revisions cost nothing. So is a timestamp before 1970 or
    /// after [`MAX_TIMESTAMP`]. Durations are kept to the microsecond, and a negative, NaN or
    /// infinite one counts as zero. A sample for an interval already flushed (a late one) is
    /// added to the stored row at the next flush.
    pub fn record(&mut self, key: &SeriesKey, at_unix: i64, sample: &Sample) {
        if !(0..=MAX_TIMESTAMP).contains(&at_unix) {
            return;
        }
        let totals = Totals::from(sample);
        if totals.is_empty() {
            return;
        }
        let t = align_down(at_unix, FINE_STEP_SECS);
        match self.open.get_mut(key) {
            Some(intervals) => add_interval(intervals, t, &totals),
            None => {
                self.open.insert(key.clone(), vec![(t, totals)]);
            }
        }
    }

    /// Writes the intervals that closed by `now_unix` (appending them to the recent table),
    /// and keeps both resolutions in shape: the recent table's rows before the current 5 min
    /// move to the per-series 10 s table, 10 s rows older than 24 h are rolled up into 5 min
    /// rows, and 5 min rows older than 35 days are deleted. All of it is one transaction; if it
    /// fails, nothing is written and the closed intervals stay in memory for the next flush.
    ///
    /// Call it every 10 s. It returns without touching the file when no interval closed and
    /// no 5 min boundary was crossed. The maintenance happens when `now_unix` crosses a
    /// multiple of 300 (every 30th flush) and costs a few b-tree seeks per series plus the
    /// rows moved (see "Costs" in the crate documentation).
    pub fn flush(&mut self, now_unix: i64) -> Result<Flushed, HistoryError> {
        let now = now_unix.clamp(0, MAX_TIMESTAMP);
        let plan = Plan::at(now, self);
        let closed = self.take_closed(now);
        if closed.is_empty() && plan.is_idle() {
            return Ok(Flushed::default());
        }
        match self.write(&closed, &plan) {
            Ok(flushed) => {
                self.moved_until = plan.move_to.unwrap_or(self.moved_until);
                self.rolled_until = plan.roll_to.unwrap_or(self.rolled_until);
                self.expired_until = plan.expire_to.unwrap_or(self.expired_until);
                Ok(flushed)
            }
            Err(err) => {
                self.put_back(closed);
                Err(err)
            }
        }
    }

    /// Removes and returns the intervals closed at `now`: `[t, t + 10)` is closed once
    /// `now >= t + 10`.
    fn take_closed(&mut self, now: i64) -> Vec<(SeriesKey, Intervals)> {
        let first_open = now - FINE_STEP_SECS + 1;
        let mut closed = Vec::new();
        for (key, intervals) in &mut self.open {
            let done = intervals.partition_point(|(t, _)| *t < first_open);
            if done > 0 {
                closed.push((key.clone(), intervals.drain(..done).collect()));
            }
        }
        self.open.retain(|_, intervals| !intervals.is_empty());
        closed
    }

    /// Returns intervals taken by a flush that failed, adding them to any recorded since.
    fn put_back(&mut self, closed: Vec<(SeriesKey, Intervals)>) {
        for (key, intervals) in closed {
            let open = self.open.entry(key).or_default();
            for (t, totals) in intervals {
                add_interval(open, t, &totals);
            }
        }
    }

    /// The flush's transaction: closed intervals, then each step of `plan`.
    fn write(
        &self,
        closed: &[(SeriesKey, Intervals)],
        plan: &Plan,
    ) -> Result<Flushed, HistoryError> {
        let db = &self.db;
        let at = |operation| move |err: DbError| err.at(&db.path, operation);
        let tx = Transaction::new_unchecked(&db.conn, TransactionBehavior::Immediate)
            .map_err(|e| HistoryError::sqlite(&db.path, "starting a flush", e))?;
        let mut flushed = Flushed {
            written: write_closed(db, closed, self.route(plan))
                .map_err(at("writing closed intervals"))?,
            ..Flushed::default()
        };
        if let Some(to) = plan.move_to {
            flushed.moved = move_recent(db, to).map_err(at("moving recent rows"))?;
        }
        if plan.roll_to.is_some() || plan.expire_to.is_some() {
            let ids = series_ids(&db.conn)
                .map_err(|e| HistoryError::sqlite(&db.path, "listing series", e))?;
            if let Some(to) = plan.roll_to {
                flushed.rolled_up = roll_up(db, &ids, to).map_err(at("rolling up 10 s rows"))?;
            }
            if let Some(to) = plan.expire_to {
                flushed.expired = expire_before(db, &ids, to).map_err(at("expiring old rows"))?;
            }
        }
        tx.commit()
            .map_err(|e| HistoryError::sqlite(&db.path, "committing a flush", e))?;
        Ok(flushed)
    }

    /// Where this flush writes closed intervals.
    fn route(&self, plan: &Plan) -> Route {
        Route {
            oldest: plan.oldest,
            rolled_until: self.rolled_until,
            moved_until: self.moved_until,
        }
    }

    /// Everything `service` (or only its `revision`) recorded in `[from_unix, to_unix)`,
    /// flushed or not, added up.
    ///
    /// Rows that overlap the window count whole: where 10 s rows exist the window is in effect
    /// widened to multiples of 10 s, and in the older, 5 min region to multiples of 300 s, so
    /// an edge that falls there may count up to one 5 min row (4 min 50 s) more than asked.
    pub fn sum(
        &self,
        service: &ServiceKey,
        revision: Option<&str>,
        from_unix: i64,
        to_unix: i64,
    ) -> Result<Sample, HistoryError> {
        let mut total = Totals::default();
        self.visit(service, revision, from_unix, to_unix, |_, totals| {
            total.add(totals)
        })?;
        Ok(total.to_sample())
    }

    /// [`History::sum`] per step: one `(start, sample)` per `step_secs` from `from_unix`
    /// rounded down to a multiple of the step, up to `to_unix`, with empty samples for steps
    /// without data, so a chart shows zeros rather than joining across a gap.
    ///
    /// The step must be a multiple of 10 s, at most [`MAX_RANGE_STEP_SECS`], and the range at
    /// most [`MAX_RANGE_POINTS`] points. A 5 min row counts whole in the step holding its
    /// start (or in the first step if it starts before it): with steps under 5 min, the part
    /// of a range older than 24 h shows each 5 min total in one step and zeros in the others.
    pub fn range(
        &self,
        service: &ServiceKey,
        revision: Option<&str>,
        from_unix: i64,
        to_unix: i64,
        step_secs: i64,
    ) -> Result<Vec<(i64, Sample)>, HistoryError> {
        if !(FINE_STEP_SECS..=MAX_RANGE_STEP_SECS).contains(&step_secs)
            || step_secs % FINE_STEP_SECS != 0
        {
            return Err(HistoryError::InvalidStep { step: step_secs });
        }
        let (from, to) = (clamp(from_unix), clamp(to_unix));
        if from >= to {
            return Ok(Vec::new());
        }
        let start = align_down(from, step_secs);
        let end = align_down(to + step_secs - 1, step_secs);
        let points = (end - start) / step_secs;
        if points > MAX_RANGE_POINTS {
            return Err(HistoryError::TooManyPoints {
                points,
                max: MAX_RANGE_POINTS,
            });
        }
        let mut steps = vec![Totals::default(); usize::try_from(points).unwrap_or(0)];
        self.visit(service, revision, start, end, |t, totals| {
            let index = usize::try_from((t.max(start) - start) / step_secs).unwrap_or(0);
            if let Some(step) = steps.get_mut(index) {
                step.add(totals);
            }
        })?;
        Ok((start..)
            .step_by(usize::try_from(step_secs).unwrap_or(1))
            .zip(steps.into_iter().map(Totals::to_sample))
            .collect())
    }

    /// Calls `f(start, totals)` for every row and open interval of `service` (or only its
    /// `revision`) that overlaps `[from, to)`.
    fn visit(
        &self,
        service: &ServiceKey,
        revision: Option<&str>,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, &Totals),
    ) -> Result<(), HistoryError> {
        let (from, to) = (clamp(from), clamp(to));
        if from >= to {
            return Ok(());
        }
        for table in [Table::Fine, Table::Coarse] {
            self.visit_rows(table, service, revision, from, to, &mut f)
                .map_err(|err| err.at(&self.db.path, "reading samples"))?;
        }
        self.visit_recent(service, revision, from, to, &mut f)
            .map_err(|err| err.at(&self.db.path, "reading recent samples"))?;
        let in_scope = |key: &SeriesKey| {
            key.namespace == service.namespace
                && key.service == service.service
                && revision.is_none_or(|r| r == key.revision)
        };
        for (_, intervals) in self.open.iter().filter(|(key, _)| in_scope(key)) {
            for (t, totals) in intervals {
                if *t > from - FINE_STEP_SECS && *t < to {
                    f(*t, totals);
                }
            }
        }
        Ok(())
    }

    /// [`History::visit`] over one table.
    fn visit_rows(
        &self,
        table: Table,
        service: &ServiceKey,
        revision: Option<&str>,
        from: i64,
        to: i64,
        f: &mut impl FnMut(i64, &Totals),
    ) -> Result<(), DbError> {
        let mut statement = self
            .db
            .conn
            .prepare_cached(&self.db.sql(table).select_window)?;
        let after = from - table.width();
        let mut rows = statement.query(params![
            service.namespace,
            service.service,
            revision,
            after,
            to
        ])?;
        while let Some(row) = rows.next()? {
            let (series, t): (i64, i64) = (row.get(0)?, row.get(1)?);
            f(t, &db::decode_row(table, series, t, blob(row, 2)?)?);
        }
        Ok(())
    }

    /// [`History::visit`] over `recent_10s`, which is keyed by time: one primary-key lookup per
    /// 10 s interval and series of the Service, over the few minutes the table spans.
    fn visit_recent(
        &self,
        service: &ServiceKey,
        revision: Option<&str>,
        from: i64,
        to: i64,
        f: &mut impl FnMut(i64, &Totals),
    ) -> Result<(), DbError> {
        let span: (Option<i64>, Option<i64>) = self
            .db
            .conn
            .prepare_cached(db::RECENT_SPAN)?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let (Some(first), Some(last)) = span else {
            return Ok(());
        };
        let mut statement = self.db.conn.prepare_cached(db::RECENT_AT)?;
        // Every start is a multiple of 10, so stepping from one visits them all.
        let mut t = first.max(align_down(from, FINE_STEP_SECS));
        while t <= last.min(to - 1) {
            let keys = params![service.namespace, service.service, revision, t];
            let mut rows = statement.query(keys)?;
            while let Some(row) = rows.next()? {
                let series: i64 = row.get(0)?;
                f(t, &db::decode_row(Table::Recent, series, t, blob(row, 1)?)?);
            }
            t += FINE_STEP_SECS;
        }
        Ok(())
    }

    /// The Services with any history, flushed or not, in order.
    pub fn services(&self) -> Result<Vec<ServiceKey>, HistoryError> {
        let mut found = BTreeSet::new();
        let mut statement = self
            .db
            .conn
            .prepare_cached("SELECT DISTINCT namespace, service FROM series")
            .map_err(|e| HistoryError::sqlite(&self.db.path, "listing services", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(ServiceKey::new(
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| HistoryError::sqlite(&self.db.path, "listing services", e))?;
        found.extend(rows);
        found.extend(self.open.keys().map(SeriesKey::service_key));
        Ok(found.into_iter().collect())
    }

    /// Deletes all of `service`'s history, every revision, flushed or not: for when the
    /// Service itself is deleted. (A deleted revision's history is kept until it ages out, so
    /// that the Service's error budget does not reset.)
    pub fn forget_service(&mut self, service: &ServiceKey) -> Result<(), HistoryError> {
        let db = &self.db;
        let err = |e| HistoryError::sqlite(&db.path, "forgetting a service", e);
        let tx =
            Transaction::new_unchecked(&db.conn, TransactionBehavior::Immediate).map_err(err)?;
        let keys = params![service.namespace, service.service];
        for table in Table::ALL {
            db.conn
                .prepare_cached(&db.sql(table).delete_service)
                .and_then(|mut s| s.execute(keys))
                .map_err(err)?;
        }
        db.conn
            .prepare_cached("DELETE FROM series WHERE namespace = ?1 AND service = ?2")
            .and_then(|mut s| s.execute(keys))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        self.open
            .retain(|key, _| key.namespace != service.namespace || key.service != service.service);
        Ok(())
    }

    /// Row counts and file size. Counting reads every row: this is for benchmarks and
    /// occasional metrics, not for every flush.
    pub fn stats(&self) -> Result<Stats, HistoryError> {
        let db = &self.db;
        let err = |e| HistoryError::sqlite(&db.path, "reading statistics", e);
        let count = |sql: &str| -> Result<u64, HistoryError> {
            let n: i64 = db.conn.query_row(sql, [], |row| row.get(0)).map_err(err)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let page_size = count("PRAGMA page_size")?;
        let rows_recent = count(&db.sql(Table::Recent).count)?;
        Ok(Stats {
            series: count("SELECT count(*) FROM series")?,
            rows_10s: rows_recent + count(&db.sql(Table::Fine).count)?,
            rows_recent,
            rows_5m: count(&db.sql(Table::Coarse).count)?,
            open_intervals: self.open.values().map(|i| i.len() as u64).sum(),
            bytes: count("PRAGMA page_count")? * page_size,
            free_bytes: count("PRAGMA freelist_count")? * page_size,
        })
    }
}

/// Intervals of one series, sorted by start, each start a multiple of 10 s. A `Vec` rather
/// than a `BTreeMap`: there is almost always exactly one, and a map's first node would reserve
/// room for eleven 288-byte [`Totals`].
type Intervals = Vec<(i64, Totals)>;

/// Adds `totals` into the interval starting at `t`, inserting it in order if missing.
fn add_interval(intervals: &mut Intervals, t: i64, totals: &Totals) {
    match intervals.binary_search_by_key(&t, |(start, _)| *start) {
        Ok(found) => intervals[found].1.add(totals),
        Err(at) => intervals.insert(at, (t, *totals)),
    }
}

/// What a flush does besides writing closed intervals: each step is `Some(boundary)` when
/// `now` crossed it since the last flush. All three advance at multiples of 300 s.
#[derive(Debug)]
struct Plan {
    /// Move `recent_10s` rows before this into `samples_10s`.
    move_to: Option<i64>,
    /// Roll `samples_10s` rows before this into `samples_5m`.
    roll_to: Option<i64>,
    /// Delete `samples_5m` rows before this.
    expire_to: Option<i64>,
    /// Closed intervals before this are past retention and dropped.
    oldest: i64,
}

impl Plan {
    fn at(now: i64, history: &History) -> Plan {
        let past = |boundary: i64, done: i64| (boundary > done).then_some(boundary);
        let expire_to = align_down(now - COARSE_RETENTION_SECS, COARSE_STEP_SECS);
        Plan {
            move_to: past(align_down(now, COARSE_STEP_SECS), history.moved_until),
            roll_to: past(
                align_down(now - FINE_RETENTION_SECS, COARSE_STEP_SECS),
                history.rolled_until,
            ),
            expire_to: past(expire_to, history.expired_until),
            oldest: expire_to,
        }
    }

    fn is_idle(&self) -> bool {
        self.move_to.is_none() && self.roll_to.is_none() && self.expire_to.is_none()
    }
}

/// Which table a closed interval goes to, by its start.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// Before this: dropped.
    oldest: i64,
    /// Before this: merged into its 5 min row.
    rolled_until: i64,
    /// Before this: merged into `samples_10s`; from it on, appended to `recent_10s`.
    moved_until: i64,
}

impl Route {
    /// The table and row start for an interval starting at `t`, or `None` to drop it.
    fn of(self, t: i64) -> Option<(Table, i64)> {
        if t < self.oldest {
            None
        } else if t < self.rolled_until {
            Some((Table::Coarse, align_down(t, COARSE_STEP_SECS)))
        } else if t < self.moved_until {
            Some((Table::Fine, t))
        } else {
            Some((Table::Recent, t))
        }
    }
}

/// Writes closed intervals where `route` says. Returns how many were written.
fn write_closed(
    db: &Db,
    closed: &[(SeriesKey, Intervals)],
    route: Route,
) -> Result<usize, DbError> {
    let mut written = 0;
    for (key, intervals) in closed {
        let mut series = None;
        for (t, totals) in intervals {
            let Some((table, start)) = route.of(*t) else {
                continue;
            };
            let id = match series {
                Some(id) => id,
                None => *series.insert(series_id(&db.conn, key)?),
            };
            merge_row(db, table, id, start, totals)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Moves the `recent_10s` rows before `to` into `samples_10s`, in (series, t) order so that
/// each series' page is visited once. Returns how many were moved.
fn move_recent(db: &Db, to: i64) -> Result<usize, DbError> {
    let mut rows = db
        .conn
        .prepare_cached(db::RECENT_BEFORE)?
        .query_map([to], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<Vec<(i64, i64, Vec<u8>)>, _>>()?;
    rows.sort_unstable_by_key(|(series, t, _)| (*series, *t));
    for (series, t, data) in &rows {
        merge_encoded(db, Table::Fine, *series, *t, data)?;
    }
    db.conn
        .prepare_cached(db::RECENT_DELETE_BEFORE)?
        .execute([to])?;
    Ok(rows.len())
}

/// Moves every 10 s row before `to` into its 5 min row, series by series, and records `to` as
/// the new boundary. Returns how many 10 s rows were moved.
fn roll_up(db: &Db, ids: &[i64], to: i64) -> Result<usize, DbError> {
    let fine = db.sql(Table::Fine);
    let mut rolled = 0;
    for &id in ids {
        let mut windows: BTreeMap<i64, Totals> = BTreeMap::new();
        {
            let mut statement = db.conn.prepare_cached(&fine.select_before)?;
            let mut rows = statement.query(params![id, to])?;
            while let Some(row) = rows.next()? {
                let t: i64 = row.get(0)?;
                let totals = db::decode_row(Table::Fine, id, t, blob(row, 1)?)?;
                windows
                    .entry(align_down(t, COARSE_STEP_SECS))
                    .or_default()
                    .add(&totals);
                rolled += 1;
            }
        }
        if windows.is_empty() {
            continue;
        }
        for (start, totals) in &windows {
            merge_row(db, Table::Coarse, id, *start, totals)?;
        }
        db.conn
            .prepare_cached(&fine.delete_before)?
            .execute(params![id, to])?;
    }
    db.conn
        .prepare_cached("UPDATE meta SET rolled_until = ?1 WHERE id = 1")?
        .execute([to])?;
    Ok(rolled)
}

/// Deletes 5 min rows starting before `to`, then series left without rows. Returns how many
/// rows were deleted.
fn expire_before(db: &Db, ids: &[i64], to: i64) -> Result<usize, DbError> {
    let coarse = db.sql(Table::Coarse);
    let mut expired = 0;
    for &id in ids {
        expired += db
            .conn
            .prepare_cached(&coarse.delete_before)?
            .execute(params![id, to])?;
    }
    // recent_10s is keyed by time, so it is read once (NOT IN builds a set of its series),
    // not searched per series.
    db.conn
        .prepare_cached(
            "DELETE FROM series AS s
             WHERE NOT EXISTS (SELECT 1 FROM samples_10s r WHERE r.series = s.id)
               AND NOT EXISTS (SELECT 1 FROM samples_5m r WHERE r.series = s.id)
               AND s.id NOT IN (SELECT series FROM recent_10s)",
        )?
        .execute([])?;
    Ok(expired)
}

/// The blob in column `index`, borrowed from the row.
fn blob<'r>(row: &'r Row<'_>, index: usize) -> rusqlite::Result<&'r [u8]> {
    row.get_ref(index)?
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Blob, Box::new(e)))
}

/// `t` rounded down to a multiple of `step` (towards minus infinity).
fn align_down(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// A query timestamp brought into the range where data can exist.
fn clamp(t: i64) -> i64 {
    t.clamp(0, MAX_TIMESTAMP)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::{FILE_NAME, SCHEMA_VERSION};

    /// 2023-11-14 22:10:00 UTC: a multiple of 300 s, like the start of every 5 min row.
    const T0: i64 = 1_699_999_800;
    const DAY: i64 = 86_400;

    fn rev(service: &str, revision: &str) -> SeriesKey {
        SeriesKey::new("default", service, revision)
    }

    fn svc(service: &str) -> ServiceKey {
        ServiceKey::new("default", service)
    }

    /// A sample with every field non-zero, scaled by `n`; durations are not round numbers.
    fn busy(n: u64) -> Sample {
        let mut sample = Sample {
            requests_by_class: [n, 100 * n, 2 * n, 7 * n, 3 * n],
            cold_starts: n,
            throttled: 2 * n,
            instance_seconds: 9.876_543 * n as f64,
            vcpu_seconds: 4.938_271_5 * n as f64,
            gib_seconds: 2.469_135 * n as f64,
            cpu_used_seconds: 1.234_567 * n as f64,
            instances_max: u32::try_from(n).expect("small"),
            memory_bytes_max: (100 << 20) + n,
            ..Sample::default()
        };
        for (i, bucket) in sample.latency.iter_mut().enumerate() {
            *bucket = n * (i as u64 + 1);
        }
        sample
    }

    fn requests(total: u64) -> Sample {
        Sample {
            requests_by_class: [0, total, 0, 0, 0],
            ..Sample::default()
        }
    }

    fn total(history: &History, service: &str, from: i64, to: i64) -> u64 {
        history
            .sum(&svc(service), None, from, to)
            .expect("sum")
            .total()
    }

    #[test]
    fn record_flush_and_sum_over_windows() {
        // Samples recorded over a minute and flushed are summed over any window, with rows
        // that overlap an edge counted whole.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        for i in 0..6 {
            h.record(&key, T0 + 10 * i + 3, &requests(i as u64 + 1));
        }
        let flushed = h.flush(T0 + 60).expect("flush");
        assert_eq!(flushed.written, 6);
        assert_eq!(h.stats().expect("stats").rows_10s, 6);
        assert_eq!(total(&h, "api", T0, T0 + 60), 21);
        assert_eq!(total(&h, "api", T0 - 3600, T0 + 3600), 21);
        assert_eq!(total(&h, "api", T0 + 20, T0 + 40), 3 + 4);
        assert_eq!(
            total(&h, "api", T0 + 25, T0 + 31),
            3 + 4,
            "edges widen to 10 s"
        );
        assert_eq!(total(&h, "api", T0 + 60, T0 + 120), 0);
        assert_eq!(total(&h, "api", T0 + 40, T0 + 20), 0, "empty window");
        assert_eq!(total(&h, "other", T0, T0 + 60), 0);
    }

    #[test]
    fn flush_writes_only_closed_intervals() {
        // An interval is written once `now` reaches its end, not before; until then (and
        // after) sums count it.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0 + 5, &requests(4));
        h.record(&key, T0 + 9, &requests(1));
        assert_eq!(total(&h, "api", T0, T0 + 10), 5, "unflushed samples count");
        assert_eq!(h.flush(T0 + 9).expect("flush"), Flushed::default());
        assert_eq!(h.stats().expect("stats").open_intervals, 1);
        assert_eq!(h.flush(T0 + 10).expect("flush").written, 1);
        let stats = h.stats().expect("stats");
        assert_eq!((stats.open_intervals, stats.rows_10s), (0, 1));
        assert_eq!(total(&h, "api", T0, T0 + 10), 5);
    }

    #[test]
    fn intervals_recorded_out_of_order_stay_in_order() {
        // Samples recorded out of time order land in their own intervals, and a flush writes
        // exactly the closed ones.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0 + 25, &requests(100));
        h.record(&key, T0 + 5, &requests(1));
        h.record(&key, T0 + 15, &requests(10));
        h.record(&key, T0 + 7, &requests(1));
        assert_eq!(h.flush(T0 + 20).expect("flush").written, 2);
        assert_eq!(h.stats().expect("stats").open_intervals, 1);
        assert_eq!(total(&h, "api", T0, T0 + 10), 2);
        assert_eq!(total(&h, "api", T0 + 10, T0 + 20), 10);
        assert_eq!(total(&h, "api", T0 + 20, T0 + 30), 100);
    }

    #[test]
    fn sum_adds_flushed_and_unflushed_alike() {
        // A window spanning flushed rows and open intervals counts each once.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0, &requests(1));
        h.flush(T0 + 10).expect("flush");
        h.record(&key, T0 + 10, &requests(10));
        h.record(&key, T0 + 20, &requests(100));
        assert_eq!(total(&h, "api", T0, T0 + 30), 111);
        h.flush(T0 + 20).expect("flush");
        assert_eq!(total(&h, "api", T0, T0 + 30), 111);
    }

    #[test]
    fn idle_revisions_write_nothing() {
        // Empty samples, and timestamps outside 1970..MAX_TIMESTAMP, leave no trace.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0, &Sample::default());
        h.record(&key, -10, &requests(1));
        h.record(&key, MAX_TIMESTAMP + 1, &requests(1));
        assert_eq!(h.flush(T0 + 10).expect("flush").written, 0);
        let stats = h.stats().expect("stats");
        assert_eq!(
            (stats.series, stats.rows_10s, stats.open_intervals),
            (0, 0, 0)
        );
        assert!(h.services().expect("services").is_empty());
    }

    #[test]
    fn nothing_to_do_is_a_no_op() {
        // Between 5 min boundaries, a flush with nothing closed does no work at all.
        let mut h = History::open_in_memory().expect("open");
        h.flush(T0).expect("first flush rolls and expires");
        for now in (T0 + 10..T0 + 300).step_by(10) {
            assert_eq!(h.flush(now).expect("flush"), Flushed::default());
        }
    }

    #[test]
    fn range_has_aligned_steps_and_zero_gaps() {
        // Steps start at multiples of the step, and steps without data are present and empty.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0 + 5, &requests(1));
        h.record(&key, T0 + 65, &requests(2));
        h.record(&key, T0 + 75, &requests(3));
        h.record(&key, T0 + 245, &requests(4));
        h.flush(T0 + 100).expect("flush");
        let points = h
            .range(&svc("api"), None, T0 + 30, T0 + 250, 60)
            .expect("range");
        let starts: Vec<i64> = points.iter().map(|(t, _)| *t - T0).collect();
        assert_eq!(starts, [0, 60, 120, 180, 240]);
        let totals: Vec<u64> = points.iter().map(|(_, s)| s.total()).collect();
        assert_eq!(totals, [1, 5, 0, 0, 4]);
        assert!(points[2].1.is_empty());
    }

    #[test]
    fn range_refuses_bad_steps() {
        // A step that is not a positive multiple of 10 s, or one giving too many points, is
        // refused; an empty window is an empty answer.
        let h = History::open_in_memory().expect("open");
        for step in [0, -10, 15, MAX_RANGE_STEP_SECS + 10] {
            let err = h
                .range(&svc("api"), None, T0, T0 + 60, step)
                .expect_err("bad step");
            assert!(matches!(err, HistoryError::InvalidStep { .. }), "{err:?}");
        }
        let err = h
            .range(&svc("api"), None, T0 - 30 * DAY, T0, 10)
            .expect_err("too many points");
        assert!(matches!(err, HistoryError::TooManyPoints { .. }), "{err:?}");
        assert!(
            h.range(&svc("api"), None, T0, T0, 10)
                .expect("range")
                .is_empty()
        );
    }

    /// Records `busy(1 + i % 7)` every 10 s from `from` to `to` and flushes after each.
    fn fill(h: &mut History, key: &SeriesKey, from: i64, to: i64) {
        for (i, t) in (from..to).step_by(10).enumerate() {
            h.record(key, t, &busy(1 + i as u64 % 7));
            h.flush(t + 10).expect("flush");
        }
    }

    #[test]
    fn roll_up_keeps_day_totals_exact() {
        // A day summed from its 8,640 10 s rows equals, field for field and bit for bit, the
        // same day summed from the 288 5 min rows it is rolled into 24 h later.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        fill(&mut h, &key, T0, T0 + DAY);
        let before = h.sum(&svc("api"), None, T0, T0 + DAY).expect("sum");
        assert_eq!(h.stats().expect("stats").rows_10s, 8640);
        let expected: u64 = (0..8640u64).map(|i| busy(1 + i % 7).total()).sum();
        assert_eq!(before.total(), expected);

        let flushed = h.flush(T0 + 2 * DAY).expect("flush");
        assert_eq!(flushed.rolled_up, 8640);
        let stats = h.stats().expect("stats");
        assert_eq!((stats.rows_10s, stats.rows_5m), (0, 288));
        let after = h.sum(&svc("api"), None, T0, T0 + DAY).expect("sum");
        assert_eq!(after, before);
        // Rolling a little at a time (every 5 min, as a running daemon does) gives the same.
        let mut stepwise = History::open_in_memory().expect("open");
        fill(&mut stepwise, &key, T0, T0 + DAY);
        for now in (T0 + DAY..=T0 + 2 * DAY).step_by(300) {
            stepwise.flush(now).expect("flush");
        }
        assert_eq!(stepwise.stats().expect("stats").rows_5m, 288);
        assert_eq!(
            stepwise.sum(&svc("api"), None, T0, T0 + DAY).expect("sum"),
            before
        );
    }

    #[test]
    fn fine_rows_roll_up_after_24_hours() {
        // A 10 s row is rolled into its 5 min row once its whole 5 min are more than 24 h old,
        // and not before.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0 + 290, &requests(3));
        h.flush(T0 + 300).expect("flush");
        h.flush(T0 + 300 + DAY - 10).expect("flush");
        assert_eq!(h.stats().expect("stats").rows_10s, 1);
        let flushed = h.flush(T0 + 300 + DAY).expect("flush");
        assert_eq!((flushed.rolled_up, flushed.written), (1, 0));
        let stats = h.stats().expect("stats");
        assert_eq!((stats.rows_10s, stats.rows_5m), (0, 1));
        assert_eq!(total(&h, "api", T0, T0 + 300), 3);
    }

    #[test]
    fn window_edges_in_the_5_min_region_count_whole_rows() {
        // Once rolled up, a window starting or ending inside a 5 min row counts all of it: the
        // documented error of at most one 5 min row per edge.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        for i in 0..60 {
            h.record(&key, T0 + 10 * i, &requests(1));
        }
        h.flush(T0 + 600).expect("flush");
        assert_eq!(total(&h, "api", T0 + 100, T0 + 400), 30, "10 s rows: exact");
        h.flush(T0 + 2 * DAY).expect("roll up");
        assert_eq!(
            total(&h, "api", T0 + 100, T0 + 400),
            60,
            "two whole 5 min rows"
        );
        assert_eq!(
            total(&h, "api", T0 + 100, T0 + 200),
            30,
            "one whole 5 min row"
        );
        assert_eq!(total(&h, "api", T0 + 300, T0 + 600), 30, "aligned: exact");
    }

    #[test]
    fn retention_drops_rows_older_than_35_days() {
        // 5 min rows are deleted once their end is more than 35 days old, and a series left
        // without rows disappears from services().
        let mut h = History::open_in_memory().expect("open");
        h.record(&rev("old", "old-1"), T0, &requests(1));
        h.record(&rev("new", "new-1"), T0 + 3 * DAY, &requests(1));
        h.flush(T0 + 3 * DAY + 10).expect("flush");
        h.flush(T0 + 35 * DAY + 290).expect("flush");
        assert_eq!(total(&h, "old", T0, T0 + 10), 1, "not 35 days old yet");
        let flushed = h.flush(T0 + 35 * DAY + 300).expect("flush");
        assert_eq!(flushed.expired, 1);
        assert_eq!(total(&h, "old", 0, T0 + 40 * DAY), 0);
        assert_eq!(total(&h, "new", 0, T0 + 40 * DAY), 1);
        assert_eq!(h.services().expect("services"), [svc("new")]);
        assert_eq!(h.stats().expect("stats").series, 1);
    }

    #[test]
    fn late_samples_merge_into_their_rows() {
        // A sample for an interval already flushed is added to its row wherever that row is
        // now: the recent table, the 10 s table (after the 5 min move), or the 5 min table
        // (older than 24 h). One older than 35 days is dropped.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        let now = T0 + 40 * DAY;
        h.record(&key, now - 600, &requests(1));
        h.record(&key, now, &requests(1));
        h.flush(now + 10).expect("flush");
        let stats = h.stats().expect("stats");
        assert_eq!((stats.rows_10s, stats.rows_recent), (2, 1));
        h.record(&key, now + 3, &requests(2));
        h.record(&key, now - 597, &requests(2));
        h.record(&key, now - 2 * DAY + 7, &requests(4));
        h.record(&key, now - 2 * DAY + 207, &requests(8));
        h.record(&key, T0 + 2 * DAY, &requests(16));
        let flushed = h.flush(now + 20).expect("flush");
        assert_eq!(flushed.written, 4);
        let stats = h.stats().expect("stats");
        assert_eq!(
            (stats.rows_10s, stats.rows_recent, stats.rows_5m),
            (2, 1, 1)
        );
        assert_eq!(total(&h, "api", now, now + 10), 3);
        assert_eq!(total(&h, "api", now - 600, now - 590), 3);
        assert_eq!(total(&h, "api", now - 2 * DAY, now - 2 * DAY + 300), 12);
        assert_eq!(total(&h, "api", 0, now + DAY), 18);
    }

    #[test]
    fn flushes_append_and_move_every_5_minutes() {
        // Flushes append to the recent table; each 5 min boundary moves what is before it to
        // the per-series table, so the recent table never holds more than 5 min per series,
        // and sums stay the same throughout.
        let mut h = History::open_in_memory().expect("open");
        let keys = [
            rev("api", "api-1"),
            rev("api", "api-2"),
            rev("web", "web-1"),
        ];
        let mut expected = 0;
        for t in (T0 + 10..T0 + 900).step_by(10) {
            for key in &keys {
                h.record(key, t, &requests(1));
            }
            expected += 2;
            let flushed = h.flush(t + 10).expect("flush");
            let crossed = (t + 10) % 300 == 0;
            assert_eq!(flushed.moved > 0, crossed, "t = T0 + {}", t - T0);
            let stats = h.stats().expect("stats");
            assert!(stats.rows_recent <= 30 * 3, "{stats:?}");
            assert_eq!(stats.rows_10s, 3 * (t - T0) as u64 / 10);
            assert_eq!(total(&h, "api", T0, T0 + 900), expected);
        }
        let stats = h.stats().expect("stats");
        assert_eq!(
            stats.rows_recent, 0,
            "the last flush was on a 5 min boundary"
        );
    }

    #[test]
    fn a_window_across_every_table_counts_each_sample_once() {
        // One window covering 5 min rows, 10 s rows, recent rows and open intervals adds each
        // sample exactly once, and so does a range over it.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        let start = T0 + DAY - 600;
        // Not on a 5 min boundary, so the recent table is not empty at the end.
        let end = T0 + 2 * DAY + 3650;
        for t in (start..end).step_by(10) {
            h.record(&key, t, &requests(1));
            h.flush(t + 10).expect("flush");
        }
        h.record(&key, end, &requests(1));
        let stats = h.stats().expect("stats");
        assert!(stats.rows_5m > 0 && stats.rows_recent > 0, "{stats:?}");
        assert!(stats.rows_10s > stats.rows_recent && stats.open_intervals == 1);
        let samples = (end - start) as u64 / 10 + 1;
        assert_eq!(total(&h, "api", 0, end + 10), samples);
        let points = h
            .range(&svc("api"), None, start, end + 10, 300)
            .expect("range");
        let summed: u64 = points.iter().map(|(_, s)| s.total()).sum();
        assert_eq!(summed, samples);
        let (last, whole) = points.split_last().expect("points");
        assert!(whole.iter().all(|(_, s)| s.total() == 30));
        assert_eq!(last.1.total(), 6);
    }

    #[test]
    fn revisions_aggregate_into_their_service() {
        // A Service's sum covers all its revisions (deleted ones included), a revision can be
        // asked alone, and other Services and namespaces are kept apart.
        let mut h = History::open_in_memory().expect("open");
        h.record(&rev("api", "api-1"), T0, &requests(1));
        h.record(&rev("api", "api-2"), T0, &requests(10));
        h.record(&rev("web", "web-1"), T0, &requests(100));
        h.record(&SeriesKey::new("prod", "api", "api-1"), T0, &requests(1000));
        h.flush(T0 + 10).expect("flush");
        h.record(&rev("api", "api-2"), T0 + 10, &requests(20));
        assert_eq!(total(&h, "api", T0, T0 + 20), 31);
        let api2 = h.sum(&svc("api"), Some("api-2"), T0, T0 + 20).expect("sum");
        assert_eq!(api2.total(), 30);
        let prod = h.sum(&ServiceKey::new("prod", "api"), None, T0, T0 + 20);
        assert_eq!(prod.expect("sum").total(), 1000);
        assert_eq!(
            h.services().expect("services"),
            [
                ServiceKey::new("default", "api"),
                svc("web"),
                ServiceKey::new("prod", "api")
            ]
        );
    }

    #[test]
    fn forget_service_deletes_all_its_history() {
        // Forgetting a Service removes its flushed rows of both resolutions and its unflushed
        // intervals, and leaves other Services alone.
        let mut h = History::open_in_memory().expect("open");
        h.record(&rev("api", "api-1"), T0, &requests(1));
        h.record(&rev("web", "web-1"), T0, &requests(2));
        h.flush(T0 + 10).expect("flush");
        h.flush(T0 + 2 * DAY).expect("roll up");
        h.record(&rev("api", "api-2"), T0 + 2 * DAY, &requests(3));
        h.record(&rev("api", "api-2"), T0 + 2 * DAY + 10, &requests(3));
        h.flush(T0 + 2 * DAY + 10).expect("flush");
        h.forget_service(&svc("api")).expect("forget");
        assert_eq!(total(&h, "api", 0, T0 + 3 * DAY), 0);
        assert_eq!(total(&h, "web", 0, T0 + 3 * DAY), 2);
        assert_eq!(h.services().expect("services"), [svc("web")]);
        let stats = h.stats().expect("stats");
        assert_eq!(
            (stats.series, stats.rows_5m, stats.open_intervals),
            (1, 1, 0)
        );
    }

    #[test]
    fn quantiles_of_a_summed_window() {
        // Latency buckets add across intervals and revisions, so a window's quantile is
        // estimated from all its requests.
        let mut h = History::open_in_memory().expect("open");
        let mut fast = Sample::default();
        fast.latency[4] = 50;
        let mut slow = Sample::default();
        slow.latency[8] = 50;
        h.record(&rev("api", "api-1"), T0, &fast);
        h.record(&rev("api", "api-2"), T0 + 10, &slow);
        h.flush(T0 + 20).expect("flush");
        let sum = h.sum(&svc("api"), None, T0, T0 + 20).expect("sum");
        let p75 = sum.quantile(0.75).expect("requests were recorded");
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(sum.count_within(7), 50);
    }

    #[test]
    fn restart_keeps_flushed_data_only() {
        // Reopening the directory finds every flushed row and the roll-up position, and loses
        // what was recorded but not flushed.
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rev("api", "api-1");
        {
            let mut h = History::open(dir.path()).expect("open");
            h.record(&key, T0, &requests(1));
            h.flush(T0 + 10).expect("flush");
            h.flush(T0 + 2 * DAY).expect("roll up");
            h.record(&key, T0 + 2 * DAY, &requests(10));
            h.flush(T0 + 2 * DAY + 10).expect("flush");
            h.record(&key, T0 + 2 * DAY + 10, &requests(100));
        }
        assert!(dir.path().join(FILE_NAME).exists());
        let mut h = History::open(dir.path()).expect("reopen");
        assert_eq!(h.rolled_until, T0 + DAY);
        assert_eq!(h.stats().expect("stats").rows_recent, 1);
        assert_eq!(total(&h, "api", 0, T0 + 3 * DAY), 11);
        // The first flush after a restart moves what the last process left in the recent
        // table, and counts nothing twice.
        let flushed = h.flush(T0 + 2 * DAY + 20).expect("flush");
        assert_eq!((flushed.moved, flushed.rolled_up), (0, 0));
        h.flush(T0 + 2 * DAY + 300).expect("flush");
        assert_eq!(h.stats().expect("stats").rows_recent, 0);
        assert_eq!(total(&h, "api", 0, T0 + 3 * DAY), 11);
        assert_eq!(h.services().expect("services"), [svc("api")]);
    }

    #[test]
    fn a_failed_flush_keeps_its_intervals() {
        // When the transaction fails, nothing is lost: the closed intervals stay in memory,
        // still count in sums, and are written by the next flush that succeeds.
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rev("api", "api-1");
        let mut h = History::open(dir.path()).expect("open");
        h.flush(T0).expect("first flush");
        h.record(&key, T0, &requests(1));
        let raw = Connection::open(dir.path().join(FILE_NAME)).expect("raw open");
        raw.execute_batch("ALTER TABLE recent_10s RENAME TO hidden")
            .expect("hiding the table");
        let err = h.flush(T0 + 10).expect_err("no table");
        assert!(matches!(err, HistoryError::Sqlite { .. }), "{err:?}");
        h.record(&key, T0 + 5, &requests(2));
        let err = h
            .sum(&svc("api"), None, T0, T0 + 10)
            .expect_err("reads fail too");
        assert!(matches!(err, HistoryError::Sqlite { .. }), "{err:?}");
        raw.execute_batch("ALTER TABLE hidden RENAME TO recent_10s")
            .expect("restoring the table");
        assert_eq!(total(&h, "api", T0, T0 + 10), 3);
        assert_eq!(h.flush(T0 + 10).expect("flush").written, 1);
        assert_eq!(total(&h, "api", T0, T0 + 10), 3);
        assert_eq!(h.stats().expect("stats").open_intervals, 0);
    }

    #[test]
    fn a_clock_going_back_loses_nothing() {
        // A flush with an earlier `now` than the last one writes what is closed by then and
        // neither rolls up nor expires anything.
        let mut h = History::open_in_memory().expect("open");
        let key = rev("api", "api-1");
        h.record(&key, T0 + 2 * DAY, &requests(1));
        h.flush(T0 + 2 * DAY + 10).expect("flush");
        h.record(&key, T0 + DAY, &requests(2));
        h.record(&key, T0 + DAY + 10, &requests(4));
        assert_eq!(h.flush(T0 + DAY + 10).expect("flush").written, 1);
        assert_eq!(h.flush(T0 + DAY + 20).expect("flush").written, 1);
        assert_eq!(total(&h, "api", 0, T0 + 3 * DAY), 7);
    }

    #[test]
    fn newer_schema_is_refused() {
        // A file from a newer skiff is an error naming the file and both versions, not a
        // silent reset.
        let dir = tempfile::tempdir().expect("temp dir");
        drop(History::open(dir.path()).expect("create"));
        let path = dir.path().join(FILE_NAME);
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("bumping user_version");
        let err = History::open(dir.path()).expect_err("newer schema");
        assert!(
            matches!(err, HistoryError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        assert!(err.is_unusable_file());
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("a newer skiff wrote it"), "{message}");
    }

    #[test]
    fn foreign_and_garbage_files_are_refused() {
        // A SQLite file skiff did not create, and a file that is not SQLite at all, are
        // refused with errors naming the file, and left as they were.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x INTEGER)"))
            .expect("a foreign database");
        let err = History::open(dir.path()).expect_err("foreign");
        assert!(
            matches!(err, HistoryError::NotAHistory { found: 0, .. }),
            "{err:?}"
        );

        let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &garbage).expect("writing garbage");
        let err = History::open(dir.path()).expect_err("garbage");
        assert!(matches!(err, HistoryError::NotADatabase { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::read(&path).expect("read back"), garbage);
    }

    #[test]
    fn corrupt_rows_and_pages_are_reported_with_the_file() {
        // A row that does not decode makes queries fail with Corrupt naming the file and the
        // row; damaged pages are caught by quick_check at open.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(FILE_NAME);
        {
            let mut h = History::open(dir.path()).expect("open");
            for i in 0..2000 {
                h.record(
                    &rev("api", &format!("api-{}", i % 50)),
                    T0 + 10 * (i / 50),
                    &busy(1),
                );
            }
            h.flush(T0 + DAY).expect("flush");
        }
        Connection::open(&path)
            .and_then(|c| c.execute("UPDATE samples_10s SET data = x'09' WHERE t = ?1", [T0]))
            .expect("damaging rows");
        let h = History::open(dir.path()).expect("open");
        let err = h.sum(&svc("api"), None, T0, T0 + 10).expect_err("bad row");
        assert!(matches!(err, HistoryError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
        let source = std::error::Error::source(&err)
            .expect("a source")
            .to_string();
        assert!(source.contains("samples_10s"), "{source}");
        drop(h);

        // Scribble over the 10 s table's root page.
        let (page_size, root): (i64, i64) = Connection::open(&path)
            .and_then(|c| {
                let size = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
                let root = c.query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'samples_10s'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((size, root))
            })
            .expect("finding the root page");
        let mut bytes = std::fs::read(&path).expect("reading the file");
        let start = usize::try_from((root - 1) * page_size).expect("positive");
        bytes[start..start + 64].fill(0xa5);
        std::fs::write(&path, &bytes).expect("writing the damage");
        let err = History::open(dir.path()).expect_err("corrupt file");
        assert!(matches!(err, HistoryError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        #[test]
        fn every_sample_is_counted_exactly_once(
            events in proptest::collection::vec(
                (
                    0usize..3,
                    0i64..3 * DAY,
                    1u64..100,
                    proptest::prop_oneof![0i64..900, 0i64..2 * DAY],
                ),
                1..150,
            ),
        ) {
            // Samples recorded over three days, some of them late by up to 15 min and some by up
            // to 2 days (into 5 min rows), with a flush after each, then enough time for every
            // roll-up: every window aligned to
            // 5 min, every revision and the whole history add up to exactly what was
            // recorded, wherever the rows ended up.
            let keys = [rev("api", "api-1"), rev("api", "api-2"), rev("web", "web-1")];
            let mut h = History::open_in_memory().expect("open");
            let mut arrivals: Vec<_> =
                events.iter().map(|&(r, at, n, late)| (at + late, r, at, n)).collect();
            arrivals.sort_unstable();
            for &(arrival, r, at, n) in &arrivals {
                h.record(&keys[r], T0 + at, &requests(n));
                h.flush(T0 + arrival).expect("flush");
            }
            for now in [T0 + 3 * DAY + 900, T0 + 5 * DAY] {
                h.flush(now).expect("flush");
                let all: u64 = events.iter().map(|e| e.2).sum();
                proptest::prop_assert_eq!(
                    total(&h, "api", 0, now) + total(&h, "web", 0, now),
                    all
                );
                let api2 = h.sum(&svc("api"), Some("api-2"), 0, now).expect("sum").total();
                let recorded: u64 = events.iter().filter(|e| e.0 == 1).map(|e| e.2).sum();
                proptest::prop_assert_eq!(api2, recorded);
                for &(_, at, _, _) in &events {
                    let window = align_down(T0 + at, COARSE_STEP_SECS);
                    let expected: u64 = events
                        .iter()
                        .filter(|e| e.0 != 2 && align_down(T0 + e.1, COARSE_STEP_SECS) == window)
                        .map(|e| e.2)
                        .sum();
                    proptest::prop_assert_eq!(
                        total(&h, "api", window, window + COARSE_STEP_SECS),
                        expected
                    );
                }
            }
        }
    }

    /// SQLite's plan for `sql` with `params`, one step per line.
    fn plan(h: &History, sql: &str, params: impl rusqlite::Params) -> String {
        let mut steps = Vec::new();
        h.db.conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut s| {
                let mut rows = s.query(params)?;
                while let Some(row) = rows.next()? {
                    steps.push(row.get::<_, String>(3)?);
                }
                Ok(())
            })
            .expect("explain");
        steps.join("\n")
    }

    #[test]
    fn statements_seek_rather_than_scan() {
        // Every statement a flush or a query runs finds its rows through a primary key or the
        // series index: per series for samples_10s and samples_5m, by time for recent_10s.
        let h = History::open_in_memory().expect("open");
        let window = params!["ns", "svc", None::<String>, 0, 10];
        for table in [Table::Fine, Table::Coarse] {
            let sql = h.db.sql(table);
            let found = plan(&h, &sql.select_window, window);
            assert!(!found.contains("SCAN"), "{found}");
            assert!(
                found.contains("PRIMARY KEY (series=? AND t>? AND t<?)"),
                "{found}"
            );
            for statement in [&sql.select_before, &sql.delete_before] {
                let found = plan(&h, statement, params![1, 10]);
                assert!(found.contains("PRIMARY KEY (series=? AND t<?)"), "{found}");
            }
        }
        let found = plan(&h, db::RECENT_AT, params!["ns", "svc", None::<String>, 0]);
        assert!(!found.contains("SCAN"), "{found}");
        assert!(found.contains("PRIMARY KEY (t=? AND series=?)"), "{found}");
        for statement in [db::RECENT_BEFORE, db::RECENT_DELETE_BEFORE] {
            let found = plan(&h, statement, [10]);
            assert!(found.contains("PRIMARY KEY (t<?)"), "{found}");
        }
        let found = plan(&h, db::RECENT_SPAN, []);
        assert!(!found.contains("SCAN recent_10s"), "{found}");
        let both = plan(&h, "SELECT min(t), max(t) FROM recent_10s", []);
        assert!(
            both.contains("SCAN recent_10s"),
            "the check above means something: {both}"
        );
    }
}
