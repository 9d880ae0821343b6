//! What the router tells the daemon about each request once it has ended: one
//! [`RequestRecord`], for request logs, traces and the history. The router decides nothing
//! from it; a [`RequestObserver`] set with [`crate::Router::set_observer`] gets every record.

use std::time::{Duration, SystemTime};

use crate::metrics::Throttle;

/// One request, from its arrival to its response's end (or skiff's own answer).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: SystemTime,
    /// Arrival to the response's last byte (or skiff's answer).
    pub duration: Duration,
    /// The `X-Request-Id` it was answered with.
    pub request_id: String,
    /// The W3C trace id forwarded to the instance (32 hex digits).
    pub trace_id: String,
    /// The span id in the `traceparent` the client sent, when it sent a valid one.
    pub parent_span_id: Option<String>,
    /// When the observer traces ([`RequestObserver::head_sample`]): the id of skiff's server
    /// span for the request, and of its span for the call to the instance (the parent in
    /// the `traceparent` the instance got).
    pub spans: Option<SpanIds>,
    /// The method.
    pub method: String,
    /// The host it was routed by.
    pub host: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Whether the response ended whole (false: cut short by the instance or the client).
    pub complete: bool,
    /// The revision's namespace.
    pub namespace: String,
    /// Its Service.
    pub service: String,
    /// The revision.
    pub revision: String,
    /// The instance that answered, if one did.
    pub instance: Option<String>,
    /// How long it waited for an instance to start, if it did (a cold start).
    pub cold_start: Option<Duration>,
    /// How long it waited for a slot at all.
    pub waited: Duration,
    /// Why the router refused it, if it did.
    pub throttled: Option<Throttle>,
}

/// The span ids the router gave a traced request, and whether the `traceparent` it sent
/// on said "sampled".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// skiff's server span.
    pub server: u64,
    /// skiff's span for the call to the instance.
    pub upstream: u64,
    /// The sampled flag sent to the instance: the head decision.
    pub sampled: bool,
}

/// Gets every [`RequestRecord`]. Called on the router's threads at the end of each request:
/// it must not block (hand the record to a channel).
pub trait RequestObserver: Send + Sync + 'static {
    /// A request ended.
    fn finished(&self, record: RequestRecord);

    /// Whether a request of trace `trace_id` is sampled at its start (`parent_sampled`: the
    /// flag of the client's `traceparent`, if it sent one); `None` when the observer does
    /// not trace. When it traces, the router gives the request span ids and sends the
    /// instance a `traceparent` whose parent is skiff's span for the call.
    fn head_sample(&self, trace_id: u128, parent_sampled: Option<bool>) -> Option<bool> {
        let _ = (trace_id, parent_sampled);
        None
    }
}
