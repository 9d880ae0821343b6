//! A keyed work queue, as Kubernetes' client-go `workqueue`: each key is queued at most
//! once, a key changed while it is being reconciled runs once more afterwards (never twice
//! at the same time), failures come back after an exponential backoff, and a reconciler can
//! ask to see a key again after a delay.
//!
//! # Design
//! The queue also keeps a store-revision low watermark. [`WorkQueue::add_at`] records, with
//! each key, the lowest store revision of the changes that queued it and are not handled
//! yet; [`WorkQueue::watermark`] is just below the lowest such revision still pending
//! (queued, being reconciled, changed meanwhile, or waiting out a retry), or the highest
//! revision seen when none is. Every change up to the watermark has been reconciled, however
//! many later changes keep the queue busy. The API waits on it (through the runner) to
//! answer an `apply` only once the Service is routable. A key a reconciler asked to see again
//! later does not hold it back: its change was handled.
//!
//! Time is `tokio::time`, so tests run on a paused clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// The lowest of two optional revisions.
fn lowest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready`, and the lowest unhandled store revision that queued each.
    queued: HashMap<K, Option<i64>>,
    /// Keys being reconciled, with the revision they were taken for.
    active: HashMap<K, Option<i64>>,
    /// Keys added while being reconciled (queued again when done), with their revision.
    dirty: HashMap<K, Option<i64>>,
    /// Keys waiting out a retry after a failure, with the revision they still owe.
    retrying: HashMap<K, Option<i64>>,
    /// Keys waiting for a time, by due time (with a sequence number for equal times).
    delayed: BTreeMap<(Instant, u64), K>,
    /// When each delayed key is due (the earliest wins).
    due: HashMap<K, (Instant, u64)>,
    seq: u64,
    failures: HashMap<K, u32>,
    /// The highest store revision that queued a key.
    seen_revision: i64,
    closed: bool,
}

impl<K: Clone + Eq + Hash> State<K> {
    fn push(&mut self, key: K, since: Option<i64>) {
        if self.active.contains_key(&key) {
            let d = self.dirty.entry(key).or_insert(since);
            *d = lowest(*d, since);
        } else if let Some(q) = self.queued.get_mut(&key) {
            *q = lowest(*q, since);
        } else {
            self.queued.insert(key.clone(), since);
            self.ready.push_back(key);
        }
    }

    fn watermark(&self) -> i64 {
        let pending = self
            .queued
            .values()
            .chain(self.active.values())
            .chain(self.dirty.values())
            .chain(self.retrying.values())
            .filter_map(|s| *s)
            .min();
        match pending {
            Some(r) => r - 1,
            None => self.seen_revision,
        }
    }

    /// Moves delayed keys that are due into the ready queue; returns the next due time.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some((&(at, seq), _)) = self.delayed.first_key_value() {
            if at > now {
                return Some(at);
            }
            if let Some(key) = self.delayed.remove(&(at, seq)) {
                self.due.remove(&key);
                let since = self.retrying.remove(&key).flatten();
                self.push(key, since);
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
                queued: HashMap::new(),
                active: HashMap::new(),
                dirty: HashMap::new(),
                retrying: HashMap::new(),
                delayed: BTreeMap::new(),
                due: HashMap::new(),
                seq: 0,
                failures: HashMap::new(),
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

    /// Queues `key` (once, however often it is added before a worker takes it), for a cause
    /// outside the store (it does not hold the watermark back).
    pub fn add(&self, key: K) {
        self.lock().push(key, None);
        self.wake.notify_waiters();
    }

    /// Queues `key` for a change the store committed at `revision`.
    pub fn add_at(&self, key: K, revision: i64) {
        {
            let mut st = self.lock();
            st.seen_revision = st.seen_revision.max(revision);
            st.push(key, Some(revision));
        }
        self.wake.notify_waiters();
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
                    let since = st.queued.remove(&key).flatten();
                    st.active.insert(key.clone(), since);
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
    /// meanwhile. Returns whether no key is ready now (a batch has drained).
    pub fn done(&self, key: &K) -> bool {
        self.finish(key, None)
    }

    /// `key` failed: it comes back after the backoff for its consecutive failures, still
    /// owing its change (the watermark waits for it). Returns that delay.
    pub fn retry(&self, key: &K) -> Duration {
        let delay = {
            let mut st = self.lock();
            let n = st.failures.entry(key.clone()).or_default();
            *n = n.saturating_add(1);
            let delay = self.backoff.delay(*n);
            let since = st.active.remove(key).flatten();
            let dirty = st.dirty.remove(key).flatten();
            st.retrying.insert(key.clone(), lowest(since, dirty));
            delay
        };
        self.add_after(key.clone(), delay);
        delay
    }

    /// `key` was reconciled and wants to be looked at again after `delay`. Returns whether
    /// no key is ready now.
    pub fn requeue_after(&self, key: &K, delay: Duration) -> bool {
        self.finish(key, Some(delay))
    }

    fn finish(&self, key: &K, again: Option<Duration>) -> bool {
        let drained = {
            let mut st = self.lock();
            st.active.remove(key);
            st.failures.remove(key);
            if let Some(since) = st.dirty.remove(key) {
                st.push(key.clone(), since);
            }
            st.ready.is_empty()
        };
        if let Some(delay) = again {
            self.add_after(key.clone(), delay);
        }
        self.wake.notify_waiters();
        drained
    }

    /// The store revision up to which every change that queued a key has been reconciled.
    pub fn watermark(&self) -> i64 {
        self.lock().watermark()
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

    /// Whether nothing is queued, delayed or being reconciled.
    pub fn is_empty(&self) -> bool {
        let st = self.lock();
        st.ready.is_empty() && st.active.is_empty() && st.delayed.is_empty()
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

    /// The watermark stays below the oldest change not yet handled, whatever later
    /// changes keep the queue busy; a key waiting for a retry holds it back, a later look
    /// does not.
    #[tokio::test(start_paused = true)]
    async fn the_watermark_follows_the_oldest_unhandled_change() {
        let q = queue();
        q.add_at("a", 5);
        q.add_at("b", 7);
        assert_eq!(q.watermark(), 4);
        let a = q.next().await.expect("a");
        q.add_at("c", 9);
        assert!(!q.done(&a), "b and c are still ready");
        assert_eq!(q.watermark(), 6, "a is handled, b is not");
        let b = q.next().await.expect("b");
        q.retry(&b);
        let c = q.next().await.expect("c");
        assert!(q.done(&c));
        assert_eq!(q.watermark(), 6, "b failed and waits for a retry");
        let b = q.next().await.expect("b again");
        q.add_at("b", 11);
        q.done(&b);
        assert_eq!(q.watermark(), 10, "b changed while it ran: owes 11");
        let b = q.next().await.expect("b once more");
        q.requeue_after(&b, Duration::from_secs(30));
        assert_eq!(q.watermark(), 11, "a later look does not hold it back");
        q.add("external");
        assert_eq!(
            q.watermark(),
            11,
            "a cause outside the store does not either"
        );
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
