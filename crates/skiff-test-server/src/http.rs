//! HTTP/1.1 by hand: reading one request (request line, header fields, a `Content-Length` or
//! chunked body) and writing one response (with `Content-Length`, or chunked).
//!
//! The parser follows [RFC 9112] closely enough that a malformed request is answered with a
//! 4xx status and the connection is closed, never a panic: any request whose framing cannot
//! be trusted ends the connection.
//!
//! # Limitations
//!
//! - Only origin-form targets (`/path?query`) and `*` are accepted; absolute-form (a proxy
//!   request) gets 400.
//! - A missing `Host` header is tolerated, so that hand-written test requests stay short;
//!   `/headers` shows whether one was sent.
//! - Bodies are read into memory, up to [`MAX_BODY`] bytes.
//!
//! [RFC 9112]: https://www.rfc-editor.org/rfc/rfc9112

use std::io::{self, BufRead, Read, Write};
use std::time::Duration;

/// The longest request line or header line accepted, in bytes.
pub const MAX_LINE: usize = 16 * 1024;
/// The most header bytes (all lines together) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header fields accepted.
pub const MAX_HEADERS: usize = 200;
/// The largest request body accepted.
pub const MAX_BODY: u64 = 16 * 1024 * 1024;
/// How long a connection may stay idle (or a request take to arrive) before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: the connection closes after the response unless the client asked for
    /// keep-alive, and chunked responses are not allowed.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl Version {
    /// The version as written on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method, case preserved (methods are case-sensitive).
    pub method: String,
    /// The request target exactly as sent.
    pub target: String,
    /// The path part of the target (before `?`), not decoded.
    pub path: String,
    /// The raw query string (after `?`), empty when there is none.
    pub query: String,
    /// The protocol version.
    pub version: Version,
    /// Header fields in order, names lowercased, values trimmed of surrounding whitespace.
    pub headers: Vec<(String, String)>,
    /// The body (decoded from chunked when it was sent chunked).
    pub body: Vec<u8>,
}

impl Request {
    /// All values of header `name` (lowercase), joined with `, ` as RFC 9110 allows.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the client wants the connection kept open after this exchange.
    pub fn wants_keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.header_has_token("connection", "close"),
            Version::Http10 => self.header_has_token("connection", "keep-alive"),
        }
    }

    /// The decoded query parameter `name`: `+` is a space and `%XX` a byte. `Err` when the
    /// value is not valid percent-encoded UTF-8.
    pub fn param(&self, name: &str) -> Result<Option<String>, String> {
        for pair in self.query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key)? == name {
                return percent_decode(value).map(Some);
            }
        }
        Ok(None)
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// The connection failed, timed out or closed in the middle of a request; nothing can
    /// be answered.
    Broken,
    /// The request is malformed or too large: answer `status` with `message` and close.
    Reject {
        /// The status to answer with (400, 413, 414, 431, 501 or 505).
        status: u16,
        /// What was wrong, for the response body.
        message: String,
    },
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> ReadError {
        ReadError::Broken
    }
}

/// Shorthand for a rejection.
fn reject<T>(status: u16, message: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Reject {
        status,
        message: message.into(),
    })
}

/// Reads one line ending in LF (CRLF or a bare LF, which RFC 9112 lets a server accept),
/// without the line ending. `Ok(None)` at end of input before any byte. A line longer than
/// `max` is rejected with `too_long`.
fn read_line(
    r: &mut impl BufRead,
    max: usize,
    too_long: u16,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    let n = r.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if n as u64 >= limit {
            return reject(too_long, "line too long");
        }
        return Err(ReadError::Broken);
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > max {
        return reject(too_long, "line too long");
    }
    Ok(Some(line))
}

/// Whether `b` may appear in a token (method, header name), per RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one request from `r`. `on_continue` is called before the body is read when the
/// client sent `Expect: 100-continue`, to send the interim response.
pub fn read_request(
    r: &mut impl BufRead,
    on_continue: impl FnOnce() -> io::Result<()>,
) -> Result<Request, ReadError> {
    // RFC 9112 section 2.2: ignore empty lines before the request line.
    let mut line = Vec::new();
    for _ in 0..8 {
        match read_line(r, MAX_LINE, 414)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => {
                line = l;
                break;
            }
        }
    }
    if line.is_empty() {
        return reject(400, "no request line");
    }
    let Ok(line) = std::str::from_utf8(&line) else {
        return reject(400, "request line is not UTF-8");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return reject(400, "request line must be `METHOD TARGET VERSION`");
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return reject(400, "invalid method");
    }
    if !(target.starts_with('/') || target == "*")
        || target
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
    {
        return reject(400, "invalid request target");
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return reject(505, "only HTTP/1.0 and HTTP/1.1 are supported");
        }
        _ => return reject(400, "invalid HTTP version"),
    };

    let headers = read_fields(r)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        version,
        headers,
        body: Vec::new(),
    };

    let chunked = match req.header("transfer-encoding") {
        None => false,
        Some(_) if req.header("content-length").is_some() => {
            // RFC 9112 section 6.3: a smuggling attempt or a broken client; do not guess.
            return reject(400, "both Transfer-Encoding and Content-Length");
        }
        Some(te) => {
            let codings: Vec<&str> = te.split(',').map(str::trim).collect();
            if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
                return reject(501, "only the chunked transfer coding is supported");
            }
            true
        }
    };
    let length = if chunked { None } else { content_length(&req)? };
    let has_body = chunked || length.is_some_and(|n| n > 0);
    if has_body && req.version == Version::Http11 && req.header_has_token("expect", "100-continue")
    {
        on_continue()?;
    }
    if chunked {
        req.body = read_chunked(r)?;
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return reject(413, format!("body larger than {MAX_BODY} bytes"));
        }
        let mut body = Vec::new();
        r.by_ref().take(len).read_to_end(&mut body)?;
        if (body.len() as u64) < len {
            return Err(ReadError::Broken);
        }
        req.body = body;
    }
    Ok(req)
}

/// Reads header (or trailer) fields up to the empty line that ends them.
fn read_fields(r: &mut impl BufRead) -> Result<Vec<(String, String)>, ReadError> {
    let mut fields = Vec::new();
    let mut total = 0usize;
    loop {
        let Some(line) = read_line(r, MAX_LINE, 431)? else {
            return Err(ReadError::Broken);
        };
        if line.is_empty() {
            return Ok(fields);
        }
        total += line.len();
        if total > MAX_HEADER_BYTES || fields.len() >= MAX_HEADERS {
            return reject(431, "header section too large");
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return reject(400, "obsolete header line folding");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return reject(400, "header line without a colon");
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return reject(400, "invalid header name");
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return reject(400, "control character in a header value");
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_owned();
        fields.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
    }
}

/// The body length from `Content-Length`; several fields (or a list) must all agree.
fn content_length(req: &Request) -> Result<Option<u64>, ReadError> {
    let Some(value) = req.header("content-length") else {
        return Ok(None);
    };
    let mut length = None;
    for item in value.split(',').map(str::trim) {
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return reject(400, "invalid Content-Length");
        }
        let Ok(n) = item.parse::<u64>() else {
            return reject(413, "Content-Length too large");
        };
        if length.is_some_and(|l| l != n) {
            return reject(400, "conflicting Content-Length values");
        }
        length = Some(n);
    }
    Ok(length)
}

/// Reads a chunked body and its trailer section (RFC 9112 section 7.1).
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(r, 1024, 400)? else {
            return Err(ReadError::Broken);
        };
        // chunk-size [ BWS ";" chunk-ext ]
        let end = line
            .iter()
            .position(|&b| b == b';' || b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let digits = &line[..end];
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return reject(400, "invalid chunk size");
        }
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        let Some(size) = size else {
            return reject(400, "invalid chunk size");
        };
        if size == 0 {
            read_fields(r)?;
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY {
            return reject(413, format!("body larger than {MAX_BODY} bytes"));
        }
        let before = body.len();
        r.by_ref().take(size).read_to_end(&mut body)?;
        if ((body.len() - before) as u64) < size {
            return Err(ReadError::Broken);
        }
        match read_line(r, 0, 400)? {
            Some(empty) if empty.is_empty() => {}
            _ => return reject(400, "chunk data not followed by CRLF"),
        }
    }
}

/// Decodes `%XX` escapes and `+` (a space, as in HTML forms) into UTF-8.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = hex else {
                    return Err(format!("invalid percent-encoding in `{s}`"));
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` does not decode to UTF-8"))
}

/// The reason phrase for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response body.
pub enum Body {
    /// A body of known length, sent with `Content-Length`.
    Full(Vec<u8>),
    /// Pieces sent as they are produced: as chunks to an HTTP/1.1 client, or raw up to the
    /// end of the connection to an HTTP/1.0 one. The iterator may block (sleep) between
    /// items, which is the point.
    Stream(Box<dyn Iterator<Item = Vec<u8>> + Send>),
}

/// A response.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Extra header fields.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// Close the connection after this response whatever the client asked.
    pub close: bool,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Body::Full(body.into().into_bytes()),
            close: false,
        }
    }

    /// A JSON response (`body` is already serialized).
    pub fn json(status: u16, body: impl std::fmt::Display) -> Response {
        Response {
            content_type: "application/json",
            ..Response::text(status, format!("{body}\n"))
        }
    }
}

/// Writes `resp` to `w` for a request of `version`; sends no body when `head`. Returns
/// whether the connection can carry another request (`keep_alive` and nothing forced a
/// close).
pub fn write_response(
    w: &mut impl Write,
    resp: Response,
    version: Version,
    head: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let is_stream = matches!(resp.body, Body::Stream(_));
    let chunked = is_stream && version == Version::Http11;
    // An HTTP/1.0 client gets a stream delimited by the end of the connection.
    let delimited_by_close = is_stream && !chunked;
    let keep_alive = keep_alive && !resp.close && !delimited_by_close;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nserver: skiff-test-server\r\ncontent-type: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type
    );
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match &resp.body {
        Body::Full(bytes) => out.push_str(&format!("content-length: {}\r\n", bytes.len())),
        Body::Stream(_) if chunked => out.push_str("transfer-encoding: chunked\r\n"),
        Body::Stream(_) => {}
    }
    if !keep_alive {
        out.push_str("connection: close\r\n");
    } else if version == Version::Http10 {
        out.push_str("connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes())?;
    if head {
        w.flush()?;
        return Ok(keep_alive);
    }
    match resp.body {
        Body::Full(bytes) => w.write_all(&bytes)?,
        Body::Stream(pieces) => {
            w.flush()?;
            for piece in pieces.filter(|p| !p.is_empty()) {
                if chunked {
                    w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                    w.write_all(&piece)?;
                    w.write_all(b"\r\n")?;
                } else {
                    w.write_all(&piece)?;
                }
                w.flush()?;
            }
            if chunked {
                w.write_all(b"0\r\n\r\n")?;
            }
        }
    }
    w.flush()?;
    Ok(keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Request, ReadError> {
        read_request(&mut raw.as_bytes(), || Ok(()))
    }

    fn status_of(raw: &str) -> u16 {
        match parse(raw) {
            Err(ReadError::Reject { status, .. }) => status,
            other => panic!("expected a rejection for {raw:?}, got {other:?}"),
        }
    }

    // A request parses into its parts, and the bytes after its body are left for the next one.
    #[test]
    fn parses_a_request_and_leaves_the_next_one() {
        let raw = "GET /a/b?x=1&line=hi+there%21 HTTP/1.1\r\nHost: h\r\nX-Dup: 1\r\nx-dup:  2 \r\n\
                   Content-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        let mut input = raw.as_bytes();
        let req = read_request(&mut input, || Ok(())).expect("valid request");
        assert_eq!(req.method, "GET");
        assert_eq!(
            (req.path.as_str(), req.query.as_str()),
            ("/a/b", "x=1&line=hi+there%21")
        );
        assert_eq!(req.header("x-dup").as_deref(), Some("1, 2"));
        assert_eq!(req.param("line"), Ok(Some("hi there!".to_owned())));
        assert_eq!(req.param("missing"), Ok(None));
        assert_eq!(req.body, b"abc");
        assert_eq!(input, b"GET / HTTP/1.1\r\n\r\n");
        assert!(req.wants_keep_alive());
    }

    // A chunked body with an extension and a trailer is decoded, after a 100 Continue.
    #[test]
    fn decodes_chunked_bodies() {
        let raw = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n\
                   3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        let mut continued = false;
        let req = read_request(&mut raw.as_bytes(), || {
            continued = true;
            Ok(())
        })
        .expect("valid request");
        assert_eq!(req.body, b"abc0123456789");
        assert!(continued);
    }

    // Each kind of malformed or oversized request is rejected with its status, not a panic.
    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(status_of("garbage\r\n\r\n"), 400);
        assert_eq!(status_of("GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status_of("GET / HTTX/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("G(T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
        assert_eq!(status_of("GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n"), 400);
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nx"),
            400
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n"),
            400
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(status_of(&long), 414);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status_of(&many), 431);
    }

    // A close between requests is clean; one inside a request is broken, with nothing to answer.
    #[test]
    fn distinguishes_clean_and_broken_closes() {
        assert!(matches!(parse(""), Err(ReadError::Closed)));
        assert!(matches!(parse("\r\n"), Err(ReadError::Closed)));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost"),
            Err(ReadError::Broken)
        ));
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Err(ReadError::Broken)
        ));
    }

    // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked to close.
    #[test]
    fn keep_alive_follows_the_version_defaults() {
        let ka = |raw: &str| parse(raw).expect("valid").wants_keep_alive();
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n"));
    }

    // A stream goes out chunked to HTTP/1.1 and raw, closing the connection, to HTTP/1.0.
    #[test]
    fn streams_are_chunked_for_http11_only() {
        let stream = || Body::Stream(Box::new(vec![b"ab".to_vec(), b"c".to_vec()].into_iter()));
        let mut out = Vec::new();
        let resp = Response {
            body: stream(),
            ..Response::text(200, "")
        };
        let keep = write_response(&mut out, resp, Version::Http11, false, true).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(keep);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            "{text}"
        );

        let mut out = Vec::new();
        let resp = Response {
            body: stream(),
            ..Response::text(200, "")
        };
        let keep = write_response(&mut out, resp, Version::Http10, false, true).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!keep);
        assert!(
            text.contains("connection: close\r\n") && text.ends_with("\r\n\r\nabc"),
            "{text}"
        );
    }
}
