//! A kept request's spans, made after the fact from its [`RequestRecord`]: the server span
//! (from arrival to the response's last byte; child of the client's span when it sent a
//! `traceparent`), the activator's wait for a slot, the cold start it waited through with
//! its phases, and the call to the instance, whose id is the parent the instance got.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use skiff_router::record::RequestRecord;

use crate::sampler::Keep;

/// How an instance's start was spent: the daemon's decision, then each phase in turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Startup {
    /// When the daemon decided to start it.
    pub scheduled: SystemTime,
    /// Decision to images resolved and the plan made.
    pub image: Duration,
    /// Images ready to the container's process started.
    pub container: Duration,
    /// Container started to first readiness, once it was ready.
    pub ready: Option<Duration>,
}

/// Only the wait of a request longer than this gets its own span (shorter ones are the
/// activator finding a free slot at once).
const WAIT_SPAN_MIN: Duration = Duration::from_millis(1);

struct Builder<'a> {
    trace_id: TraceId,
    scope: &'a InstrumentationScope,
    out: Vec<SpanData>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        name: &'static str,
        kind: SpanKind,
        id: u64,
        parent: (u64, bool),
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        self.out.push(SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                SpanId::from_bytes(id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(parent.0.to_be_bytes()),
            parent_span_is_remote: parent.1,
            span_kind: kind,
            name: name.into(),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }
}

/// The spans of `r`, kept for `why`; `startup`: the phases of the instance it waited for,
/// when known; `new_id`: fresh span ids. None when the request was not traced or its ids
/// do not parse.
pub fn spans(
    r: &RequestRecord,
    why: Keep,
    startup: Option<&Startup>,
    scope: &InstrumentationScope,
    new_id: &mut dyn FnMut() -> u64,
) -> Option<Vec<SpanData>> {
    let ids = r.spans?;
    let trace = u128::from_str_radix(&r.trace_id, 16).ok()?;
    let client = match &r.parent_span_id {
        Some(p) => Some(u64::from_str_radix(p, 16).ok()?),
        None => None,
    };
    let mut b = Builder {
        trace_id: TraceId::from_bytes(trace.to_be_bytes()),
        scope,
        out: Vec::with_capacity(7),
    };
    let (at, end) = (r.at, r.at + r.duration);
    let sent = at + r.waited;
    let failed = r.status >= 500 || r.throttled.is_some() || !r.complete;
    let mut attrs = vec![
        KeyValue::new("http.request.method", r.method.clone()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("server.address", r.host.clone()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("http.response.body.size", r.bytes as i64),
        KeyValue::new("skiff.request_id", r.request_id.clone()),
        KeyValue::new("skiff.namespace", r.namespace.clone()),
        KeyValue::new("skiff.service", r.service.clone()),
        KeyValue::new("skiff.revision", r.revision.clone()),
        KeyValue::new("faas.coldstart", r.cold_start.is_some()),
        KeyValue::new("skiff.kept", why.as_str()),
    ];
    if let Some(i) = &r.instance {
        attrs.push(KeyValue::new("skiff.instance", i.clone()));
    }
    if let Some(t) = r.throttled {
        attrs.push(KeyValue::new("skiff.throttled", t.as_str()));
    }
    let status = if failed {
        let why = match (r.throttled, r.complete) {
            (Some(t), _) => format!("refused by skiff: {}", t.as_str()),
            (None, false) => "the response was cut short".to_owned(),
            (None, true) => format!("status {}", r.status),
        };
        attrs.push(KeyValue::new("error.type", error_type(r)));
        Status::error(why)
    } else {
        Status::Unset
    };
    let root = (client.unwrap_or(0), client.is_some());
    b.span(
        method_name(&r.method),
        SpanKind::Server,
        ids.server,
        root,
        (at, end),
        attrs,
        status,
    );
    if r.waited >= WAIT_SPAN_MIN || r.cold_start.is_some() || r.throttled.is_some() {
        let wait = new_id();
        let mut a = vec![KeyValue::new("skiff.revision", r.revision.clone())];
        if let Some(t) = r.throttled {
            a.push(KeyValue::new("skiff.throttled", t.as_str()));
        }
        let wait_end = if r.throttled.is_some() { end } else { sent };
        b.span(
            "activator wait",
            SpanKind::Internal,
            wait,
            (ids.server, false),
            (at, wait_end),
            a,
            Status::Unset,
        );
        if let Some(waited) = r.cold_start {
            cold_start(&mut b, r, wait, (at, waited), startup, new_id);
        }
    }
    if let Some(instance) = &r.instance {
        let a = vec![
            KeyValue::new("http.request.method", r.method.clone()),
            KeyValue::new("server.address", instance.clone()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
        ];
        let status = if r.status >= 500 || !r.complete {
            Status::error(format!("status {}", r.status))
        } else {
            Status::Unset
        };
        b.span(
            "proxy",
            SpanKind::Client,
            ids.upstream,
            (ids.server, false),
            (sent, end),
            a,
            status,
        );
    }
    Some(b.out)
}

/// The cold start under the activator's wait: the instance's own phases when known, else
/// the time this request waited for it.
fn cold_start(
    b: &mut Builder<'_>,
    r: &RequestRecord,
    parent: u64,
    (at, waited): (SystemTime, Duration),
    startup: Option<&Startup>,
    new_id: &mut dyn FnMut() -> u64,
) {
    let id = new_id();
    let instance = || KeyValue::new("skiff.instance", r.instance.clone().unwrap_or_default());
    let Some(s) = startup.filter(|s| s.ready.is_some()) else {
        b.span(
            "cold start",
            SpanKind::Internal,
            id,
            (parent, false),
            (at, at + waited),
            vec![instance()],
            Status::Unset,
        );
        return;
    };
    let image_end = s.scheduled + s.image;
    let container_end = image_end + s.container;
    let ready_end = container_end + s.ready.unwrap_or_default();
    b.span(
        "cold start",
        SpanKind::Internal,
        id,
        (parent, false),
        (s.scheduled, ready_end),
        vec![instance()],
        Status::Unset,
    );
    for (name, start, end) in [
        ("image", s.scheduled, image_end),
        ("container start", image_end, container_end),
        ("readiness", container_end, ready_end),
    ] {
        b.span(
            name,
            SpanKind::Internal,
            new_id(),
            (id, false),
            (start, end),
            Vec::new(),
            Status::Unset,
        );
    }
}

/// The server span's name: the method, as OpenTelemetry's HTTP conventions name a span
/// without a route (unknown methods are `HTTP`).
fn method_name(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "HTTP",
    }
}

fn error_type(r: &RequestRecord) -> String {
    match (r.throttled, r.complete) {
        (Some(t), _) => t.as_str().to_owned(),
        (None, false) => "incomplete".to_owned(),
        (None, true) => r.status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    fn ids() -> impl FnMut() -> u64 {
        let mut n = 100;
        move || {
            n += 1;
            n
        }
    }

    fn by_name<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name} in {:?}", names(spans)))
    }

    fn names(spans: &[SpanData]) -> Vec<&str> {
        spans.iter().map(|s| s.name.as_ref()).collect()
    }

    /// A cold request: server → activator wait → cold start → its three phases, and the
    /// call to the instance under the server span with the id the instance got.
    #[test]
    fn a_cold_request_has_its_start_under_the_wait() {
        let mut r = record(200, false);
        r.cold_start = Some(Duration::from_millis(40));
        r.waited = Duration::from_millis(41);
        r.duration = Duration::from_millis(50);
        let startup = Startup {
            scheduled: r.at + Duration::from_millis(1),
            image: Duration::from_millis(2),
            container: Duration::from_millis(20),
            ready: Some(Duration::from_millis(15)),
        };
        let scope = InstrumentationScope::builder("skiff").build();
        let spans = spans(&r, Keep::ColdStart, Some(&startup), &scope, &mut ids()).expect("spans");
        assert_eq!(
            names(&spans),
            [
                "GET",
                "activator wait",
                "cold start",
                "image",
                "container start",
                "readiness",
                "proxy"
            ]
        );
        let ids = r.spans.expect("traced");
        let server = by_name(&spans, "GET");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(
            server.span_context.span_id(),
            SpanId::from_bytes(ids.server.to_be_bytes())
        );
        // No client traceparent: the server span is the root.
        assert_eq!(server.parent_span_id, SpanId::INVALID);
        let wait = by_name(&spans, "activator wait");
        assert_eq!(wait.parent_span_id, server.span_context.span_id());
        let cold = by_name(&spans, "cold start");
        assert_eq!(cold.parent_span_id, wait.span_context.span_id());
        assert_eq!(cold.start_time, startup.scheduled);
        assert_eq!(cold.end_time, startup.scheduled + Duration::from_millis(37));
        let ready = by_name(&spans, "readiness");
        assert_eq!(ready.parent_span_id, cold.span_context.span_id());
        assert_eq!(ready.end_time, cold.end_time);
        let proxy = by_name(&spans, "proxy");
        assert_eq!(proxy.span_kind, SpanKind::Client);
        assert_eq!(proxy.parent_span_id, server.span_context.span_id());
        assert_eq!(
            proxy.span_context.span_id(),
            SpanId::from_bytes(ids.upstream.to_be_bytes())
        );
        assert_eq!(proxy.start_time, r.at + r.waited);
        assert!(
            spans
                .iter()
                .all(|s| s.span_context.trace_id() == server.span_context.trace_id())
        );
    }

    /// The client's span is the server span's remote parent; a failure is an error status.
    #[test]
    fn a_failed_request_continues_the_clients_trace() {
        let mut r = record(502, false);
        r.parent_span_id = Some("00f067aa0ba902b7".into());
        let scope = InstrumentationScope::builder("skiff").build();
        let spans = spans(&r, Keep::Error, None, &scope, &mut ids()).expect("spans");
        assert_eq!(names(&spans), ["GET", "proxy"]);
        let server = &spans[0];
        assert_eq!(
            server.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert!(server.parent_span_is_remote);
        assert!(matches!(server.status, Status::Error { .. }));
        assert!(
            server
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "502")
        );
    }

    /// A request skiff refused has the wait to its end and no call.
    #[test]
    fn a_refused_request_is_all_wait() {
        let mut r = record(429, false);
        r.instance = None;
        r.throttled = Some(skiff_router::Throttle::Budget);
        r.waited = r.duration;
        let scope = InstrumentationScope::builder("skiff").build();
        let spans = spans(&r, Keep::Error, None, &scope, &mut ids()).expect("spans");
        assert_eq!(names(&spans), ["GET", "activator wait"]);
        assert_eq!(spans[1].end_time, spans[0].end_time);
    }
}
