//! Host routing and the traffic split: the host a request is for (RFC 9112 §3.2), its route,
//! and the revision's pool it goes to.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};
use rand::Rng;

use super::Answer;
use crate::{Pool, Resolved, Router};

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
        Some(v) => valid_host(v).ok_or("the Host header is not a valid host[:port]"),
        None if req.version() == Version::HTTP_11 => Err("the request has no Host header"),
        None => Ok(String::new()),
    }
}

/// A Host header's value when it is a valid `host[:port]` (with no user info).
fn valid_host(v: &HeaderValue) -> Option<String> {
    v.to_str()
        .ok()
        .filter(|h| !h.contains('@'))
        .and_then(|h| h.parse::<http::uri::Authority>().ok().map(|_| h.to_owned()))
}

/// The host step: the host the request is for, as sent (port included). RFC 9112 §3.2: a
/// request with two Host headers, an invalid one, or (HTTP/1.1) none is a 400; an
/// absolute-form target's authority takes the place of Host.
pub(super) fn host<B>(req: &Request<B>) -> Result<String, Answer> {
    request_host(req).map_err(|why| Answer::new(StatusCode::BAD_REQUEST, format!("skiff: {why}")))
}

/// The route table's key for `host_full`: no port, no trailing dot, lowercase.
fn route_key(host_full: &str) -> Cow<'_, str> {
    let host = host_full
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host_full, |(h, _)| h)
        .trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

/// The daemon's own service, when the request is for its local host.
pub(super) fn local<'r>(
    router: &'r Router,
    host_full: &str,
) -> Option<&'r Arc<dyn crate::LocalService>> {
    router.local(&route_key(host_full))
}

/// The routing step: the pool of the revision a request for `host_full` goes to (by the
/// traffic split's percentages), or the 404 of an unknown host, or the 503 of a Service that
/// cannot serve.
pub(super) fn pick(router: &Router, host_full: &str) -> Result<Arc<Pool>, Answer> {
    let host = route_key(host_full);
    let Some(route) = router.route(&host) else {
        return Err(Answer::new(
            StatusCode::NOT_FOUND,
            format!(
                "skiff: no service for host `{host}`; services answer at <service>.<namespace>.{}",
                router.domain()
            ),
        ));
    };
    match &*route {
        Resolved::Unavailable(message) => Err(Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("skiff: {message}"),
        )
        .retry_after(5)),
        Resolved::One(p) => Ok(p.clone()),
        Resolved::Split { split, total } => Ok(split_pick(split, *total).clone()),
    }
}

/// One pool of a split, drawn at random by share (`total` is the sum of the shares).
fn split_pick(split: &[(Arc<Pool>, u32)], total: u32) -> &Arc<Pool> {
    let mut pick = rand::rng().random_range(0..total.max(1));
    let mut chosen = &split[0].0;
    for (p, share) in split {
        if pick < *share {
            chosen = p;
            break;
        }
        pick -= share;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

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
