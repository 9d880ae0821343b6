//! Handling one request: route by Host, pick a revision, get a slot on an instance (waiting
//! in the activator if needed), forward with Knative's headers and timeouts, stream the
//! response back, and release the slot when the response body ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use rand::Rng;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::conns::ConnHandle;
use crate::pool::{AcquireError, Pool, Slot};
use crate::upstream::{Failed, Lease, Upstreams};
use crate::{Body, BoxError, Resolved, Router};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// skiff's own answer: one line, ending with the request id (the log has the detail under
/// it).
fn text(status: StatusCode, msg: String, request_id: &HeaderValue) -> Response<Body> {
    let id = request_id.to_str().unwrap_or("-");
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg} (request id {id})\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    r
}

fn sane_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A new request id: a UUID v4, formatted without a heap allocation of its own.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() >= 4
        && parts[0].len() == 2
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        && parts[1] != "00000000000000000000000000000000"
        && parts[2] != "0000000000000000"
}

/// A new W3C `traceparent` (version 00, sampled), with random non-zero trace and span ids.
fn new_traceparent() -> HeaderValue {
    use std::io::Write as _;
    let mut rng = rand::rng();
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    let mut buf = [0u8; 55];
    let mut w = &mut buf[..];
    let _ = write!(w, "00-{trace:032x}-{span:016x}-01");
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
        && req.headers().contains_key(header::UPGRADE)
}

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

/// The activator's answer when a request got no instance.
fn rejected(pool: &Pool, e: AcquireError, request_id: &HeaderValue) -> Response<Body> {
    pool.handles.rejected.inc();
    let spec = pool.spec();
    info!(revision = %spec.revision, reason = ?e, "activator refused a request");
    let revision = &spec.revision;
    let (msg, retry) = match e {
        AcquireError::QueueFull(n) => (
            format!(
                "skiff: revision `{revision}` has {n} requests waiting for an instance already; try again shortly"
            ),
            "1",
        ),
        AcquireError::Timeout(d) => (
            format!(
                "skiff: no instance of revision `{revision}` could take the request within {}s (instances are starting or at containerConcurrency)",
                d.as_secs_f64()
            ),
            "1",
        ),
        AcquireError::Unavailable(why) => (
            format!(
                "skiff: service `{}` in namespace `{}` cannot serve requests: {why}",
                spec.service, spec.namespace
            ),
            "10",
        ),
    };
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let mut r = text(status, msg, request_id);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry));
    pool.handles.answered(status);
    r
}

/// Reading the client's request body failed.
#[derive(Debug)]
struct ClientBody(hyper::Error);

impl std::fmt::Display for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the client's request body: {}", self.0)
    }
}

impl std::error::Error for ClientBody {}

/// The client-body failure somewhere in `error`'s chain.
fn client_body_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBody> {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ClientBody>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// An error and its causes on one line.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// The host a request is for: the target's authority (absolute form, HTTP/2's
/// `:authority`), else its one Host header, checked as RFC 9112 §3.2 asks.
fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    if let Some(a) = req.uri().authority() {
        if a.as_str().contains('@') {
            return Err("the request target's authority is not valid");
        }
        return Ok(a.as_str().to_owned());
    }
    match first {
        Some(v) => {
            let valid = v
                .to_str()
                .ok()
                .filter(|h| !h.contains('@'))
                .and_then(|h| h.parse::<http::uri::Authority>().ok().map(|_| h));
            match valid {
                Some(h) => Ok(h.to_owned()),
                None => Err("the Host header is not a valid host[:port]"),
            }
        }
        None if req.version() == Version::HTTP_11 => Err("the request has no Host header"),
        None => Ok(String::new()),
    }
}

pub(crate) async fn handle(
    router: &Arc<Router>,
    up: &Upstreams,
    mut req: Request<Incoming>,
    peer: &Peer,
) -> Response<Body> {
    let started = Instant::now();
    // The client's X-Request-Id when it is sane (and then it is forwarded as it is), else a
    // new one.
    let client_id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(sane_id))
        .cloned();
    let request_id = match client_id {
        Some(id) => id,
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    };
    // RFC 9112 §3.2: a request with two Host headers, an invalid one, or (HTTP/1.1) none is
    // a 400; an absolute-form target's authority takes the place of Host.
    let host_full = match request_host(&req) {
        Ok(h) => h,
        Err(why) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("skiff: {why}"),
                &request_id,
            );
        }
    };
    let host = host_full
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host_full.as_str(), |(h, _)| h)
        .trim_end_matches('.');
    let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let route = match router.route(&host) {
        Some(r) => r,
        None => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "skiff: no service for host `{host}`; services answer at <service>.<namespace>.{}",
                    router.domain()
                ),
                &request_id,
            );
        }
    };
    let pool = match &*route {
        Resolved::Unavailable(message) => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("skiff: {message}"),
                &request_id,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        Resolved::One(p) => p.clone(),
        Resolved::Split { split, total } => {
            let mut pick = rand::rng().random_range(0..(*total).max(1));
            let mut chosen = &split[0].0;
            for (p, share) in split {
                if pick < *share {
                    chosen = p;
                    break;
                }
                pick -= share;
            }
            chosen.clone()
        }
    };
    let spec = pool.spec();
    let revision = spec.revision.as_str();

    // Knative's request headers.
    {
        let h = req.headers_mut();
        match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                let xff = format!("{prev}, {}", peer.ip.to_str().unwrap_or("unknown"));
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    h.insert(X_FORWARDED_FOR, v);
                }
            }
            None => {
                h.insert(X_FORWARDED_FOR, peer.ip.clone());
            }
        }
        if !h.contains_key(X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        let fwd = format!("for={};host=\"{host_full}\";proto=http", peer.forwarded_for);
        let fwd = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {fwd}"),
            None => fwd,
        };
        if let Ok(v) = HeaderValue::from_str(&fwd) {
            h.insert(header::FORWARDED, v);
        }
        let tp_ok = h
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(valid_traceparent);
        if !tp_ok {
            h.remove(TRACESTATE);
            h.insert(TRACEPARENT, new_traceparent());
        }
        if h.get(header::HOST).and_then(|v| v.to_str().ok()) != Some(host_full.as_str())
            && let Ok(v) = HeaderValue::from_str(&host_full)
        {
            h.insert(header::HOST, v);
        }
    }

    // A slot on an instance, waiting in the activator while instances start.
    let wake = {
        let (poke, spec) = (&router.poke, &spec);
        move || {
            let _ = poke.send((spec.namespace.clone(), spec.revision.clone()));
        }
    };
    let mut slot = match pool
        .acquire(router.cfg.queue_depth, router.cfg.queue_timeout, wake)
        .await
    {
        Ok(s) => s,
        Err(e) => return rejected(&pool, e, &request_id),
    };
    let waited = started.elapsed();
    if waited > Duration::from_millis(1) {
        pool.handles.queue_wait.observe(waited.as_secs_f64());
    }

    let upgrade = is_upgrade(&req);
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    if !upgrade {
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
    }
    parts.version = if spec.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // HTTP/1.1: origin-form, with the client's Host header. HTTP/2: the URI's authority
    // becomes `:authority`, so it is the client's.
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    if spec.h2c || !origin_form {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = if spec.h2c {
            format!("http://{host_full}{path}").parse::<http::Uri>()
        } else {
            path.parse::<http::Uri>()
        };
        parts.uri = match uri {
            Ok(u) => u,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "skiff: the request path is not valid".into(),
                    &request_id,
                );
            }
        };
    }
    let first_byte = spec
        .response_start_timeout
        .map_or(spec.timeout, |r| r.min(spec.timeout));
    let deadline = Instant::now() + first_byte;
    let mut attempt = 0u32;
    let mut req = Request::from_parts(
        parts,
        body.map_err(|e| -> BoxError { Box::new(ClientBody(e)) })
            .boxed(),
    );
    let (mut response, lease) = loop {
        let sent = async {
            if spec.h2c {
                up.h2
                    .request(&slot.endpoint.id, spec.port, req)
                    .await
                    .map(|r| (r, None))
            } else {
                up.h1
                    .request(&slot.endpoint.id, spec.port, req, upgrade)
                    .await
            }
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(r)) => break r,
            Err(_) => {
                let status = StatusCode::GATEWAY_TIMEOUT;
                pool.handles.answered(status);
                return text(
                    status,
                    format!(
                        "skiff: revision `{revision}` did not start answering within {}s",
                        first_byte.as_secs_f64()
                    ),
                    &request_id,
                );
            }
            // No connection could be made (the instance died since its last probe): the
            // request, never sent, goes to another instance.
            Ok(Err(Failed {
                error,
                unsent: Some(unsent),
            })) if error.is_connect() && attempt < 3 => {
                attempt += 1;
                debug!(revision = %revision, instance = %slot.endpoint.id, error = %error, attempt, "connecting to an instance failed; trying again");
                req = unsent;
                drop(slot);
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                slot = match pool
                    .acquire(router.cfg.queue_depth, router.cfg.queue_timeout, wake)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => return rejected(&pool, e, &request_id),
                };
            }
            Ok(Err(Failed { error, .. })) => {
                // The client's own body was bad (an invalid chunk, cut short): its fault, not
                // the instance's.
                if let Some(ClientBody(why)) = client_body_error(&error) {
                    info!(revision = %revision, error = %why, "the client sent a bad request body; answered 400");
                    let status = StatusCode::BAD_REQUEST;
                    pool.handles.answered(status);
                    return text(
                        status,
                        format!("skiff: the request body could not be read: {why}"),
                        &request_id,
                    );
                }
                warn!(revision = %revision, instance = %slot.endpoint.id, error = %ErrorChain(&error), "forwarding to an instance failed");
                let status = StatusCode::BAD_GATEWAY;
                pool.handles.answered(status);
                return text(
                    status,
                    format!(
                        "skiff: the instance of revision `{revision}` failed to answer: {}",
                        ErrorChain(&error)
                    ),
                    &request_id,
                );
            }
        }
    };
    let status = response.status();
    pool.handles.answered(status);
    pool.handles
        .duration
        .observe(started.elapsed().as_secs_f64());
    debug!(revision = %revision, instance = %slot.endpoint.id, status = status.as_u16(), "proxied");

    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
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
        parts.headers.insert(X_REQUEST_ID, request_id);
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
    }

    let (mut parts, body) = response.into_parts();
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.insert(X_REQUEST_ID, request_id);
    let body = Guarded {
        inner: body,
        lease,
        slot: Some(slot),
        idle: spec.idle_timeout,
        sleep: None,
    };
    Response::from_parts(parts, body.boxed())
}

/// A response body that holds its instance slot (and its connection's lease) until it ends,
/// and ends it when the instance stays silent longer than the idle timeout.
struct Guarded {
    inner: Incoming,
    lease: Option<Lease>,
    slot: Option<Slot>,
    idle: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    /// The response is complete: the connection goes back first, then the slot is freed, so
    /// the next request to this instance finds the connection idle.
    fn finish(&mut self) {
        if let Some(l) = self.lease.take() {
            l.give_back();
        }
        self.slot = None;
    }

    /// The response failed or was cut short: the connection is closed, the slot freed.
    fn abort(&mut self) {
        self.lease = None;
        self.slot = None;
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // hyper may drop a body it knows has ended (Content-Length reached) without polling
        // it to the end.
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.finish();
        } else {
            self.abort();
        }
    }
}

/// The instance stayed silent past `idleTimeoutSeconds` in the middle of a response.
#[derive(Debug)]
struct IdleTimeout(Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the response was idle for more than {}s (idleTimeoutSeconds)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for IdleTimeout {}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(f)) => {
                if let Some(d) = this.idle {
                    this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                }
                if f.is_err() {
                    this.abort();
                }
                Poll::Ready(Some(f.map_err(|e| -> BoxError { Box::new(e) })))
            }
            Poll::Pending => {
                if let Some(d) = this.idle {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        // Silence past idleTimeoutSeconds: abort the response (the client
                        // sees it cut short, not complete).
                        this.abort();
                        warn!("response idle past idleTimeoutSeconds; aborting it");
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(d)))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    /// traceparent values are checked as W3C Trace Context says; new ones are valid.
    #[test]
    fn traceparent() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("garbage"));
        let tp = new_traceparent();
        assert!(valid_traceparent(tp.to_str().expect("ASCII")), "{tp:?}");
        let id = new_request_id();
        assert!(sane_id(id.to_str().expect("ASCII")), "{id:?}");
        assert_eq!(id.len(), 36);
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    /// RFC 9112 §3.2: one valid Host, or the target's authority; otherwise 400.
    #[test]
    fn request_host_rules() {
        use Version as V;
        let host = |v, uri, hosts: &[&str]| request_host(&req(v, uri, hosts));
        assert_eq!(
            host(V::HTTP_11, "/", &["a.default.localhost:8080"]),
            Ok("a.default.localhost:8080".into())
        );
        assert!(host(V::HTTP_11, "/", &["a.localhost", "b.localhost"]).is_err());
        assert!(host(V::HTTP_11, "/", &["a.localhost", "a.localhost"]).is_err());
        assert!(host(V::HTTP_11, "/", &[]).is_err());
        assert!(host(V::HTTP_11, "/", &["::::"]).is_err());
        assert!(host(V::HTTP_11, "/", &["user@a.localhost"]).is_err());
        assert!(host(V::HTTP_11, "/", &["a b"]).is_err());
        assert_eq!(host(V::HTTP_10, "/", &[]), Ok(String::new()));
        // The absolute form's authority wins over Host.
        assert_eq!(
            host(V::HTTP_11, "http://b.localhost/x", &["a.localhost"]),
            Ok("b.localhost".into())
        );
        assert!(host(V::HTTP_11, "http://u@b.localhost/x", &[]).is_err());
        assert_eq!(
            host(V::HTTP_2, "http://h2.localhost/", &[]),
            Ok("h2.localhost".into())
        );
    }
}
