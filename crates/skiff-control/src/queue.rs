//! A keyed work queue, as Kubernetes' client-go `workqueue`: each key is queued at most
//! once, a key changed while it is being reconciled runs once more afterwards (never twice
//! at the same time), failures come back after an exponential backoff, and a reconciler can
//! ask to see a key again after a delay.
//!
//! # Design
//! The queue also keeps a store-revision watermark: [`WorkQueue::add_at`] records the store
//! revision of the change that queued a key, and whenever the queue becomes idle (nothing
//! queued, delayed or being reconciled) everything up to the highest such revision has been
//! reconciled, so [`WorkQueue::observed`] moves there. The API waits on it to answer an
//! `apply` only once the Service is routable. A key waiting out a retry keeps the queue from
//! being idle: the watermark never moves past a change that has not been handled.
//!
//! Time is `tokio::time`, so tests run on a paused clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How failures back off: `base`, doubling per consecutive failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << exp).min(self.max)
    }
}

struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`.
    queued: HashSet<K>,
    /// Keys being reconciled.
    active: HashSet<K>,
    /// Keys added while being reconciled: queued again when done.
    dirty: HashSet<K>,
    /// Keys waiting for a time, by due time (with a sequence number for equal times).
    delayed: BTreeMap<(Instant, u64), K>,
    /// When each delayed key is due (the earliest wins).
    due: HashMap<K, (Instant, u64)>,
    seq: u64,
    failures: HashMap<K, u32>,
    /// Keys waiting out a retry after a failure: the changes that queued them are not yet
    /// handled.
    retrying: HashSet<K>,
    /// A worker is running the reconciler's after-drain step (see [`WorkQueue::settled`]).
    settling: bool,
    /// The highest store revision that queued a key.
    seen_revision: i64,
    closed: bool,
}

impl<K: Clone + Eq + Hash> State<K> {
    fn push(&mut self, key: K) {
        if self.active.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn idle(&self) -> bool {
        self.ready.is_empty()
            && self.active.is_empty()
            && self.retrying.is_empty()
            && !self.settling
    }

    /// Moves delayed keys that are due into the ready queue; returns the next due time.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.delayed.first_key_value() {
            if at > now {
                return Some(at);
            }
            if let Some(key) = self.delayed.remove(&(at, seq)) {
                self.due.remove(&key);
                self.push(key);
            }
        }
        None
    }
}

/// A keyed work queue; cheap to clone (clones share the queue).
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    wake: Arc<Notify>,
    backoff: Backoff,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            wake: self.wake.clone(),
            backoff: self.backoff,
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue whose failures back off as `backoff` says.
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                dirty: HashSet::new(),
                delayed: BTreeMap::new(),
                due: HashMap::new(),
                seq: 0,
                failures: HashMap::new(),
                retrying: HashSet::new(),
                settling: false,
                seen_revision: 0,
                closed: false,
            })),
            wake: Arc::new(Notify::new()),
            backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (once, however often it is added before a worker takes it).
    pub fn add(&self, key: K) {
        self.lock().push(key);
        self.wake.notify_waiters();
    }

    /// Queues `key` for a change the store committed at `revision`.
    pub fn add_at(&self, key: K, revision: i64) {
        {
            let mut st = self.lock();
            st.seen_revision = st.seen_revision.max(revision);
            st.push(key);
        }
        self.wake.notify_waiters();
    }

    /// Records that every change up to `revision` has queued its keys, without queueing one
    /// (a change no key follows from). Returns the watermark if the queue is idle.
    pub fn saw(&self, revision: i64) -> Option<i64> {
        let mut st = self.lock();
        st.seen_revision = st.seen_revision.max(revision);
        st.idle().then_some(st.seen_revision)
    }

    /// Queues `key` after `delay` (sooner if it is added or already due sooner).
    pub fn add_after(&self, key: K, delay: Duration) {
        let at = Instant::now() + delay;
        {
            let mut st = self.lock();
            if let Some(&(when, seq)) = st.due.get(&key) {
                if when <= at {
                    return;
                }
                st.delayed.remove(&(when, seq));
            }
            st.seq += 1;
            let slot = (at, st.seq);
            st.delayed.insert(slot, key.clone());
            st.due.insert(key, slot);
        }
        self.wake.notify_waiters();
    }

    /// Takes the next key, waiting for one; `None` once the queue is shut down. The caller
    /// reports how it went with [`done`](Self::done), [`retry`](Self::retry) or
    /// [`requeue_after`](Self::requeue_after).
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                let next_due = st.promote(Instant::now());
                if let Some(key) = st.ready.pop_front() {
                    st.queued.remove(&key);
                    st.active.insert(key.clone());
                    return Some(key);
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// `key` was reconciled: its failures are forgotten, and it runs again if it changed
    /// meanwhile. Returns the watermark if the queue is now idle (see the module docs).
    pub fn done(&self, key: &K) -> Option<i64> {
        self.finish(key, None, true)
    }

    /// `key` failed: it comes back after the backoff for its consecutive failures. Returns
    /// that delay.
    pub fn retry(&self, key: &K) -> Duration {
        let failures = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.backoff.delay(failures);
        self.finish(key, Some(delay), false);
        delay
    }

    /// `key` was reconciled and wants to be looked at again after `delay`. Returns the
    /// watermark if the queue is now idle.
    pub fn requeue_after(&self, key: &K, delay: Duration) -> Option<i64> {
        self.finish(key, Some(delay), true)
    }

    fn finish(&self, key: &K, again: Option<Duration>, forget: bool) -> Option<i64> {
        let idle = {
            let mut st = self.lock();
            st.active.remove(key);
            if forget {
                st.failures.remove(key);
                st.retrying.remove(key);
            } else {
                st.retrying.insert(key.clone());
            }
            if st.dirty.remove(key) {
                st.push(key.clone());
            }
            let idle = st.idle();
            st.settling |= idle;
            idle.then_some(st.seen_revision)
        };
        if let Some(delay) = again {
            self.add_after(key.clone(), delay);
        }
        self.wake.notify_waiters();
        idle
    }

    /// The after-drain step that a `Some` from [`done`](Self::done) (or its siblings) started
    /// is over: returns the watermark if the queue is still idle. Until then the queue does
    /// not count as idle, so no watermark passes a drain step still running.
    pub fn settled(&self) -> Option<i64> {
        let mut st = self.lock();
        st.settling = false;
        st.idle().then_some(st.seen_revision)
    }

    /// Stops the queue: [`next`](Self::next) returns `None` from now on.
    pub fn shut_down(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }

    /// Keys queued or delayed, not counting those being reconciled.
    pub fn len(&self) -> usize {
        let st = self.lock();
        st.ready.len() + st.delayed.len()
    }

    /// Whether nothing is queued, being reconciled or waiting out a retry.
    pub fn is_empty(&self) -> bool {
        self.lock().idle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        })
    }

    /// A key added many times before a worker takes it is reconciled once.
    #[tokio::test(start_paused = true)]
    async fn duplicates_collapse() {
        let q = queue();
        for _ in 0..5 {
            q.add("a");
        }
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(q.len(), 0);
    }

    /// A key changed while it is being reconciled is not handed to a second worker; it comes
    /// back once the first is done.
    #[tokio::test(start_paused = true)]
    async fn a_key_is_never_reconciled_twice_at_once() {
        let q = queue();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        assert_eq!(q.len(), 0, "held back while active");
        let second = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(second.is_err(), "no second worker gets it");
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
    }

    /// Failures come back after a doubling delay up to the cap; success resets it.
    #[tokio::test(start_paused = true)]
    async fn failures_back_off() {
        let q = queue();
        q.add("a");
        let start = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..5 {
            let k = q.next().await.expect("key");
            delays.push(q.retry(&k));
        }
        assert_eq!(
            delays,
            [1, 2, 4, 8, 8].map(Duration::from_secs).to_vec(),
            "doubling to the cap"
        );
        let k = q.next().await.expect("key");
        assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 4 + 8 + 8));
        q.done(&k);
        q.add("a");
        let k = q.next().await.expect("key");
        assert_eq!(
            q.retry(&k),
            Duration::from_secs(1),
            "success forgot the failures"
        );
    }

    /// `add_after` delivers at its time; an earlier request wins over a later one, and an
    /// immediate add does not wait.
    #[tokio::test(start_paused = true)]
    async fn delayed_keys_arrive_on_time() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(20));
        q.add_after("b", Duration::from_secs(5));
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        q.add("c");
        assert_eq!(q.next().await, Some("c"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    /// The watermark moves only when every key queued by changes up to it has been
    /// reconciled; a key waiting for a retry holds it back.
    #[tokio::test(start_paused = true)]
    async fn the_watermark_waits_for_every_change() {
        let q = queue();
        q.add_at("a", 5);
        q.add_at("b", 7);
        let a = q.next().await.expect("a");
        assert_eq!(q.done(&a), None, "b not yet reconciled");
        let b = q.next().await.expect("b");
        q.retry(&b);
        assert_eq!(q.saw(8), None, "b failed and waits for a retry");
        let b = q.next().await.expect("b again");
        assert_eq!(q.done(&b), Some(8));
        assert_eq!(q.saw(9), None, "the drain step still runs");
        assert_eq!(q.settled(), Some(9));
        assert_eq!(q.saw(10), Some(10), "a change no key follows from");
        q.add_at("c", 11);
        let c = q.next().await.expect("c");
        assert_eq!(
            q.requeue_after(&c, Duration::from_secs(30)),
            Some(11),
            "a later look does not hold it back"
        );
        assert_eq!(q.settled(), Some(11));
    }

    /// Shutting down wakes a waiting worker with `None`.
    #[tokio::test(start_paused = true)]
    async fn shut_down_releases_workers() {
        let q = queue();
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(worker.await.expect("worker"), None);
    }
}
