//! Client connections of a listener, bounded: a cap on how many are open, and deadlines for
//! the ones that send nothing.
//!
//! # Design
//! Every accepted connection is [`Conns::admit`]ted before it is served. At the cap, the
//! connection that has been idle longest (no request in flight) is closed to make room; if
//! every connection is busy, the new one is refused (closed at once). A connection is served
//! until [`Conns::expired`] says to close it, when it has no request in flight for too long:
//! `header_read_timeout` counted from accept until its first request head is complete (a
//! client that connects and sends nothing, or only part of a head, is closed then — hyper's
//! own header timeout starts only with the first byte, after HTTP version detection), and
//! `idle_timeout` after that (keep-alive between requests, an HTTP/2 connection without
//! streams). A request marks its connection busy for as long as its response body lives
//! ([`ConnHandle::busy`]).
//!
//! Open connections are counted in one map shared by every thread, touched only at accept
//! and close; a request only changes two atomics of its own connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a new connection may take to send its first complete request head.
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open with no request in flight, after its first.
    pub idle_timeout: Duration,
}

/// Why a connection was closed by the listener rather than by its client.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Reason,
}

#[derive(
    Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
enum Reason {
    /// No complete request head within `header_read_timeout` of accept.
    header_timeout,
    /// No request in flight for `idle_timeout`.
    idle_timeout,
    /// Closed to make room for a new connection at the cap.
    evicted,
    /// Refused at the cap: every open connection was busy.
    refused,
}

/// A listener's connection metrics: `<prefix>_connections` (open now) and
/// `<prefix>_connections_closed_total{reason}`.
#[derive(Debug, Clone, Default)]
pub struct ConnMetrics {
    open: Gauge,
    closed: Family<ReasonLabels, Counter>,
}

impl ConnMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = ConnMetrics::default();
        registry.register("connections", "Client connections open now", m.open.clone());
        registry.register(
            "connections_closed",
            "Client connections closed by skiff: no request head in time (header_timeout), idle too long (idle_timeout), closed to make room at the connection cap (evicted), refused at the cap (refused)",
            m.closed.clone(),
        );
        m
    }

    fn closed(&self, reason: Reason) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// What is known of one open connection.
#[derive(Debug)]
struct ConnState {
    /// Requests whose response is not complete.
    in_flight: AtomicUsize,
    /// Requests started on it.
    requests: AtomicU64,
    /// When it last became idle (accept, or the end of its last response), in nanoseconds
    /// since the tracker's epoch.
    idle_since: AtomicU64,
    /// Cancelled to close it.
    close: CancellationToken,
}

#[derive(Debug)]
struct Inner {
    limits: ConnLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    metrics: ConnMetrics,
}

impl Inner {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The open connections of one listener.
#[derive(Debug, Clone)]
pub struct Conns(Arc<Inner>);

/// What became of a connection offered to [`Conns::admit`].
#[derive(Debug)]
pub enum Admitted {
    /// Serve it.
    Yes(ConnHandle),
    /// At the cap with every connection busy: close it.
    Refused,
}

impl Conns {
    /// A tracker with `limits`.
    pub fn new(limits: ConnLimits, metrics: ConnMetrics) -> Self {
        Conns(Arc::new(Inner {
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// The limits.
    pub fn limits(&self) -> ConnLimits {
        self.0.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes a new connection in: at the cap, the longest-idle one is closed to make room,
    /// or, when every one is busy, the new one is refused.
    pub fn admit(&self) -> Admitted {
        let inner = &self.0;
        let now = inner.now();
        let mut open = inner.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= inner.limits.max_connections.max(1) {
            let victim = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match victim.and_then(|id| open.remove(&id)) {
                Some(c) => {
                    c.close.cancel();
                    inner.metrics.open.dec();
                    inner.metrics.closed(Reason::evicted);
                }
                None => {
                    inner.metrics.closed(Reason::refused);
                    return Admitted::Refused;
                }
            }
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(now),
            close: CancellationToken::new(),
        });
        open.insert(id, state.clone());
        inner.metrics.open.inc();
        Admitted::Yes(ConnHandle(Arc::new(Handle {
            id,
            state,
            conns: self.clone(),
        })))
    }

    /// Completes when the connection must be closed: it has had no request in flight for
    /// too long, or was closed to make room. Serve the connection until either it ends or
    /// this completes (then drop it).
    pub async fn expired(&self, handle: &ConnHandle) {
        let inner = &self.0;
        let state = &handle.0.state;
        loop {
            let (limit, reason) = if state.requests.load(Ordering::Relaxed) == 0 {
                (inner.limits.header_read_timeout, Reason::header_timeout)
            } else {
                (inner.limits.idle_timeout, Reason::idle_timeout)
            };
            let busy = state.in_flight.load(Ordering::Acquire) > 0;
            let since = state.idle_since.load(Ordering::Relaxed);
            let deadline = if busy {
                Instant::now() + limit
            } else {
                inner.epoch + Duration::from_nanos(since) + limit
            };
            tokio::select! {
                () = state.close.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    let still_idle = !busy
                        && state.in_flight.load(Ordering::Acquire) == 0
                        && state.idle_since.load(Ordering::Relaxed) == since;
                    if still_idle {
                        inner.metrics.closed(reason);
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Handle {
    id: u64,
    state: Arc<ConnState>,
    conns: Conns,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let inner = &self.conns.0;
        let removed = inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if removed.is_some() {
            inner.metrics.open.dec();
        }
    }
}

/// One open connection; it counts as open until the last clone is dropped (an upgraded
/// connection's tunnel holds one).
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<Handle>);

impl ConnHandle {
    /// Marks a request in flight until the guard is dropped.
    pub fn busy(&self) -> Busy {
        let s = &self.0.state;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct Busy(ConnHandle);

impl Drop for Busy {
    fn drop(&mut self) {
        let h = &self.0.0;
        h.state.idle_since.store(h.conns.0.now(), Ordering::Relaxed);
        h.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it ends.
#[derive(Debug)]
pub struct BusyBody<B> {
    inner: B,
    busy: Option<Busy>,
}

impl<B> BusyBody<B> {
    /// `inner`, holding `busy` until it ends or is dropped.
    pub fn new(inner: B, busy: Busy) -> Self {
        BusyBody {
            inner,
            busy: Some(busy),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The default cap on a listener's connections for an open-file limit of `nofile`: a share
/// that leaves room for the connection into an instance each one may hold, the API, the
/// store, images and instances.
pub fn default_max_connections(nofile: u64, share_percent: u64) -> usize {
    usize::try_from(nofile.min(1 << 24) * share_percent / 100).unwrap_or(1024)
}

/// Takes connections from a listener and admits them into [`Conns`], for the ingress and the
/// API alike: an accept error (out of file descriptors, say) pauses briefly rather than
/// spinning, and errors and refusals at the cap are logged at most once per 10 s.
pub struct Acceptor {
    conns: Conns,
    /// Names the listener in the log.
    what: &'static str,
    errors: LogEvery,
    refusals: LogEvery,
}

impl Acceptor {
    /// Admits into `conns`; `what` names the listener in the log.
    pub fn new(conns: Conns, what: &'static str) -> Self {
        Acceptor {
            conns,
            what,
            errors: LogEvery::new(Duration::from_secs(10)),
            refusals: LogEvery::new(Duration::from_secs(10)),
        }
    }

    /// The next admitted connection, or `None` once `shutdown` is cancelled.
    pub async fn next(
        &mut self,
        listener: &tokio::net::TcpListener,
        shutdown: &CancellationToken,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, ConnHandle)> {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        if let Some(n) = self.errors.tick() {
                            tracing::warn!(listener = self.what, error = %e, times = n, "accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return None,
            };
            match self.conns.admit() {
                Admitted::Yes(handle) => return Some((stream, peer, handle)),
                Admitted::Refused => {
                    if let Some(n) = self.refusals.tick() {
                        tracing::warn!(
                            listener = self.what,
                            max_connections = self.conns.limits().max_connections,
                            refused = n,
                            "at the connection cap with every connection busy; refusing new ones"
                        );
                    }
                }
            }
        }
    }
}

/// Counts events and lets one through to the log per period (per-connection warnings are
/// rate-limited).
struct LogEvery {
    period: Duration,
    last: Option<tokio::time::Instant>,
    count: u64,
}

impl LogEvery {
    /// One event logged per `period`.
    fn new(period: Duration) -> Self {
        LogEvery {
            period,
            last: None,
            count: 0,
        }
    }

    /// `Some(events since the last one logged)` when this one should be logged.
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.period)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(max: usize) -> Conns {
        Conns::new(
            ConnLimits {
                max_connections: max,
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(10),
            },
            ConnMetrics::default(),
        )
    }

    fn yes(a: Admitted) -> ConnHandle {
        match a {
            Admitted::Yes(h) => h,
            Admitted::Refused => panic!("refused"),
        }
    }

    /// At the cap the longest-idle connection is closed for the new one; with every
    /// connection busy the new one is refused; a closed connection frees its place.
    #[tokio::test(start_paused = true)]
    async fn cap_evicts_the_longest_idle_then_refuses() {
        let c = conns(2);
        let a = yes(c.admit());
        tokio::time::advance(Duration::from_millis(10)).await;
        let b = yes(c.admit());
        assert_eq!(c.open(), 2);
        let third = yes(c.admit());
        assert!(a.0.state.close.is_cancelled(), "the oldest idle one goes");
        assert!(!b.0.state.close.is_cancelled());
        assert_eq!(c.open(), 2);
        let _busy_b = b.busy();
        let _busy_3 = third.busy();
        assert!(matches!(c.admit(), Admitted::Refused));
        drop(a);
        assert_eq!(c.open(), 2, "an evicted handle was already uncounted");
        drop(_busy_3);
        drop(third);
        assert_eq!(c.open(), 1);
        let _d = yes(c.admit());
        assert_eq!(c.open(), 2);
        let m = &c.0.metrics;
        assert_eq!(m.open.get(), 2);
        let closed = |r| m.closed.get_or_create(&ReasonLabels { reason: r }).get();
        assert_eq!((closed(Reason::evicted), closed(Reason::refused)), (1, 1));
    }

    /// A connection that sends nothing is closed `header_read_timeout` after accept; one
    /// that has served a request gets `idle_timeout` from the end of its last response, and
    /// is never closed while a request is in flight.
    #[tokio::test(start_paused = true)]
    async fn deadlines_count_from_accept_and_from_the_last_response() {
        let c = conns(10);
        let silent = yes(c.admit());
        let t0 = Instant::now();
        c.expired(&silent).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));

        let h = yes(c.admit());
        let t1 = Instant::now();
        let watched = {
            let (c, h) = (c.clone(), h.clone());
            tokio::spawn(async move {
                c.expired(&h).await;
                t1.elapsed()
            })
        };
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = h.busy();
        // Busy for a minute: never closed meanwhile.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!watched.is_finished());
        drop(busy);
        let elapsed = watched.await.expect("task");
        assert_eq!(elapsed, Duration::from_secs(71));
        let m = &c.0.metrics;
        let closed = |r| m.closed.get_or_create(&ReasonLabels { reason: r }).get();
        assert_eq!(
            (closed(Reason::header_timeout), closed(Reason::idle_timeout)),
            (1, 1)
        );
    }

    /// A connection closed to make room expires at once.
    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_expires_at_once() {
        let c = conns(1);
        let old = yes(c.admit());
        let _new = yes(c.admit());
        let t0 = Instant::now();
        c.expired(&old).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[test]
    fn default_cap_is_a_share_of_the_limit() {
        assert_eq!(default_max_connections(20_000, 40), 8_000);
        assert_eq!(default_max_connections(u64::MAX, 1), 167_772);
    }
}
