//! Connections into instances: an instance id names a network namespace, and the
//! connection is made inside it through the runtime's connector.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use skiff_runtime::netns::Connector;

/// Instance id → network namespace.
pub type Namespaces = Arc<RwLock<HashMap<String, Arc<OwnedFd>>>>;

/// Makes connections inside instances' network namespaces.
#[derive(Clone)]
pub struct NsConnector {
    /// The runtime's connector.
    pub connector: Connector,
    /// Where each instance is.
    pub namespaces: Namespaces,
}

impl NsConnector {
    /// Connects to `127.0.0.1:port` inside instance `id`'s network namespace.
    pub async fn connect(&self, id: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let ns = self
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the instance is gone")
            })?;
        let stream = self.connector.connect(ns, port).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
