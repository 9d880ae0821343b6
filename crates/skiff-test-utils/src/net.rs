//! Clients for end-to-end tests of the protocols the router carries: an h2c GET
//! ([`h2c_get`]), an HTTP/1.1 GET ([`http1_get`]) and a WebSocket echo
//! ([`websocket_echo`]).
//!
//! Each connects to a TCP address (the router's ingress on loopback, or a test server)
//! and names the virtual host separately, the way a client that resolved the host to that
//! address would: as the `Host` header for HTTP/1.1 and WebSocket, as `:authority` for
//! HTTP/2.
//!
//! # Design
//!
//! - One fresh connection per call, so that a test knows which connection it measured and
//!   nothing is pooled between tests.
//! - The hyper connection is driven beside the exchange in the same future (no spawned
//!   task), and closed once the response has been read: an HTTP/2 client sends `GOAWAY`.
//! - Every call gives up after [`MAX_WAIT`] instead of hanging the test.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::header::HOST;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::MAX_WAIT;

/// GETs `http://{host}{path}` over HTTP/2 with prior knowledge (h2c: the connection
/// starts with the HTTP/2 preface, no upgrade) on a new connection to `addr`, with `host`
/// as `:authority`. Returns the status, the response's version and its body (lossily
/// decoded as UTF-8).
pub async fn h2c_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, Version, String)> {
    within(format!("h2c GET http://{host}{path} via {addr}"), async {
        let stream = connect(addr).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        // An absolute URI: hyper sends its authority as `:authority`.
        let req = Request::get(format!("http://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        drive(conn, async move {
            let mut sender = sender;
            let resp = sender.send_request(req).await.context("sending")?;
            read_response(resp).await
        })
        .await
    })
    .await
}

/// GETs `path` over HTTP/1.1 on a new connection to `addr`, with `Host: {host}`. Returns
/// the status, the response's version and its body (lossily decoded as UTF-8).
pub async fn http1_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, Version, String)> {
    within(
        format!("HTTP/1.1 GET http://{host}{path} via {addr}"),
        async {
            let stream = connect(addr).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP/1.1 handshake")?;
            let req = Request::get(path)
                .header(HOST, host)
                .body(Empty::<Bytes>::new())
                .context("building the request")?;
            drive(conn, async move {
                let mut sender = sender;
                let resp = sender.send_request(req).await.context("sending")?;
                read_response(resp).await
            })
            .await
        },
    )
    .await
}

/// Opens a WebSocket to `ws://{host}{path}` over a new connection to `addr` (so `Host:
/// {host}`), sends each of `messages` as a text message and waits for one text message
/// back before sending the next, then closes: it sends a close frame and waits for the
/// server's. Returns the texts received, in order. Pings and pongs in between are skipped;
/// a binary message, a close from the server or the connection ending before the closing
/// handshake is an error.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    path: &str,
    messages: &[&str],
) -> anyhow::Result<Vec<String>> {
    let url = format!("ws://{host}{path}");
    within(format!("WebSocket echo with {url} via {addr}"), async {
        let stream = connect(addr).await?;
        let request = url
            .as_str()
            .into_client_request()
            .context("building the WebSocket request")?;
        let (mut ws, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .context("WebSocket handshake")?;
        let mut echoes = Vec::with_capacity(messages.len());
        for &message in messages {
            ws.send(Message::text(message))
                .await
                .with_context(|| format!("sending message {}", echoes.len() + 1))?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        echoes.push(text.as_str().to_owned());
                        break;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(data))) => bail!(
                        "got a binary message ({} bytes) instead of the echo of message {}",
                        data.len(),
                        echoes.len() + 1
                    ),
                    Some(Ok(Message::Close(frame))) => bail!(
                        "the server closed the WebSocket ({frame:?}) after {} echoes",
                        echoes.len()
                    ),
                    Some(Err(err)) => {
                        return Err(err)
                            .with_context(|| format!("reading echo {}", echoes.len() + 1));
                    }
                    None => bail!("the connection ended after {} echoes", echoes.len()),
                }
            }
        }
        ws.close(None).await.context("sending the close frame")?;
        let mut server_closed = false;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) => server_closed = true,
                Some(Ok(_)) => {}
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => break,
                Some(Err(err)) => {
                    return Err(err).context("waiting for the server's close frame");
                }
            }
        }
        if !server_closed {
            bail!("the connection ended without the server's close frame");
        }
        Ok(echoes)
    })
    .await
}

/// Connects to `addr` with `TCP_NODELAY`, since tests wait on small writes.
async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    Ok(stream)
}

/// Runs `exchange` while driving its connection `conn`; `exchange` must drop the request
/// sender when done, which lets `conn` finish. An error from either is returned, the
/// exchange's first.
async fn drive<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    exchange: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let (result, closed) = tokio::join!(exchange, conn);
    match (result, closed) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(err)) => Err(err).context("the connection failed after the response"),
        (Err(err), Ok(())) => Err(err),
        (Err(err), Err(conn_err)) => Err(err.context(format!("the connection failed: {conn_err}"))),
    }
}

/// Reads a whole response.
async fn read_response(resp: http::Response<Incoming>) -> anyhow::Result<(u16, Version, String)> {
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the body")?
        .to_bytes();
    Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs `fut`, failing with `what` if it takes longer than [`MAX_WAIT`].
async fn within<T>(
    what: String,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(MAX_WAIT, fut)
        .await
        .map_err(|_| anyhow!("timed out after {MAX_WAIT:?}"))
        .and_then(|result| result)
        .with_context(|| what)
}
