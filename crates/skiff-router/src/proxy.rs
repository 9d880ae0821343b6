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

use crate::pool::{AcquireError, Pool, Slot};
use crate::upstream::{Lease, Upstreams};
use crate::{Body, BoxError, Resolved, Router};

const REQUEST_ID: &str = "x-request-id";

fn text(status: StatusCode, msg: String, request_id: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(REQUEST_ID, v);
    }
    r
}

fn sane_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random::<u128>() | 1;
    let span: u64 = rng.random::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
        && req.headers().contains_key(header::UPGRADE)
}

/// The activator's answer when a request got no instance.
fn rejected(pool: &Pool, e: AcquireError, request_id: &str) -> Response<Body> {
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

pub(crate) async fn handle(
    router: &Arc<Router>,
    up: &Upstreams,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let host_full = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host = host_full
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host_full.as_str(), |(h, _)| h);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
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
        let ip = peer.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        if !h.contains_key("x-forwarded-proto") {
            h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        }
        let ip_token = if peer.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        let fwd = format!("for={ip_token};host=\"{host_full}\";proto=http");
        let fwd = match h.get("forwarded").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {fwd}"),
            None => fwd,
        };
        if let Ok(v) = HeaderValue::from_str(&fwd) {
            h.insert("forwarded", v);
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert(REQUEST_ID, v);
        }
        let tp_ok = h
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .is_some_and(valid_traceparent);
        if !tp_ok {
            h.remove("tracestate");
            if let Ok(v) = HeaderValue::from_str(&new_traceparent()) {
                h.insert("traceparent", v);
            }
        }
        if !h.contains_key(header::HOST)
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

    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let upgrade = is_upgrade(&req);
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    if !upgrade {
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
    }
    parts.version = if spec.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // A request without a body can be sent again when the connection to an instance could
    // not be made (it died between its last probe and now).
    let replayable = hyper::body::Body::is_end_stream(&body);
    let mut body = Some(body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    let first_byte = spec
        .response_start_timeout
        .map_or(spec.timeout, |r| r.min(spec.timeout));
    let deadline = Instant::now() + first_byte;
    let mut attempt = 0u32;
    // HTTP/1.1: origin-form, the client's Host header. HTTP/2: the URI's authority becomes
    // `:authority`, so it is the client's.
    let uri = if spec.h2c {
        format!("http://{host_full}{path}").parse::<http::Uri>()
    } else {
        path.parse::<http::Uri>()
    }
    .ok();
    let (mut response, lease) = loop {
        let mut p = parts.clone();
        p.uri = match uri.clone() {
            Some(u) => u,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "skiff: the request path is not valid".into(),
                    &request_id,
                );
            }
        };
        let b = match body.take() {
            Some(b) => b,
            None => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        };
        let sent = async {
            let req = Request::from_parts(p, b);
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
            Ok(Err(e)) if e.is_connect() && replayable && attempt < 3 => {
                attempt += 1;
                debug!(revision = %revision, instance = %slot.endpoint.id, error = %e, attempt, "connecting to an instance failed; trying again");
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
            Ok(Err(e)) => {
                warn!(revision = %revision, instance = %slot.endpoint.id, error = %ErrorChain(&e), "forwarding to an instance failed");
                let status = StatusCode::BAD_GATEWAY;
                pool.handles.answered(status);
                return text(
                    status,
                    format!(
                        "skiff: the instance of revision `{revision}` failed to answer: {}",
                        ErrorChain(&e)
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
        tokio::spawn(async move {
            let _slot = slot;
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
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            parts.headers.insert(REQUEST_ID, v);
        }
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
    }

    let (mut parts, body) = response.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(HeaderName::from_static(REQUEST_ID), v);
    }
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
        assert!(valid_traceparent(&new_traceparent()));
    }
}
