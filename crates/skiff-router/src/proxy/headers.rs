//! The request's headers on the way in and out: the request id, Knative's forwarding
//! headers (`X-Forwarded-For`/`-Proto`, `Forwarded`), the W3C trace context, and the
//! hop-by-hop headers that stay on the client's connection.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Version};
use hyper::body::Incoming;
use rand::Rng;

use super::Peer;

pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

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

/// The request id step: the client's `X-Request-Id` when it is sane (and then it is
/// forwarded as it is), else a new one, set on the request.
pub(super) fn request_id<B>(req: &mut Request<B>) -> HeaderValue {
    let client_id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(sane_id))
        .cloned();
    match client_id {
        Some(id) => id,
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID, id.clone());
            id
        }
    }
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

/// The forwarding-headers step, Knative's request headers: the client appended to
/// `X-Forwarded-For` and `Forwarded`, `X-Forwarded-Proto` when absent, a valid `traceparent`,
/// and `Host` set to the host the request was routed by (`host_full`). True when the
/// client's `traceparent` was kept.
pub(super) fn forwarding(h: &mut HeaderMap, peer: &Peer, host_full: &str) -> bool {
    forwarded_for(h, peer, host_full);
    let client_trace = trace_context(h);
    if h.get(header::HOST).and_then(|v| v.to_str().ok()) != Some(host_full)
        && let Ok(v) = HeaderValue::from_str(host_full)
    {
        h.insert(header::HOST, v);
    }
    client_trace
}

/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`.
fn forwarded_for(h: &mut HeaderMap, peer: &Peer, host_full: &str) {
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
}

/// The client's `traceparent` when valid (true); else a new one, and no `tracestate`.
fn trace_context(h: &mut HeaderMap) -> bool {
    let tp_ok = h
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(valid_traceparent);
    if !tp_ok {
        h.remove(TRACESTATE);
        h.insert(TRACEPARENT, new_traceparent());
    }
    tp_ok
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

/// Drops the hop-by-hop headers.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

/// Whether the request asks to upgrade its HTTP/1.1 connection (WebSocket).
pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
        && req.headers().contains_key(header::UPGRADE)
}

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
}
