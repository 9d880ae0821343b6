//! An OTLP/HTTP traces receiver for tests: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, decoded with `opentelemetry-proto`, answered 200. Plain
//! HTTP/1.1 on a loopback port, keep-alive, `Content-Length` bodies (what the OTLP exporter
//! sends).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A received span with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    /// The resource's `service.name`.
    pub service_name: String,
    /// The span.
    pub span: Span,
}

impl Received {
    /// The trace id in hex.
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    /// The span id in hex.
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    /// The parent span id in hex (empty for a root).
    pub fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    /// A string attribute's value.
    pub fn attr(&self, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let kv = self.span.attributes.iter().find(|kv| kv.key == key)?;
        Some(match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            _ => return None,
        })
    }
}

/// The receiver; it stops when dropped (its thread ends with the process otherwise idle).
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    /// Its base URL (`http://127.0.0.1:PORT`); traces go to `…/v1/traces`.
    pub url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl OtlpReceiver {
    /// Starts one on a free loopback port.
    pub fn start() -> std::io::Result<OtlpReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let keep = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || serve(conn, &keep));
            }
        });
        Ok(OtlpReceiver { url, spans })
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `ok` holds for the spans received, or `within` passes (then the spans
    /// as they are, for the caller's assertion to show).
    pub async fn wait_for(
        &self,
        within: Duration,
        ok: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.spans();
            if ok(&s) || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn serve(conn: TcpStream, spans: &Mutex<Vec<Received>>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let ok = request_line.starts_with("POST /v1/traces ");
        if ok && let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
            let mut got = spans.lock().unwrap_or_else(|p| p.into_inner());
            for rs in req.resource_spans {
                let service_name = rs
                    .resource
                    .as_ref()
                    .and_then(|res| res.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match v.value.as_ref() {
                        Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                s,
                            ),
                        ) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        got.push(Received {
                            service_name: service_name.clone(),
                            span,
                        });
                    }
                }
            }
        }
        let status = if ok { "200 OK" } else { "404 Not Found" };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
