//! [`Queue`]: the SQLite-backed delivery queue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tracing::{info, warn};

use crate::error::{During, QueueError};
use crate::group::{self, Group};
use crate::schema::{self, SCHEMA_VERSION};
use crate::{
    Claimed, Compacted, DeadLetter, DeliveryId, DeliveryState, EventId, LeaseRef, LeaseToken,
    MAX_ERROR_BYTES, MAX_PAYLOAD_BYTES, MAX_SOURCE_KEY_BYTES, MAX_SUBSCRIPTION_BYTES, NewEvent,
    Stats,
};

/// The durable delivery queue: one SQLite file in WAL mode. See the crate documentation for
/// the design, the schema and what is durable when.
///
/// Every method blocks on SQLite (and `enqueue` on an fsync): call them from
/// `tokio::task::spawn_blocking`, never directly on an async worker. `Queue` is `Send + Sync`;
/// share it in an `Arc`. Calls are serialized on one connection.
pub struct Queue {
    /// The database file, for logs.
    path: PathBuf,
    /// The only connection and what is cached beside it; `None` once closed.
    db: Mutex<Option<Db>>,
    /// Enqueues waiting to be committed together (see [`crate::group`]).
    pub(crate) group: Group,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The `synchronous` setting the connection is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// fsync the WAL at every commit: for calls that must be durable when they return.
    Full,
    /// No fsync at commit (the WAL is synced at checkpoints and by the next `Full` commit): for
    /// calls whose loss in a power failure only causes a redelivery.
    Normal,
}

/// The connection and what lives beside it under the same mutex.
pub(crate) struct Db {
    conn: Connection,
    /// The connection's `synchronous` setting; `None` if a switch failed half way.
    sync: Option<SyncMode>,
    /// Pending (ready + leased) deliveries per subscription, kept in step with every commit so
    /// that the autoscaler's [`Queue::depths`] costs no SQL. Subscriptions at zero are absent.
    depths: BTreeMap<String, u64>,
    /// Set when a call failed after it may have written, so `depths` is recounted from the
    /// table before it is used again.
    depths_stale: bool,
}

/// The due deliveries of one subscription, in the order they became due, with their events:
/// a walk of `deliveries_due` from the subscription's earliest `due_at`.
const CLAIM_SQL: &str = "SELECT d.id, d.event_id, d.attempt, e.accepted_at, e.source_key, e.payload
     FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
     WHERE d.subscription = ?1 AND d.state IN ('ready', 'leased') AND d.due_at <= ?2
     ORDER BY d.due_at, d.id
     LIMIT ?3";

/// Leases one claimed delivery.
const LEASE_SQL: &str = "UPDATE deliveries
     SET state = 'leased', due_at = ?2, attempt = attempt + 1, lease_token = ?3
     WHERE id = ?1";

/// The lease-checked updates of `ack`, `retry` and `dead` (see [`Db::settle`]).
const ACK_SQL: &str = "UPDATE deliveries SET state = 'done', finished_at = ?3, lease_token = NULL
     WHERE id = ?1 AND state = 'leased' AND lease_token = ?2";
const RETRY_SQL: &str = "UPDATE deliveries
     SET state = 'ready', due_at = ?3, last_error = ?4, lease_token = NULL
     WHERE id = ?1 AND state = 'leased' AND lease_token = ?2";
const DEAD_SQL: &str = "UPDATE deliveries
     SET state = 'dead', finished_at = ?3, last_error = ?4, lease_token = NULL
     WHERE id = ?1 AND state = 'leased' AND lease_token = ?2";

/// What `enqueue` inserts.
const INSERT_EVENT_SQL: &str =
    "INSERT INTO events (accepted_at, source_key, payload) VALUES (?1, ?2, ?3)";
const INSERT_DELIVERY_SQL: &str =
    "INSERT INTO deliveries (event_id, subscription, state, due_at, attempt, created_at)
     VALUES (?1, ?2, 'ready', ?3, 0, ?3)";

/// The earliest due time of a subscription's pending deliveries.
const NEXT_DUE_SQL: &str = "SELECT min(due_at) FROM deliveries
     WHERE subscription = ?1 AND state IN ('ready', 'leased')";

impl Queue {
    /// Opens the queue at `path`, creating the file and its parent directory if missing.
    ///
    /// This blocks: it runs `PRAGMA quick_check` over the whole file, may migrate the schema,
    /// and counts the pending deliveries. Refuses a damaged file ([`QueueError::Corrupt`]), a
    /// file of a newer schema ([`QueueError::NewerSchema`]) and foreign SQLite files
    /// ([`QueueError::NotAQueue`]).
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        let conn = schema::open_connection(path)?;
        let mut db = Db {
            conn,
            sync: Some(SyncMode::Full),
            depths: BTreeMap::new(),
            depths_stale: true,
        };
        db.recount()
            .map_err(|e| QueueError::open(path, "counting pending deliveries", e))?;
        let pending: u64 = db.depths.values().sum();
        info!(
            path = %path.display(),
            schema_version = SCHEMA_VERSION,
            pending,
            subscriptions = db.depths.len(),
            "delivery queue opened"
        );
        Ok(Queue {
            path: path.to_path_buf(),
            db: Mutex::new(Some(db)),
            group: Group::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the open connection, serialized with every other call.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut guard = self.lock()?;
        let db = guard.as_mut().ok_or(QueueError::Closed)?;
        let result = f(db);
        if result.is_err() {
            // The call may have committed before it failed (or SQLite may be unsure): do not
            // trust the cached depths until they are recounted.
            db.depths_stale = true;
        }
        result
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<Db>>, QueueError> {
        self.db.lock().map_err(|_| QueueError::Poisoned)
    }

    /// Stores one event for these subscriptions, in one transaction, durably: when it returns
    /// `Ok`, the event and one `ready` delivery per subscription (due at `now`) are fsynced.
    /// Returns the deliveries' ids, in the order of `subscriptions`. An event for zero
    /// subscriptions is not stored (returns an empty `Vec`).
    ///
    /// Concurrent calls are committed together (a group commit: one transaction and one fsync
    /// for every caller waiting at that moment); each caller still returns only once its own
    /// events are durable. A failed group transaction fails every caller in it, and stores
    /// nothing of any of them.
    ///
    /// Refuses (before writing anything) a payload over [`MAX_PAYLOAD_BYTES`] and a
    /// subscription that is empty, longer than [`MAX_SUBSCRIPTION_BYTES`] or listed twice.
    pub fn enqueue(
        &self,
        payload: &[u8],
        subscriptions: &[&str],
        now: Timestamp,
    ) -> Result<Vec<DeliveryId>, QueueError> {
        let event = NewEvent {
            payload,
            source_key: None,
            subscriptions,
        };
        let mut ids = self.enqueue_events(std::slice::from_ref(&event), now)?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// [`Queue::enqueue`] for many events at once (a batched CloudEvents POST): all of them are
    /// stored in one transaction, or none. Returns each event's delivery ids, in order.
    pub fn enqueue_many(
        &self,
        items: &[(Vec<u8>, Vec<String>)],
        now: Timestamp,
    ) -> Result<Vec<Vec<DeliveryId>>, QueueError> {
        let subscriptions: Vec<Vec<&str>> = items
            .iter()
            .map(|(_, subs)| subs.iter().map(String::as_str).collect())
            .collect();
        let events: Vec<NewEvent<'_>> = items
            .iter()
            .zip(&subscriptions)
            .map(|((payload, _), subscriptions)| NewEvent {
                payload,
                source_key: None,
                subscriptions,
            })
            .collect();
        self.enqueue_events(&events, now)
    }

    /// [`Queue::enqueue_many`] with each event's `source_key` (the metrics label of where it
    /// came from), which [`Claimed`] and [`DeadLetter`] give back.
    pub fn enqueue_events(
        &self,
        events: &[NewEvent<'_>],
        now: Timestamp,
    ) -> Result<Vec<Vec<DeliveryId>>, QueueError> {
        for event in events {
            validate(event)?;
        }
        if events.iter().all(|e| e.subscriptions.is_empty()) {
            return Ok(vec![Vec::new(); events.len()]);
        }
        group::commit(self, events, now)
    }

    /// Inserts the events of several callers in one durable transaction: what a group commit
    /// leader runs. Returns each request's delivery ids.
    pub(crate) fn insert_requests(
        &self,
        requests: &[(Timestamp, &[NewEvent<'_>])],
    ) -> Result<Vec<Vec<Vec<DeliveryId>>>, QueueError> {
        const OP: &str = "enqueue";
        self.with_db(|db| {
            db.set_sync(SyncMode::Full).during(OP)?;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .during(OP)?;
            let out = insert_events(&tx, requests).during(OP)?;
            tx.commit().during(OP)?;
            for (_, events) in requests {
                for event in *events {
                    for subscription in event.subscriptions {
                        db.add_depth(subscription, 1);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Claims up to `limit` deliveries of `subscription` that are due at `now`: `ready` ones
    /// whose `run_at` has come, and `leased` ones whose lease has expired (the consumer died or
    /// hung: at-least-once redelivery). Each is leased until `now + lease`, its attempt number
    /// goes up by one (1 on the first delivery), and it carries a fresh [`LeaseRef`] that
    /// [`Queue::ack`], [`Queue::retry`] and [`Queue::dead`] require.
    ///
    /// The batch is the `limit` deliveries that became due first, returned in that order (by
    /// due time, then id). One transaction, not fsynced (see the crate documentation on
    /// durability): one indexed `SELECT … LIMIT` reads the batch with its events, then each
    /// delivery is leased by id. The payloads are read into memory: a large `limit` of large
    /// events is that many megabytes, and holds up other calls while it is read.
    pub fn claim(
        &self,
        subscription: &str,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claimed>, QueueError> {
        const OP: &str = "claim";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease_until = now
            .checked_add(lease)
            .map_err(|_| QueueError::TimeOutOfRange {
                operation: OP,
                what: "the lease's end",
            })?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_db(|db| {
            db.set_sync(SyncMode::Normal).during(OP)?;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .during(OP)?;
            let token: i64 = tx
                .prepare_cached("SELECT lease_seq + 1 FROM meta WHERE id = 1")
                .during(OP)?
                .query_row([], |row| row.get(0))
                .during(OP)?;
            let mut claimed = Vec::new();
            {
                let mut select = tx.prepare_cached(CLAIM_SQL).during(OP)?;
                let mut rows = select
                    .query(params![subscription, now.as_microsecond(), limit])
                    .during(OP)?;
                while let Some(row) = rows.next().during(OP)? {
                    let delivery = DeliveryId(row.get(0).during(OP)?);
                    let accepted_at: i64 = row.get(3).during(OP)?;
                    claimed.push(Claimed {
                        delivery,
                        event: EventId(row.get(1).during(OP)?),
                        attempt: attempt(OP, row.get::<_, i64>(2).during(OP)? + 1)?,
                        accepted_at: timestamp(OP, accepted_at, "accepted_at")?,
                        source_key: row.get(4).during(OP)?,
                        payload: row.get(5).during(OP)?,
                        lease: LeaseRef {
                            delivery,
                            token: LeaseToken(token),
                        },
                        lease_until,
                    });
                }
            }
            if claimed.is_empty() {
                // Nothing was due: nothing was written, so there is nothing to commit.
                tx.rollback().during(OP)?;
                return Ok(Vec::new());
            }
            {
                let mut lease = tx.prepare_cached(LEASE_SQL).during(OP)?;
                for c in &claimed {
                    lease
                        .execute(params![c.delivery.0, lease_until.as_microsecond(), token])
                        .during(OP)?;
                }
            }
            tx.prepare_cached("UPDATE meta SET lease_seq = ?1 WHERE id = 1")
                .during(OP)?
                .execute([token])
                .during(OP)?;
            tx.commit().during(OP)?;
            Ok(claimed)
        })
    }

    /// Marks a leased delivery done (delivered). Refuses a stale lease with
    /// [`QueueError::StaleLease`], changing nothing. A lease that expired but that nobody else
    /// claimed since is still accepted: the delivery did succeed. Not fsynced.
    pub fn ack(&self, lease: &LeaseRef, now: Timestamp) -> Result<(), QueueError> {
        const OP: &str = "ack";
        self.with_db(|db| {
            let subscription = db.settle(OP, lease, ACK_SQL, &[&now.as_microsecond()])?;
            db.sub_depth(&subscription, 1);
            Ok(())
        })
    }

    /// Releases a leased delivery for another attempt at `run_at` (a failed delivery that may
    /// be retried; the caller picks the backoff, see [`crate::RetryPolicy`]). `error` is kept as
    /// the delivery's `last_error` (cut to [`MAX_ERROR_BYTES`]). The next claim increments the
    /// attempt number. Refuses a stale lease like [`Queue::ack`]. Not fsynced.
    pub fn retry(
        &self,
        lease: &LeaseRef,
        run_at: Timestamp,
        error: &str,
        now: Timestamp,
    ) -> Result<(), QueueError> {
        const OP: &str = "retry";
        // `now` is part of the signature so that every call is told the time; a retry does not
        // need it beyond `run_at`.
        let _ = now;
        self.with_db(|db| {
            db.settle(
                OP,
                lease,
                RETRY_SQL,
                &[&run_at.as_microsecond(), &truncate(error, MAX_ERROR_BYTES)],
            )?;
            Ok(())
        })
    }

    /// Moves a leased delivery to the dead-letter state: it is never claimed again, and stays
    /// listable by [`Queue::dead_letters`] with `error` as its `last_error` (cut to
    /// [`MAX_ERROR_BYTES`]). Refuses a stale lease like [`Queue::ack`]. Not fsynced.
    pub fn dead(&self, lease: &LeaseRef, error: &str, now: Timestamp) -> Result<(), QueueError> {
        const OP: &str = "dead";
        self.with_db(|db| {
            let subscription = db.settle(
                OP,
                lease,
                DEAD_SQL,
                &[&now.as_microsecond(), &truncate(error, MAX_ERROR_BYTES)],
            )?;
            db.sub_depth(&subscription, 1);
            Ok(())
        })
    }

    /// The backlog per subscription: deliveries that are not done or dead (ready + leased).
    /// Subscriptions with none are absent. Costs no SQL: the counts are kept in memory, in step
    /// with every commit of this `Queue` (another process writing the file is not seen).
    pub fn depths(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        self.with_db(|db| {
            db.fresh_depths()?;
            Ok(db.depths.clone())
        })
    }

    /// [`Queue::depths`] of one subscription (0 if it has no pending deliveries).
    pub fn depth(&self, subscription: &str) -> Result<u64, QueueError> {
        self.with_db(|db| {
            db.fresh_depths()?;
            Ok(db.depths.get(subscription).copied().unwrap_or(0))
        })
    }

    /// The subscriptions with pending (ready or leased) deliveries, sorted.
    pub fn subscriptions(&self) -> Result<Vec<String>, QueueError> {
        self.with_db(|db| {
            db.fresh_depths()?;
            Ok(db.depths.keys().cloned().collect())
        })
    }

    /// When the next delivery of `subscription` becomes claimable: the earliest `run_at` of
    /// its ready deliveries or lease end of its leased ones. It may be in the past (work is
    /// due now). `None` when the subscription has nothing pending. For the dispatcher's sleep.
    pub fn next_due(&self, subscription: &str) -> Result<Option<Timestamp>, QueueError> {
        const OP: &str = "next_due";
        self.with_db(|db| {
            let due: Option<i64> = db
                .conn
                .prepare_cached(NEXT_DUE_SQL)
                .during(OP)?
                .query_row([subscription], |row| row.get(0))
                .during(OP)?;
            due.map(|us| timestamp(OP, us, "due_at")).transpose()
        })
    }

    /// Up to `limit` dead letters of `subscription`, most recently dead-lettered first.
    pub fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        const OP: &str = "dead_letters";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_db(|db| {
            let mut stmt = db
                .conn
                .prepare_cached(
                    "SELECT d.id, d.event_id, d.attempt, d.last_error, d.finished_at,
                            e.accepted_at, e.source_key, e.payload
                     FROM deliveries AS d JOIN events AS e ON e.id = d.event_id
                     WHERE d.subscription = ?1 AND d.state = 'dead'
                     ORDER BY d.finished_at DESC, d.id DESC
                     LIMIT ?2",
                )
                .during(OP)?;
            let mut rows = stmt.query(params![subscription, limit]).during(OP)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().during(OP)? {
                let finished_at: i64 = row.get(4).during(OP)?;
                let accepted_at: i64 = row.get(5).during(OP)?;
                out.push(DeadLetter {
                    delivery: DeliveryId(row.get(0).during(OP)?),
                    event: EventId(row.get(1).during(OP)?),
                    attempts: attempt(OP, row.get(2).during(OP)?)?,
                    last_error: row.get(3).during(OP)?,
                    finished_at: timestamp(OP, finished_at, "finished_at")?,
                    accepted_at: timestamp(OP, accepted_at, "accepted_at")?,
                    source_key: row.get(6).during(OP)?,
                    payload: row.get(7).during(OP)?,
                });
            }
            Ok(out)
        })
    }

    /// Ends every lease at `now`: each leased delivery becomes claimable at once (with the next
    /// attempt number and a fresh lease), as if its lease had run out. For the process that
    /// owns the file when it starts: the leases it finds were taken by a process that is gone
    /// (a crash, a `kill -9`), whose deliveries would otherwise wait out their leases. A late
    /// report from an old holder is treated as for an expired lease. Returns how many leases
    /// ended. Not fsynced (losing it only restores the old lease ends).
    pub fn expire_leases(&self, now: Timestamp) -> Result<u64, QueueError> {
        const OP: &str = "expire_leases";
        self.with_db(|db| {
            db.set_sync(SyncMode::Normal).during(OP)?;
            let n = db
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET due_at = ?1 WHERE state = 'leased' AND due_at > ?1",
                )
                .during(OP)?
                .execute([now.as_microsecond()])
                .during(OP)?;
            if n > 0 {
                info!(
                    expired = n,
                    "delivery queue leases of a previous process ended"
                );
            }
            Ok(n as u64)
        })
    }

    /// Removes `subscription`'s pending (ready and leased) deliveries, because its Trigger was
    /// deleted, and the events no other delivery needs; returns how many deliveries. Its done
    /// deliveries go with [`Queue::compact`]; its dead letters stay listable. A consumer still
    /// holding one of the leases gets [`QueueError::StaleLease`]. Durable when it returns.
    pub fn drop_subscription(&self, subscription: &str) -> Result<u64, QueueError> {
        const OP: &str = "drop_subscription";
        self.with_db(|db| {
            db.set_sync(SyncMode::Full).during(OP)?;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .during(OP)?;
            let mut events = collect_i64(
                &tx,
                "DELETE FROM deliveries
                 WHERE subscription = ?1 AND state IN ('ready', 'leased')
                 RETURNING event_id",
                params![subscription],
            )
            .during(OP)?;
            let removed = events.len() as u64;
            delete_orphans(&tx, &mut events).during(OP)?;
            tx.commit().during(OP)?;
            db.depths.remove(subscription);
            if removed > 0 {
                info!(subscription, removed, "delivery queue subscription dropped");
            }
            Ok(removed)
        })
    }

    /// Deletes up to `max_rows` done deliveries that finished before `before`, oldest first,
    /// and the events that no delivery refers to any more. Pending deliveries and dead letters
    /// are never touched. Bounded work per call, so the mutex is not held for long: call again
    /// while [`Compacted::more`] is true. Durable when it returns.
    pub fn compact(&self, before: Timestamp, max_rows: usize) -> Result<Compacted, QueueError> {
        const OP: &str = "compact";
        if max_rows == 0 {
            return Ok(Compacted::default());
        }
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        self.with_db(|db| {
            db.set_sync(SyncMode::Full).during(OP)?;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .during(OP)?;
            let mut events = collect_i64(
                &tx,
                "DELETE FROM deliveries WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE state = 'done' AND finished_at < ?1
                     ORDER BY finished_at
                     LIMIT ?2)
                 RETURNING event_id",
                params![before.as_microsecond(), limit],
            )
            .during(OP)?;
            let deliveries = events.len() as u64;
            let events_deleted = delete_orphans(&tx, &mut events).during(OP)?;
            tx.commit().during(OP)?;
            Ok(Compacted {
                deliveries,
                events: events_deleted,
                more: deliveries == limit.unsigned_abs(),
            })
        })
    }

    /// Counts of deliveries per state, events, and the oldest pending delivery. This scans the
    /// deliveries table (time proportional to its rows): for a CLI or a metrics scrape, not for
    /// every request. [`Queue::depths`] is the cheap backlog.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        const OP: &str = "stats";
        self.with_db(|db| {
            // One read transaction, so that the counts are one snapshot.
            let tx = db.conn.transaction().during(OP)?;
            let mut stats = Stats::default();
            let mut oldest: Option<i64> = None;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT state, count(*), min(created_at) FROM deliveries GROUP BY state",
                    )
                    .during(OP)?;
                let mut rows = stmt.query([]).during(OP)?;
                while let Some(row) = rows.next().during(OP)? {
                    let state: String = row.get(0).during(OP)?;
                    let count: i64 = row.get(1).during(OP)?;
                    let created: i64 = row.get(2).during(OP)?;
                    let count = count.unsigned_abs();
                    match DeliveryState::parse(&state) {
                        Some(DeliveryState::Ready) => stats.ready = count,
                        Some(DeliveryState::Leased) => stats.leased = count,
                        Some(DeliveryState::Done) => stats.done = count,
                        Some(DeliveryState::Dead) => stats.dead = count,
                        None => {
                            return Err(QueueError::CorruptRow {
                                operation: OP,
                                detail: format!("unknown delivery state {state:?}"),
                            });
                        }
                    }
                    if matches!(state.as_str(), "ready" | "leased") {
                        oldest = Some(oldest.map_or(created, |o| o.min(created)));
                    }
                }
            }
            let events: i64 = tx
                .prepare_cached("SELECT count(*) FROM events")
                .during(OP)?
                .query_row([], |row| row.get(0))
                .during(OP)?;
            stats.events = events.unsigned_abs();
            tx.rollback().during(OP)?;
            stats.oldest_pending = oldest
                .map(|us| timestamp(OP, us, "created_at"))
                .transpose()?;
            Ok(stats)
        })
    }

    /// Checkpoints the WAL into the main file and closes the connection; every later call
    /// returns [`QueueError::Closed`]. Dropping a `Queue` without closing it is safe too (the
    /// WAL is replayed at the next open).
    pub fn close(&self) -> Result<(), QueueError> {
        const OP: &str = "close";
        let db = self.lock()?.take().ok_or(QueueError::Closed)?;
        // TRUNCATE copies every committed frame into the main file, fsyncs it and empties the
        // WAL, so the file is self-contained for backups once the daemon has stopped.
        let checkpoint = db
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .during(OP);
        if let Ok(busy) = &checkpoint
            && *busy != 0
        {
            // Another process is reading: the frames stay in the WAL, which is still durable.
            warn!(path = %self.path.display(), "delivery queue wal checkpoint incomplete");
        }
        let closed = db.conn.close().map_err(|(_, e)| QueueError::sqlite(OP, e));
        checkpoint?;
        closed?;
        info!(path = %self.path.display(), "delivery queue closed");
        Ok(())
    }
}

impl Db {
    /// Switches `synchronous` if the connection is not already in `mode`.
    fn set_sync(&mut self, mode: SyncMode) -> rusqlite::Result<()> {
        if self.sync == Some(mode) {
            return Ok(());
        }
        self.sync = None;
        let sql = match mode {
            SyncMode::Full => "PRAGMA synchronous = FULL",
            SyncMode::Normal => "PRAGMA synchronous = NORMAL",
        };
        self.conn.prepare_cached(sql)?.execute([])?;
        self.sync = Some(mode);
        Ok(())
    }

    /// Recounts the pending deliveries per subscription from the table.
    fn recount(&mut self) -> rusqlite::Result<()> {
        let mut depths = BTreeMap::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT subscription, count(*) FROM deliveries
                 WHERE state IN ('ready', 'leased') GROUP BY subscription",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let count: i64 = row.get(1)?;
                depths.insert(row.get::<_, String>(0)?, count.unsigned_abs());
            }
        }
        self.depths = depths;
        self.depths_stale = false;
        Ok(())
    }

    /// Recounts the depths if a failed call left them in doubt.
    fn fresh_depths(&mut self) -> Result<(), QueueError> {
        if self.depths_stale {
            warn!("delivery queue recounting pending deliveries after a failed call");
            self.recount().during("depths")?;
        }
        Ok(())
    }

    fn add_depth(&mut self, subscription: &str, n: u64) {
        if let Some(depth) = self.depths.get_mut(subscription) {
            *depth += n;
        } else {
            self.depths.insert(subscription.to_owned(), n);
        }
    }

    fn sub_depth(&mut self, subscription: &str, n: u64) {
        if let Some(depth) = self.depths.get_mut(subscription) {
            *depth = depth.saturating_sub(n);
            if *depth == 0 {
                self.depths.remove(subscription);
            }
        }
    }

    /// Runs one of the lease-checked updates of ack/retry/dead: `sql` takes the delivery id as
    /// ?1, the token as ?2 and `extra` from ?3 on. Returns the delivery's subscription when the
    /// lease was held; a stale lease changes nothing and becomes [`QueueError::StaleLease`].
    ///
    /// The subscription is read after the update, by id, rather than with `RETURNING`: SQLite
    /// buffers `RETURNING` rows in a temporary b-tree, whose setup cost more than the update.
    fn settle(
        &mut self,
        operation: &'static str,
        lease: &LeaseRef,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
    ) -> Result<String, QueueError> {
        self.set_sync(SyncMode::Normal).during(operation)?;
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&lease.delivery.0, &lease.token.0];
        args.extend_from_slice(extra);
        let changed = self
            .conn
            .prepare_cached(sql)
            .during(operation)?
            .execute(&args[..])
            .during(operation)?;
        if changed == 0 {
            return Err(self.stale(operation, lease.delivery));
        }
        self.conn
            .prepare_cached("SELECT subscription FROM deliveries WHERE id = ?1")
            .during(operation)?
            .query_row([lease.delivery.0], |row| row.get(0))
            .during(operation)
    }

    /// Builds the [`QueueError::StaleLease`] for `delivery`, reading its current state.
    fn stale(&mut self, operation: &'static str, delivery: DeliveryId) -> QueueError {
        let state: rusqlite::Result<Option<String>> = self
            .conn
            .prepare_cached("SELECT state FROM deliveries WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row([delivery.0], |row| row.get(0)).optional());
        match state {
            Ok(state) => QueueError::StaleLease {
                delivery,
                state: state.as_deref().and_then(DeliveryState::parse),
            },
            Err(err) => QueueError::sqlite(operation, err),
        }
    }
}

/// Inserts each request's events and their deliveries; returns the delivery ids.
fn insert_events(
    tx: &Transaction<'_>,
    requests: &[(Timestamp, &[NewEvent<'_>])],
) -> rusqlite::Result<Vec<Vec<Vec<DeliveryId>>>> {
    let mut insert_event = tx.prepare_cached(INSERT_EVENT_SQL)?;
    let mut insert_delivery = tx.prepare_cached(INSERT_DELIVERY_SQL)?;
    let mut out = Vec::with_capacity(requests.len());
    for (now, events) in requests {
        let now = now.as_microsecond();
        let mut request = Vec::with_capacity(events.len());
        for event in *events {
            if event.subscriptions.is_empty() {
                request.push(Vec::new());
                continue;
            }
            insert_event.execute(params![now, event.source_key, event.payload])?;
            let event_id = tx.last_insert_rowid();
            let mut ids = Vec::with_capacity(event.subscriptions.len());
            for subscription in event.subscriptions {
                insert_delivery.execute(params![event_id, subscription, now])?;
                ids.push(DeliveryId(tx.last_insert_rowid()));
            }
            request.push(ids);
        }
        out.push(request);
    }
    Ok(out)
}

/// Runs a statement that returns one integer per row and collects them.
fn collect_i64(
    tx: &Transaction<'_>,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |row| row.get(0))?;
    rows.collect()
}

/// Deletes those of `events` that no delivery refers to any more; returns how many.
fn delete_orphans(tx: &Transaction<'_>, events: &mut Vec<i64>) -> rusqlite::Result<u64> {
    events.sort_unstable();
    events.dedup();
    let mut stmt = tx.prepare_cached(
        "DELETE FROM events
         WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?1)",
    )?;
    let mut deleted = 0;
    for event in events.iter() {
        deleted += stmt.execute([event])? as u64;
    }
    Ok(deleted)
}

/// Checks an event before anything is written.
fn validate(event: &NewEvent<'_>) -> Result<(), QueueError> {
    if event.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(QueueError::PayloadTooLarge {
            len: event.payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    if let Some(key) = event.source_key
        && key.len() > MAX_SOURCE_KEY_BYTES
    {
        return Err(QueueError::SourceKeyTooLong {
            len: key.len(),
            max: MAX_SOURCE_KEY_BYTES,
        });
    }
    for (i, subscription) in event.subscriptions.iter().enumerate() {
        let invalid = |reason| QueueError::InvalidSubscription {
            subscription: truncate(subscription, MAX_SUBSCRIPTION_BYTES).to_owned(),
            reason,
        };
        if subscription.is_empty() {
            return Err(invalid("it is empty"));
        }
        if subscription.len() > MAX_SUBSCRIPTION_BYTES {
            return Err(invalid("it is longer than the queue's limit"));
        }
        // Events have a handful of subscriptions, so a quadratic check is the cheap one.
        if event.subscriptions[..i].contains(subscription) {
            return Err(invalid("it is listed twice for one event"));
        }
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Reads a stored time.
fn timestamp(
    operation: &'static str,
    microseconds: i64,
    column: &str,
) -> Result<Timestamp, QueueError> {
    Timestamp::from_microsecond(microseconds).map_err(|_| QueueError::CorruptRow {
        operation,
        detail: format!("{column} {microseconds} is not a valid time"),
    })
}

/// Reads a stored attempt count.
fn attempt(operation: &'static str, attempt: i64) -> Result<u32, QueueError> {
    u32::try_from(attempt).map_err(|_| QueueError::CorruptRow {
        operation,
        detail: format!("attempt {attempt} is out of range"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("a valid time")
    }

    fn temp_queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let queue = Queue::open(&dir.path().join("queue.db")).expect("open");
        (dir, queue)
    }

    /// The query plan SQLite picks for `sql`, one line per step.
    fn plan(queue: &Queue, sql: &str, args: impl rusqlite::Params) -> String {
        queue
            .with_db(|db| {
                let mut stmt = db
                    .conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .during("plan")?;
                let rows = stmt
                    .query_map(args, |row| row.get::<_, String>(3))
                    .during("plan")?;
                let lines: Vec<String> = rows.collect::<Result<_, _>>().during("plan")?;
                Ok(lines.join("\n"))
            })
            .expect("explain")
    }

    #[test]
    fn hot_statements_use_their_indexes() {
        // Claiming, next_due and compaction seek a partial index and need no sort; dead
        // letters come from their own index. A full scan here would make the dispatcher's cost
        // grow with the table instead of the batch.
        let (_dir, queue) = temp_queue();
        let claim = plan(&queue, CLAIM_SQL, params!["a", 0, 10]);
        assert!(
            claim.contains("USING INDEX deliveries_due (subscription=? AND due_at<?)"),
            "{claim}"
        );
        assert!(!claim.contains("TEMP B-TREE"), "claim sorts: {claim}");
        assert!(!claim.contains("SCAN deliveries"), "claim scans: {claim}");
        let next_due = plan(
            &queue,
            "SELECT min(due_at) FROM deliveries
             WHERE subscription = 'a' AND state IN ('ready', 'leased')",
            [],
        );
        assert!(next_due.contains("deliveries_due"), "{next_due}");
        let compact = plan(
            &queue,
            "SELECT id FROM deliveries WHERE state = 'done' AND finished_at < 5
             ORDER BY finished_at LIMIT 10",
            [],
        );
        assert!(compact.contains("deliveries_done"), "{compact}");
        assert!(!compact.contains("TEMP B-TREE"), "{compact}");
        let orphans = plan(&queue, "SELECT 1 FROM deliveries WHERE event_id = 5", []);
        assert!(orphans.contains("deliveries_event"), "{orphans}");
        let dead = plan(
            &queue,
            "SELECT id FROM deliveries WHERE subscription = 'a' AND state = 'dead'
             ORDER BY finished_at DESC, id DESC LIMIT 10",
            [],
        );
        assert!(dead.contains("deliveries_dead"), "{dead}");
    }

    #[test]
    fn hot_statements_are_never_prepared_again() {
        // A cached statement that SQLite re-prepares on every new binding costs a parse and a
        // plan per call (it made a claim about ten times as expensive). With the query planner
        // stability guarantee, none of the hot statements is ever re-prepared; and none scans
        // a table.
        let (_dir, queue) = temp_queue();
        for round in 0..20i64 {
            let sub = format!("s/{}", round % 3);
            let now = t(round * 100);
            queue.enqueue(b"p", &[&sub, "other"], now).expect("enqueue");
            queue.enqueue(b"q", &[&sub], now).expect("enqueue");
            let limit = 1 + (round % 4) as usize;
            for (i, c) in queue
                .claim(&sub, now, Duration::from_secs(1 + round as u64), limit)
                .expect("claim")
                .into_iter()
                .enumerate()
            {
                match (round + i as i64) % 3 {
                    0 => queue.ack(&c.lease, now).expect("ack"),
                    1 => queue
                        .retry(&c.lease, t(round * 100 + 50), "e", now)
                        .expect("retry"),
                    _ => queue.dead(&c.lease, "e", now).expect("dead"),
                }
            }
            queue.next_due(&sub).expect("next_due");
        }
        queue
            .with_db(|db| {
                for sql in [
                    CLAIM_SQL,
                    LEASE_SQL,
                    ACK_SQL,
                    RETRY_SQL,
                    DEAD_SQL,
                    INSERT_EVENT_SQL,
                    INSERT_DELIVERY_SQL,
                    NEXT_DUE_SQL,
                ] {
                    let stmt = db.conn.prepare_cached(sql).during("status")?;
                    let runs = stmt.get_status(rusqlite::StatementStatus::Run);
                    assert!(runs > 0, "not run (so not cached): {sql}");
                    let reprepared = stmt.get_status(rusqlite::StatementStatus::RePrepare);
                    assert_eq!(reprepared, 0, "re-prepared {reprepared} times: {sql}");
                    let scanned = stmt.get_status(rusqlite::StatementStatus::FullscanStep);
                    assert_eq!(scanned, 0, "scanned a whole table: {sql}");
                }
                Ok(())
            })
            .expect("statement status");
    }

    #[test]
    fn expire_leases_makes_leased_deliveries_claimable_at_once() {
        // A process that died holding leases: its successor ends them and claims the
        // deliveries again (next attempt, fresh lease), instead of waiting out the leases.
        let (_dir, queue) = temp_queue();
        queue.enqueue(b"e1", &["s/a"], t(0)).expect("enqueue");
        queue.enqueue(b"e2", &["s/a"], t(0)).expect("enqueue");
        let old = queue
            .claim("s/a", t(1), Duration::from_secs(90), 1)
            .expect("claim");
        assert_eq!(old.len(), 1);
        assert!(
            queue
                .claim("s/a", t(2), Duration::from_secs(90), 10)
                .expect("claim")
                .len()
                == 1
        );
        assert!(
            queue
                .claim("s/a", t(3), Duration::from_secs(90), 10)
                .expect("claim")
                .is_empty()
        );
        assert_eq!(queue.expire_leases(t(3)).expect("expire"), 2);
        let again = queue
            .claim("s/a", t(3), Duration::from_secs(90), 10)
            .expect("claim");
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|c| c.attempt == 2), "{again:?}");
        assert_eq!(queue.depth("s/a").expect("depth"), 2);
        // The old holder's lease is stale now.
        assert!(matches!(
            queue.ack(&old[0].lease, t(4)),
            Err(QueueError::StaleLease { .. })
        ));
        for c in &again {
            queue.ack(&c.lease, t(4)).expect("ack");
        }
        assert_eq!(queue.depth("s/a").expect("depth"), 0);
        // Nothing leased: nothing to end.
        assert_eq!(queue.expire_leases(t(5)).expect("expire"), 0);
    }

    /// xorshift64*: reproducible pseudo-random operations.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    #[test]
    fn cached_depths_match_a_recount_after_random_operations() {
        // The in-memory depths are kept in step by every call; after thousands of random
        // enqueues, claims, acks, retries, dead letters, drops and compactions they equal a
        // count of the table.
        let (_dir, queue) = temp_queue();
        let subs = ["s/a", "s/b", "s/c", "s/d"];
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut held: Vec<LeaseRef> = Vec::new();
        let lease = Duration::from_secs(10);
        for step in 0..3000i64 {
            let now = t(step);
            match rng.below(10) {
                0..=2 => {
                    let k = rng.below(4) as usize;
                    let chosen: Vec<&str> = subs.iter().copied().take(k).collect();
                    queue.enqueue(b"p", &chosen, now).expect("enqueue");
                }
                3 | 4 => {
                    let sub = subs[rng.below(4) as usize];
                    let limit = rng.below(5) as usize;
                    for c in queue.claim(sub, now, lease, limit).expect("claim") {
                        held.push(c.lease);
                    }
                }
                5..=8 if !held.is_empty() => {
                    let lease = held.swap_remove(rng.below(held.len() as u64) as usize);
                    // Some of these leases expired and were taken by a later claim: stale.
                    let result = match rng.below(3) {
                        0 => queue.ack(&lease, now),
                        1 => queue.retry(&lease, t(step + 5), "e", now),
                        _ => queue.dead(&lease, "e", now),
                    };
                    match result {
                        Ok(()) | Err(QueueError::StaleLease { .. }) => {}
                        Err(err) => panic!("settling: {err}"),
                    }
                }
                9 if rng.below(20) == 0 => {
                    queue
                        .drop_subscription(subs[rng.below(4) as usize])
                        .expect("drop");
                }
                _ => {
                    queue.compact(t(step - 20), 50).expect("compact");
                }
            }
            if step % 100 == 0 {
                let cached = queue.depths().expect("depths");
                let counted = queue
                    .with_db(|db| {
                        db.recount().during("recount")?;
                        Ok(db.depths.clone())
                    })
                    .expect("recount");
                assert_eq!(cached, counted, "step {step}");
                let stats = queue.stats().expect("stats");
                assert_eq!(stats.pending(), counted.values().sum::<u64>());
            }
        }
    }

    #[test]
    fn truncate_cuts_at_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        // 'é' is two bytes: cutting inside it backs off to before it.
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("", 0), "");
    }
}
