//! Event delivery: the broker ingress (CloudEvents in, durably queued, 202) and the
//! dispatcher (queued deliveries out to their subscribers, retried as the delivery spec
//! says, dead-lettered after the last attempt), with the event metrics.
//!
//! - **Ingress.** `POST http://broker-ingress.<domain>:<port>/<namespace>/<broker>`, on the
//!   router's own listener ([`skiff_router::LocalService`]): binary, structured and batched
//!   CloudEvents ([`skiff_events::http`]); a body over [`MAX_BODY`] is a 413, a malformed
//!   event a 400 with the reason; 202 once every event of the request and its deliveries
//!   are fsynced. Until the Brokers and Triggers stored at start are all loaded into the
//!   routes, a 503 with `Retry-After` (an event accepted then would miss a Trigger).
//! - **Dispatch.** One worker per subscription with pending deliveries claims up to the
//!   subscriber's capacity (leases), POSTs each event in binary mode **through the router**
//!   (with the subscriber Service's Host), so a subscriber at zero is woken by the activator,
//!   and records the outcome: ack, retry at the backoff's time (`Retry-After` honoured),
//!   or dead (then a copy goes to the dead-letter sink, with Knative's `knativeerror*`
//!   extensions). A 200 with an event in it is a reply, published to the Trigger's Broker.
//!   A daemon killed mid-delivery leaves leases behind: the next start ends them, and those
//!   deliveries are sent again at once (at least once).
//! - **Backlog.** Every second the queue's depth per subscriber Service goes to the
//!   autoscaler ([`crate::serving::Serving::set_backlogs`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use skiff_api::eventing::SinkKind;
use skiff_events::CloudEvent;
use skiff_events::delivery::{Class, Next, classify_outcome, next_attempt};
use skiff_events::http::{MAX_EVENT_BYTES, parse_request, reply_from_response, to_binary};
use skiff_queue::Claimed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::eventing::{Eventing, Target, dead_letter_subscription, subscription_namespace};

/// The largest request the broker ingress reads (one event, or a batch).
pub const MAX_BODY: usize = MAX_EVENT_BYTES;
/// Deliveries in flight to one subscriber, at most, when its capacity cannot be read.
pub const DEFAULT_CAPACITY: usize = 32;
/// The most deliveries in flight to one subscriber.
pub const MAX_CAPACITY: usize = 256;

/// Labels of the event counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    namespace: String,
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    namespace: String,
    subscription: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    namespace: String,
    subscription: String,
    outcome: &'static str,
}

/// Bucket bounds of delivery latency, in seconds: 1 ms to 10 min.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
];

/// The event metrics.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    received: Family<SourceLabels, Counter>,
    delivered: Family<OutcomeLabels, Counter>,
    dead_lettered: Family<SubscriptionLabels, Counter>,
    latency: Family<SubscriptionLabels, Histogram>,
    depths: Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

#[derive(Debug)]
struct DepthCollector(Arc<std::sync::Mutex<HashMap<String, u64>>>);

impl Collector for DepthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depths = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut e = encoder.encode_descriptor(
            "events_queue_depth",
            "Events waiting for delivery (or being delivered), per subscription",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (sub, depth) in depths {
            let labels = SubscriptionLabels {
                namespace: subscription_namespace(&sub).to_owned(),
                subscription: sub.clone(),
            };
            let g = ConstGauge::new(depth as i64);
            g.encode(e.encode_family(&labels)?)?;
        }
        let _ = &mut e;
        Ok(())
    }
}

impl EventMetrics {
    /// Registers the metrics in the root registry (`skiff_events_*`,
    /// `skiff_event_delivery_latency_seconds`).
    pub fn new(registry: &mut Registry) -> Self {
        let m = EventMetrics {
            received: Family::default(),
            delivered: Family::default(),
            dead_lettered: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            depths: Arc::default(),
        };
        registry.register(
            "events_received",
            "CloudEvents accepted (stored) by a Broker or fired by a PingSource",
            m.received.clone(),
        );
        registry.register(
            "events_delivered",
            "Delivery attempts ended, by outcome (delivered, retried, dead_lettered, dropped)",
            m.delivered.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events that ran out of retries and went to the dead-letter sink (or were dropped without one)",
            m.dead_lettered.clone(),
        );
        registry.register_with_unit(
            "event_delivery_latency",
            "From an event's acceptance to its successful delivery",
            prometheus_client::registry::Unit::Seconds,
            m.latency.clone(),
        );
        registry.register_collector(Box::new(DepthCollector(m.depths.clone())));
        m
    }

    /// Counts `n` events accepted from `source` (`broker/<name>`, `pingsource/<name>`).
    pub fn received(&self, ns: &str, source: &str, n: u64) {
        self.received
            .get_or_create(&SourceLabels {
                namespace: ns.to_owned(),
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    fn outcome(&self, sub: &str, outcome: &'static str) {
        self.delivered
            .get_or_create(&OutcomeLabels {
                namespace: subscription_namespace(sub).to_owned(),
                subscription: sub.to_owned(),
                outcome,
            })
            .inc();
    }

    fn labels(sub: &str) -> SubscriptionLabels {
        SubscriptionLabels {
            namespace: subscription_namespace(sub).to_owned(),
            subscription: sub.to_owned(),
        }
    }
}

// --- Ingress -------------------------------------------------------------------------

fn answer(status: StatusCode, message: impl Into<String>) -> Response<skiff_router::Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{}\n", message.into())))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The broker ingress, served by the router at its local host.
pub struct Ingress(pub Arc<Eventing>);

impl skiff_router::LocalService for Ingress {
    fn call(&self, req: Request<hyper::body::Incoming>) -> skiff_router::LocalFuture {
        let eventing = self.0.clone();
        Box::pin(async move { ingest_request(&eventing, req).await })
    }
}

async fn ingest_request(
    eventing: &Arc<Eventing>,
    req: Request<hyper::body::Incoming>,
) -> Response<skiff_router::Body> {
    let path = req.uri().path().trim_matches('/').to_owned();
    let mut parts = path.split('/');
    let (Some(ns), Some(broker), None) = (parts.next(), parts.next(), parts.next()) else {
        return answer(
            StatusCode::NOT_FOUND,
            "skiff: the broker ingress takes POST /<namespace>/<broker>",
        );
    };
    let (ns, broker) = (ns.to_owned(), broker.to_owned());
    if req.method() != Method::POST {
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "skiff: send CloudEvents with POST",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !eventing.routes_loaded() {
        // Starting: an event accepted now could miss Triggers not loaded yet.
        let mut r = answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "skiff is starting: its Brokers and Triggers are being loaded; try again",
        );
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        return r;
    }
    if !eventing.has_broker(&ns, &broker) {
        return answer(
            StatusCode::NOT_FOUND,
            format!("skiff: no Broker `{broker}` in namespace `{ns}`"),
        );
    }
    let too_big = || {
        answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("skiff: the request body is over {MAX_BODY} bytes, the most a Broker accepts"),
        )
    };
    if req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY)
    {
        return too_big();
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_big();
        }
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("skiff: reading the request body: {e}"),
            );
        }
    };
    let events = match parse_request(&parts.headers, &body) {
        Ok(events) => events,
        Err(e) => return answer(StatusCode::BAD_REQUEST, format!("skiff: {e}")),
    };
    let n = events.len();
    match eventing.ingest(&ns, &broker, events).await {
        Ok(()) => answer(StatusCode::ACCEPTED, format!("accepted {n} event(s)")),
        Err(e) => {
            warn!(namespace = %ns, broker = %broker, error = %skiff_telemetry::ErrorChain(&*e), "storing events");
            let mut r = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "skiff: the events could not be stored; try again",
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
            r
        }
    }
}

impl Eventing {
    /// Stores events a Broker accepted, each with a delivery for every Trigger it matches.
    pub async fn ingest(
        &self,
        ns: &str,
        broker: &str,
        events: Vec<CloudEvent>,
    ) -> Result<(), crate::reconciler::ReconcileError> {
        let items: Vec<(CloudEvent, Vec<String>)> = events
            .into_iter()
            .map(|e| {
                let subs = self.matching(ns, broker, &e);
                (e, subs)
            })
            .collect();
        self.enqueue(&items, &format!("broker/{broker}"), ns).await
    }
}

// --- Dispatch ------------------------------------------------------------------------

/// The dispatcher: until `stop`, starts a worker for every subscription with pending
/// deliveries, and publishes the backlog.
pub async fn run(eventing: Arc<Eventing>, client: reqwest::Client, stop: CancellationToken) {
    // This daemon is the queue's only dispatcher (the data directory is locked): a lease it
    // finds was taken by a previous process that died mid-delivery. Ended now, those
    // deliveries go out again at once instead of after their leases (timeout + 30 s).
    let queue = eventing.queue.clone();
    match tokio::task::spawn_blocking(move || queue.expire_leases(jiff::Timestamp::now())).await {
        Ok(Ok(n)) if n > 0 => {
            info!(
                deliveries = n,
                "deliveries in flight when skiff last stopped are sent again"
            )
        }
        Ok(Ok(_)) | Err(_) => {}
        Ok(Err(e)) => {
            warn!(error = %skiff_telemetry::ErrorChain(&e), "ending the leases of a previous run")
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut compacted = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = eventing.wake.notified() => {}
            _ = tick.tick() => {}
        }
        let queue = eventing.queue.clone();
        let depths = match tokio::task::spawn_blocking(move || queue.depths()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                warn!(error = %skiff_telemetry::ErrorChain(&e), "reading the event queue");
                continue;
            }
            Err(_) => continue,
        };
        publish_backlog(&eventing, &depths);
        for (sub, depth) in &depths {
            if *depth == 0 {
                continue;
            }
            let woken = {
                let mut workers = eventing.workers.lock().unwrap_or_else(|p| p.into_inner());
                if workers.contains_key(sub) {
                    None
                } else {
                    let w = Arc::new(tokio::sync::Notify::new());
                    workers.insert(sub.clone(), w.clone());
                    Some(w)
                }
            };
            if let Some(woken) = woken {
                let (e, c, s, sub) = (eventing.clone(), client.clone(), stop.clone(), sub.clone());
                tokio::spawn(async move {
                    worker(&e, &c, &sub, &s, &woken).await;
                    e.workers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&sub);
                });
            }
        }
        if compacted.elapsed() > Duration::from_secs(60) {
            compacted = tokio::time::Instant::now();
            let queue = eventing.queue.clone();
            let before = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600);
            let _ = tokio::task::spawn_blocking(move || queue.compact(before, 10_000)).await;
        }
    }
}

/// The backlog per subscriber Service, to the autoscaler and the depth gauge.
fn publish_backlog(eventing: &Eventing, depths: &std::collections::BTreeMap<String, u64>) {
    let targets = eventing.targets();
    let mut backlogs: HashMap<(String, String), u64> = HashMap::new();
    for (sub, depth) in depths {
        if let Some(t) = targets.get(sub)
            && t.sink.kind == SinkKind::Service
        {
            *backlogs
                .entry((t.namespace.clone(), t.sink.name.clone()))
                .or_default() += depth;
        }
    }
    *eventing
        .metrics
        .depths
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = depths.iter().map(|(k, v)| (k.clone(), *v)).collect();
    eventing.serving.set_backlogs(backlogs);
}

/// How many deliveries may be in flight to `target` (its capacity: containerConcurrency,
/// or the autoscaling target, times its maximum scale).
async fn capacity(eventing: &Eventing, target: &Target) -> usize {
    if target.sink.kind != SinkKind::Service {
        return 4;
    }
    let svc = match eventing
        .controller
        .get_service(&target.namespace, &target.sink.name)
        .await
    {
        Ok(s) => s,
        Err(_) => return DEFAULT_CAPACITY,
    };
    let Some(rev) = svc.status.latest_created_revision_name.clone() else {
        return DEFAULT_CAPACITY;
    };
    match eventing
        .controller
        .get_revision(&target.namespace, &rev)
        .await
    {
        Ok(r) => {
            let cc = r.spec.container_concurrency.unwrap_or(0).max(0) as usize;
            let per = if cc > 0 { cc } else { 10 };
            let max = r.autoscaling.max_scale.unwrap_or(0) as usize;
            let instances = if max > 0 { max } else { 10 };
            (per * instances).clamp(1, MAX_CAPACITY)
        }
        Err(_) => DEFAULT_CAPACITY,
    }
}

async fn worker(
    eventing: &Arc<Eventing>,
    client: &reqwest::Client,
    sub: &str,
    stop: &CancellationToken,
    woken: &tokio::sync::Notify,
) {
    let inflight = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut cap_checked = tokio::time::Instant::now() - Duration::from_secs(60);
    let mut cap = DEFAULT_CAPACITY;
    debug!(subscription = sub, "delivery worker started");
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(target) = eventing.target(sub) else {
            // Its Trigger is not (or no longer) known: its reconcile drops the deliveries.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if eventing.target(sub).is_none() && inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            continue;
        };
        if cap_checked.elapsed() > Duration::from_secs(5) {
            cap = capacity(eventing, &target).await;
            cap_checked = tokio::time::Instant::now();
        }
        let free = cap.saturating_sub(inflight.load(Ordering::Acquire));
        let timeout = target
            .policy
            .timeout
            .unwrap_or(crate::eventing::DEFAULT_TIMEOUT);
        let claimed = if free > 0 {
            let (queue, s) = (eventing.queue.clone(), sub.to_owned());
            let lease = timeout + Duration::from_secs(30);
            match tokio::task::spawn_blocking(move || {
                queue.claim(&s, jiff::Timestamp::now(), lease, free)
            })
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    warn!(subscription = sub, error = %skiff_telemetry::ErrorChain(&e), "claiming deliveries");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let got = claimed.len();
        for c in claimed {
            inflight.fetch_add(1, Ordering::AcqRel);
            let (e, cl, t, sub, inflight, done) = (
                eventing.clone(),
                client.clone(),
                target.clone(),
                sub.to_owned(),
                inflight.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                deliver(&e, &cl, &t, &sub, c, timeout).await;
                inflight.fetch_sub(1, Ordering::AcqRel);
                done.notify_one();
            });
        }
        if got > 0 && got == free {
            // Full: wait for a slot.
            tokio::select! {
                () = stop.cancelled() => return,
                () = done.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // Nothing more due now: sleep until the next one is (or a slot frees, or new work).
        let (queue, s) = (eventing.queue.clone(), sub.to_owned());
        let next = tokio::task::spawn_blocking(move || queue.next_due(&s))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        if next.is_none() && inflight.load(Ordering::Acquire) == 0 {
            debug!(subscription = sub, "delivery worker idle; stopping");
            return;
        }
        let wait = next
            .map(|n| n.duration_since(jiff::Timestamp::now()).unsigned_abs())
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        tokio::select! {
            () = stop.cancelled() => return,
            () = done.notified() => {}
            () = woken.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What one attempt came to.
struct Attempt {
    status: Option<u16>,
    retry_after: Option<HeaderValue>,
    error: String,
    /// A reply to publish (from a 200).
    reply: Option<CloudEvent>,
}

async fn attempt(
    eventing: &Eventing,
    client: &reqwest::Client,
    target: &Target,
    event: &CloudEvent,
    timeout: Duration,
) -> Attempt {
    let ns = &target.namespace;
    match target.sink.kind {
        SinkKind::Service => {
            let (headers, body) = to_binary(event);
            let url = format!("http://127.0.0.1:{}/", eventing.ingress_port());
            let mut req = client
                .post(url)
                .timeout(timeout)
                .header(
                    http::header::HOST,
                    eventing.service_host(ns, &target.sink.name),
                )
                .body(body);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            if target.reply_broker.is_some() {
                req = req.header("prefer", "reply");
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp.headers().get(http::header::RETRY_AFTER).cloned();
                    let headers = resp.headers().clone();
                    let body = resp.bytes().await.unwrap_or_default();
                    let mut out = Attempt {
                        status: Some(status),
                        retry_after,
                        error: String::new(),
                        reply: None,
                    };
                    if status == 200 && target.reply_broker.is_some() {
                        match reply_from_response(&headers, &body) {
                            Ok(r) => out.reply = r,
                            Err(e) => {
                                // A malformed reply fails the delivery (Knative's rule).
                                out.status = None;
                                out.error = format!(
                                    "the subscriber's reply is not a valid CloudEvent: {e}"
                                );
                            }
                        }
                    } else if !(200..300).contains(&status) {
                        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                            .trim()
                            .to_owned();
                        out.error = format!("the subscriber answered {status}: {text}");
                    }
                    out
                }
                Err(e) => Attempt {
                    status: None,
                    retry_after: None,
                    error: format!(
                        "no answer from Service `{}`: {}",
                        target.sink.name,
                        skiff_telemetry::ErrorChain(&e)
                    ),
                    reply: None,
                },
            }
        }
        SinkKind::Broker => match eventing.has_broker(ns, &target.sink.name) {
            false => Attempt {
                status: Some(404),
                retry_after: None,
                error: format!("Broker `{}` does not exist", target.sink.name),
                reply: None,
            },
            true => match eventing
                .ingest(ns, &target.sink.name, vec![event.clone()])
                .await
            {
                Ok(()) => ok(202),
                Err(e) => Attempt {
                    status: None,
                    retry_after: None,
                    error: format!("storing the event at Broker `{}`: {e}", target.sink.name),
                    reply: None,
                },
            },
        },
        SinkKind::Job => {
            let structured: serde_json::Value =
                serde_json::from_str(&skiff_events::http::to_structured_json(event))
                    .unwrap_or(serde_json::Value::Null);
            match eventing
                .jobs
                .run(
                    ns,
                    &target.sink.name,
                    &skiff_api::job::Overrides::default(),
                    &format!("event {}", event.id),
                    Some(structured),
                )
                .await
            {
                Ok(_) => ok(202),
                Err(crate::controller::ControllerError::NotFound { .. }) => Attempt {
                    status: Some(404),
                    retry_after: None,
                    error: format!("Job `{}` does not exist", target.sink.name),
                    reply: None,
                },
                Err(e) => Attempt {
                    status: None,
                    retry_after: None,
                    error: format!("starting Job `{}`: {e}", target.sink.name),
                    reply: None,
                },
            }
        }
    }
}

fn ok(status: u16) -> Attempt {
    Attempt {
        status: Some(status),
        retry_after: None,
        error: String::new(),
        reply: None,
    }
}

async fn deliver(
    eventing: &Arc<Eventing>,
    client: &reqwest::Client,
    target: &Target,
    sub: &str,
    c: Claimed,
    timeout: Duration,
) {
    let queue = eventing.queue.clone();
    let event: CloudEvent = match serde_json::from_slice(&c.payload) {
        Ok(e) => e,
        Err(e) => {
            warn!(subscription = sub, error = %e, "a stored event cannot be read; it is dead-lettered");
            let lease = c.lease;
            let _ = tokio::task::spawn_blocking(move || {
                queue.dead(
                    &lease,
                    "the stored event cannot be read",
                    jiff::Timestamp::now(),
                )
            })
            .await;
            return;
        }
    };
    let mut a = attempt(eventing, client, target, &event, timeout).await;
    let mut class = classify_outcome(a.status);
    if let (Some(reply), Some(broker)) = (a.reply.take(), &target.reply_broker)
        && let Err(e) = eventing
            .ingest(&target.namespace, broker, vec![reply])
            .await
    {
        // A reply that cannot be published: the original is delivered again.
        a.error = format!("publishing the reply to Broker `{broker}`: {e}");
        class = Class::Retryable;
    }
    let now = jiff::Timestamp::now();
    let next = match class {
        Class::Success | Class::SuccessWithPossibleReply => Next::Done,
        _ => next_attempt(
            &target.policy,
            c.attempt,
            class,
            a.retry_after.as_ref(),
            now,
        ),
    };
    let lease = c.lease;
    let error = a.error.clone();
    let result = match next {
        Next::Done => {
            let latency = now.duration_since(c.accepted_at).as_secs_f64().max(0.0);
            eventing
                .metrics
                .latency
                .get_or_create(&EventMetrics::labels(sub))
                .observe(latency);
            eventing.metrics.outcome(sub, "delivered");
            tokio::task::spawn_blocking(move || queue.ack(&lease, now)).await
        }
        Next::Retry { at } => {
            eventing.metrics.outcome(sub, "retried");
            debug!(subscription = sub, attempt = c.attempt, error = %error, retry_at = %at, "delivery failed; retrying");
            tokio::task::spawn_blocking(move || queue.retry(&lease, at, &error, now)).await
        }
        Next::DeadLetter | Next::Drop => {
            let dead_letter = matches!(next, Next::DeadLetter) && target.dead_letter.is_some();
            eventing.metrics.outcome(
                sub,
                if dead_letter {
                    "dead_lettered"
                } else {
                    "dropped"
                },
            );
            eventing
                .metrics
                .dead_lettered
                .get_or_create(&EventMetrics::labels(sub))
                .inc();
            info!(subscription = sub, attempts = c.attempt, error = %error, dead_letter, "delivery gave up");
            if dead_letter {
                // Knative's extensions say where it failed and why.
                let mut copy = event.clone();
                copy.extensions.insert(
                    "knativeerrordest".into(),
                    match target.sink.kind {
                        SinkKind::Service => format!(
                            "http://{}",
                            eventing.service_host(&target.namespace, &target.sink.name)
                        ),
                        _ => target.sink.to_string(),
                    },
                );
                if let Some(code) = a.status {
                    copy.extensions
                        .insert("knativeerrorcode".into(), code.to_string());
                }
                copy.extensions.insert(
                    "knativeerrordata".into(),
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        error.as_bytes(),
                    ),
                );
                let dls = dead_letter_subscription(sub);
                if let Err(e) = eventing
                    .enqueue(&[(copy, vec![dls])], "deadletter", &target.namespace)
                    .await
                {
                    warn!(subscription = sub, error = %e, "queuing the dead letter");
                }
            }
            tokio::task::spawn_blocking(move || queue.dead(&lease, &error, now)).await
        }
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(subscription = sub, error = %skiff_telemetry::ErrorChain(&e), "recording a delivery's outcome (its lease was taken over)")
        }
        Err(_) => {}
    }
}

/// One subscription's delivery figures since the daemon started, with its queue depth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryFigures {
    /// The subscription.
    pub subscription: String,
    /// Where its events go (`Service/x`).
    pub target: String,
    /// Events waiting or in flight (as of the dispatcher's last look, every 0.5 s).
    pub depth: u64,
    /// Delivered.
    pub delivered: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    /// Given up (dead-lettered or dropped).
    pub dead_lettered: u64,
}

/// Every subscription's figures, by name.
pub fn figures(eventing: &Eventing) -> Vec<DeliveryFigures> {
    let depths = eventing
        .metrics
        .depths
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut subs: Vec<(String, String)> = eventing
        .targets()
        .into_iter()
        .map(|(s, t)| (s, t.sink.to_string()))
        .collect();
    subs.sort();
    let m = &eventing.metrics;
    subs.into_iter()
        .map(|(sub, target)| {
            let count = |outcome: &'static str| {
                m.delivered
                    .get_or_create(&OutcomeLabels {
                        namespace: subscription_namespace(&sub).to_owned(),
                        subscription: sub.clone(),
                        outcome,
                    })
                    .get()
            };
            DeliveryFigures {
                depth: depths.get(&sub).copied().unwrap_or(0),
                delivered: count("delivered"),
                retried: count("retried"),
                dead_lettered: count("dead_lettered") + count("dropped"),
                target,
                subscription: sub,
            }
        })
        .collect()
}

/// Fills a Trigger's status with its delivery figures since the daemon started (they are
/// not stored: a status write per delivery would cost more than the delivery).
pub fn fill_trigger(eventing: &Eventing, t: &mut skiff_api::eventing::Trigger) {
    let sub = crate::eventing::trigger_subscription(&t.metadata.namespace, &t.metadata.name);
    if let Some(f) = figures(eventing)
        .into_iter()
        .find(|f| f.subscription == sub)
    {
        t.status.delivered = Some(f.delivered);
        t.status.failed = Some(f.retried);
        t.status.dead_lettered = Some(f.dead_lettered);
    }
}

/// Fills a Broker's status with its Triggers' queued and given-up events.
pub fn fill_broker(eventing: &Eventing, b: &mut skiff_api::eventing::Broker) {
    let targets = eventing.targets();
    let (mut depth, mut dead) = (0, 0);
    for f in figures(eventing) {
        let ours = targets.get(&f.subscription).is_some_and(|t| {
            t.namespace == b.metadata.namespace
                && t.reply_broker.as_deref() == Some(b.metadata.name.as_str())
        });
        if ours {
            depth += f.depth;
            dead += f.dead_lettered;
        }
    }
    b.status.queue_depth = Some(depth);
    b.status.dead_lettered = Some(dead);
}

/// The subscriptions with a worker now (tests, describe).
pub fn workers(eventing: &Eventing) -> HashSet<String> {
    eventing
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect()
}
