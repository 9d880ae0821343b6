//! `skiff-test-server`: the process of skiff's test containers.
//!
//! A static HTTP/1.1 server (std and libc only, so it links with `+crt-static` and runs in
//! an image with nothing else) that listens on `0.0.0.0:$PORT` (default 8080) and answers
//! what a runtime test needs to observe: its environment, ids, cgroup limits, mounts,
//! devices and capabilities (`/info`), the request as received (`/headers`), and behaviour
//! on demand: memory allocation (`/alloc`), thread creation (`/forkbomb`), CPU burn
//! (`/burn`), file writes (`/write`), failing health and readiness checks, delays, streaming, a concurrency
//! detector, exits and log lines. See the list in [`USAGE`].
//!
//! It is also a CloudEvents sink ([`events`]): `POST /` takes binary-mode events, logs
//! each delivery as `event id=… type=… source=… attempt=n` on stdout and answers as the
//! `EVENT_*` environment variables say; `GET /events` reports what arrived.
//!
//! # Environment
//!
//! - `PORT`: the port to listen on (default 8080).
//! - `TARGET`: `GET /` also says `hello $TARGET`.
//! - `ROOT_FAIL_EVERY=N`, `ROOT_DELAY_MS=MS`: every Nth `GET /` answers 500, and each is
//!   held MS ms (a failing or slow revision, for rollouts).
//! - `EVENT_FAIL_FIRST=N`, `EVENT_STATUS=CODE`, `EVENT_RETRY_AFTER=S`, `EVENT_DELAY_MS=MS`,
//!   `EVENT_REPLY_TYPE=T`: how `POST /` answers, read at startup (an invalid value exits
//!   with code 2). The first N deliveries of each event id answer 503; CODE answers every
//!   delivery, overriding the rest; failing answers carry `Retry-After: S`; each delivery is
//!   held MS ms; success is a 200 carrying a reply event of type T, else a 202. Details in
//!   [`events`].
//!
//! On start it prints `skiff-test-server listening on :PORT pid=N` to stdout and
//! `skiff-test-server stderr check` to stderr, so that log capture can be tested.
//!
//! # Design
//!
//! - One thread per connection, with keep-alive; a request whose framing cannot be trusted
//!   gets a 4xx and its connection is closed. A handler that panics costs its request a 500,
//!   never the server.
//! - SIGTERM (and SIGINT) are taken by a dedicated thread with `sigwait` (see [`sys`]):
//!   SIGTERM exits 0 at once, or is only logged with `--ignore-sigterm`, so that a test can
//!   watch the runtime escalate to SIGKILL after the grace period.
//!
//! # Limitations
//!
//! - Requests are not logged, so that stdout and stderr hold only what a test asked for;
//!   the one exception is `POST /`, whose line per delivered event is what a test reads.
//! - Threads started by `/forkbomb` are never stopped.
#![deny(unsafe_code)]

/// Writes a line to stderr and flushes it, ignoring failure: `eprintln!` panics when the
/// write fails (a closed pipe), and no log line is worth the server.
macro_rules! err_line {
    ($($arg:tt)*) => {{
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, $($arg)*);
        let _ = err.flush();
    }};
}

/// Writes a line to stdout and flushes it, ignoring failure (see [`err_line`]).
macro_rules! out_line {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

mod events;
mod http;
mod info;
mod json;
mod routes;
mod sys;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{ReadError, Response, Version};
use routes::{State, Then, pause};

/// Command-line help.
const USAGE: &str = "\
usage: skiff-test-server [--crash-after-ms N [--exit-code N]] [--ignore-sigterm]
                         [--ready-after-ms N] [--say TEXT] [ARG...]

Listens on 0.0.0.0:$PORT (default 8080). Positional ARGs are ignored except that /info
reports them.

  --crash-after-ms N   print `crashing now` to stderr and exit after N ms
  --exit-code N        the exit code for --crash-after-ms (default 3)
  --ignore-sigterm     log SIGTERM and keep running (default: exit 0)
  --ready-after-ms N   GET /ready answers 503 until N ms after start
  --say TEXT           print TEXT to stderr at start

Endpoints: GET / /info /headers /alloc?mb=N /forkbomb?max=N /burn?ms=N /healthz /ready
/delay?ms=N /stream?chunks=N&interval_ms=M /concurrency[?hold_ms=N] /exit?code=N
/log?line=TEXT&stream=stdout|stderr /file?path=P /fetch?url=U /events; POST /start-failing
/set-ready?v=true|false /echo /write?path=P&mib=N, and POST / (a CloudEvents sink, binary
mode)

Environment of the event sink (POST /), read at startup:
  EVENT_FAIL_FIRST=N   the first N deliveries of each ce-id answer 503
  EVENT_STATUS=CODE    answer every delivery CODE (200-599), overriding the rest
  EVENT_RETRY_AFTER=S  add `Retry-After: S` to failing answers
  EVENT_DELAY_MS=MS    hold each delivery MS ms before answering
  EVENT_REPLY_TYPE=T   answer success 200 with a reply event of ce-type T (else 202)
";

/// The port used when `PORT` is not set.
const DEFAULT_PORT: u16 = 8080;
/// How long a connection's writes may block before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After answering a rejected request, how long to keep reading what the client still
/// sends, so that closing does not reset the connection before the answer is read.
const LINGER: Duration = Duration::from_millis(500);
/// How long `/exit` waits after the response before exiting, so that it reaches the client.
const EXIT_DELAY: Duration = Duration::from_millis(50);

/// The command-line options.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    /// `--crash-after-ms`.
    crash_after: Option<Duration>,
    /// `--exit-code`: the code of the crash.
    exit_code: i32,
    /// `--ignore-sigterm`.
    ignore_sigterm: bool,
    /// `--ready-after-ms`.
    ready_after: Duration,
    /// `--say`: a line printed at start.
    say: Option<String>,
}

impl Options {
    /// Parses the arguments after the program name. `--flag N` and `--flag=N` both work;
    /// arguments not starting with `--` are accepted and ignored.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let mut opts = Options {
            exit_code: 3,
            ..Options::default()
        };
        let mut exit_code_set = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "--crash-after-ms" => {
                    let v = value("--crash-after-ms")?;
                    let ms = v
                        .parse()
                        .map_err(|_| format!("--crash-after-ms: `{v}` is not a number"))?;
                    opts.crash_after = Some(Duration::from_millis(ms));
                }
                "--exit-code" => {
                    let v = value("--exit-code")?;
                    opts.exit_code = v
                        .parse()
                        .map_err(|_| format!("--exit-code: `{v}` is not an integer"))?;
                    exit_code_set = true;
                }
                "--ready-after-ms" => {
                    let v = value("--ready-after-ms")?;
                    let ms = v
                        .parse()
                        .map_err(|_| format!("--ready-after-ms: `{v}` is not a number"))?;
                    opts.ready_after = Duration::from_millis(ms);
                }
                "--say" => opts.say = Some(value("--say")?),
                "--ignore-sigterm" if inline.is_none() => opts.ignore_sigterm = true,
                "--help" | "-h" => return Err(String::new()),
                f if f.starts_with('-') => return Err(format!("unknown flag `{arg}`")),
                _ => {}
            }
        }
        if exit_code_set && opts.crash_after.is_none() {
            return Err("--exit-code only makes sense with --crash-after-ms".to_owned());
        }
        Ok(opts)
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        // `--help`: not an error.
        Err(message) if message.is_empty() => {
            out_line!("{}", USAGE.trim_end());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            err_line!("skiff-test-server: {message}");
            err_line!("{}", USAGE.trim_end());
            return ExitCode::from(2);
        }
    };
    // Before any other thread exists, so that every thread inherits the mask.
    let signals = match sys::block_signals(&[libc::SIGTERM, libc::SIGINT]) {
        Ok(set) => set,
        Err(err) => {
            err_line!("skiff-test-server: blocking signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let port = match std::env::var("PORT") {
        Err(_) => DEFAULT_PORT,
        Ok(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                err_line!(
                    "skiff-test-server: PORT must be a port number from 1 to 65535, not `{p}`"
                );
                return ExitCode::from(2);
            }
        },
    };
    // Not valid UTF-8: kept lossily, so that the value is rejected rather than ignored.
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let events = match events::Behaviour::from_lookup(env) {
        Ok(b) => b,
        Err(message) => {
            err_line!("skiff-test-server: {message}");
            return ExitCode::from(2);
        }
    };
    let root = match routes::Root::from_lookup(env) {
        Ok(r) => r,
        Err(message) => {
            err_line!("skiff-test-server: {message}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(err) => {
            err_line!("skiff-test-server: listening on 0.0.0.0:{port}: {err}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(text) = &opts.say {
        err_line!("{text}");
    }
    let ignore_sigterm = opts.ignore_sigterm;
    let spawned = std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || watch_signals(&signals, ignore_sigterm));
    if let Err(err) = spawned {
        err_line!("skiff-test-server: starting the signal thread: {err}");
        return ExitCode::FAILURE;
    }
    if let Some(after) = opts.crash_after {
        let code = opts.exit_code;
        let spawned = std::thread::Builder::new()
            .name("crash".to_owned())
            .spawn(move || {
                pause(after);
                err_line!("crashing now");
                std::process::exit(code);
            });
        if let Err(err) = spawned {
            err_line!("skiff-test-server: starting the crash thread: {err}");
            return ExitCode::FAILURE;
        }
    }

    out_line!(
        "skiff-test-server listening on :{port} pid={}",
        std::process::id()
    );
    err_line!("skiff-test-server stderr check");

    let state = Arc::new(State::new(started, opts.ready_after, events).with_root(root));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(err) => {
                err_line!("skiff-test-server: accepting a connection: {err}");
                // EMFILE and friends would otherwise spin.
                pause(Duration::from_millis(10));
                continue;
            }
        };
        let conn_state = Arc::clone(&state);
        // The stream moves into the thread only on success; keep a handle to answer when
        // spawning fails (under a pids limit, after /forkbomb).
        let fallback = stream.try_clone();
        let spawned = std::thread::Builder::new()
            .name("conn".to_owned())
            .spawn(move || serve_connection(stream, &conn_state));
        if let Err(err) = spawned
            && let Ok(mut stream) = fallback
        {
            let resp = Response {
                close: true,
                ..Response::text(503, format!("cannot start a thread: {err}\n"))
            };
            let _ = http::write_response(&mut stream, resp, Version::Http11, false, false);
            linger_and_close(stream);
        }
    }
    ExitCode::SUCCESS
}

/// Takes SIGTERM and SIGINT forever: exits 0, or logs and carries on for SIGTERM with
/// `--ignore-sigterm`.
fn watch_signals(signals: &sys::SignalSet, ignore_sigterm: bool) {
    loop {
        match signals.wait() {
            Ok(libc::SIGTERM) if ignore_sigterm => err_line!("got SIGTERM, ignoring"),
            Ok(libc::SIGTERM) => {
                err_line!("got SIGTERM, exiting");
                std::process::exit(0);
            }
            Ok(signal) => {
                err_line!("got signal {signal}, exiting");
                std::process::exit(0);
            }
            Err(err) => {
                err_line!("skiff-test-server: sigwait: {err}");
                pause(Duration::from_millis(100));
            }
        }
    }
}

/// Serves requests on one connection until either side closes it.
fn serve_connection(stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(http::IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let continue_writer = &mut writer;
        let read = http::read_request(&mut reader, || {
            continue_writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        });
        let req = match read {
            Ok(req) => req,
            Err(ReadError::Closed | ReadError::Broken) => return,
            Err(ReadError::Reject { status, message }) => {
                let resp = Response {
                    close: true,
                    ..Response::text(status, format!("{message}\n"))
                };
                let _ = http::write_response(&mut writer, resp, Version::Http11, false, false);
                linger_and_close(writer);
                return;
            }
        };
        let (resp, then) =
            match std::panic::catch_unwind(AssertUnwindSafe(|| routes::handle(&req, state))) {
                Ok(answer) => answer,
                Err(_) => (
                    Response {
                        close: true,
                        ..Response::text(500, "the handler panicked\n")
                    },
                    Then::Continue,
                ),
            };
        let head = req.method == "HEAD";
        let keep =
            http::write_response(&mut writer, resp, req.version, head, req.wants_keep_alive());
        if let Then::Exit(code) = then {
            let _ = writer.shutdown(Shutdown::Write);
            pause(EXIT_DELAY);
            err_line!("exiting with code {code} as requested");
            std::process::exit(code);
        }
        match keep {
            Ok(true) => {}
            Ok(false) => {
                linger_and_close(writer);
                return;
            }
            Err(_) => return,
        }
    }
}

/// Half-closes `stream`, reads (and drops) what the client still sends for up to
/// [`LINGER`], then closes: closing with unread input would reset the connection and could
/// destroy the response before the client reads it.
fn linger_and_close(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut reader = &stream;
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| (*s).to_owned()))
    }

    // Flags parse as `--f N` and `--f=N`, positional args pass, and the crash code defaults to 3.
    #[test]
    fn options_parse() {
        assert_eq!(
            parse(&[
                "--crash-after-ms",
                "10",
                "--exit-code=7",
                "x",
                "--ignore-sigterm"
            ]),
            Ok(Options {
                crash_after: Some(Duration::from_millis(10)),
                exit_code: 7,
                ignore_sigterm: true,
                ready_after: Duration::ZERO,
                say: None,
            })
        );
        assert_eq!(
            parse(&["--say", "DB_PASSWORD=hunter2"]).map(|o| o.say),
            Ok(Some("DB_PASSWORD=hunter2".to_owned()))
        );
        assert_eq!(parse(&["--crash-after-ms=5"]).map(|o| o.exit_code), Ok(3));
        assert_eq!(
            parse(&["--ready-after-ms", "250"]).map(|o| o.ready_after),
            Ok(Duration::from_millis(250))
        );
    }

    // Unknown flags, missing or bad values, and a lone --exit-code are usage errors.
    #[test]
    fn bad_options_are_rejected() {
        for args in [
            &["--nope"][..],
            &["--crash-after-ms"],
            &["--crash-after-ms", "soon"],
            &["--exit-code", "4"],
            &["--ignore-sigterm=yes"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
