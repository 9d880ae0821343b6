//! The endpoints: each request is matched to a [`Route`] (method and path), whose handler
//! turns it into a [`Response`] plus what to do once the response is sent.
//!
//! `POST /` and `GET /events` are the CloudEvents sink of [`crate::events`].
//!
//! Handlers never panic on input: a bad query parameter is a 400 that names it. Sleeping is
//! the point of several endpoints (`/delay`, `/stream`, `/concurrency`), so they call
//! [`pause`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::events::{Behaviour, Sink};
use crate::http::{Body, Request, Response};
use crate::info;
use crate::json::Json;

/// Longest duration any `ms` parameter may ask for (one hour).
const MAX_MS: u64 = 3_600_000;
/// Most chunks `/stream` sends.
const MAX_CHUNKS: u64 = 1_000_000;
/// Most threads `/forkbomb` tries to start.
const MAX_THREADS: u64 = 1_000_000;
/// Stack size of `/forkbomb` threads: small, so that the pids limit is hit before memory.
const FORKBOMB_STACK: usize = 64 * 1024;
/// How long `/concurrency` holds each request by default.
const CONCURRENCY_HOLD: Duration = Duration::from_millis(50);

/// What the server knows across requests.
#[derive(Debug)]
pub struct State {
    /// When the server started, for `--ready-after-ms`.
    pub started: Instant,
    /// `/ready` answers 503 until this long after start.
    pub ready_after: Duration,
    /// `/set-ready` override: 0 = follow `ready_after`, 1 = not ready, 2 = ready.
    ready_override: AtomicU8,
    /// Set by `POST /start-failing`: `/healthz` answers 500 from then on.
    failing: AtomicBool,
    /// `/concurrency` requests being served right now.
    in_flight: AtomicUsize,
    /// How many `/concurrency` requests have started while another was in flight; a request
    /// that sees it change during its own hold also overlapped.
    overlaps: AtomicU64,
    /// The CloudEvents sink (`POST /`, `GET /events`).
    sink: Sink,
    /// How `GET /` answers (`ROOT_FAIL_EVERY`, `ROOT_DELAY_MS`).
    root: Root,
    /// `GET /` requests so far.
    root_count: AtomicU64,
}

/// How `GET /` answers: every `fail_every`-th request with 500 (0: never), each after
/// `delay`. A revision that fails a share of its requests, or is slower, for rollout tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Root {
    /// Every Nth request answers 500 (0: none).
    pub fail_every: u64,
    /// Each request is held this long.
    pub delay: Duration,
}

impl Root {
    /// From `ROOT_FAIL_EVERY` and `ROOT_DELAY_MS`, read through `env`.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Root, String> {
        let number = |name: &str| -> Result<u64, String> {
            match env(name) {
                None => Ok(0),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| format!("{name} must be a whole number, not `{v}`")),
            }
        };
        Ok(Root {
            fail_every: number("ROOT_FAIL_EVERY")?,
            delay: Duration::from_millis(number("ROOT_DELAY_MS")?),
        })
    }
}

impl State {
    /// Fresh state; `/ready` turns 200 `ready_after` after `started`, and the event sink
    /// answers as `events` says.
    pub fn new(started: Instant, ready_after: Duration, events: Behaviour) -> State {
        State {
            started,
            ready_after,
            ready_override: AtomicU8::new(0),
            failing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            overlaps: AtomicU64::new(0),
            sink: Sink::new(events),
            root: Root::default(),
            root_count: AtomicU64::new(0),
        }
    }

    /// The same state, with `GET /` answering as `root` says.
    pub fn with_root(mut self, root: Root) -> State {
        self.root = root;
        self
    }

    /// Whether `/ready` should answer 200 now.
    fn is_ready(&self) -> bool {
        match self.ready_override.load(Ordering::SeqCst) {
            1 => false,
            2 => true,
            _ => self.started.elapsed() >= self.ready_after,
        }
    }
}

/// What happens after the response has been written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Keep serving.
    Continue,
    /// Exit the process with this code (`/exit`).
    Exit(i32),
}

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Info,
    Headers,
    Echo,
    Alloc,
    Forkbomb,
    Burn,
    Healthz,
    StartFailing,
    Ready,
    SetReady,
    Delay,
    Stream,
    Concurrency,
    Exit,
    Log,
    Write,
    File,
    Fetch,
    Events,
}

impl Route {
    /// The route for `path` and the methods it allows.
    fn for_path(path: &str) -> Option<(Route, &'static [&'static str])> {
        const GET: &[&str] = &["GET", "HEAD"];
        const POST: &[&str] = &["POST"];
        Some(match path {
            "/" => (Route::Root, &["GET", "HEAD", "POST"]),
            "/info" => (Route::Info, GET),
            "/headers" => (
                Route::Headers,
                &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
            ),
            "/echo" => (Route::Echo, &["POST", "PUT"]),
            "/alloc" => (Route::Alloc, GET),
            "/forkbomb" => (Route::Forkbomb, GET),
            "/burn" => (Route::Burn, GET),
            "/healthz" => (Route::Healthz, GET),
            "/start-failing" => (Route::StartFailing, POST),
            "/ready" => (Route::Ready, GET),
            "/set-ready" => (Route::SetReady, POST),
            "/delay" => (Route::Delay, GET),
            "/stream" => (Route::Stream, GET),
            "/concurrency" => (Route::Concurrency, GET),
            "/exit" => (Route::Exit, GET),
            "/log" => (Route::Log, GET),
            "/write" => (Route::Write, &["POST"]),
            "/file" => (Route::File, GET),
            "/fetch" => (Route::Fetch, GET),
            "/events" => (Route::Events, GET),
            _ => return None,
        })
    }
}

/// Sleeps: the behaviour several endpoints exist to provide, not a way to wait for
/// something (which is what the workspace's `std::thread::sleep` ban is about).
#[expect(
    clippy::disallowed_methods,
    reason = "delays are this server's features, not synchronization"
)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// `GET url` (plain `http://HOST[:PORT][/PATH]`) from inside the container, over HTTP/1.0,
/// names resolved with the C library (`/etc/resolv.conf`): `{"status", "body"}`, or a 502
/// with `{"error"}` saying whether resolving or connecting failed.
fn fetch(url: &str) -> Response {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let fail = |stage: &str, e: &dyn std::fmt::Display| {
        Response::json(
            502,
            Json::obj([("error", Json::str(format!("{stage}: {e}")))]),
        )
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return fail("url", &"only http:// URLs");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return fail("url", &format!("bad port `{p}`")),
        },
        None => (authority, 80),
    };
    let addrs: Vec<std::net::SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return fail("resolve", &e),
    };
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match std::net::TcpStream::connect_timeout(a, Duration::from_secs(10)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return match last {
            Some(e) => fail("connect", &e),
            None => fail("resolve", &"no address"),
        };
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return fail("send", &e);
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return fail("receive", &e);
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return fail(
            "receive",
            &format!("no complete response ({} bytes)", raw.len()),
        );
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Response::json(
        200,
        Json::obj([("status", Json::UInt(status)), ("body", Json::str(body))]),
    )
}

/// A 400 naming what was wrong.
fn bad_request(message: impl std::fmt::Display) -> (Response, Then) {
    (Response::text(400, format!("{message}\n")), Then::Continue)
}

/// The parameter `name` as an integer in `0..=max`; `default` when absent.
fn number(req: &Request, name: &str, default: Option<u64>, max: u64) -> Result<u64, String> {
    match req.param(name)? {
        None => default.ok_or_else(|| format!("query parameter `{name}` is required")),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!(
                "query parameter `{name}` must be an integer from 0 to {max}, not `{v}`"
            )),
        },
    }
}

/// Answers `req`.
pub fn handle(req: &Request, state: &State) -> (Response, Then) {
    let Some((route, methods)) = Route::for_path(&req.path) else {
        return (Response::text(404, "not found\n"), Then::Continue);
    };
    if !methods.contains(&req.method.as_str()) {
        let mut resp = Response::text(405, "method not allowed\n");
        resp.headers.push(("allow", methods.join(", ")));
        return (resp, Then::Continue);
    }
    match dispatch(route, req, state) {
        Ok(answer) => answer,
        Err(message) => bad_request(message),
    }
}

/// Runs the handler of `route`; `Err` is a bad request.
fn dispatch(route: Route, req: &Request, state: &State) -> Result<(Response, Then), String> {
    let ok = |resp| Ok((resp, Then::Continue));
    match route {
        Route::Root if req.method == "POST" => ok(state.sink.receive(req, &mut std::io::stdout())),
        Route::Events => ok(Response::json(200, state.sink.report())),
        Route::Root => {
            let n = state.root_count.fetch_add(1, Ordering::Relaxed) + 1;
            if !state.root.delay.is_zero() {
                pause(state.root.delay);
            }
            if state.root.fail_every > 0 && n.is_multiple_of(state.root.fail_every) {
                return ok(Response::text(
                    500,
                    format!(
                        "request {n} fails (ROOT_FAIL_EVERY={})\n",
                        state.root.fail_every
                    ),
                ));
            }
            let mut body = "hello from skiff-test-server\n".to_owned();
            if let Ok(target) = std::env::var("TARGET") {
                body.push_str(&format!("hello {target}\n"));
            }
            ok(Response::text(200, body))
        }
        Route::Info => ok(Response::json(200, info::report())),
        Route::Headers => {
            let mut headers: Vec<(String, Json)> = Vec::new();
            for (name, _) in &req.headers {
                if !headers.iter().any(|(n, _)| n == name) {
                    headers.push((name.clone(), Json::opt_str(req.header(name))));
                }
            }
            ok(Response::json(
                200,
                Json::obj([
                    ("method", Json::str(&req.method)),
                    ("path", Json::str(&req.path)),
                    ("query", Json::str(&req.query)),
                    ("target", Json::str(&req.target)),
                    ("version", Json::str(req.version.as_str())),
                    ("headers", Json::Obj(headers)),
                    ("body_len", Json::UInt(req.body.len() as u64)),
                ]),
            ))
        }
        Route::Echo => ok(Response {
            content_type: "application/octet-stream",
            body: Body::Full(req.body.clone()),
            ..Response::text(200, "")
        }),
        Route::File => {
            let path = req
                .param("path")?
                .ok_or("query parameter `path` is required")?;
            ok(read_file(&path))
        }
        Route::Fetch => {
            let url = req
                .param("url")?
                .ok_or("query parameter `url` is required")?;
            ok(fetch(&url))
        }
        Route::Write => {
            let path = req
                .param("path")?
                .ok_or("query parameter `path` is required")?;
            let mib = number(req, "mib", None, 1 << 20)?;
            ok(write_file(&path, mib))
        }
        Route::Alloc => {
            let mb = number(req, "mb", None, u64::from(u32::MAX))?;
            ok(alloc(mb))
        }
        Route::Forkbomb => {
            let max = number(req, "max", None, MAX_THREADS)?;
            ok(forkbomb(max))
        }
        Route::Burn => {
            let ms = number(req, "ms", None, MAX_MS)?;
            let start = Instant::now();
            let deadline = Duration::from_millis(ms);
            let mut spins = 0u64;
            while start.elapsed() < deadline {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
            ok(Response::json(
                200,
                Json::obj([("spun_ms", Json::UInt(ms))]),
            ))
        }
        Route::Healthz => ok(if state.failing.load(Ordering::SeqCst) {
            Response::text(500, "failing\n")
        } else {
            Response::text(200, "ok\n")
        }),
        Route::StartFailing => {
            state.failing.store(true, Ordering::SeqCst);
            ok(Response::text(200, "failing from now on\n"))
        }
        Route::Ready => ok(if state.is_ready() {
            Response::text(200, "ready\n")
        } else {
            Response::text(503, "not ready\n")
        }),
        Route::SetReady => {
            let value = match req.param("v")?.as_deref() {
                Some("true") => 2,
                Some("false") => 1,
                _ => return Err("query parameter `v` must be `true` or `false`".to_owned()),
            };
            state.ready_override.store(value, Ordering::SeqCst);
            ok(Response::text(200, format!("ready={}\n", value == 2)))
        }
        Route::Delay => {
            let ms = number(req, "ms", None, MAX_MS)?;
            pause(Duration::from_millis(ms));
            ok(Response::text(200, format!("delayed {ms} ms\n")))
        }
        Route::Stream => {
            let chunks = number(req, "chunks", Some(3), MAX_CHUNKS)?;
            let interval = Duration::from_millis(number(req, "interval_ms", Some(0), MAX_MS)?);
            let pieces = (0..chunks).map(move |i| {
                if i > 0 {
                    pause(interval);
                }
                format!("chunk {i}\n").into_bytes()
            });
            ok(Response {
                body: Body::Stream(Box::new(pieces)),
                ..Response::text(200, "")
            })
        }
        Route::Concurrency => {
            let hold = match req.param("hold_ms")? {
                None => CONCURRENCY_HOLD,
                Some(_) => Duration::from_millis(number(req, "hold_ms", None, MAX_MS)?),
            };
            ok(concurrency(state, hold))
        }
        Route::Exit => {
            let code = match req.param("code")? {
                None => 0,
                Some(v) => v
                    .parse::<i32>()
                    .map_err(|_| format!("query parameter `code` must be an integer, not `{v}`"))?,
            };
            let mut resp = Response::text(200, format!("exiting with code {code}\n"));
            resp.close = true;
            Ok((resp, Then::Exit(code)))
        }
        Route::Log => {
            let line = req.param("line")?.unwrap_or_default();
            let written = match req.param("stream")?.as_deref() {
                None | Some("stdout") => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").and_then(|()| out.flush())
                }
                Some("stderr") => {
                    use std::io::Write;
                    let mut err = std::io::stderr().lock();
                    writeln!(err, "{line}").and_then(|()| err.flush())
                }
                Some(other) => {
                    return Err(format!(
                        "query parameter `stream` must be `stdout` or `stderr`, not `{other}`"
                    ));
                }
            };
            ok(match written {
                Ok(()) => Response::text(200, "logged\n"),
                Err(err) => Response::text(500, format!("writing the log line: {err}\n")),
            })
        }
    }
}

/// A file's contents (as text) and mode, and whether it can be written: `{"mode": "440",
/// "content": "…", "writable": false}`, or 404 with the error.
fn read_file(path: &str) -> Response {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(err) => return Response::text(404, format!("{path}: {err}\n")),
    };
    let content = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(err) => return Response::text(403, format!("{path}: {err}\n")),
    };
    let writable = std::fs::OpenOptions::new().append(true).open(path).is_ok();
    Response::json(
        200,
        Json::obj([
            (
                "mode",
                Json::str(format!("{:o}", meta.permissions().mode() & 0o7777)),
            ),
            ("content", Json::str(content)),
            ("writable", Json::Bool(writable)),
        ]),
    )
}

/// Allocates `mb` MiB and writes one byte in every 4 KiB page, so that the memory is
/// really charged to the cgroup; frees it after answering. When the limit is lower, the
/// kernel OOM-kills the process here, which is what a memory-limit test observes.
fn alloc(mb: u64) -> Response {
    let Some(bytes) = mb
        .checked_mul(1 << 20)
        .and_then(|b| usize::try_from(b).ok())
    else {
        return Response::text(500, format!("cannot allocate {mb} MiB: too large\n"));
    };
    let mut buf: Vec<u8> = Vec::new();
    if let Err(err) = buf.try_reserve_exact(bytes) {
        return Response::text(500, format!("cannot allocate {mb} MiB: {err}\n"));
    }
    // The reserved capacity is untouched (not yet backed by pages); writing through the
    // spare capacity needs no unsafe and no `set_len`.
    let spare = buf.spare_capacity_mut();
    for i in (0..spare.len()).step_by(4096) {
        spare[i].write(1);
    }
    // Keep the writes: they are never read, and the buffer is freed right after.
    std::hint::black_box(&mut buf);
    Response::text(200, format!("allocated {mb} MiB\n"))
}

/// Writes `mib` MiB (of a non-zero pattern) to a new file at `path`, 1 MiB at a time, and
/// fsyncs it; 200 with `written_mib` when all of it was written, else 507 with how much
/// was, the error and its errno (28 is ENOSPC).
fn write_file(path: &str, mib: u64) -> Response {
    use std::io::Write as _;
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let result = std::fs::File::create(path).and_then(|mut f| {
        while written < mib {
            f.write_all(&chunk)?;
            written += 1;
        }
        f.sync_all()
    });
    let mut fields = vec![
        ("path", Json::Str(path.to_owned())),
        ("written_mib", Json::UInt(written)),
    ];
    match result {
        Ok(()) => Response::json(200, Json::obj(fields)),
        Err(e) => {
            fields.push(("error", Json::Str(e.to_string())));
            let errno = e.raw_os_error().and_then(|n| u64::try_from(n).ok());
            fields.push(("errno", errno.map_or(Json::Null, Json::UInt)));
            Response::json(507, Json::obj(fields))
        }
    }
}

/// Starts up to `max` threads that park forever, stopping at the first failure (`EAGAIN`
/// under a pids cgroup limit).
fn forkbomb(max: u64) -> Response {
    let mut created = 0u64;
    let mut error = None;
    while created < max {
        let spawned = std::thread::Builder::new()
            .name("forkbomb".to_owned())
            .stack_size(FORKBOMB_STACK)
            .spawn(|| {
                loop {
                    std::thread::park();
                }
            });
        match spawned {
            Ok(_) => created += 1,
            Err(err) => {
                error = Some(err.to_string());
                break;
            }
        }
    }
    Response::json(
        200,
        Json::obj([
            ("created", Json::UInt(created)),
            ("error", Json::opt_str(error)),
        ]),
    )
}

/// Holds the request for `hold`; answers 500 when another `/concurrency` request was in
/// flight at any moment of it.
fn concurrency(state: &State, hold: Duration) -> Response {
    let overlaps_before = state.overlaps.load(Ordering::SeqCst);
    let others = state.in_flight.fetch_add(1, Ordering::SeqCst);
    if others > 0 {
        state.overlaps.fetch_add(1, Ordering::SeqCst);
    }
    pause(hold);
    // A request that started during our hold bumped `overlaps`.
    let overlapped = others > 0 || state.overlaps.load(Ordering::SeqCst) != overlaps_before;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if overlapped {
        Response::text(500, "concurrent requests seen\n")
    } else {
        Response::text(200, "ok\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Version;

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.to_owned(),
            target: path.to_owned(),
            path: path.to_owned(),
            query: String::new(),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn answer(state: &State, method: &str, path: &str) -> (u16, String, Vec<String>) {
        let (resp, then) = handle(&request(method, path, &[]), state);
        assert_eq!(then, Then::Continue);
        let body = match resp.body {
            Body::Full(b) => String::from_utf8(b).expect("utf-8"),
            Body::Stream(_) => panic!("a stream"),
        };
        let headers = resp
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        (resp.status, body, headers)
    }

    // `GET /` is unchanged, `POST /` is the sink, `GET /events` its report; other methods 405.
    #[test]
    fn root_and_events_route_by_method() {
        let state = State::new(Instant::now(), Duration::ZERO, Behaviour::default());
        let (status, body, _) = answer(&state, "GET", "/");
        assert_eq!(status, 200);
        assert!(body.starts_with("hello from skiff-test-server\n"), "{body}");
        // Without a ce-id the sink answers 400 and logs nothing.
        assert_eq!(
            answer(&state, "POST", "/"),
            (400, "missing ce-id\n".to_owned(), vec![])
        );
        let (status, _, headers) = answer(&state, "PUT", "/");
        assert_eq!(
            (status, headers),
            (405, vec!["allow: GET, HEAD, POST".to_owned()])
        );
        assert_eq!(
            answer(&state, "GET", "/events"),
            (
                200,
                "{\"received\":0,\"ids\":[],\"attempts\":{}}\n".to_owned(),
                vec![]
            )
        );
        assert_eq!(answer(&state, "POST", "/events").0, 405);
    }
}
