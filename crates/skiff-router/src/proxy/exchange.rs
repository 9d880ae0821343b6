//! One request's account, kept from routing to the response's end: its metrics are counted
//! and its [`RequestRecord`] handed to the observer once, when it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use tokio::time::Instant;

use crate::Router;
use crate::metrics::Throttle;
use crate::pool::{Endpoint, Pool};
use crate::record::{RequestObserver, RequestRecord, SpanIds};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What the observer needs beyond the metrics; made only when one is set.
struct Seen {
    at: SystemTime,
    request_id: HeaderValue,
    parent_span_id: Option<String>,
    spans: Option<SpanIds>,
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

/// The parts of a `traceparent` value already checked as valid.
struct TraceParent<'a> {
    trace_id: &'a str,
    span_id: &'a str,
    sampled: bool,
}

fn trace_parent(h: Option<&HeaderValue>) -> Option<TraceParent<'_>> {
    let v = h.and_then(|v| v.to_str().ok())?;
    let mut parts = v.split('-').skip(1);
    let (trace_id, span_id) = (parts.next()?, parts.next()?);
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    Some(TraceParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// When `observer` traces: span ids for the request, and the `traceparent` the instance
/// gets (skiff's span for the call as its parent, the head decision as its flag).
fn trace_spans(
    observer: &dyn RequestObserver,
    tp: &TraceParent<'_>,
    client_trace: bool,
) -> Option<(SpanIds, HeaderValue)> {
    let trace = u128::from_str_radix(tp.trace_id, 16).ok()?;
    let sampled = observer.head_sample(trace, client_trace.then_some(tp.sampled))?;
    let mut rng = rand::rng();
    let ids = SpanIds {
        server: rand::Rng::random::<u64>(&mut rng) | 1,
        upstream: rand::Rng::random::<u64>(&mut rng) | 1,
        sampled,
    };
    let value = format!(
        "00-{}-{:016x}-{:02x}",
        tp.trace_id,
        ids.upstream,
        u8::from(sampled)
    );
    Some((ids, HeaderValue::from_str(&value).ok()?))
}

impl Exchange {
    /// Starts the account of `req` (its forwarding headers already set), routed by `host`
    /// to `pool`.
    pub(super) fn new<B>(
        router: &Router,
        pool: Arc<Pool>,
        started: Instant,
        request_id: &HeaderValue,
        req: &mut Request<B>,
        host: &str,
        client_trace: bool,
    ) -> Self {
        let tp = trace_parent(req.headers().get(TRACEPARENT));
        let trace_id = tp.as_ref().map(|t| t.trace_id.to_owned());
        let observer = router.observer.get();
        let traced = observer
            .zip(tp.as_ref())
            .and_then(|(o, tp)| trace_spans(o.as_ref(), tp, client_trace));
        let parent_span_id = tp.filter(|_| client_trace).map(|t| t.span_id.to_owned());
        let (spans, traceparent) = traced.unzip();
        if let Some(v) = traceparent {
            req.headers_mut().insert(TRACEPARENT, v);
        }
        let seen = observer.map(|observer| {
            Box::new(Seen {
                at: SystemTime::now() - started.elapsed(),
                request_id: request_id.clone(),
                parent_span_id,
                spans,
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
            spans: seen.spans,
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
