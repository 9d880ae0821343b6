//! The ingress as clients see it, with no root needed: when its listener starts taking
//! connections and when it stops, and a request proxied to an "instance" on the host's
//! loopback through a fake [`Connect`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use skiff_router::conns::{ConnLimits, ConnMetrics, Conns};
use skiff_router::{
    Connect, ConnectFuture, HostRoute, PoolSpec, Router, RouterConfig, RouterMetrics,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest any condition here is waited for.
const DEADLINE: Duration = Duration::from_secs(20);

/// Dials the host's loopback whatever the namespace, and keeps the namespace handles it was
/// given.
#[derive(Clone, Default)]
struct Loopback {
    dialled: Arc<Mutex<Vec<Arc<OwnedFd>>>>,
}

impl Connect for Loopback {
    fn connect(&self, netns: Arc<OwnedFd>, port: u16) -> ConnectFuture<'_> {
        self.dialled.lock().expect("not poisoned").push(netns);
        Box::pin(TcpStream::connect(("127.0.0.1", port)))
    }
}

/// A router serving on a loopback port until `shutdown`.
async fn serving(shutdown: &CancellationToken) -> (Arc<Router>, String) {
    serving_with(shutdown, Loopback::default(), RouterMetrics::unregistered()).await
}

/// A router reaching instances through `connector`, counting into `metrics`, serving on a
/// loopback port until `shutdown`.
async fn serving_with(
    shutdown: &CancellationToken,
    connector: impl Connect,
    metrics: RouterMetrics,
) -> (Arc<Router>, String) {
    let (poke, _) = tokio::sync::mpsc::unbounded_channel();
    let router = Router::new(
        RouterConfig {
            domain: "localhost".into(),
            queue_depth: 10,
            queue_timeout: Duration::from_secs(30),
            threads: 1,
        },
        connector,
        poke,
        metrics,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let conns = Conns::new(
        ConnLimits {
            max_connections: 100,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        },
        ConnMetrics::default(),
    );
    tokio::spawn(
        router
            .clone()
            .serve(listener, conns, shutdown.clone(), Duration::from_secs(5)),
    );
    (router, addr)
}

/// Reads until the end of a response head; returns its status code.
async fn status(c: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text}"))
}

/// A request that arrives before the first route table waits for it, and is then routed by
/// it (here: a known Service that cannot serve, 503), never answered 404 as if no Service
/// existed.
#[tokio::test]
async fn no_request_is_answered_before_the_first_route_table() {
    let shutdown = CancellationToken::new();
    let (router, addr) = serving(&shutdown).await;
    let mut c = TcpStream::connect(&addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.default.localhost\r\n\r\n")
        .await
        .expect("write");
    // Nothing comes back while there is no table. (A router that answered early answers
    // within microseconds; this cannot fail a correct router, however slow the machine.)
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte)).await;
    assert!(early.is_err(), "answered before any route table: {early:?}");
    router.set_routes(HashMap::from([(
        "a.default.localhost".to_owned(),
        HostRoute::Unavailable {
            message: "revision `a-00001` is not ready".into(),
        },
    )]));
    assert_eq!(status(&mut c).await, 503);
    shutdown.cancel();
}

/// On shutdown the listening socket closes at once: a new client is refused rather than
/// left to wait out the grace period, while a request in flight (here: waiting in the
/// activator for an instance) is still in progress.
#[tokio::test]
async fn shutdown_refuses_new_connections_at_once() {
    let shutdown = CancellationToken::new();
    let (router, addr) = serving(&shutdown).await;
    route_s(&router, 8080);
    let mut held = TcpStream::connect(&addr).await.expect("connect");
    held.write_all(b"GET / HTTP/1.1\r\nHost: s.default.localhost\r\n\r\n")
        .await
        .expect("write");
    let pool = router
        .pool(&("default".into(), "s-00001".into()))
        .expect("pool");
    tokio::time::timeout(DEADLINE, async {
        while pool.waiting() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the request waits for an instance");
    shutdown.cancel();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            match TcpStream::connect(&addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new connections still accepted after shutdown"
    );
    assert_eq!(
        pool.waiting(),
        1,
        "new connections were refused only once the request in flight had ended"
    );
}

/// A request is proxied over a connection dialled with the namespace handle of the instance
/// its slot is on (the one the router was given when the instance became ready), and the
/// instance's answer comes back to the client.
#[tokio::test]
async fn connections_are_dialled_with_the_slots_namespace() {
    let instance = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = instance.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = instance.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let shutdown = CancellationToken::new();
    let connector = Loopback::default();
    let (router, addr) =
        serving_with(&shutdown, connector.clone(), RouterMetrics::unregistered()).await;
    route_s(&router, port);
    let netns = ready_instance(&router);
    let mut c = TcpStream::connect(&addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: s.default.localhost\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(status(&mut c).await, 200);
    let dialled = connector.dialled.lock().expect("not poisoned").clone();
    assert_eq!(dialled.len(), 1, "one connection made");
    assert!(
        Arc::ptr_eq(&dialled[0], &netns),
        "dialled with the instance's own namespace handle"
    );
    shutdown.cancel();
}

/// Reads a request head from `s` (up to its blank line, or what came before the end).
async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// Routes `s.default.localhost` to revision `s-00001`, whose instances listen on `port`.
fn route_s(router: &Router, port: u16) {
    router.set_pool(PoolSpec {
        namespace: "default".into(),
        service: "s".into(),
        revision: "s-00001".into(),
        container_concurrency: 0,
        port,
        h2c: false,
        timeout: Duration::from_secs(300),
        response_start_timeout: None,
        idle_timeout: None,
        unavailable: None,
    });
    router.set_routes(HashMap::from([(
        "s.default.localhost".to_owned(),
        HostRoute::Tag {
            namespace: "default".into(),
            service: "s".into(),
            revision: "s-00001".into(),
        },
    )]));
}

/// Makes instance `s-00001-a` of `s-00001` ready, in a stand-in namespace handle.
fn ready_instance(router: &Router) -> Arc<OwnedFd> {
    let netns: Arc<OwnedFd> = Arc::new(std::fs::File::open("/dev/null").expect("fd").into());
    router.instance_ready(
        &("default".into(), "s-00001".into()),
        "s-00001-a",
        netns.clone(),
    );
    netns
}

/// Hands every request record to a channel.
struct Records(tokio::sync::mpsc::UnboundedSender<skiff_router::record::RequestRecord>);

impl skiff_router::record::RequestObserver for Records {
    fn finished(&self, record: skiff_router::record::RequestRecord) {
        let _ = self.0.send(record);
    }
}

/// A proxied request is accounted for once, when its response body has ended: the record
/// has the path without its query, the status, the body's bytes, the instance, and the
/// client's trace; the request counter and the latency histogram (with the trace id as
/// exemplar) count it under its status code.
#[tokio::test]
async fn a_request_is_recorded_once_when_its_response_ends() {
    let instance = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = instance.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = instance.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let _ = s
                    .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello")
                    .await;
            });
        }
    });
    let shutdown = CancellationToken::new();
    let mut registry = Registry::with_prefix("skiff_router");
    let metrics = RouterMetrics::new(&mut registry);
    let (router, addr) = serving_with(&shutdown, Loopback::default(), metrics).await;
    let (tx, mut records) = tokio::sync::mpsc::unbounded_channel();
    router.set_observer(Arc::new(Records(tx)));
    route_s(&router, port);
    ready_instance(&router);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut c = TcpStream::connect(&addr).await.expect("connect");
    c.write_all(
        format!("GET /p/q?token=secret HTTP/1.1\r\nHost: s.default.localhost\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    assert_eq!(status(&mut c).await, 201);
    let r = tokio::time::timeout(DEADLINE, records.recv())
        .await
        .expect("a record in time")
        .expect("a record");
    assert_eq!(
        (
            r.method.as_str(),
            r.host.as_str(),
            r.path.as_str(),
            r.status,
            r.bytes,
            r.complete
        ),
        ("GET", "s.default.localhost", "/p/q", 201, 5, true)
    );
    assert_eq!((r.service.as_str(), r.revision.as_str()), ("s", "s-00001"));
    assert_eq!(r.instance.as_deref(), Some("s-00001-a"));
    assert_eq!(r.trace_id, trace);
    assert_eq!(r.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert!(r.cold_start.is_none() && r.throttled.is_none());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    assert!(
        text.contains(r#"skiff_router_requests_total{namespace="default",service="s",revision="s-00001",code="201",code_class="2xx"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(r#"trace_id="{trace}""#)),
        "no exemplar: {text}"
    );
    assert!(records.try_recv().is_err(), "recorded once");
    shutdown.cancel();
}

/// Records, and traces: the head sampler says no to every trace.
struct Tracing(tokio::sync::mpsc::UnboundedSender<skiff_router::record::RequestRecord>);

impl skiff_router::record::RequestObserver for Tracing {
    fn finished(&self, record: skiff_router::record::RequestRecord) {
        let _ = self.0.send(record);
    }

    fn head_sample(&self, _trace_id: u128, parent_sampled: Option<bool>) -> Option<bool> {
        Some(parent_sampled.unwrap_or(false))
    }
}

/// When the observer traces, the instance's `traceparent` keeps the client's trace but names
/// skiff's span for the call as its parent, with the head decision as its flag; the record
/// carries the ids the spans will have.
#[tokio::test]
async fn a_traced_request_gives_the_instance_skiffs_span() {
    let instance = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = instance.local_addr().expect("addr").port();
    let (heads_tx, mut heads) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = instance.accept().await {
            let heads_tx = heads_tx.clone();
            tokio::spawn(async move {
                let Ok(head) = read_head(&mut s).await else {
                    return;
                };
                let _ = heads_tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let shutdown = CancellationToken::new();
    let mut registry = Registry::with_prefix("skiff_router");
    let metrics = RouterMetrics::new(&mut registry);
    let (router, addr) = serving_with(&shutdown, Loopback::default(), metrics).await;
    let (tx, mut records) = tokio::sync::mpsc::unbounded_channel();
    router.set_observer(Arc::new(Tracing(tx)));
    route_s(&router, port);
    ready_instance(&router);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (client, sampled) in [
        (Some(format!("00-{trace}-00f067aa0ba902b7-01")), true),
        (None, false),
    ] {
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        let tp = client
            .as_ref()
            .map(|v| format!("traceparent: {v}\r\n"))
            .unwrap_or_default();
        c.write_all(format!("GET / HTTP/1.1\r\nHost: s.default.localhost\r\n{tp}\r\n").as_bytes())
            .await
            .expect("write");
        assert_eq!(status(&mut c).await, 200);
        let head = tokio::time::timeout(DEADLINE, heads.recv())
            .await
            .expect("the instance got it")
            .expect("a head");
        let r = tokio::time::timeout(DEADLINE, records.recv())
            .await
            .expect("a record in time")
            .expect("a record");
        let ids = r.spans.expect("span ids when the observer traces");
        assert_eq!(ids.sampled, sampled);
        assert_ne!(ids.server, ids.upstream);
        let want = format!(
            "traceparent: 00-{}-{:016x}-{}",
            r.trace_id,
            ids.upstream,
            if sampled { "01" } else { "00" }
        );
        assert!(head.contains(&want), "{want} not in\n{head}");
        if client.is_some() {
            assert_eq!(r.trace_id, trace);
            assert_eq!(r.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        } else {
            assert_ne!(r.trace_id, trace);
            assert!(r.parent_span_id.is_none());
        }
    }
    shutdown.cancel();
}
