//! Handling one request: route by Host, pick a revision, get a slot on an instance (waiting
//! in the activator if needed), forward with Knative's headers and timeouts, stream the
//! response back, and release the slot when the response body ends.
//!
//! [`handle`] is the pipeline; each step is a small function that either hands the request
//! on or gives skiff's own [`Answer`]: the request id and forwarding headers
//! ([`headers`]), host routing and the traffic split ([`route`]), the activator's wait for a
//! slot ([`activate`]), the URI rewrite, deadline and retry of unsent requests
//! ([`forward`]), then an upgrade tunnel or the guarded response body ([`body`]). Plain
//! functions rather than tower layers: the steps share the request id, the pool and the
//! slot, which layers would have to carry in request extensions, boxing a future per layer
//! on a path whose CPU per request is benchmarked.

mod body;
mod exchange;
mod forward;
mod headers;
mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::body::Guarded;
use self::exchange::Exchange;
use self::forward::Forwarded;
use self::headers::X_REQUEST_ID;
use crate::conns::ConnHandle;
use crate::metrics::Throttle;
use crate::pool::{AcquireError, BudgetStop, Pool, PoolSpec, Slot};
use crate::upstream::Upstreams;
use crate::{Body, Router};

/// What the router knows of a client connection, worked out once per connection.
pub(crate) struct Peer {
    /// The client's IP, as `X-Forwarded-For` carries it.
    ip: HeaderValue,
    /// The client's IP as a `Forwarded` `for=` value (quoted with brackets for IPv6).
    forwarded_for: String,
    /// The connection, kept busy while a request is in flight.
    pub(crate) conn: ConnHandle,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, conn: ConnHandle) -> Self {
        let ip = addr.ip().to_string();
        let forwarded_for = if addr.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Peer {
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for,
            conn,
        }
    }
}

/// skiff's own answer instead of the instance's: a status and one line (the request id is
/// added when it is sent), with `Retry-After` when the client should try again later, and
/// `X-Skiff-Throttled` naming the reason when the router refused the request itself.
struct Answer {
    status: StatusCode,
    msg: String,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
    /// Why the router refused the request itself, if it did.
    throttled: Option<Throttle>,
}

/// The header naming why the router refused a request itself: the `reason` label of
/// `skiff_router_throttled_total` (`queue_full`, `queue_timeout`, `max_scale`, `budget`).
const X_SKIFF_THROTTLED: http::header::HeaderName =
    http::header::HeaderName::from_static("x-skiff-throttled");

impl Answer {
    fn new(status: StatusCode, msg: String) -> Self {
        Answer {
            status,
            msg,
            retry_after: None,
            throttled: None,
        }
    }

    /// Tells the client to try again after `seconds`.
    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// One line, ending with the request id (the log has the detail under it).
    fn into_response(self, request_id: &HeaderValue) -> Response<Body> {
        let id = request_id.to_str().unwrap_or("-");
        let mut r = Response::new(
            Full::new(Bytes::from(format!("{} (request id {id})\n", self.msg)))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(X_REQUEST_ID, request_id.clone());
        if let Some(seconds) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(why) = self.throttled {
            h.insert(X_SKIFF_THROTTLED, HeaderValue::from_static(why.as_str()));
        }
        r
    }
}

/// Rewrites the host of a request made from inside an instance (`backend`,
/// `backend.ns.svc`, …) to the Service's host at the ingress, as `rewrite` maps it; an
/// absolute-form target becomes origin-form. Unknown hosts are left as they are.
pub(crate) fn rewrite_host<B>(req: &mut Request<B>, rewrite: &dyn Fn(&str) -> Option<String>) {
    let Ok(host) = route::host(req) else { return };
    let Some(new) = rewrite(&host) else { return };
    let Ok(value) = HeaderValue::from_str(&new) else {
        return;
    };
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req.headers_mut().insert(header::HOST, value);
}

/// Handles one request: the request id first, so that every answer carries it, then the
/// steps of [`proxy`].
pub(crate) async fn handle(
    router: &Arc<Router>,
    up: &Upstreams,
    mut req: Request<Incoming>,
    peer: &Peer,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = headers::request_id(&mut req);
    match proxy(router, up, req, peer, started, &request_id).await {
        Ok(response) => response,
        Err(answer) => answer.into_response(&request_id),
    }
}

/// The steps, in order; each either hands the request on or answers it. Once the request
/// has a revision, its [`Exchange`] counts it when it ends: here for skiff's own answers, at
/// the end of the body for the instance's.
async fn proxy(
    router: &Router,
    up: &Upstreams,
    mut req: Request<Incoming>,
    peer: &Peer,
    started: Instant,
    request_id: &HeaderValue,
) -> Result<Response<Body>, Answer> {
    let host = route::host(&req)?;
    if let Some(local) = route::local(router, &host) {
        let mut response = local.call(req).await;
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        return Ok(response);
    }
    let pool = route::pick(router, &host)?;
    let client_trace = headers::forwarding(req.headers_mut(), peer, &host);
    let mut ex = Exchange::new(
        router,
        pool,
        started,
        request_id,
        &mut req,
        &host,
        client_trace,
    );
    match exchange(router, up, req, &mut ex, (started, &host)).await {
        Ok((sent, client_upgrade)) => Ok(respond(sent, client_upgrade, ex, peer, request_id)),
        Err(answer) => {
            ex.finish(answer.status, true, answer.throttled);
            Err(answer)
        }
    }
}

/// The activator's wait, then the exchange with an instance up to its response's start.
async fn exchange(
    router: &Router,
    up: &Upstreams,
    req: Request<Incoming>,
    ex: &mut Exchange,
    (started, host): (Instant, &str),
) -> Result<(Forwarded, Option<OnUpgrade>), Answer> {
    let pool = ex.pool.clone();
    let spec = pool.spec();
    let slot = activate(router, &pool, &spec).await?;
    ex.waited = started.elapsed();
    if ex.waited > Duration::from_millis(1) {
        pool.handles.queue_wait.observe(ex.waited.as_secs_f64());
    }
    if slot.cold_start.is_some() {
        ex.cold_start = slot.cold_start;
        pool.handles.waited_for_cold_start();
    }
    let (req, client_upgrade) = forward::outbound(req, &spec, host)?;
    let upgrade = client_upgrade.is_some();
    let sent = forward::forward(router, up, ex, &spec, slot, req, upgrade).await?;
    debug!(revision = %spec.revision, instance = %sent.slot.endpoint.id, status = sent.response.status().as_u16(), "proxied");
    Ok((sent, client_upgrade))
}

/// The activator step: a slot on an instance of `pool`, waiting (and poking the revision's
/// autoscaler) while instances start, within the queue's depth and timeout.
async fn activate(router: &Router, pool: &Arc<Pool>, spec: &PoolSpec) -> Result<Slot, Answer> {
    let wake = || {
        let _ = router
            .poke
            .send((spec.namespace.clone(), spec.revision.clone()));
    };
    pool.acquire(router.cfg.queue_depth, router.cfg.queue_timeout, wake)
        .await
        .map_err(|e| rejected(pool, e))
}

/// The activator's answer when a request got no instance: 503, or 429 when the Service's
/// cost budget stopped its scale-up (the queue filled or timed out because instances that
/// would have started did not).
fn rejected(pool: &Pool, e: AcquireError) -> Answer {
    let spec = pool.spec();
    info!(revision = %spec.revision, reason = ?e, "activator refused a request");
    if let Some(stop) = pool.budget_stop()
        && matches!(e, AcquireError::QueueFull(_) | AcquireError::Timeout(_))
    {
        return budget_spent(&spec, &stop, pool.ready(), unix_now());
    }
    let revision = &spec.revision;
    let throttled = match e {
        AcquireError::QueueFull(_) => Some(Throttle::QueueFull),
        AcquireError::Timeout(_) if pool.at_max_scale() => Some(Throttle::MaxScale),
        AcquireError::Timeout(_) => Some(Throttle::QueueTimeout),
        AcquireError::Unavailable(_) => None,
    };
    let (msg, retry) = match e {
        AcquireError::QueueFull(n) => (
            format!(
                "skiff: revision `{revision}` has {n} requests waiting for an instance already; try again shortly"
            ),
            1,
        ),
        AcquireError::Timeout(d) => (
            format!(
                "skiff: no instance of revision `{revision}` could take the request within {}s (instances are starting or at containerConcurrency)",
                d.as_secs_f64()
            ),
            1,
        ),
        AcquireError::Unavailable(why) => (
            format!(
                "skiff: service `{}` in namespace `{}` cannot serve requests: {why}",
                spec.service, spec.namespace
            ),
            10,
        ),
    };
    let mut answer = Answer::new(StatusCode::SERVICE_UNAVAILABLE, msg).retry_after(retry);
    answer.throttled = throttled;
    answer
}

/// The 429 of a request refused because the Service's cost budget is spent. With instances
/// ready a retry may find room in a second; with none, nothing serves until the period turns.
fn budget_spent(spec: &PoolSpec, stop: &BudgetStop, ready: usize, now_unix: i64) -> Answer {
    let scaled = if ready > 0 {
        format!("it is not scaled up beyond its {ready} ready instance(s)")
    } else {
        "no instance of it is started".to_owned()
    };
    let msg = format!(
        "skiff: the cost budget of service `{}` in namespace `{}` ({}) is spent, so {scaled} \
         until {}, when the period turns, or until its skiff.dev/budget annotation is raised",
        spec.service, spec.namespace, stop.budget, stop.until
    );
    let retry = if ready > 0 {
        1
    } else {
        u64::try_from(stop.until_unix - now_unix).map_or(1, |s| s.max(1))
    };
    let mut answer = Answer::new(StatusCode::TOO_MANY_REQUESTS, msg).retry_after(retry);
    answer.throttled = Some(Throttle::Budget);
    answer
}

/// The wall clock in Unix seconds (for `Retry-After` only).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The response step: an accepted upgrade becomes a tunnel; any other response goes back
/// without its hop-by-hop headers, its body guarded.
fn respond(
    sent: Forwarded,
    client_upgrade: Option<OnUpgrade>,
    ex: Exchange,
    peer: &Peer,
    request_id: &HeaderValue,
) -> Response<Body> {
    let Forwarded {
        response,
        lease,
        slot,
    } = sent;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        ex.finish(StatusCode::SWITCHING_PROTOCOLS, true, None);
        return tunnel(response, client_upgrade, slot, peer, request_id);
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let idle = ex.pool.spec().idle_timeout;
    let body = Guarded::new(body, lease, slot, idle, ex, parts.status);
    Response::from_parts(parts, body.boxed())
}

/// The upgrade step: copies bytes both ways between the client's and the instance's
/// upgraded connections, holding the slot (and the client connection busy) until they
/// close; the client gets the instance's 101 with an empty body.
fn tunnel(
    mut response: Response<Incoming>,
    client_upgrade: OnUpgrade,
    slot: Slot,
    peer: &Peer,
    request_id: &HeaderValue,
) -> Response<Body> {
    let server_upgrade = hyper::upgrade::on(&mut response);
    // The tunnel keeps the client connection counted, and busy, until it closes.
    let busy = peer.conn.busy();
    tokio::spawn(async move {
        let (_slot, _busy) = (slot, busy);
        match (client_upgrade.await, server_upgrade.await) {
            (Ok(c), Ok(s)) => {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut s = hyper_util::rt::TokioIo::new(s);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            }
            (c, s) => warn!(client = ?c.err(), server = ?s.err(), "upgrade failed"),
        }
    });
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    Response::from_parts(
        parts,
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Arc<Pool> {
        Pool::new(PoolSpec {
            namespace: "default".into(),
            service: "s".into(),
            revision: "s-00001".into(),
            container_concurrency: 1,
            port: 8080,
            h2c: false,
            timeout: Duration::from_secs(300),
            response_start_timeout: None,
            idle_timeout: None,
            unavailable: None,
        })
    }

    fn stop() -> BudgetStop {
        BudgetStop {
            budget: "$5/day".into(),
            until: "2027-01-16T00:00:00Z".into(),
            until_unix: 1_800_057_600,
        }
    }

    /// While the Service's budget is spent, a request the queue cannot hold, or that waits
    /// out the queue timeout, gets 429 with reason `budget` (at max scale too); a failed
    /// revision still gets its 503; without the stop the reasons are as before.
    #[test]
    fn refusals_under_a_spent_budget_are_429_budget() {
        let p = pool();
        let timeout = AcquireError::Timeout(Duration::from_secs(1));
        let a = rejected(&p, timeout.clone());
        assert_eq!(
            (a.status, a.throttled),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Throttle::QueueTimeout)
            )
        );
        p.set_at_max_scale(true);
        assert_eq!(
            rejected(&p, timeout.clone()).throttled,
            Some(Throttle::MaxScale)
        );
        p.set_budget_stop(Some(stop()));
        for e in [timeout, AcquireError::QueueFull(10)] {
            let a = rejected(&p, e);
            assert_eq!(
                (a.status, a.throttled),
                (StatusCode::TOO_MANY_REQUESTS, Some(Throttle::Budget))
            );
            assert!(a.msg.contains("cost budget of service `s`"), "{}", a.msg);
        }
        let a = rejected(&p, AcquireError::Unavailable("crashed".into()));
        assert_eq!(
            (a.status, a.throttled),
            (StatusCode::SERVICE_UNAVAILABLE, None)
        );
        p.set_budget_stop(None);
        assert_eq!(
            rejected(&p, AcquireError::QueueFull(10)).throttled,
            Some(Throttle::QueueFull)
        );
    }

    /// The budget's 429 says what is spent, until when and how to lift it, with the request
    /// id and `X-Skiff-Throttled: budget`; `Retry-After` is the time left in the period when
    /// no instance runs, a second when some do.
    #[test]
    fn the_budget_answer() {
        let spec = pool().spec();
        let now = 1_800_057_600 - 3_600;
        let a = budget_spent(&spec, &stop(), 0, now);
        assert_eq!(a.retry_after, Some(3_600));
        assert_eq!(
            a.msg,
            "skiff: the cost budget of service `s` in namespace `default` ($5/day) is spent, so \
             no instance of it is started until 2027-01-16T00:00:00Z, when the period turns, or \
             until its skiff.dev/budget annotation is raised"
        );
        let a = budget_spent(&spec, &stop(), 2, now);
        assert_eq!(a.retry_after, Some(1));
        assert!(
            a.msg
                .contains("not scaled up beyond its 2 ready instance(s)"),
            "{}",
            a.msg
        );
        assert_eq!(
            budget_spent(&spec, &stop(), 0, now + 7_200).retry_after,
            Some(1)
        );
        let r = a.into_response(&HeaderValue::from_static("req-1"));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h["x-skiff-throttled"], "budget");
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert_eq!(h[X_REQUEST_ID], "req-1");
    }
}
