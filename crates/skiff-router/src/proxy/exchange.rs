//! One request's account, kept from routing to the response's end: its metrics are counted
//! and its [`RequestRecord`] handed to the observer once, when it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::{Request, StatusCode};
use tokio::time::Instant;

use crate::Router;
use crate::metrics::Throttle;
use crate::pool::{Endpoint, Pool};
use crate::record::{RequestObserver, RequestRecord};

/// What the observer needs beyond the metrics; made only when one is set.
struct Seen {
    at: SystemTime,
    request_id: HeaderValue,
    parent_span_id: Option<String>,
    method: String,
    host: String,
    path: String,
    observer: Arc<dyn RequestObserver>,
}

/// A request routed to a revision, until it ends.
pub(super) struct Exchange {
    pub(super) pool: Arc<Pool>,
    started: Instant,
    trace_id: Option<String>,
    seen: Option<Box<Seen>>,
    /// The instance it was sent to last.
    pub(super) instance: Option<Arc<Endpoint>>,
    /// How long it waited through a cold start.
    pub(super) cold_start: Option<Duration>,
    /// How long it waited for a slot.
    pub(super) waited: Duration,
    /// Response body bytes sent.
    pub(super) bytes: u64,
}

/// `(trace id, parent span id)` of a `traceparent` value already checked as valid.
fn trace_ids(h: Option<&HeaderValue>) -> (Option<String>, Option<String>) {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return (None, None);
    };
    let mut parts = v.split('-').skip(1);
    (
        parts.next().map(str::to_owned),
        parts.next().map(str::to_owned),
    )
}

impl Exchange {
    /// Starts the account of `req` (its forwarding headers already set), routed by `host`
    /// to `pool`.
    pub(super) fn new<B>(
        router: &Router,
        pool: Arc<Pool>,
        started: Instant,
        request_id: &HeaderValue,
        req: &Request<B>,
        host: &str,
        client_trace: bool,
    ) -> Self {
        let (trace_id, span) = trace_ids(req.headers().get("traceparent"));
        let seen = router.observer.get().map(|observer| {
            Box::new(Seen {
                at: SystemTime::now() - started.elapsed(),
                request_id: request_id.clone(),
                parent_span_id: span.filter(|_| client_trace),
                method: req.method().as_str().to_owned(),
                host: host.to_owned(),
                path: req.uri().path().to_owned(),
                observer: observer.clone(),
            })
        });
        Exchange {
            pool,
            started,
            trace_id,
            seen,
            instance: None,
            cold_start: None,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// The request ended with `status` (`complete`: its response ended whole); `throttled`
    /// when the router refused it itself.
    pub(super) fn finish(self, status: StatusCode, complete: bool, throttled: Option<Throttle>) {
        let duration = self.started.elapsed();
        let h = &self.pool.handles;
        if let Some(why) = throttled {
            h.throttled(why);
        }
        h.answered(status, duration.as_secs_f64(), self.trace_id.clone());
        let Some(seen) = self.seen else { return };
        let spec = self.pool.spec();
        seen.observer.finished(RequestRecord {
            at: seen.at,
            duration,
            request_id: seen.request_id.to_str().unwrap_or("-").to_owned(),
            trace_id: self.trace_id.unwrap_or_default(),
            parent_span_id: seen.parent_span_id,
            method: seen.method,
            host: seen.host,
            path: seen.path,
            status: status.as_u16(),
            bytes: self.bytes,
            complete,
            namespace: spec.namespace.clone(),
            service: spec.service.clone(),
            revision: spec.revision.clone(),
            instance: self.instance.map(|e| e.id.clone()),
            cold_start: self.cold_start,
            waited: self.waited,
            throttled,
        });
    }
}
