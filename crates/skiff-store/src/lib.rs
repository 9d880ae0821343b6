//! skiff's durable state: an etcd-shaped key/value store behind the [`Store`] trait.
//!
//! # Design
//! The model is etcd's, so that a distributed backend can replace the embedded one without
//! touching the callers: keys are strings (`/registry/services/<ns>/<name>`), values are opaque
//! bytes, and one store-wide revision counter increases by one with every committed
//! transaction. Every key remembers the revision that created it (`create_revision`), the one
//! that last changed it (`mod_revision`, which the API exposes as `resourceVersion`) and how many
//! times it changed (`version`). Writes go through [`Store::txn`]: a list of comparisons that must
//! all hold, and a list of operations applied atomically if they do. Optimistic concurrency is a
//! comparison on `mod_revision` (0 meaning "the key must not exist").
//!
//! Reads are etcd's too: [`Store::list`] returns the revision it read at, and
//! [`Store::watch`] delivers every change after a given revision, so a reader lists once and
//! then follows changes without missing or repeating any. History is bounded: a watcher that
//! asks for changes older than the store still remembers, or falls too far behind, gets
//! [`WatchError::Compacted`] and re-lists (etcd's "required revision has been compacted").
//! See [`watch`] for how history is kept. Every key skiff stores is built in [`keys`].
//!
//! The embedded backend is [`SqliteStore`] (see ARCHITECTURE.md for why SQLite over redb).
#![forbid(unsafe_code)]

pub mod keys;
mod sqlite;
pub mod watch;

use async_trait::async_trait;

pub use sqlite::{HISTORY_CAPACITY, OpenError, SCHEMA_VERSION, SqliteStore};
pub use watch::{History, Watch, WatchError};

/// One key with its value and revision bookkeeping, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, opaque to the store.
    pub value: Vec<u8>,
    /// Store revision of the transaction that created the key.
    pub create_revision: i64,
    /// Store revision of the transaction that last wrote the key.
    pub mod_revision: i64,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
}

/// A condition a transaction requires before it applies its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; `revision == 0` means the key must not exist.
    ModRevision {
        /// The key compared.
        key: String,
        /// The expected `mod_revision`, or 0 for "absent".
        revision: i64,
    },
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace the key's value.
    Put {
        /// The key written.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove the key; removing an absent key is not an error.
    Delete {
        /// The key removed.
        key: String,
    },
}

/// An atomic compare-and-write: either every comparison holds and every operation is applied
/// under one new store revision, or nothing is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions that must all hold.
    pub compares: Vec<Compare>,
    /// Writes applied when they do, in order.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to be at `mod_revision` (0: absent).
    pub fn when_mod_revision(mut self, key: impl Into<String>, revision: i64) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }

    /// Adds a put.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every comparison held; the operations are durable under `revision`.
    Committed {
        /// The new store revision.
        revision: i64,
    },
    /// A comparison failed; nothing was written.
    Conflict {
        /// The first key whose comparison failed.
        key: String,
        /// The `mod_revision` the transaction expected (0: absent).
        expected: i64,
        /// The key's actual `mod_revision` (0: absent).
        actual: i64,
    },
}

/// The keys under a prefix, and the store revision they were read at.
///
/// The read is one snapshot: `kvs` is exactly the state at `revision`, so watching from
/// `revision` on continues where the listing stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store revision of the snapshot (0 for a never-written store). It can be above every
    /// listed key's `mod_revision`: it counts writes to every key, not only these.
    pub revision: i64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

impl IntoIterator for Listing {
    type Item = KeyValue;
    type IntoIter = std::vec::IntoIter<KeyValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.kvs.into_iter()
    }
}

/// A committed change, as seen by watchers.
///
/// It names the key, not the new value: whoever handles it reads the key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The store revision of the transaction.
    pub revision: i64,
    /// What happened to the key.
    pub kind: EventKind,
    /// The key.
    pub key: String,
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or replaced.
    Put,
    /// The key was removed.
    Delete,
}

/// A store operation failed for a reason other than a failed comparison.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error (I/O, corruption, a full disk).
    #[error("state store backend failed during {operation}")]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store was closed.
    #[error("state store is closed")]
    Closed,
}

/// skiff's state store: an etcd-shaped, strictly serializable key/value store.
///
/// Every method is linearizable: a read started after a write was acknowledged sees it.
/// Acknowledged writes are durable (they survive `kill -9` of the process and, for the SQLite
/// backend, power loss).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key that starts with `prefix`, in key order, with the revision read at
    /// (one consistent snapshot).
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Applies a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// The current store revision (0 for an empty, never-written store).
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Follows changes to keys that start with `prefix`: [`Watch::next`] yields every change
    /// with a revision above `from_revision`, in revision order, each once, then waits for
    /// more. Changes committed before this call are included, so
    /// `watch(prefix, list(prefix).revision)` misses nothing. Watching from the current
    /// revision ([`Store::revision`]) means "from now on".
    ///
    /// History is bounded: if `from_revision` is older than the store remembers, or the
    /// watcher falls too far behind the writers, `next` returns [`WatchError::Compacted`] and
    /// the caller re-lists. After [`Store::close`] (or once the store is dropped) it returns
    /// [`WatchError::Closed`], once every earlier change was delivered.
    fn watch(&self, prefix: &str, from_revision: i64) -> Watch;

    /// Flushes and closes the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
