//! skiff's durable delivery queue: events accepted by a broker (or fired by a ping source) and
//! the deliveries that must carry each of them to its subscribers, in one SQLite file, claimed
//! by dispatchers under leases for at-least-once delivery.
//!
//! # Model
//!
//! - An **event** is an opaque payload (up to [`MAX_PAYLOAD_BYTES`]; the broker decides the
//!   encoding) plus an optional `source_key`, a short label for metrics. It is stored once, no
//!   matter how many subscribers it goes to.
//! - A **delivery** is one event on its way to one **subscription** (a name such as
//!   `trigger/default/my-trigger` or `ping/default/every-minute`). [`Queue::enqueue`] creates
//!   one per subscription the event matched, in one transaction with the event.
//! - A delivery is `ready` (waiting for its `run_at`), `leased` (a dispatcher is delivering
//!   it), `done`, or `dead` (retries used up: the dead-letter state, kept and listable):
//!
//!   ```text
//!   enqueue ─► ready ──claim──► leased ──ack──► done ──compact──► (deleted)
//!                ▲               │  │
//!                └─────retry─────┘  └──dead──► dead
//!              (lease expires: claimable again as it is)
//!   ```
//!
//! # Using it from tokio
//!
//! The API is synchronous and every call blocks on SQLite ([`Queue::enqueue`] also on an
//! fsync). Share the [`Queue`] in an `Arc` and call it from `tokio::task::spawn_blocking`:
//!
//! ```ignore
//! # use std::sync::Arc;
//! # async fn demo(queue: Arc<skiff_queue::Queue>, body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! let ids = tokio::task::spawn_blocking(move || {
//!     queue.enqueue(&body, &["trigger/default/my-trigger"], jiff::Timestamp::now())
//! })
//! .await??;
//! # Ok(()) }
//! ```
//!
//! The queue never reads a clock: every call that depends on time takes `now`, so tests (and
//! the crash tests here) run on made-up time.
//!
//! # Claiming and leases
//!
//! [`Queue::claim`] leases up to `limit` due deliveries of one subscription for a while and
//! hands each out with its payload, its attempt number (1 on first delivery, +1 at every claim)
//! and a [`LeaseRef`]. The dispatcher then reports the outcome with the `LeaseRef`:
//! [`Queue::ack`] (delivered), [`Queue::retry`] (failed, try again at a time the dispatcher
//! computes, e.g. with [`RetryPolicy`]) or [`Queue::dead`] (failed for good).
//!
//! If the dispatcher crashes or hangs, its lease expires and the delivery becomes claimable
//! again with the next attempt number: delivery is **at-least-once**, and receivers must
//! tolerate duplicates (Knative's contract too). A claim gives the delivery a fresh lease token,
//! so an old holder's late `ack`/`retry`/`dead` is refused with [`QueueError::StaleLease`] and
//! changes nothing. A late report on an expired lease that nobody claimed since is accepted.
//!
//! # Schema
//!
//! Version [`SCHEMA_VERSION`] in `PRAGMA user_version`; all tables `STRICT`; times are
//! microseconds since the Unix epoch (UTC).
//!
//! - `events(id, accepted_at, source_key, payload)`: `id` is `AUTOINCREMENT`, so ids are never
//!   reused even after compaction.
//! - `deliveries(id, event_id → events, subscription, state, due_at, attempt, lease_token,
//!   last_error, created_at, finished_at)`, `id` also `AUTOINCREMENT` (a [`DeliveryId`] names
//!   one delivery forever, so receivers may use it to deduplicate). One column, **`due_at`**,
//!   holds the time that matters for the state: `run_at` while `ready`, the lease's end while
//!   `leased`. "Due" is then the same test for both (`due_at <= now`), so claiming ready and
//!   expired deliveries is one range scan, and [`Queue::next_due`] is one index seek.
//!   `CHECK`s tie `lease_token` to `leased` and `finished_at` to `done`/`dead`.
//! - `meta(lease_seq)`: the last lease token handed out; each claim that leases anything
//!   takes the next one.
//!
//! Indexes, each partial so it holds only the rows its query needs:
//!
//! | index             | columns                        | rows            | serves              |
//! |-------------------|--------------------------------|-----------------|---------------------|
//! | `deliveries_due`  | `(subscription, due_at)`       | ready, leased   | claim, next_due, depths at open |
//! | `deliveries_done` | `(finished_at)`                | done            | compact             |
//! | `deliveries_dead` | `(subscription, finished_at)`  | dead            | dead_letters        |
//! | `deliveries_event`| `(event_id, subscription)` unique | all          | the foreign key, orphan events, no duplicate delivery |
//!
//! # Durability
//!
//! The file runs in WAL mode. What is fsynced before a call returns depends on what losing it
//! would cost:
//!
//! - [`Queue::enqueue`] (and `enqueue_many`, `enqueue_events`), [`Queue::drop_subscription`]
//!   and [`Queue::compact`] commit with `synchronous=FULL`: fsynced when they return. An
//!   accepted event survives a process crash and a power failure.
//! - [`Queue::claim`], [`Queue::ack`], [`Queue::retry`] and [`Queue::dead`] commit with
//!   `synchronous=NORMAL`: atomic, and they survive a process crash (the WAL is in the kernel's
//!   page cache), but a power failure may undo the last of them (until the next `FULL` commit or
//!   checkpoint fsyncs the WAL). Undoing them only ever leads to a redelivery, which
//!   at-least-once delivery allows: an undone `ack` or `dead` leaves the delivery leased, so it
//!   is claimed again when the lease runs out. This saves an fsync per delivery.
//!
//! Each transaction is all or nothing at any crash point: SQLite replays the WAL only up to the
//! last intact commit frame. `PRAGMA quick_check` runs at every [`Queue::open`], which refuses a
//! damaged file. The crash tests (`tests/crash.rs`) SIGKILL a producer and a consumer at random
//! points and check that nothing acknowledged is lost; like skiff-store's, they cannot simulate
//! power loss, which rests on SQLite's guarantees and the fsyncs above.
//!
//! # Performance
//!
//! - Concurrent enqueues are committed together, one transaction and one fsync per group (see
//!   the `group` module); a lone caller commits alone at no extra cost.
//! - Statements are prepared once and cached, and never re-prepared: the connection runs with
//!   SQLite's query planner stability guarantee (see `schema.rs` for why that matters).
//! - `claim` reads its batch with one indexed `SELECT … ORDER BY due_at LIMIT ?` joined to the
//!   events, then leases each row by id, in one transaction. The single
//!   `UPDATE … WHERE id IN (SELECT … LIMIT ?) RETURNING …` was tried first and cost five times
//!   as much for small batches: SQLite materializes both the `IN` list and the `RETURNING` rows
//!   in temporary b-trees, each with its own page cache, set up and torn down per call.
//!   `ack`, `retry` and `dead` avoid `RETURNING` for the same reason.
//! - SQLite's page cache is 16 MiB instead of 2 MiB, to hold a busy queue's working set.
//! - [`Queue::depths`], [`Queue::depth`] and [`Queue::subscriptions`] read counts kept in memory
//!   in step with each commit, so the autoscaler's polling never scans the backlog.
//! - `examples/rates.rs` prints the rates on the machine at hand.
//!
//! # Limitations
//!
//! - One connection: calls run one at a time. A big `claim` (many large payloads) or
//!   [`Queue::stats`] (a scan) holds up the others while it runs.
//! - [`Queue::depths`] counts only what this `Queue` committed; another process writing the
//!   file (an operator's `sqlite3` shell) is not seen until the next open.
//! - Dead letters are kept until the subscription's owner removes them; there is no call to
//!   purge or redrive them yet.
//! - Compaction frees pages for reuse but does not shrink the file.

#![forbid(unsafe_code)]

mod error;
mod group;
mod queue;
mod retry;
mod schema;

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

pub use error::{ErrorSource, QueueError};
pub use queue::Queue;
pub use retry::{AfterFailure, Backoff, RetryPolicy};
pub use schema::SCHEMA_VERSION;

/// The largest event payload the queue stores. Brokers should cap request bodies lower (1 MiB
/// for CloudEvents data is the common limit); this leaves room for the attributes the broker
/// encodes beside the data.
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// The longest subscription name.
pub const MAX_SUBSCRIPTION_BYTES: usize = 512;

/// The longest `source_key`.
pub const MAX_SOURCE_KEY_BYTES: usize = 512;

/// `retry` and `dead` keep at most this much of the error text (cut at a character boundary).
pub const MAX_ERROR_BYTES: usize = 4096;

/// A delivery's id: unique in the file forever (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(i64);

impl DeliveryId {
    /// The id from its number (as printed, or stored by a caller).
    pub const fn new(id: i64) -> Self {
        DeliveryId(id)
    }

    /// The id's number.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's id: unique in the file forever. Deliveries of one event share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(i64);

impl EventId {
    /// The id's number.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which claim a lease came from. Only [`Queue::claim`] makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(i64);

impl LeaseToken {
    /// The token's number, for logs.
    pub const fn get(self) -> i64 {
        self.0
    }
}

/// What `ack`, `retry` and `dead` need to show that the caller holds a delivery's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The leased delivery.
    pub delivery: DeliveryId,
    /// The claim that leased it.
    pub token: LeaseToken,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its `run_at`, or due.
    Ready,
    /// Claimed by a dispatcher until its lease ends.
    Leased,
    /// Delivered.
    Done,
    /// Given up on: the dead-letter state.
    Dead,
}

impl DeliveryState {
    /// The name stored in the `state` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Ready => "ready",
            DeliveryState::Leased => "leased",
            DeliveryState::Done => "done",
            DeliveryState::Dead => "dead",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "ready" => Some(DeliveryState::Ready),
            "leased" => Some(DeliveryState::Leased),
            "done" => Some(DeliveryState::Done),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event for [`Queue::enqueue_events`].
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    /// The event as the broker encoded it.
    pub payload: &'a [u8],
    /// A short label of where it came from, for metrics (at most [`MAX_SOURCE_KEY_BYTES`]).
    pub source_key: Option<&'a str>,
    /// The subscriptions it must reach: one delivery each. None: the event is not stored.
    pub subscriptions: &'a [&'a str],
}

/// A delivery handed out by [`Queue::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The delivery.
    pub delivery: DeliveryId,
    /// Its event.
    pub event: EventId,
    /// The event's payload.
    pub payload: Vec<u8>,
    /// The event's `source_key`.
    pub source_key: Option<String>,
    /// 1 on the first delivery, one more at every claim (also after an expired lease).
    pub attempt: u32,
    /// What `ack`, `retry` and `dead` need.
    pub lease: LeaseRef,
    /// When the lease ends and another claim may take the delivery.
    pub lease_until: Timestamp,
    /// When the event was enqueued.
    pub accepted_at: Timestamp,
}

/// A delivery in the dead-letter state, from [`Queue::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The delivery.
    pub delivery: DeliveryId,
    /// Its event.
    pub event: EventId,
    /// The event's payload.
    pub payload: Vec<u8>,
    /// The event's `source_key`.
    pub source_key: Option<String>,
    /// How many times it was claimed.
    pub attempts: u32,
    /// The error given to the last `retry` or to `dead`.
    pub last_error: Option<String>,
    /// When the event was enqueued.
    pub accepted_at: Timestamp,
    /// When it was dead-lettered.
    pub finished_at: Timestamp,
}

/// What one [`Queue::compact`] call deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Done deliveries deleted.
    pub deliveries: u64,
    /// Events deleted because no delivery referred to them any more.
    pub events: u64,
    /// The call stopped at its `max_rows`: more may be eligible, call again.
    pub more: bool,
}

/// Counts from [`Queue::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Deliveries waiting for their `run_at` or due.
    pub ready: u64,
    /// Deliveries leased (including expired leases not yet reclaimed).
    pub leased: u64,
    /// Deliveries delivered and not yet compacted.
    pub done: u64,
    /// Dead letters.
    pub dead: u64,
    /// Events stored.
    pub events: u64,
    /// When the oldest pending (ready or leased) delivery was enqueued.
    pub oldest_pending: Option<Timestamp>,
}

impl Stats {
    /// All deliveries stored.
    pub fn total(&self) -> u64 {
        self.ready + self.leased + self.done + self.dead
    }

    /// Pending deliveries: ready + leased.
    pub fn pending(&self) -> u64 {
        self.ready + self.leased
    }

    /// How long the oldest pending delivery has waited at `now` (zero if `now` is earlier).
    pub fn oldest_pending_age(&self, now: Timestamp) -> Option<Duration> {
        self.oldest_pending
            .map(|oldest| Duration::try_from(now.duration_since(oldest)).unwrap_or(Duration::ZERO))
    }
}
