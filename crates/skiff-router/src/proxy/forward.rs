//! The exchange with the instance: the request as the instance gets it (its HTTP version and
//! URI), sent under the response-start deadline, and sent again on another instance when no
//! connection could be made; failures become skiff's own answers (504, 502, or the client's
//! 400 for a bad request body).

use std::time::Duration;

use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Answer, Exchange, activate, headers};
use crate::pool::{Endpoint, Slot};
use crate::upstream::{Failed, Lease, UpstreamError, Upstreams};
use crate::{Body, BoxError, PoolSpec, Router};

/// Most times a request that could not be sent is sent again.
const MAX_RETRIES: u32 = 3;

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

/// The URI-rewrite step, with the rest of the request as the instance gets it: hop-by-hop
/// headers dropped (kept for an upgrade, whose client side is taken here), the instance's
/// HTTP version, and the URI its protocol wants. Returns the request and the client's side
/// of an upgrade, if it asks for one.
pub(super) fn outbound(
    mut req: Request<Incoming>,
    spec: &PoolSpec,
    host_full: &str,
) -> Result<(Request<Body>, Option<OnUpgrade>), Answer> {
    let client_upgrade = headers::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if client_upgrade.is_none() {
        headers::strip_hop_by_hop(&mut parts.headers);
    }
    parts.version = if spec.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    parts.uri = rewrite_uri(parts.uri, spec.h2c, host_full)?;
    let body = body
        .map_err(|e| -> BoxError { Box::new(ClientBody(e)) })
        .boxed();
    Ok((Request::from_parts(parts, body), client_upgrade))
}

/// HTTP/1.1: origin-form, with the client's Host header. HTTP/2: the URI's authority
/// becomes `:authority`, so it is the client's.
fn rewrite_uri(uri: Uri, h2c: bool, host_full: &str) -> Result<Uri, Answer> {
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    if !h2c && origin_form {
        return Ok(uri);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let parsed = if h2c {
        format!("http://{host_full}{path}").parse::<Uri>()
    } else {
        path.parse::<Uri>()
    };
    parsed.map_err(|_| {
        Answer::new(
            StatusCode::BAD_REQUEST,
            "skiff: the request path is not valid".into(),
        )
    })
}

/// The instance's response, with the connection lease and the slot it came through.
pub(super) struct Forwarded {
    pub(super) response: Response<Incoming>,
    pub(super) lease: Option<Lease>,
    pub(super) slot: Slot,
}

/// The timeout and retry step: sends `req` to the slot's instance and waits for its
/// response to start, up to `responseStartTimeoutSeconds` (when set) and `timeoutSeconds`.
/// A request that could not be sent (no connection: the instance died since its last
/// probe) goes, body and all, to another instance of the pool, at most [`MAX_RETRIES`]
/// times; the deadline bounds each send, not the wait for the next slot.
pub(super) async fn forward(
    router: &Router,
    up: &Upstreams,
    ex: &mut Exchange,
    spec: &PoolSpec,
    mut slot: Slot,
    mut req: Request<Body>,
    upgrade: bool,
) -> Result<Forwarded, Answer> {
    let first_byte = spec
        .response_start_timeout
        .map_or(spec.timeout, |r| r.min(spec.timeout));
    let deadline = Instant::now() + first_byte;
    let pool = ex.pool.clone();
    let mut attempt = 0u32;
    loop {
        ex.instance = Some(slot.endpoint.clone());
        let sent = tokio::time::timeout_at(deadline, send(up, &slot.endpoint, spec, req, upgrade));
        match sent.await {
            Ok(Ok((response, lease))) => {
                return Ok(Forwarded {
                    response,
                    lease,
                    slot,
                });
            }
            Err(_) => return Err(timed_out(spec, first_byte)),
            Ok(Err(Failed {
                error,
                unsent: Some(unsent),
            })) if error.is_connect() && attempt < MAX_RETRIES => {
                attempt += 1;
                debug!(revision = %spec.revision, instance = %slot.endpoint.id, error = %error, attempt, "connecting to an instance failed; trying again");
                req = unsent;
                drop(slot);
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                slot = activate(router, &pool, spec).await?;
            }
            Ok(Err(Failed { error, .. })) => {
                return Err(failed(router, spec, &slot.endpoint, &error).await);
            }
        }
    }
}

/// One try: the request to instance `ep`, over HTTP/2 (h2c) or HTTP/1.1.
async fn send(
    up: &Upstreams,
    ep: &Endpoint,
    spec: &PoolSpec,
    req: Request<Body>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
    if spec.h2c {
        up.h2.request(ep, spec.port, req).await.map(|r| (r, None))
    } else {
        up.h1.request(ep, spec.port, req, upgrade).await
    }
}

/// The response did not start within `first_byte`: 504.
fn timed_out(spec: &PoolSpec, first_byte: Duration) -> Answer {
    Answer::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "skiff: revision `{}` did not start answering within {}s",
            spec.revision,
            first_byte.as_secs_f64()
        ),
    )
}

/// The request failed: the client's 400 when its own body was bad (an invalid chunk, cut
/// short), else the instance's failure, 502, saying what happened to the instance when the
/// runtime knows (an OOM kill names the instance and its memory limit).
async fn failed(router: &Router, spec: &PoolSpec, ep: &Endpoint, error: &UpstreamError) -> Answer {
    let revision = &spec.revision;
    if let Some(ClientBody(why)) = client_body_error(error) {
        info!(revision = %revision, error = %why, "the client sent a bad request body; answered 400");
        return Answer::new(
            StatusCode::BAD_REQUEST,
            format!("skiff: the request body could not be read: {why}"),
        );
    }
    warn!(revision = %revision, instance = %ep.id, error = %ErrorChain(error), "forwarding to an instance failed");
    let status = StatusCode::BAD_GATEWAY;
    let body = match router.explain(&ep.id).await {
        Some(why) => format!("skiff: {why}"),
        None => format!(
            "skiff: the instance of revision `{revision}` failed to answer: {}",
            ErrorChain(error)
        ),
    };
    Answer::new(status, body)
}
