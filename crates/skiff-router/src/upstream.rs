//! Sending a request to an instance, over connections made inside its network namespace
//! (through a [`Connect`], with the namespace handle of the instance's pool [`Endpoint`]) and
//! kept per instance (and per router thread: see [`Upstreams`]).
//!
//! HTTP/1.1: a stack of idle connections per instance. A request takes one (or makes one),
//! and the connection goes back when the response body has been read to its end — the same
//! moment the instance's `containerConcurrency` slot is released — so the next request to
//! that instance reuses it. A connection that the instance closed while idle is noticed
//! before the request is written (hyper hands the request back) and the request goes on
//! the next one, or a fresh one. Upgrades (WebSocket) get a connection of their own.
//!
//! HTTP/2 (an instance port named `h2c`): one multiplexed connection per instance. HTTP/2
//! carries the authority as `:authority`, taken from the URI, so requests keep the client's
//! authority; the connection is found by instance id, not by URI.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Body;
use crate::connect::{self, Connect};
use crate::pool::Endpoint;

/// Why a request did not get a response from an instance.
#[derive(Debug)]
pub enum UpstreamError {
    /// The HTTP/1.1 exchange failed.
    Http1(hyper::Error),
    /// No connection could be made to the instance.
    Connect(std::io::Error),
    /// The HTTP/2 connection or request failed.
    Http2(hyper::Error),
}

impl UpstreamError {
    /// Whether the request never reached the instance because no connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(_) => false,
            UpstreamError::Connect(_) => true,
            UpstreamError::Http2(_) => false,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Http1(_) => f.write_str("HTTP/1.1 request to the instance failed"),
            UpstreamError::Connect(_) => f.write_str("connecting to the instance failed"),
            UpstreamError::Http2(_) => f.write_str("HTTP/2 request to the instance failed"),
        }
    }
}

/// A request that got no response: why, and the request itself when it was never sent
/// (no connection could be made), so that it can go to another instance, body and all.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: UpstreamError,
    pub(crate) unsent: Option<http::Request<Body>>,
}

impl Failed {
    fn sent(error: UpstreamError) -> Self {
        Failed {
            error,
            unsent: None,
        }
    }

    /// No connection could be made: `req` was never written and can go elsewhere.
    fn unsent(error: UpstreamError, req: http::Request<Body>) -> Self {
        Failed {
            error,
            unsent: Some(req),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Http1(e) => Some(e),
            UpstreamError::Connect(e) => Some(e),
            UpstreamError::Http2(e) => Some(e),
        }
    }
}

/// One HTTP/2 connection per h2c instance.
pub(crate) struct H2Connections {
    connector: Arc<dyn Connect>,
    conns: Mutex<HashMap<String, SendRequest<Body>>>,
}

impl H2Connections {
    pub(crate) fn new(connector: Arc<dyn Connect>) -> Self {
        H2Connections {
            connector,
            conns: Mutex::default(),
        }
    }

    /// Sends `req` (whose URI carries the client's authority) to instance `ep`'s `port`.
    pub(crate) async fn request(
        &self,
        ep: &Endpoint,
        port: u16,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, Failed> {
        let mut sender = match self.sender(ep, port).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        sender
            .ready()
            .await
            .map_err(|e| Failed::sent(UpstreamError::Http2(e)))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| Failed::sent(UpstreamError::Http2(e)))
    }

    async fn sender(&self, ep: &Endpoint, port: u16) -> Result<SendRequest<Body>, UpstreamError> {
        let id = ep.id.as_str();
        if let Some(s) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let io = connect::dial(&*self.connector, ep.netns.clone(), port)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Http2)?;
        let id_owned = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(instance = %id_owned, error = %e, "HTTP/2 connection to an instance ended");
            }
        });
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), sender.clone());
        Ok(sender)
    }

    /// Drops the connection to an instance that is gone.
    pub(crate) fn forget(&self, id: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Most idle HTTP/1.1 connections kept per instance (per router thread).
const MAX_IDLE_PER_INSTANCE: usize = 512;

/// Idle HTTP/1.1 connections per instance.
pub(crate) struct H1Connections {
    connector: Arc<dyn Connect>,
    idle: Mutex<HashMap<String, Vec<http1::SendRequest<Body>>>>,
}

/// A connection lent to one request; [`Lease::give_back`] returns it once the response
/// body has ended. Dropping it instead closes the connection.
pub(crate) struct Lease {
    pool: Arc<H1Connections>,
    id: String,
    sender: http1::SendRequest<Body>,
}

impl Lease {
    /// Returns the connection to the instance's idle stack (if it can carry another
    /// request).
    pub(crate) fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.entry(self.id).or_default();
        if stack.len() < MAX_IDLE_PER_INSTANCE {
            stack.push(self.sender);
        }
    }
}

impl H1Connections {
    pub(crate) fn new(connector: Arc<dyn Connect>) -> Self {
        H1Connections {
            connector,
            idle: Mutex::default(),
        }
    }

    fn take_idle(&self, id: &str) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(id)?;
        while let Some(s) = stack.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(
        &self,
        ep: &Endpoint,
        port: u16,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = connect::dial(&*self.connector, ep.netns.clone(), port)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Http1)?;
        let id_owned = ep.id.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(instance = %id_owned, error = %e, "HTTP/1.1 connection to an instance ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to instance `ep`'s `port`. Returns the response and, unless the request
    /// upgrades the connection, the lease of its connection.
    pub(crate) async fn request(
        self: &Arc<Self>,
        ep: &Endpoint,
        port: u16,
        mut req: http::Request<Body>,
        upgrade: bool,
    ) -> Result<(http::Response<Incoming>, Option<Lease>), Failed> {
        let id = ep.id.as_str();
        if !upgrade {
            while let Some(mut sender) = self.take_idle(id) {
                // Given back as its response body ended, the connection may need a moment
                // to be ready for the next request; a closed one errors here.
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let lease = Lease {
                            pool: self.clone(),
                            id: id.to_owned(),
                            sender,
                        };
                        return Ok((resp, Some(lease)));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not written: the idle connection had closed. Try the next one.
                        Some(r) => req = r,
                        None => return Err(Failed::sent(UpstreamError::Http1(e.into_error()))),
                    },
                }
            }
        }
        let mut sender = match self.connect(ep, port).await {
            Ok(s) => s,
            Err(error) => return Err(Failed::unsent(error, req)),
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failed::sent(UpstreamError::Http1(e)))?;
        let lease = (!upgrade).then(|| Lease {
            pool: self.clone(),
            id: id.to_owned(),
            sender,
        });
        Ok((resp, lease))
    }

    /// Drops the idle connections to an instance that is gone.
    pub(crate) fn forget(&self, id: &str) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The connections of one router thread.
pub(crate) struct Upstreams {
    pub(crate) h1: Arc<H1Connections>,
    pub(crate) h2: H2Connections,
}

impl Upstreams {
    pub(crate) fn new(connector: Arc<dyn Connect>) -> Self {
        Upstreams {
            h1: Arc::new(H1Connections::new(connector.clone())),
            h2: H2Connections::new(connector),
        }
    }

    /// Drops the connections to an instance that is gone.
    pub(crate) fn forget(&self, id: &str) {
        self.h1.forget(id);
        self.h2.forget(id);
    }
}
