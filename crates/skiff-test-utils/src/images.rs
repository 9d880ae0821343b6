//! Images for runtime tests: the static `skiff-test-server` ([`test_server_binary`]) in an
//! image that reports what a container sees ([`runtime_info_image`]), busybox `httpd`
//! serving one page ([`busybox_httpd_image`]), and the static `skiff-test-h2`
//! ([`h2_server_binary`]) alone in an image ([`h2_server_image`]) for h2c and WebSocket
//! through the router.
//!
//! # Design
//!
//! - The test servers are built by running cargo, once per test process each (a
//!   [`OnceLock`]), into their own target directory, `<target>/static-test-server`. Cargo's
//!   lock on that directory serializes test processes that build at the same time, and the
//!   second one finds the binary fresh. A target directory of their own also keeps the
//!   `+crt-static` `RUSTFLAGS` from invalidating the workspace's normal build.
//! - The binary is built with `CARGO_PROFILE_RELEASE_STRIP=debuginfo`: the workspace's
//!   release profile keeps line tables, which would make the binary 6.6 MB instead of
//!   1.9 MB, and every image layer (and every pull a test times) three times bigger.
//! - Built images are cached per process too: [`ImageBuilder`] clones share layer bytes.
//!
//! # Limitations
//!
//! - The build targets `x86_64-unknown-linux-gnu` with a static glibc, as
//!   `ENVIRONMENT.md` describes; other hosts need another target.
//! - Building takes about 5 s the first time for `skiff-test-server` and about 45 s for
//!   `skiff-test-h2` (tokio, hyper, h2), and well under a second when fresh; a test that
//!   calls these functions should allow for it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail, ensure};

use crate::oci::{Compression, DEFAULT_PATH_ENV, Entry, ImageBuilder, busybox_layer, layer};

/// Where [`runtime_info_image`] puts the test server.
pub const TEST_SERVER_PATH: &str = "/usr/local/bin/skiff-test-server";
/// Where [`h2_server_image`] puts `skiff-test-h2`.
pub const H2_SERVER_PATH: &str = "/usr/local/bin/skiff-test-h2";
/// The Rust target the test server is built for (the host's, with a static glibc).
pub const TEST_SERVER_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The label every image here carries, naming which image it is.
pub const IMAGE_LABEL: &str = "dev.skiff.test";
/// The body of busybox httpd's `/index.html` in [`busybox_httpd_image`].
pub const BUSYBOX_HTTPD_INDEX: &str = "hello from busybox httpd\n";

/// The workspace root: two levels above this crate's manifest.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join("../.."))
}

/// The target directory the static test servers are built into:
/// `$CARGO_TARGET_DIR/static-test-server`, or `<workspace>/target/static-test-server`.
pub fn test_server_target_dir() -> PathBuf {
    let root = workspace_root();
    // A relative `CARGO_TARGET_DIR` is relative to where cargo runs: the workspace root.
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
        .join("static-test-server")
}

/// Builds the statically linked `skiff-test-server` (once per process) and returns its path.
///
/// Runs `$CARGO` (or `cargo`) as
/// `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p skiff-test-server
/// --target x86_64-unknown-linux-gnu --target-dir <target>/static-test-server`; a failed
/// build's error carries cargo's stderr. A failure is remembered: later calls in the same
/// process fail the same way without building again.
pub fn test_server_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_test_server("skiff-test-server").map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Builds the statically linked `skiff-test-h2` (once per process) and returns its path.
///
/// Built exactly as [`test_server_binary`] builds `skiff-test-server` (`-p skiff-test-h2`,
/// the same target directory, flags and target), with the same error and the same memory
/// of a failure.
pub fn h2_server_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_test_server("skiff-test-h2").map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs the cargo build behind [`test_server_binary`] and [`h2_server_binary`]: builds
/// `package`, whose binary has the package's name.
fn build_test_server(package: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = test_server_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", package])
        .args(["--target", TEST_SERVER_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // `CARGO_ENCODED_RUSTFLAGS` would win over `RUSTFLAGS`; neither may leak in from
        // the test's own environment.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .stdin(Stdio::null());
    let output = cmd
        .output()
        .with_context(|| format!("running `{}` to build {package}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        bail!(
            "building {package} with `{cmd:?}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let binary = target_dir
        .join(TEST_SERVER_TARGET)
        .join("release")
        .join(package);
    ensure!(
        binary.is_file(),
        "cargo built {package} but {} does not exist",
        binary.display()
    );
    Ok(binary)
}

/// Calls `build` once per process and hands out clones of its image (or of its error).
fn cached(
    cell: &'static OnceLock<Result<ImageBuilder, String>>,
    build: fn() -> anyhow::Result<ImageBuilder>,
) -> anyhow::Result<ImageBuilder> {
    cell.get_or_init(|| build().map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `PATH` value of [`DEFAULT_PATH_ENV`], which images built by Docker always carry.
fn default_path() -> &'static str {
    DEFAULT_PATH_ENV
        .strip_prefix("PATH=")
        .unwrap_or(DEFAULT_PATH_ENV)
}

/// An image whose process is the test server: [`busybox_layer`] (for `sh` and exec probes)
/// and a layer with [`TEST_SERVER_PATH`] (mode 0755); entrypoint `[TEST_SERVER_PATH]`, no
/// `Cmd`, no `User` (so root), `Env` with a `PATH`, `ExposedPorts` `8080/tcp` and the label
/// `dev.skiff.test=runtime-info`.
///
/// The image has no `/etc/resolv.conf`, `/etc/hosts` or `/etc/hostname`: the runtime
/// provides them, and `/info`'s `files` shows whether it did.
pub fn runtime_info_image() -> anyhow::Result<ImageBuilder> {
    static IMAGE: OnceLock<Result<ImageBuilder, String>> = OnceLock::new();
    cached(&IMAGE, || {
        let path = test_server_binary()?;
        let binary = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let server = layer(
            &[
                Entry::dir("usr"),
                Entry::dir("usr/local"),
                Entry::dir("usr/local/bin"),
                Entry::executable(TEST_SERVER_PATH, binary),
            ],
            Compression::Gzip,
        );
        Ok(ImageBuilder::new()
            .layer(busybox_layer(Compression::Gzip)?)
            .layer(server)
            .entrypoint(&[TEST_SERVER_PATH])
            .env("PATH", default_path())
            .expose("8080/tcp")
            .label(IMAGE_LABEL, "runtime-info"))
    })
}

/// The page of [`sample_image`].
pub const SAMPLE_PAGE: &str = "<!doctype html><title>skiff</title><h1>Hello from skiff!</h1>\n";

/// skiff's sample image (the quick start's `skiff.local/hello:v1`): busybox, and httpd
/// serving [`SAMPLE_PAGE`] from `/www` on `$PORT` behind a shell that forwards SIGTERM.
pub fn sample_image() -> anyhow::Result<ImageBuilder> {
    Ok(ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip)?)
        .layer(layer(
            &[Entry::dir("www"), Entry::file("www/index.html", SAMPLE_PAGE)],
            Compression::Gzip,
        ))
        .entrypoint(&["/bin/sh", "-c"])
        // httpd as PID 1 would ignore SIGTERM (PID 1 has no default signal actions), so the
        // shell stays PID 1 and forwards it: the instance stops at once instead of after its
        // whole grace period.
        .cmd(&["echo \"hello: serving /www on port ${PORT:-8080} as $(id -un)\"; httpd -f -v -p \"${PORT:-8080}\" -h /www & pid=$!; trap 'kill -TERM $pid; wait $pid; exit 0' TERM INT; wait $pid"])
        .expose("8080/tcp")
        .label("org.opencontainers.image.title", "skiff sample: hello"))
}

/// An image whose only content is `skiff-test-h2` at [`H2_SERVER_PATH`] (mode 0755), like
/// a `FROM scratch` image: no shell, no libc, no `/etc`. Entrypoint `[H2_SERVER_PATH]`, no
/// `Cmd`, no `User` (so root), `Env` with a `PATH` and `PORT=8080` (the runtime's `PORT`
/// replaces it), `ExposedPorts` `8080/tcp` and the label `dev.skiff.test=h2-server`.
///
/// Without busybox it has no `sh` for exec probes: check it with HTTP or TCP probes.
pub fn h2_server_image() -> anyhow::Result<ImageBuilder> {
    static IMAGE: OnceLock<Result<ImageBuilder, String>> = OnceLock::new();
    cached(&IMAGE, || {
        let path = h2_server_binary()?;
        let binary = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let server = layer(
            &[
                Entry::dir("usr"),
                Entry::dir("usr/local"),
                Entry::dir("usr/local/bin"),
                Entry::executable(H2_SERVER_PATH, binary),
            ],
            Compression::Gzip,
        );
        Ok(ImageBuilder::new()
            .layer(server)
            .entrypoint(&[H2_SERVER_PATH])
            .env("PATH", default_path())
            .env("PORT", "8080")
            .expose("8080/tcp")
            .label(IMAGE_LABEL, "h2-server"))
    })
}

/// busybox `httpd` serving `/www` (whose `index.html` is [`BUSYBOX_HTTPD_INDEX`]) on
/// `$PORT` (default 8080): entrypoint `["/bin/sh", "-c"]`, cmd
/// `["exec httpd -f -p \"${PORT:-8080}\" -h /www"]`, `ExposedPorts` `8080/tcp` and the
/// label `dev.skiff.test=busybox-httpd`.
///
/// `exec` makes httpd the container's process, so that it gets the runtime's SIGTERM (as
/// PID 1 without a handler it ignores it, and is killed at the end of the grace period).
pub fn busybox_httpd_image() -> anyhow::Result<ImageBuilder> {
    static IMAGE: OnceLock<Result<ImageBuilder, String>> = OnceLock::new();
    cached(&IMAGE, || {
        let www = layer(
            &[
                Entry::dir("www"),
                Entry::file("www/index.html", BUSYBOX_HTTPD_INDEX),
            ],
            Compression::Gzip,
        );
        Ok(ImageBuilder::new()
            .layer(busybox_layer(Compression::Gzip)?)
            .layer(www)
            .entrypoint(&["/bin/sh", "-c"])
            .cmd(&["exec httpd -f -p \"${PORT:-8080}\" -h /www"])
            .env("PATH", default_path())
            .expose("8080/tcp")
            .label(IMAGE_LABEL, "busybox-httpd"))
    })
}
