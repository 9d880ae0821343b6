//! Proves that `skiff-test-h2`'s [`serve`] answers as documented on one port over both
//! HTTP/1.1 and h2c, streams `/echo`, and echoes WebSocket messages, and that the clients
//! in `skiff_test_utils::net` work against it.
//!
//! The server runs in the test process on a loopback port 0 listener.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_test_h2::serve;
use skiff_test_utils::MAX_WAIT;
use skiff_test_utils::net::{h2c_get, http1_get, websocket_echo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The virtual host the tests name.
const HOST: &str = "hello.default.example.com";

/// A server running in this process.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves on a free loopback port.
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for [`serve`] to return.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(MAX_WAIT, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic");
    }
}

/// An h2c or HTTP/1.1 connection's request sender, its connection driven by a task.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// The request body type of [`Sender`].
type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Sender {
    /// Connects to `addr` with `version` (HTTP/2 means prior knowledge).
    async fn connect(addr: SocketAddr, version: Version) -> Sender {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connecting"));
        if version == Version::HTTP_2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            Sender::H1(sender)
        }
    }

    /// Sends `req` and returns the response head with its body still to read.
    async fn send(&mut self, req: Request<TestBody>) -> http::Response<hyper::body::Incoming> {
        let resp = match self {
            Sender::H1(sender) => sender.send_request(req).await,
            Sender::H2(sender) => sender.send_request(req).await,
        };
        resp.expect("a response")
    }
}

/// A `POST /echo` request with `body`, to [`HOST`].
fn echo_request(body: TestBody) -> Request<TestBody> {
    Request::post(format!("http://{HOST}/echo"))
        .header(http::header::HOST, HOST)
        .body(body)
        .expect("a valid request")
}

/// `/proto` reports the protocol each client spoke on the same port, and the authority
/// it named: `HTTP/2.0` for h2c prior knowledge, `HTTP/1.1` for HTTP/1.1.
#[tokio::test]
async fn proto_reports_h2c_and_http1_on_one_port() {
    let server = Server::start().await;

    let (status, version, body) = h2c_get(server.addr, HOST, "/proto")
        .await
        .expect("h2c GET /proto");
    assert_eq!((status, version), (200, Version::HTTP_2));
    assert_eq!(body, format!("HTTP/2.0\n{HOST}\n"));

    let (status, version, body) = http1_get(server.addr, HOST, "/proto")
        .await
        .expect("HTTP/1.1 GET /proto");
    assert_eq!((status, version), (200, Version::HTTP_11));
    assert_eq!(body, format!("HTTP/1.1\n{HOST}\n"));

    server.stop().await;
}

/// `/healthz` answers `ok` and any other path is a 404, over both protocols.
#[tokio::test]
async fn healthz_and_not_found() {
    let server = Server::start().await;
    for h2 in [true, false] {
        let get = |path| async move {
            if h2 {
                h2c_get(server.addr, HOST, path).await
            } else {
                http1_get(server.addr, HOST, path).await
            }
        };
        let (status, _, body) = get("/healthz").await.expect("GET /healthz");
        assert_eq!((status, body.as_str()), (200, "ok"), "h2: {h2}");
        let (status, _, _) = get("/nope").await.expect("GET /nope");
        assert_eq!(status, 404, "h2: {h2}");
    }
    let mut h2 = Sender::connect(server.addr, Version::HTTP_2).await;
    let resp = h2
        .send(
            Request::get(format!("http://{HOST}/echo"))
                .body(TestBody::default())
                .expect("a valid request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "GET /echo");
    server.stop().await;
}

/// A 1 MiB body comes back from `/echo` byte for byte, over h2c and HTTP/1.1.
#[tokio::test]
async fn echo_round_trips_one_mebibyte() {
    let server = Server::start().await;
    let sent: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let mut sender = Sender::connect(server.addr, version).await;
        let resp = sender
            .send(echo_request(Full::new(sent.clone()).boxed()))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{version:?}");
        assert_eq!(resp.version(), version);
        let got = tokio::time::timeout(MAX_WAIT, resp.into_body().collect())
            .await
            .expect("the echo within MAX_WAIT")
            .expect("reading the echo")
            .to_bytes();
        assert_eq!(got.len(), sent.len(), "{version:?}");
        assert!(
            got == sent,
            "{version:?}: the echo differs from the body sent"
        );
    }
    server.stop().await;
}

/// `/echo` streams: each chunk comes back while the request body is still open, so the
/// server never waits for the whole body (over h2c, where both directions run at once).
#[tokio::test]
async fn echo_streams_before_the_body_ends() {
    let server = Server::start().await;
    let (chunks, rx) = mpsc::channel::<Bytes>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut sender = Sender::connect(server.addr, Version::HTTP_2).await;
    let resp = sender
        .send(echo_request(BodyExt::boxed(StreamBody::new(stream))))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for chunk in ["first chunk", "second chunk"] {
        chunks
            .send(Bytes::from_static(chunk.as_bytes()))
            .await
            .expect("sending a chunk");
        let frame = tokio::time::timeout(MAX_WAIT, body.frame())
            .await
            .expect("the chunk's echo within MAX_WAIT, before the body ends")
            .expect("a frame")
            .expect("reading a frame");
        assert_eq!(
            frame.into_data().ok(),
            Some(Bytes::from_static(chunk.as_bytes()))
        );
    }
    drop(chunks);
    // What is left is the end of the stream, perhaps after an empty DATA frame.
    let rest = tokio::time::timeout(MAX_WAIT, body.collect())
        .await
        .expect("the end of the echo within MAX_WAIT")
        .expect("reading the end of the echo");
    assert_eq!(
        rest.to_bytes(),
        Bytes::new(),
        "the echo ends with the request body"
    );
    server.stop().await;
}

/// The WebSocket echo helper gets its three messages back, and the close completes.
#[tokio::test]
async fn websocket_echoes_messages() {
    let server = Server::start().await;
    let echoes = websocket_echo(server.addr, HOST, "/ws", &["one", "two", "three"])
        .await
        .expect("WebSocket echo");
    assert_eq!(echoes, ["one", "two", "three"]);
    server.stop().await;
}

/// A ping gets a pong with its payload, and a binary message is echoed as binary.
#[tokio::test]
async fn websocket_answers_ping_and_binary() {
    let server = Server::start().await;
    let stream = TcpStream::connect(server.addr).await.expect("connecting");
    let request = format!("ws://{HOST}/ws")
        .into_client_request()
        .expect("a WebSocket request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("WebSocket handshake");
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("sending a ping");
    let pong = tokio::time::timeout(MAX_WAIT, ws.next())
        .await
        .expect("a pong within MAX_WAIT")
        .expect("a message")
        .expect("reading");
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));
    ws.send(Message::Binary(Bytes::from_static(&[0, 1, 2, 255])))
        .await
        .expect("sending binary");
    let echo = tokio::time::timeout(MAX_WAIT, ws.next())
        .await
        .expect("an echo within MAX_WAIT")
        .expect("a message")
        .expect("reading");
    assert_eq!(echo, Message::Binary(Bytes::from_static(&[0, 1, 2, 255])));
    ws.close(None).await.expect("closing");
    server.stop().await;
}

/// `/ws` without an HTTP/1.1 upgrade is refused: a plain GET and an HTTP/2 GET get 400,
/// and a request for another WebSocket version gets 426 naming version 13.
#[tokio::test]
async fn websocket_refuses_what_is_not_an_upgrade() {
    let server = Server::start().await;
    let (status, _, _) = http1_get(server.addr, HOST, "/ws").await.expect("GET /ws");
    assert_eq!(status, 400);
    let (status, _, _) = h2c_get(server.addr, HOST, "/ws")
        .await
        .expect("h2c GET /ws");
    assert_eq!(status, 400);

    let mut h1 = Sender::connect(server.addr, Version::HTTP_11).await;
    let resp = h1
        .send(
            Request::get("/ws")
                .header(http::header::HOST, HOST)
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, "websocket")
                .header(http::header::SEC_WEBSOCKET_VERSION, "8")
                .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
                .body(TestBody::default())
                .expect("a valid request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(
        resp.headers()
            .get(http::header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes()),
        Some(&b"13"[..])
    );
    server.stop().await;
}

/// Shutting down ends open connections too, WebSocket sessions included: the client sees
/// its connection end.
#[tokio::test]
async fn shutdown_ends_open_connections() {
    let server = Server::start().await;
    let stream = TcpStream::connect(server.addr).await.expect("connecting");
    let request = format!("ws://{HOST}/ws")
        .into_client_request()
        .expect("a WebSocket request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("WebSocket handshake");
    server.stop().await;
    let next = tokio::time::timeout(MAX_WAIT, ws.next())
        .await
        .expect("the connection ends within MAX_WAIT");
    assert!(
        !matches!(next, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "got {next:?}"
    );
}
