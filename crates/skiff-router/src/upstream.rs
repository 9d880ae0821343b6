//! Sending a request to an instance.
//!
//! HTTP/1.1 goes through hyper-util's pooling client, whose pool key is the URI's authority:
//! the router puts the instance id there (and [`NsConnector`] connects inside that
//! instance's namespace), while the client's own `Host` header is passed on untouched.
//!
//! HTTP/2 (an instance port named `h2c`) cannot work that way: HTTP/2 carries the authority
//! as the `:authority` pseudo-header, taken from the URI, and the application must see the
//! client's. So h2c instances get one multiplexed connection each, kept here by instance
//! id, and requests keep their original authority.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Body;
use crate::connect::NsConnector;

/// Why a request did not get a response from an instance.
#[derive(Debug)]
pub enum UpstreamError {
    /// The HTTP/1.1 client failed.
    Http1(hyper_util::client::legacy::Error),
    /// No connection could be made to the instance.
    Connect(std::io::Error),
    /// The HTTP/2 connection or request failed.
    Http2(hyper::Error),
}

impl UpstreamError {
    /// Whether the request never reached the instance because no connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Http1(e) => e.is_connect(),
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
    connector: NsConnector,
    conns: Mutex<HashMap<String, SendRequest<Body>>>,
}

impl H2Connections {
    pub(crate) fn new(connector: NsConnector) -> Self {
        H2Connections {
            connector,
            conns: Mutex::default(),
        }
    }

    /// Sends `req` (whose URI carries the client's authority) to instance `id`'s `port`.
    pub(crate) async fn request(
        &self,
        id: &str,
        port: u16,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut sender = self.sender(id, port).await?;
        sender.ready().await.map_err(UpstreamError::Http2)?;
        sender.send_request(req).await.map_err(UpstreamError::Http2)
    }

    async fn sender(&self, id: &str, port: u16) -> Result<SendRequest<Body>, UpstreamError> {
        if let Some(s) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let uri: http::Uri = format!("http://{id}:{port}/")
            .parse()
            .map_err(|e| UpstreamError::Connect(std::io::Error::other(e)))?;
        let io = tower_service::Service::call(&mut self.connector.clone(), uri)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(io.into_inner()))
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

/// Shared handle.
pub(crate) type H2 = Arc<H2Connections>;
