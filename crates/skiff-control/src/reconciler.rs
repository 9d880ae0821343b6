//! The one shape of every controller: a [`Reconciler`] over keys, fed by store watches and
//! by its own event sources, run by [`Controllers`].
//!
//! # Design
//! As in Kubernetes' controller-runtime: a reconciler names the store prefixes it watches and
//! maps each changed store key to the work keys it concerns ([`Reconciler::keys_for`]); the
//! runner puts those on the reconciler's [`WorkQueue`] and calls
//! [`Reconciler::reconcile`] with one key at a time (a few workers, never two on one key). A
//! reconcile reads the state it needs, decides with a pure function, and acts; it is
//! level-based, so reconciling a key twice, or after a missed event, is harmless. An error
//! retries the key with backoff; [`Next::RequeueAfter`] looks again later. When a queue
//! drains, [`Reconciler::settled`] runs (batch work such as publishing a route table) and
//! the reconciler's watermark ([`Handle::observed`]) moves to the store revision it has
//! caught up with. At start, and whenever its watch cannot deliver every change (it lagged
//! and the store compacted), the runner queues [`Reconciler::all_keys`].

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use skiff_store::{Store, WatchError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::queue::{Backoff, WorkQueue};

/// A reconcile failed; the key is retried with backoff.
pub type ReconcileError = Box<dyn std::error::Error + Send + Sync>;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing until the key changes again.
    Done,
    /// Look at the key again after this long (polling something that sends no event).
    RequeueAfter(Duration),
}

/// A controller over one kind of key.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The work key (e.g. a revision's namespace and name).
    type Key: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static;

    /// The name in logs.
    fn name(&self) -> &'static str;

    /// Store key prefixes whose changes may concern it.
    fn watches(&self) -> &'static [&'static str];

    /// The work keys a change to `store_key` concerns (may read the store).
    async fn keys_for(&self, store_key: &str) -> Vec<Self::Key>;

    /// Every key there is to look at: queued at start and after a lost watch.
    async fn all_keys(&self) -> Result<Vec<Self::Key>, ReconcileError>;

    /// Makes the world match the stored state for `key`.
    async fn reconcile(&self, key: &Self::Key) -> Result<Next, ReconcileError>;

    /// Runs when the queue has drained, before the watermark moves.
    async fn settled(&self) {}

    /// How many keys may be reconciled at once.
    fn workers(&self) -> usize {
        1
    }

    /// How failures back off.
    fn backoff(&self) -> Backoff {
        Backoff::default()
    }
}

/// A registered reconciler's queue and watermark, for the sources that feed it outside the
/// store (runtime events, autoscaler decisions) and for waiting on it.
pub struct Handle<K> {
    queue: WorkQueue<K>,
    observed: watch::Receiver<i64>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Handle {
            queue: self.queue.clone(),
            observed: self.observed.clone(),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Handle<K> {
    /// Queues `key`.
    pub fn enqueue(&self, key: K) {
        self.queue.add(key);
    }

    /// Waits until every store change up to `revision` has been reconciled (and settled), or
    /// `deadline` passes; returns whether it was.
    pub async fn wait_observed(&self, revision: i64, deadline: Duration) -> bool {
        let mut rx = self.observed.clone();
        tokio::time::timeout(deadline, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

type Task = futures::future::BoxFuture<'static, ()>;

/// Starts one registered reconciler's tasks.
type Starter = Box<dyn FnOnce(Arc<dyn Store>, CancellationToken, &TaskTracker) + Send>;

/// Runs reconcilers over one store.
pub struct Controllers {
    store: Arc<dyn Store>,
    starters: Vec<Starter>,
}

impl Controllers {
    /// No reconcilers yet.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Controllers {
            store,
            starters: Vec::new(),
        }
    }

    /// Registers `reconciler`; it starts with [`run`](Self::run).
    pub fn add<R: Reconciler>(&mut self, reconciler: Arc<R>) -> Handle<R::Key> {
        let queue = WorkQueue::new(reconciler.backoff());
        // -1: nothing observed yet (the first settled pass moves it to 0 or beyond).
        let (tx, rx) = watch::channel(-1);
        let handle = Handle {
            queue: queue.clone(),
            observed: rx,
        };
        self.starters
            .push(Box::new(move |store, shutdown, tracker| {
                start(reconciler, queue, Arc::new(tx), store, shutdown, tracker);
            }));
        handle
    }

    /// Starts every reconciler; returns a task that ends, after `shutdown`, when every
    /// reconcile in progress has finished.
    pub fn run(self, shutdown: CancellationToken) -> Task {
        let tracker = TaskTracker::new();
        for starter in self.starters {
            starter(self.store.clone(), shutdown.clone(), &tracker);
        }
        tracker.close();
        Box::pin(async move { tracker.wait().await })
    }
}

fn start<R: Reconciler>(
    r: Arc<R>,
    queue: WorkQueue<R::Key>,
    observed: Arc<watch::Sender<i64>>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let span = info_span!("reconciler", name = r.name());
    tracker.spawn(feed(r.clone(), queue.clone(), store, shutdown.clone()).instrument(span.clone()));
    let settle = Arc::new(tokio::sync::Mutex::new(()));
    for _ in 0..r.workers().max(1) {
        tracker.spawn(
            work(r.clone(), queue.clone(), observed.clone(), settle.clone())
                .instrument(span.clone()),
        );
    }
    tracker.spawn(async move {
        shutdown.cancelled().await;
        queue.shut_down();
    });
}

async fn queue_all<R: Reconciler>(r: &R, queue: &WorkQueue<R::Key>) {
    match r.all_keys().await {
        Ok(keys) => {
            debug!(keys = keys.len(), "queueing every key");
            for k in keys {
                queue.add(k);
            }
        }
        Err(e) => warn!(error = %skiff_telemetry::ErrorChain(&*e), "listing keys"),
    }
}

/// Turns store changes into keys on the queue: every key at first, then each change; when
/// the watch cannot deliver every change (it lagged past the store's history), every key
/// again.
async fn feed<R: Reconciler>(
    r: Arc<R>,
    queue: WorkQueue<R::Key>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    loop {
        // The revision is read before the listing, so no change falls between them (one
        // may come twice, which a level-based reconcile does not mind).
        let from = match store.revision().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %skiff_telemetry::ErrorChain(&e), "reading the store revision");
                return;
            }
        };
        queue_all(&*r, &queue).await;
        let mut watch = store.watch("", from);
        loop {
            let ev = tokio::select! {
                ev = watch.next() => ev,
                () = shutdown.cancelled() => return,
            };
            match ev {
                Ok(ev) => {
                    if r.watches().iter().any(|p| ev.key.starts_with(p)) {
                        for k in r.keys_for(&ev.key).await {
                            queue.add_at(k, ev.revision);
                        }
                    }
                }
                Err(WatchError::Compacted { requested, oldest }) => {
                    warn!(
                        requested,
                        oldest, "the store watch fell behind; looking at every key again"
                    );
                    break;
                }
                Err(WatchError::Closed) => return,
            }
        }
    }
}

fn publish(observed: &watch::Sender<i64>, revision: i64) {
    observed.send_if_modified(|o| {
        let moved = revision > *o;
        *o = (*o).max(revision);
        moved
    });
}

/// Takes keys off the queue and reconciles them until the queue shuts down. When a batch
/// drains, the reconciler's settle step runs (one at a time) and the watermark moves to what
/// was reconciled before it began.
async fn work<R: Reconciler>(
    r: Arc<R>,
    queue: WorkQueue<R::Key>,
    observed: Arc<watch::Sender<i64>>,
    settle: Arc<tokio::sync::Mutex<()>>,
) {
    while let Some(key) = queue.next().await {
        let drained = match r.reconcile(&key).await {
            Ok(Next::Done) => queue.done(&key),
            Ok(Next::RequeueAfter(d)) => queue.requeue_after(&key, d),
            Err(e) => {
                let delay = queue.retry(&key);
                warn!(
                    key = ?key,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %skiff_telemetry::ErrorChain(&*e),
                    "reconcile failed"
                );
                false
            }
        };
        if drained {
            let _one = settle.lock().await;
            let w = queue.watermark();
            r.settled().await;
            publish(&observed, w);
        }
    }
}
