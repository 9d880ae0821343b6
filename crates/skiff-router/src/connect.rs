//! Connections into instances: the router asks a [`Connect`] for a TCP stream to a port
//! inside an instance's network namespace, given the namespace handle its pool endpoint
//! carries. The daemon passes one built on the runtime's setns connector; tests pass one that
//! dials the host's loopback.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;

/// What [`Connect::connect`] returns: a boxed future of the connected stream.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Makes TCP connections inside instances' network namespaces.
pub trait Connect: Send + Sync + 'static {
    /// Connects to `127.0.0.1:port` inside the network namespace `netns`.
    fn connect(&self, netns: Arc<OwnedFd>, port: u16) -> ConnectFuture<'_>;
}

/// What [`Explain::explain`] returns.
pub type ExplainFuture<'a> = Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;

/// Why an instance failed a request the router saw only as a cut connection: the runtime
/// knows (an OOM kill, an exit). Set with [`crate::Router::set_explain`].
pub trait Explain: Send + Sync + 'static {
    /// One line for the client about what happened to `instance` just now (naming the
    /// instance and, for an OOM kill, its memory limit), waiting briefly for the runtime to
    /// record it; `None` when it knows of nothing.
    fn explain(&self, instance: &str) -> ExplainFuture<'_>;
}

/// Connects through `connector` and turns Nagle's algorithm off on the stream (requests and
/// responses are written whole; waiting for more to coalesce only adds latency).
pub(crate) async fn dial(
    connector: &dyn Connect,
    netns: Arc<OwnedFd>,
    port: u16,
) -> io::Result<TcpStream> {
    let stream = connector.connect(netns, port).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
