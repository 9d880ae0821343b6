//! The two ways the benchmark talks to its daemon besides applies: one plain HTTP/1.1 `GET`
//! on a fresh connection to the ingress, timed to the first byte of the answer (cold starts,
//! and the probes that find when a restarted daemon serves), and JSON reads of the API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer of the ingress.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    /// When the request had been written.
    pub sent: Instant,
    /// When the first byte of the answer arrived.
    pub first_byte: Instant,
}

/// `GET /` with `Host: host` on a new connection to `addr`, `Connection: close`; returns once
/// the whole answer is read (within `max`).
pub async fn get(addr: SocketAddr, host: &str, max: Duration) -> anyhow::Result<Answer> {
    let mut stream = TcpStream::connect(addr)
        .await
        .context("connecting to the ingress")?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scale-bench\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing the request")?;
    let sent = Instant::now();
    let read = async {
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let mut first_byte = None;
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .context("reading the answer")?;
            if n == 0 {
                break;
            }
            first_byte.get_or_insert_with(Instant::now);
            buf.extend_from_slice(&chunk[..n]);
        }
        let first_byte = first_byte.context("the ingress closed the connection unanswered")?;
        let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {head:?}"))?;
        anyhow::Ok(Answer {
            status,
            sent,
            first_byte,
        })
    };
    tokio::time::timeout(max, read)
        .await
        .with_context(|| format!("no whole answer within {max:?}"))?
}

/// Sends [`get`] until one is answered (connections are refused until the daemon binds),
/// every `interval`, for up to `max`.
pub async fn first_answer(
    addr: SocketAddr,
    host: &str,
    interval: Duration,
    max: Duration,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + max;
    loop {
        match get(addr, host, max).await {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("no answer for `{host}` within {max:?}")));
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

/// JSON reads of the daemon's API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// `base` is `http://127.0.0.1:PORT`. Build after a `skiff_client::Client`, which
    /// installs the TLS crypto provider reqwest needs.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .build()
                .context("HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// `GET path` as JSON; fails on a transport error or a status other than 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = r.status();
        if !status.is_success() {
            bail!(
                "GET {path}: {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        r.json().await.with_context(|| format!("GET {path}: JSON"))
    }

    /// The scale of Service `name` in `default`: its newest revision's entry.
    pub async fn scale(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let v = self
            .get(&format!("/api/v1/namespaces/default/services/{name}/scale"))
            .await?;
        Ok(v["revisions"]
            .get(0)
            .cloned()
            .unwrap_or(serde_json::Value::Null))
    }

    /// How many revisions in `default` (of Service `service`, if given) have every container's
    /// image pinned to a digest.
    pub async fn pinned(&self, service: Option<&str>) -> anyhow::Result<usize> {
        let path = match service {
            Some(s) => format!("/api/v1/namespaces/default/revisions?service={s}"),
            None => "/api/v1/namespaces/default/revisions".to_owned(),
        };
        let v = self.get(&path).await?;
        let items = v["items"].as_array().context("revisions: no items")?;
        Ok(items
            .iter()
            .filter(|r| {
                r["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|c| {
                        !c.is_empty() && c.iter().all(|c| c["imageDigest"].as_str().is_some())
                    })
            })
            .count())
    }
}
