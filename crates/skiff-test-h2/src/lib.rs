//! `skiff-test-h2`: a test server for the protocols skiff's router must carry besides
//! HTTP/1.1: h2c (HTTP/2 over cleartext TCP with prior knowledge, RFC 9113 §3.3) and
//! WebSocket (RFC 6455).
//!
//! One port serves both HTTP/1.1 and h2c; [`serve`] runs it on a listener, and the
//! `skiff-test-h2` binary runs it on `0.0.0.0:$PORT` (default 8080). Endpoints:
//!
//! - `GET /healthz`: 200 `ok`.
//! - `GET /proto`: 200, two lines: the request's HTTP version as `http::Version`'s `Debug`
//!   form (`HTTP/1.1`, `HTTP/2.0`) and the authority it was sent to (HTTP/2's `:authority`,
//!   else the `Host` header; empty when there is neither).
//! - `POST /echo`: 200, the request body streamed back as it arrives, never buffered whole,
//!   with the request's `Content-Type` (default `application/octet-stream`).
//! - `GET /ws`: a WebSocket over an HTTP/1.1 upgrade; every text and binary message is sent
//!   back, pings get pongs, and a close is answered with a close.
//! - anything else: 404.
//!
//! # Design
//!
//! - hyper-util's `auto` builder looks at a connection's first bytes: the HTTP/2 connection
//!   preface means h2c, anything else HTTP/1.1. It serves with upgrades, so a `101` on an
//!   HTTP/1.1 connection hands the socket to the WebSocket session.
//! - Every connection is a task in one [`JoinSet`] owned by [`serve`], and a connection's
//!   WebSocket session runs inside that same task, after hyper has released the socket:
//!   the handler passes the pending upgrade to its connection through a channel. So no task
//!   outlives [`serve`]; returning (on shutdown) aborts all of them.
//! - The WebSocket side is `tokio-tungstenite` on the raw upgraded socket; tungstenite
//!   queues the pong for a ping (and the reply to a close) itself, and the session flushes
//!   it at once.
//!
//! # Limitations
//!
//! - No TLS, and no h2c upgrade from HTTP/1.1 (`Upgrade: h2c`, dropped by RFC 9113): only
//!   prior knowledge.
//! - No WebSocket over HTTP/2 (RFC 8441 extended CONNECT); `/ws` over HTTP/2 is a 400.
//! - The opening handshake checks what RFC 6455 §4.2.1 needs to answer (`Connection`,
//!   `Upgrade`, `Sec-WebSocket-Version: 13`, a `Sec-WebSocket-Key`), but not that the key
//!   is 16 base64-encoded bytes, nor `Origin`; no subprotocols or extensions are offered.
//! - Requests are not logged; connection and session errors go to stderr.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, CONTENT_TYPE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

/// The response body type: fixed text, nothing, or a request body streamed back.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long accepting pauses after an error such as `EMFILE`, so that a persistent error
/// does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Writes a line to stderr, ignoring failure: `eprintln!` panics when the write fails (a
/// closed pipe), and no log line is worth the server.
pub fn log_line(line: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(line);
    let _ = err.write_all(b"\n");
    let _ = err.flush();
}

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` completes.
///
/// Returning stops accepting and aborts every connection still open, WebSocket sessions
/// included. Accept errors are logged and retried after a short pause.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = done
                    && err.is_panic()
                {
                    log_line(format_args!("skiff-test-h2: connection task panicked: {err}"));
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer));
                }
                Err(err) => {
                    log_line(format_args!("skiff-test-h2: accepting: {err}"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one connection: its requests, then its WebSocket session if one was upgraded to.
async fn connection(stream: TcpStream, peer: SocketAddr) {
    // Echoes and WebSocket messages are small writes that a test waits on.
    let _ = stream.set_nodelay(true);
    let (upgrades, upgraded) = mpsc::channel::<OnUpgrade>();
    let service =
        service_fn(move |req| std::future::ready(Ok::<_, Infallible>(route(req, &upgrades))));
    let served = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        log_line(format_args!("skiff-test-h2: connection from {peer}: {err}"));
    }
    // After a `101`, hyper ends the connection future and hands the socket to the pending
    // upgrade; at most one request per connection can have asked for it.
    while let Ok(on_upgrade) = upgraded.try_recv() {
        websocket_session(on_upgrade, peer).await;
    }
}

/// Answers one request.
fn route(req: Request<Incoming>, upgrades: &mpsc::Sender<OnUpgrade>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok".to_owned()),
        (&Method::GET, "/proto") => proto(&req),
        (&Method::POST, "/echo") => echo(req),
        (&Method::GET, "/ws") => websocket_upgrade(req, upgrades),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

/// `GET /proto`: the version and the authority the request was sent with.
fn proto(req: &Request<Incoming>) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    text(
        StatusCode::OK,
        format!("{:?}\n{authority}\n", req.version()),
    )
}

/// `POST /echo`: the request body, streamed back frame by frame.
fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let mut resp = Response::new(req.into_body().boxed());
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

/// `GET /ws`: checks the opening handshake (RFC 6455 §4.2.1) and answers `101`, passing
/// the pending upgrade to the connection, which runs the session once hyper lets go of the
/// socket.
fn websocket_upgrade(
    mut req: Request<Incoming>,
    upgrades: &mpsc::Sender<OnUpgrade>,
) -> Response<Body> {
    if req.version() != Version::HTTP_11 {
        return text(
            StatusCode::BAD_REQUEST,
            "a WebSocket needs an HTTP/1.1 upgrade; WebSocket over HTTP/2 is not supported\n"
                .to_owned(),
        );
    }
    let headers = req.headers();
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, "websocket") {
        return text(
            StatusCode::BAD_REQUEST,
            "not a WebSocket handshake: needs `Connection: Upgrade` and `Upgrade: websocket`\n"
                .to_owned(),
        );
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        // RFC 6455 §4.2.2: say which versions are supported.
        let mut resp = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version: only 13\n".to_owned(),
        );
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return resp;
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "not a WebSocket handshake: no Sec-WebSocket-Key\n".to_owned(),
        );
    };
    let Ok(accept) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the Sec-WebSocket-Accept value is not a header value\n".to_owned(),
        );
    };
    if upgrades.send(hyper::upgrade::on(&mut req)).is_err() {
        // The receiver lives as long as the connection that is calling us.
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection is gone\n".to_owned(),
        );
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Echoes messages on an upgraded connection until the peer closes it.
async fn websocket_session(on_upgrade: OnUpgrade, peer: SocketAddr) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            log_line(format_args!("skiff-test-h2: upgrading {peer}: {err}"));
            return;
        }
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    while let Some(message) = ws.next().await {
        let sent = match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => ws.send(message).await,
            // tungstenite has queued the pong (or the closing reply); send it now rather
            // than with the next read.
            Ok(Message::Ping(_) | Message::Close(_)) => ws.flush().await,
            Ok(Message::Pong(_) | Message::Frame(_)) => Ok(()),
            Err(err) => Err(err),
        };
        match sent {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return;
            }
            Err(err) => {
                log_line(format_args!("skiff-test-h2: WebSocket with {peer}: {err}"));
                return;
            }
        }
    }
}

/// Whether a comma-separated header (such as `Connection: keep-alive, Upgrade`) holds
/// `token`, compared ASCII case-insensitively.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A `text/plain` response.
fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An empty body.
fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `has_token` finds a token in a list, in any case, across repeated headers.
    #[test]
    fn has_token_reads_lists() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append(CONNECTION, HeaderValue::from_static("foo,  UpGrade "));
        assert!(has_token(&headers, &CONNECTION, "upgrade"));
        assert!(!has_token(&headers, &CONNECTION, "close"));
        assert!(!has_token(&headers, &UPGRADE, "websocket"));
    }
}
