//! `skiff-test-h2`: serves HTTP/1.1, h2c and WebSocket on `0.0.0.0:$PORT` (default 8080);
//! the endpoints are listed in the library's documentation ([`skiff_test_h2`]).
//!
//! On start it prints `skiff-test-h2 listening on :PORT pid=N` to stdout, with the port
//! actually bound (so `PORT=0` is usable). SIGTERM and SIGINT end it with status 0 at once:
//! as a container's PID 1 it gets no default action for them, so it must take them itself.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use skiff_test_h2::{log_line, serve};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The port when `PORT` is not set.
const DEFAULT_PORT: u16 = 8080;

fn main() -> ExitCode {
    let port = match std::env::var("PORT") {
        Ok(port) => match port.parse::<u16>() {
            Ok(port) => port,
            Err(err) => {
                log_line(format_args!("skiff-test-h2: PORT={port:?}: {err}"));
                return ExitCode::from(2);
            }
        },
        Err(std::env::VarError::NotPresent) => DEFAULT_PORT,
        Err(err) => {
            log_line(format_args!("skiff-test-h2: PORT: {err}"));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log_line(format_args!("skiff-test-h2: starting the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(port))
}

/// Binds, announces the port, and serves until SIGTERM or SIGINT.
async fn run(port: u16) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(err), _) | (_, Err(err)) => {
            log_line(format_args!(
                "skiff-test-h2: installing signal handlers: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
        Ok(listener) => listener,
        Err(err) => {
            log_line(format_args!("skiff-test-h2: binding 0.0.0.0:{port}: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let bound = listener.local_addr().map_or(port, |addr| addr.port());
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "skiff-test-h2 listening on :{bound} pid={}",
            std::process::id()
        );
        let _ = out.flush();
    }
    serve(listener, async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
    .await;
    ExitCode::SUCCESS
}
