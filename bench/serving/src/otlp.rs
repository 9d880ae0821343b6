//! The OTLP/HTTP sink the traced daemon exports to: `POST /v1/traces` on a loopback port,
//! HTTP/1.1 keep-alive with `Content-Length` bodies (what skiff's exporter sends), answered
//! `200` with `content-type: application/x-protobuf` and an empty body (an empty
//! `ExportTraceServiceResponse`: everything accepted).
//!
//! It counts requests, body bytes and spans, and nothing else: the spans are counted by walking
//! the protobuf wire format down to `resource_spans[].scope_spans[].spans[]` and skipping each
//! span's bytes, without decoding them. It runs on a thread of its own (a current-thread tokio
//! runtime), so that the CPU it used can be read from `/proc/self/task/TID/stat` and shown
//! apart: a collector costs CPU too, and here it shares the machine with everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the sink received so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Connections accepted.
    pub connections: u64,
    /// `POST /v1/traces` requests answered 200.
    pub requests: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Spans in them.
    pub spans: u64,
    /// Requests answered otherwise (another method or path, a body that is not an OTLP
    /// request, no `Content-Length`).
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    spans: AtomicU64,
    rejected: AtomicU64,
}

/// The sink; it stops when dropped.
#[derive(Debug)]
pub struct Sink {
    /// Its base URL (`http://127.0.0.1:PORT`), for `--otlp-endpoint`.
    pub url: String,
    counters: Arc<Counters>,
    /// The thread's id, for its CPU time.
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Starts one on a free loopback port, on a thread of its own.
    pub fn start() -> anyhow::Result<Sink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        listener
            .set_nonblocking(true)
            .context("the sink's listener")?;
        let url = format!("http://{}", listener.local_addr()?);
        let counters = Arc::new(Counters::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel::<anyhow::Result<u32>>();
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            tid_tx.send(Err(anyhow::Error::new(e).context("the sink's runtime")));
                        return;
                    }
                };
                // `/proc/thread-self` is `PID/task/TID`.
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
                    .context("reading /proc/thread-self");
                let _ = tid_tx.send(tid);
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(_) => return,
                    };
                    let accept = async {
                        loop {
                            let Ok((conn, _)) = listener.accept().await else {
                                continue;
                            };
                            c.connections.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(serve(conn, c.clone()));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .context("starting the sink's thread")?;
        let tid = tid_rx
            .recv()
            .context("the sink's thread ended before it started")??;
        Ok(Sink {
            url,
            counters,
            tid,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// What it received so far.
    pub fn counts(&self) -> SinkCounts {
        let c = &self.counters;
        SinkCounts {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            spans: c.spans.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }

    /// CPU time its thread has used, in ms: from `schedstat` (nanoseconds), else from `stat`
    /// (user + system, in clock ticks: 10 ms steps).
    pub fn cpu_ms(&self) -> f64 {
        let task = format!("/proc/{}/task/{}", std::process::id(), self.tid);
        std::fs::read_to_string(format!("{task}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map_or_else(
                || crate::router::stat_cpu_ms(&format!("{task}/stat")),
                |ns| ns / 1e6,
            )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The end of the header block in `buf`, past its blank line.
fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Request line and the headers the sink cares about.
struct Head {
    traces: bool,
    content_length: Option<usize>,
    close: bool,
}

fn parse_head(head: &[u8]) -> Head {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut h = Head {
        traces: request_line.starts_with("POST /v1/traces "),
        content_length: None,
        close: request_line.ends_with("HTTP/1.0"),
    };
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            h.content_length = v.parse().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") {
            h.close = v.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        // Not what skiff's exporter sends; refused rather than parsed.
        h.content_length = None;
    }
    h
}

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

async fn serve(mut conn: TcpStream, c: Arc<Counters>) {
    let _ = conn.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // The head.
        let end = loop {
            if let Some(e) = header_end(&buf) {
                break e;
            }
            if buf.len() > 64 * 1024 {
                let _ = conn.write_all(BAD).await;
                c.rejected.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = parse_head(&buf[..end]);
        let Some(len) = head.content_length else {
            let _ = conn.write_all(BAD).await;
            c.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // The body.
        while buf.len() < end + len {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buf[end..end + len];
        let answer = match (head.traces, count_spans(body)) {
            (true, Some(spans)) => {
                c.requests.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(len as u64, Ordering::Relaxed);
                c.spans.fetch_add(spans, Ordering::Relaxed);
                OK
            }
            (true, None) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                BAD
            }
            (false, _) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                NOT_FOUND
            }
        };
        buf.drain(..end + len);
        if conn.write_all(answer).await.is_err() || head.close || answer == BAD {
            return;
        }
    }
}

/// A protobuf varint at the start of `b`: its value and length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Calls `f(field, payload)` for each length-delimited field of the message `b`, skipping
/// the others; `None` if `b` is not a well-formed message.
fn each_len_field(mut b: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
    while !b.is_empty() {
        let (key, n) = varint(b)?;
        b = &b[n..];
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => b = &b[varint(b)?.1..],
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            2 => {
                let (len, n) = varint(b)?;
                let len = usize::try_from(len).ok()?;
                let payload = b.get(n..n.checked_add(len)?)?;
                f(field, payload)?;
                b = &b[n + len..];
            }
            _ => return None,
        }
    }
    Some(())
}

/// The spans in an `ExportTraceServiceRequest` (`resource_spans` = 1 → `scope_spans` = 2 →
/// `spans` = 2), counted without decoding them.
pub fn count_spans(body: &[u8]) -> Option<u64> {
    let mut spans = 0u64;
    each_len_field(body, |field, resource_spans| {
        if field != 1 {
            return Some(());
        }
        each_len_field(resource_spans, |field, scope_spans| {
            if field != 2 {
                return Some(());
            }
            each_len_field(scope_spans, |field, _span| {
                if field == 2 {
                    spans += 1;
                }
                Some(())
            })
        })
    })?;
    Some(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(shape: &[&[usize]]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", "skiff")],
                        ..Default::default()
                    }),
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "skiff-router".into(),
                                version: "1".into(),
                                ..Default::default()
                            }),
                            spans: (0..n)
                                .map(|i| Span {
                                    trace_id: vec![7; 16],
                                    span_id: vec![i as u8 + 1; 8],
                                    parent_span_id: vec![9; 8],
                                    name: format!("span {i}"),
                                    kind: 2,
                                    start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                                    end_time_unix_nano: 1_700_000_000_000_100_000,
                                    attributes: vec![
                                        kv("http.request.method", "GET"),
                                        kv("url.path", "/healthz"),
                                    ],
                                    ..Default::default()
                                })
                                .collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn counts_the_spans_of_an_export_request() {
        for shape in [
            &[][..],
            &[&[][..]][..],
            &[&[1][..]][..],
            &[&[3, 0, 2][..], &[5][..]][..],
            &[&[200][..]][..],
        ] {
            let req = request(shape);
            let want: usize = shape.iter().flat_map(|s| s.iter()).sum();
            assert_eq!(
                count_spans(&req.encode_to_vec()),
                Some(want as u64),
                "{shape:?}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_protobuf() {
        let bytes = request(&[&[2]]).encode_to_vec();
        assert_eq!(count_spans(&bytes[..bytes.len() - 3]), None);
        assert_eq!(count_spans(b"{\"resourceSpans\":[]}"), None);
    }

    async fn post(conn: &mut TcpStream, path: &str, body: &[u8]) -> String {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: sink\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body).await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        while header_end(&got).is_none() {
            let n = conn.read(&mut b).await.unwrap();
            assert!(n > 0, "the sink closed the connection");
            got.extend_from_slice(&b[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn answers_and_counts_on_one_kept_alive_connection() {
        let sink = Sink::start().unwrap();
        let addr = sink.url.trim_start_matches("http://").to_owned();
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        let a = request(&[&[2, 1]]).encode_to_vec();
        let b = request(&[&[4]]).encode_to_vec();
        for body in [&a, &b] {
            let answer = post(&mut conn, "/v1/traces", body).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.contains("content-type: application/x-protobuf\r\n"));
            assert!(answer.ends_with("content-length: 0\r\n\r\n"));
        }
        let answer = post(&mut conn, "/v1/metrics", &a).await;
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
        assert_eq!(
            sink.counts(),
            SinkCounts {
                connections: 1,
                requests: 2,
                bytes: (a.len() + b.len()) as u64,
                spans: 7,
                rejected: 1,
            }
        );
        assert!(sink.cpu_ms() >= 0.0);
    }
}
