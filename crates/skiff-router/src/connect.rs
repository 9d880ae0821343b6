//! The hyper client's connector: an upstream URI's authority is an instance id, and the
//! connection is made inside that instance's network namespace through the runtime's
//! connector.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use skiff_runtime::netns::Connector;

/// Instance id → network namespace.
pub type Namespaces = Arc<RwLock<HashMap<String, Arc<OwnedFd>>>>;

/// Connects to `127.0.0.1:<port>` inside the namespace named by the URI's host.
#[derive(Clone)]
pub struct NsConnector {
    /// The runtime's connector.
    pub connector: Connector,
    /// Where each instance is.
    pub namespaces: Namespaces,
}

impl tower_service::Service<http::Uri> for NsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.connector.clone();
        let ns = uri.host().and_then(|h| {
            self.namespaces
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(h)
                .cloned()
        });
        let port = uri.port_u16().unwrap_or(8080);
        Box::pin(async move {
            let ns = ns.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the instance is gone")
            })?;
            let stream = connector.connect(ns, port).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
