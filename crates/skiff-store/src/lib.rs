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
//! The embedded backend is [`SqliteStore`] (see ARCHITECTURE.md for why SQLite over redb).
#![forbid(unsafe_code)]

mod sqlite;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use sqlite::{OpenError, SCHEMA_VERSION, SqliteStore};

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

/// A committed change, as seen by watchers.
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

    /// Reads every key that starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// The current store revision (0 for an empty, never-written store).
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Subscribes to committed changes from now on. A slow subscriber that falls behind sees
    /// `RecvError::Lagged` and must re-list.
    fn watch(&self) -> broadcast::Receiver<Event>;

    /// Flushes and closes the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
