//! A minimal HTTP/1.1 client on a plain `TcpStream`, so that the benchmark controls exactly
//! when a request is written, on which connection, and sees when the first byte of the answer
//! arrives. It reads answers framed by `Content-Length`, `Transfer-Encoding: chunked`, or the
//! end of the connection.

use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET request for `path` with `Host: host`; with `close`, it asks the server to close the
/// connection after the answer.
pub fn get(host: &str, path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: serving-bench\r\n{connection}\r\n")
        .into_bytes()
}

/// One answer.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// When its first byte arrived.
    pub first_byte: Instant,
    /// When its last byte arrived.
    pub done: Instant,
    /// Whether the connection can carry another request.
    pub keep_alive: bool,
}

/// A connection with its read buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    first_byte: Option<Instant>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            first_byte: None,
        }
    }

    /// Writes a whole request.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(request)
            .await
            .context("writing the request")
    }

    /// Reads more bytes; false at the end of the connection.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .context("reading the answer")?;
        if n > 0 {
            self.first_byte.get_or_insert_with(Instant::now);
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(n > 0)
    }

    /// The next line (without its CRLF), reading as needed.
    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if !self.fill().await? {
                bail!("the connection closed in the middle of a line");
            }
        }
    }

    /// Consumes `n` bytes of body, reading as needed.
    async fn skip(&mut self, mut n: usize) -> anyhow::Result<()> {
        loop {
            let have = (self.buf.len() - self.pos).min(n);
            self.pos += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                bail!("the connection closed with {n} bytes of the body missing");
            }
        }
    }

    /// Reads one whole answer.
    pub async fn answer(&mut self) -> anyhow::Result<Answer> {
        self.first_byte = if self.pos < self.buf.len() {
            Some(Instant::now())
        } else {
            None
        };
        let status_line = self.line().await?;
        let first_byte = self.first_byte.unwrap_or_else(Instant::now);
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not a status line: {status_line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = version == "HTTP/1.0";
        loop {
            let h = self.line().await?;
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    close = v.contains("close") || (close && !v.contains("keep-alive"));
                }
                _ => {}
            }
        }
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size = usize::from_str_radix(
                    size_line.split(';').next().unwrap_or_default().trim(),
                    16,
                )
                .with_context(|| format!("not a chunk size: {size_line:?}"))?;
                if size == 0 {
                    // Trailers, then an empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.skip(size).await?;
                let end = self.line().await?;
                if !end.is_empty() {
                    bail!("a chunk does not end with CRLF");
                }
            }
        } else if let Some(n) = length {
            self.skip(n).await?;
        } else if !(100..200).contains(&status) && status != 204 && status != 304 {
            // Delimited by the end of the connection.
            self.pos = self.buf.len();
            while self.fill().await? {
                self.pos = self.buf.len();
            }
            close = true;
        }
        Ok(Answer {
            status,
            first_byte,
            done: Instant::now(),
            keep_alive: !close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve(reply: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            s.write_all(reply).await.expect("write");
            s.shutdown().await.expect("shutdown");
        });
        addr
    }

    #[tokio::test]
    async fn reads_each_framing() {
        let cases: [(&[u8], u16, bool); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                200,
                true,
            ),
            (
                b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                503,
                true,
            ),
            (b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the end", 200, false),
        ];
        for (reply, status, keep_alive) in cases {
            let addr = serve(reply).await;
            let mut c = Conn::new(TcpStream::connect(addr).await.expect("connect"));
            c.send(&get("h", "/", false)).await.expect("send");
            let a = c.answer().await.expect("answer");
            assert_eq!((a.status, a.keep_alive), (status, keep_alive));
            assert!(a.first_byte <= a.done);
        }
    }
}
