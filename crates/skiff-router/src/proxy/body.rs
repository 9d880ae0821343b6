//! The guarded response body: it holds the request's instance slot (and its connection's
//! lease) until it ends, ends it when the instance stays silent longer than
//! `idleTimeoutSeconds`, counts its bytes, and closes the request's account when it ends.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use tokio::time::Sleep;
use tracing::warn;

use super::Exchange;
use crate::BoxError;
use crate::pool::Slot;
use crate::upstream::Lease;

/// A response body that holds its instance slot (and its connection's lease) until it ends,
/// and ends it when the instance stays silent longer than the idle timeout.
pub(super) struct Guarded {
    inner: Incoming,
    lease: Option<Lease>,
    slot: Option<Slot>,
    idle: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    ex: Option<Exchange>,
    status: http::StatusCode,
}

impl Guarded {
    /// Guards `inner`: `slot` and `lease` are released when it ends, and it is aborted after
    /// `idle` of silence (if set); `ex` is finished with `status` then.
    pub(super) fn new(
        inner: Incoming,
        lease: Option<Lease>,
        slot: Slot,
        idle: Option<Duration>,
        ex: Exchange,
        status: http::StatusCode,
    ) -> Self {
        Guarded {
            inner,
            lease,
            slot: Some(slot),
            idle,
            sleep: None,
            ex: Some(ex),
            status,
        }
    }

    /// The response is complete: the connection goes back first, then the slot is freed, so
    /// the next request to this instance finds the connection idle.
    fn finish(&mut self) {
        if let Some(l) = self.lease.take() {
            l.give_back();
        }
        self.slot = None;
        if let Some(ex) = self.ex.take() {
            ex.finish(self.status, true, None);
        }
    }

    /// The response failed or was cut short: the connection is closed, the slot freed.
    fn abort(&mut self) {
        self.lease = None;
        self.slot = None;
        if let Some(ex) = self.ex.take() {
            ex.finish(self.status, false, None);
        }
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
                if let (Ok(frame), Some(ex)) = (&f, this.ex.as_mut())
                    && let Some(data) = frame.data_ref()
                {
                    ex.bytes += data.len() as u64;
                }
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
