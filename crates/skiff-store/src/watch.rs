//! Watch history: the recent committed changes, and watchers that read them from a revision on.
//!
//! # Design
//!
//! A [`History`] is an in-memory ring of the most recent [`Event`]s, in revision order, plus
//! the *compacted revision*: every change with a revision above it is in the ring, and nothing
//! at or below it is. A backend publishes each committed transaction's events into it before it
//! serves any read that could observe that transaction (the SQLite backend publishes while it
//! still holds its only connection), so a [`Store::list`](crate::Store::list) that read at
//! revision `r` followed by [`Store::watch`](crate::Store::watch) from `r` sees every later
//! change exactly once: those committed in between are already in the ring.
//!
//! A [`Watch`] is only a position in the ring (a sequence number) and a prefix: it copies
//! events out under a short lock and waits on a `tokio::sync::watch` signal when it has read
//! everything. There is one buffer for all watchers, not one per watcher, so a publish costs
//! the same with one watcher or a hundred. When the ring is full, the oldest *whole
//! transactions* are dropped and the compacted revision moves up to the last one dropped; a
//! watcher whose position fell below it, or that asked for a revision below it, gets
//! [`WatchError::Compacted`] and must re-list: nothing is ever skipped silently.
//!
//! Why memory and not a change-log table in SQLite (etcd keeps its history on disk until it
//! compacts): every watcher lives in the daemon's own process, so after a restart there is no
//! watcher left that could resume from an old revision; each one starts with a list. A table
//! would add a write and a prune to every fsynced transaction and a schema migration, to keep
//! history nobody can ask for. An etcd backend would have etcd's own history instead.
//!
//! Events carry the key, not the value: a reconciler re-reads the current state of a key
//! anyway (an event's value may already be stale when it is handled), and keys alone keep the
//! ring small (a few MB at most) whatever the size of the values.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::Event;

/// Why a [`Watch`] cannot deliver its next event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// Changes the watcher needs are no longer retained (it asked for an old revision, or fell
    /// too far behind the writers): re-list, then watch again from the listing's revision.
    #[error(
        "watch history compacted: changes after revision {requested} are needed, but only \
         those after revision {oldest} are retained; re-list"
    )]
    Compacted {
        /// Every change up to this revision was delivered (or was not asked for); the watcher
        /// needs the ones after it.
        requested: i64,
        /// The oldest revision a watch can start from now.
        oldest: i64,
    },
    /// The store was closed (or dropped) and every change published before that was delivered.
    #[error("the state store is closed")]
    Closed,
}

/// The recent committed changes of a store, which [`Watch`]es read from.
///
/// A backend owns one, calls [`History::publish`] for every committed transaction (in
/// revision order, before any read can observe it) and [`History::close`] when it closes.
/// Dropping it also closes every watch.
#[derive(Debug)]
pub struct History {
    shared: Arc<Mutex<Ring>>,
    /// Bumped on every publish and on close; watchers wait on it.
    signal: watch::Sender<()>,
}

#[derive(Debug)]
struct Ring {
    /// The retained events, oldest first; revisions never decrease.
    events: VecDeque<Event>,
    /// The sequence number of `events[0]`; every published event has the next number.
    first_seq: u64,
    /// Every event with a revision above this one is retained, none at or below it.
    compacted: i64,
    /// The most events retained (whole transactions are dropped to stay at or below it).
    capacity: usize,
    /// Set by [`History::close`].
    closed: bool,
}

impl Ring {
    fn get(&self, seq: u64) -> Option<&Event> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.events.get(index)
    }

    fn end_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }
}

fn lock(shared: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // Nothing under this lock can panic halfway through a change that matters: a poisoned
    // ring is still a consistent ring.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    /// An empty history of a store at `revision`, keeping at most `capacity` events: watches
    /// can start from `revision` or later.
    pub fn new(revision: i64, capacity: usize) -> Self {
        let (signal, _) = watch::channel(());
        History {
            shared: Arc::new(Mutex::new(Ring {
                events: VecDeque::new(),
                first_seq: 0,
                compacted: revision,
                capacity: capacity.max(1),
                closed: false,
            })),
            signal,
        }
    }

    /// Records one committed transaction's events (all with the same, new revision) and wakes
    /// the watchers.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        {
            let mut ring = lock(&self.shared);
            let before = ring.events.len();
            ring.events.extend(events);
            if ring.events.len() == before {
                return;
            }
            while ring.events.len() > ring.capacity {
                // Drop the oldest transaction as a whole, so that "retained" can be stated as
                // one revision.
                let Some(dropped) = ring.events.pop_front() else {
                    break;
                };
                ring.first_seq += 1;
                while ring
                    .events
                    .front()
                    .is_some_and(|e| e.revision == dropped.revision)
                {
                    ring.events.pop_front();
                    ring.first_seq += 1;
                }
                ring.compacted = dropped.revision;
            }
        }
        self.signal.send_replace(());
    }

    /// Closes the history: watches deliver what was published, then [`WatchError::Closed`].
    pub fn close(&self) {
        lock(&self.shared).closed = true;
        self.signal.send_replace(());
    }

    /// The oldest revision a watch can start from.
    pub fn compacted_revision(&self) -> i64 {
        lock(&self.shared).compacted
    }

    /// Watches keys starting with `prefix`, from the first change after `from_revision`.
    pub fn watch(&self, prefix: &str, from_revision: i64) -> Watch {
        let ring = lock(&self.shared);
        // Revisions in the ring never decrease, so the events after `from_revision` are a tail.
        let skip = ring.events.partition_point(|e| e.revision <= from_revision);
        Watch {
            next_seq: ring.first_seq + skip as u64,
            done: from_revision,
            prefix: prefix.to_owned(),
            shared: Arc::clone(&self.shared),
            signal: self.signal.subscribe(),
        }
    }
}

/// The changes to keys under one prefix, from a revision on: see [`Store::watch`](crate::Store::watch).
#[derive(Debug)]
pub struct Watch {
    /// The next event of the ring to look at.
    next_seq: u64,
    /// Every change up to this revision has been delivered or was not asked for.
    done: i64,
    prefix: String,
    shared: Arc<Mutex<Ring>>,
    signal: watch::Receiver<()>,
}

impl Watch {
    /// The next change under the prefix, waiting for one if needed.
    ///
    /// Changes come in revision order (those of one transaction in the transaction's order),
    /// each exactly once. After an error, every later call returns an error too.
    ///
    /// Cancel safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Event, WatchError> {
        loop {
            // Mark the signal seen before looking, so a publish after the look wakes us.
            self.signal.borrow_and_update();
            if let Some(result) = self.poll() {
                return result;
            }
            if self.signal.changed().await.is_err() {
                // The history was dropped: deliver what it had published, then stop.
                return self.poll().unwrap_or(Err(WatchError::Closed));
            }
        }
    }

    /// The next change under the prefix if one was already published, without waiting:
    /// `Ok(None)` when there is none yet. Errors as [`Watch::next`].
    pub fn try_next(&mut self) -> Result<Option<Event>, WatchError> {
        match self.poll() {
            Some(result) => result.map(Some),
            // The history was dropped (every event it published was delivered by `poll`).
            None if self.signal.has_changed().is_err() => Err(WatchError::Closed),
            None => Ok(None),
        }
    }

    /// The next event if one is there, or the error, or `None` to wait.
    fn poll(&mut self) -> Option<Result<Event, WatchError>> {
        let ring = lock(&self.shared);
        if self.done < ring.compacted {
            return Some(Err(WatchError::Compacted {
                requested: self.done,
                oldest: ring.compacted,
            }));
        }
        // Events dropped since our last look were all at or below `compacted`, so at or below
        // `done`: none of them was needed.
        self.next_seq = self.next_seq.max(ring.first_seq);
        while let Some(event) = ring.get(self.next_seq) {
            self.next_seq += 1;
            if event.revision <= self.done {
                continue;
            }
            // A transaction's events are published together, so whether it has more is known.
            let more_in_txn = ring
                .get(self.next_seq)
                .is_some_and(|next| next.revision == event.revision);
            self.done = if more_in_txn {
                event.revision - 1
            } else {
                event.revision
            };
            if event.key.starts_with(&self.prefix) {
                return Some(Ok(event.clone()));
            }
        }
        debug_assert_eq!(self.next_seq, ring.end_seq());
        ring.closed.then_some(Err(WatchError::Closed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::EventKind;

    fn put(revision: i64, key: &str) -> Event {
        Event {
            revision,
            kind: EventKind::Put,
            key: key.to_owned(),
        }
    }

    /// Drains what a watch has now.
    fn drain(watch: &mut Watch) -> Result<Vec<Event>, WatchError> {
        let mut out = Vec::new();
        while let Some(event) = watch.try_next()? {
            out.push(event);
        }
        Ok(out)
    }

    /// A watch from a revision skips what came at or before it, including a revision still in
    /// the future when the watch starts, and delivers a transaction's events in their order.
    #[test]
    fn watch_starts_after_its_revision() {
        let history = History::new(0, 16);
        history.publish([put(1, "a")]);
        history.publish([put(2, "b"), put(2, "c")]);
        let mut from_one = history.watch("", 1);
        let mut from_future = history.watch("", 3);
        history.publish([put(3, "d")]);
        history.publish([put(4, "e")]);
        assert_eq!(
            drain(&mut from_one),
            Ok(vec![put(2, "b"), put(2, "c"), put(3, "d"), put(4, "e")])
        );
        assert_eq!(drain(&mut from_future), Ok(vec![put(4, "e")]));
    }

    /// The ring drops whole transactions, so the compacted revision is exact: a transaction is
    /// either entirely retained or entirely gone.
    #[test]
    fn full_ring_drops_whole_transactions() {
        let history = History::new(0, 4);
        history.publish([put(1, "a"), put(1, "b"), put(1, "c")]);
        history.publish([put(2, "d"), put(2, "e")]);
        // 5 events > 4: the whole of revision 1 goes, not just its first event.
        assert_eq!(history.compacted_revision(), 1);
        assert_eq!(
            drain(&mut history.watch("", 1)),
            Ok(vec![put(2, "d"), put(2, "e")])
        );
        // A transaction larger than the ring leaves nothing but its revision.
        history.publish((0..5).map(|n| put(3, &format!("k{n}"))));
        assert_eq!(history.compacted_revision(), 3);
        assert_eq!(drain(&mut history.watch("", 3)), Ok(vec![]));
    }

    /// A watcher that delivered part of a transaction and then lost the rest to compaction is
    /// told it needs the changes after the revision before that transaction.
    #[test]
    fn compaction_in_the_middle_of_a_transaction_is_reported() {
        let history = History::new(0, 3);
        let mut watch = history.watch("", 0);
        history.publish([put(1, "a"), put(1, "b")]);
        assert_eq!(watch.try_next(), Ok(Some(put(1, "a"))));
        history.publish([put(2, "c"), put(2, "d")]);
        assert_eq!(
            watch.try_next(),
            Err(WatchError::Compacted {
                requested: 0,
                oldest: 1
            })
        );
        // The error is final.
        history.publish([put(3, "e")]);
        assert!(matches!(
            watch.try_next(),
            Err(WatchError::Compacted { .. })
        ));
    }

    /// Events dropped from the ring that a watcher did not need (other prefixes it had
    /// already passed) do not make it compacted.
    #[test]
    fn dropping_passed_events_is_not_compaction() {
        let history = History::new(0, 2);
        let mut watch = history.watch("x/", 0);
        history.publish([put(1, "a")]);
        history.publish([put(2, "b")]);
        assert_eq!(watch.try_next(), Ok(None));
        history.publish([put(3, "c")]);
        history.publish([put(4, "x/1")]);
        assert_eq!(watch.try_next(), Ok(Some(put(4, "x/1"))));
    }

    /// A waiting watcher is woken by a publish and, after close (or once the history is
    /// dropped), gets what was published before and then `Closed`.
    #[tokio::test]
    async fn waiting_watchers_wake_and_close() {
        let history = History::new(0, 8);
        let mut watch = history.watch("", 0);
        let waiter = tokio::spawn(async move {
            let first = watch.next().await;
            (first, watch)
        });
        tokio::task::yield_now().await;
        history.publish([put(1, "a")]);
        let (first, mut watch) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the watcher wakes")
            .expect("the watcher task");
        assert_eq!(first, Ok(put(1, "a")));

        history.publish([put(2, "b")]);
        history.close();
        assert_eq!(watch.next().await, Ok(put(2, "b")));
        assert_eq!(watch.next().await, Err(WatchError::Closed));
        assert_eq!(history.watch("", 2).try_next(), Err(WatchError::Closed));

        let dropped = History::new(0, 8);
        let mut watch = dropped.watch("", 0);
        dropped.publish([put(1, "a")]);
        drop(dropped);
        assert_eq!(watch.next().await, Ok(put(1, "a")));
        assert_eq!(watch.next().await, Err(WatchError::Closed));
    }
}
