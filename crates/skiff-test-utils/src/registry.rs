//! A real registry for one test: CNCF distribution (`docker-registry serve`, Debian's
//! `docker-registry` package) on a free loopback port, with filesystem storage in a temporary
//! directory, and `skopeo` to push images built with [`crate::oci`] into it.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use skiff_test_utils::registry::{PushFormat, Registry, skip_reason};
//! if let Some(why) = skip_reason() {
//!     eprintln!("skipped: {why}");
//!     return Ok(());
//! }
//! let registry = Registry::start().await?;
//! # let dir = std::path::Path::new("/tmp/layout");
//! registry.push_oci_layout(dir, "v1", "skiff/hello:v1", PushFormat::Oci, false).await?;
//! let manifest = registry.inspect("skiff/hello:v1", true).await?;
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - The port is found by binding `127.0.0.1:0` and releasing it; if the registry then loses
//!   the port to someone else, it exits with "address already in use" and a new port is tried.
//! - Readiness is `GET /v2/` answering with distribution's `Docker-Distribution-Api-Version`
//!   header (200, or 401 when auth is on), polled with [`wait_for`](crate::wait_for).
//! - Basic auth uses distribution's `htpasswd` backend over plain HTTP. Distribution 2.8's
//!   documentation says htpasswd needs TLS, but the server does not enforce it: it serves
//!   the `Basic` challenge and checks credentials on a plain listener. Clients still need
//!   `--tls-verify=false` (skopeo) to send credentials over HTTP. The htpasswd file is
//!   written here with bcrypt at the minimum cost (4), because the registry checks the hash on
//!   every request and the default cost (12) adds about 250 ms to each.
//! - When a test panics, the registry is killed but its directory (storage, config and
//!   `registry.log`) is kept and its path printed.
//!
//! # Limitations
//!
//! - skopeo keeps a blob-info cache in `/var/lib/containers/cache` when run as root; it only
//!   affects which blobs skopeo tries to reuse, never what a registry stores, but it is shared
//!   by every test on the machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::oci::{
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
    hex_of,
};
use crate::{MAX_WAIT, wait_for};

/// The registry binary (Debian's `docker-registry` package).
pub const REGISTRY_BIN: &str = "docker-registry";
/// The image copying tool.
pub const SKOPEO_BIN: &str = "skopeo";

/// How many times a start is retried when another process takes the chosen port first.
const PORT_ATTEMPTS: usize = 5;
/// How long [`Registry::get`] waits for a whole response (a 64 MiB blob takes well under 1 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The bcrypt cost of the htpasswd file: the minimum, since the registry checks it on every
/// request.
const BCRYPT_COST: u32 = 4;

/// Why registry tests cannot run here, or `None` when they can: they need root (as CI has)
/// and the `docker-registry` and `skopeo` binaries.
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("registry tests need root".to_owned());
    }
    for bin in [REGISTRY_BIN, SKOPEO_BIN] {
        if find_in_path(bin).is_none() {
            return Some(format!(
                "`{bin}` is not installed (apt-get install docker-registry skopeo)"
            ));
        }
    }
    None
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(bin))
            .find(|p| p.is_file())
    })
}

/// The manifest format `skopeo copy` pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// Keep the OCI manifest (and index) byte for byte (`--preserve-digests`). Without that
    /// flag skopeo gzips uncompressed layers on their way to a registry, which changes their
    /// digests and the manifest's.
    Oci,
    /// Convert to Docker schema 2 (`--format v2s2`); blob digests stay the same.
    V2s2,
}

/// An HTTP response from the registry.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running `docker-registry` for one test.
pub struct Registry {
    /// The temporary directory holding everything below; `None` once kept or removed.
    root: Option<tempfile::TempDir>,
    /// `root`'s path, still known after `root` is kept.
    dir: PathBuf,
    /// Filesystem storage (`storage.filesystem.rootdirectory`).
    storage: PathBuf,
    /// The registry's stdout and stderr, appended across restarts.
    log: PathBuf,
    /// `127.0.0.1:PORT`, fixed once started so that a restart serves the same address.
    addr: String,
    /// Basic-auth user and password, when started with htpasswd.
    credentials: Option<(String, String)>,
    /// The registry process, while it runs.
    child: Option<Child>,
}

impl Registry {
    /// Starts an anonymous registry.
    pub async fn start() -> anyhow::Result<Registry> {
        Self::start_inner(None).await
    }

    /// Starts a registry that requires `user`/`password` (htpasswd, bcrypt) for every request,
    /// pulls included.
    pub async fn start_with_htpasswd(user: &str, password: &str) -> anyhow::Result<Registry> {
        Self::start_inner(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        let root = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .context("creating the registry directory")?;
        let dir = root.path().to_owned();
        let mut registry = Registry {
            storage: dir.join("storage"),
            log: dir.join("registry.log"),
            root: Some(root),
            dir,
            addr: String::new(),
            credentials,
            child: None,
        };
        if let Some((user, password)) = &registry.credentials {
            let hash = bcrypt::hash(password, BCRYPT_COST).context("hashing the password")?;
            let path = registry.dir.join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            registry.addr = free_loopback_addr()?;
            match registry.launch().await {
                Ok(()) => return Ok(registry),
                Err(LaunchError::PortTaken(e)) => last_error = Some(e),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "starting the registry: the port was taken {PORT_ATTEMPTS} times"
            )))
    }

    /// The registry's configuration (distribution's `config.yml`).
    fn config_yaml(&self) -> String {
        // JSON strings are valid YAML scalars, which makes quoting paths safe.
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("a string");
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: skiff-test-registry-secret\n",
            storage = q(&self.storage),
            addr = self.addr,
        );
        if self.credentials.is_some() {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                q(&self.dir.join("htpasswd"))
            ));
        }
        yaml
    }

    /// Writes the config and starts the registry on `self.addr`, waiting until it answers.
    async fn launch(&mut self) -> Result<(), LaunchError> {
        let config = self.dir.join("config.yml");
        std::fs::write(&config, self.config_yaml())
            .with_context(|| format!("writing {}", config.display()))?;
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry (apt-get install docker-registry)")?;
        self.child = Some(child);
        let expected = if self.credentials.is_some() { 401 } else { 200 };
        let addr = self.addr.clone();
        let ready = wait_for(
            "the registry to answer GET /v2/",
            Duration::from_millis(10),
            MAX_WAIT,
            || {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let addr = addr.clone();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    // Short, so a port squatter that never answers cannot stall the loop.
                    let response = http_get(&addr, "/v2/", &[], Duration::from_millis(500))
                        .await
                        .ok()?;
                    // Another process may have taken the port: only distribution sends this.
                    response.header("docker-distribution-api-version")?;
                    Some(Ok(response.status))
                }
            },
        )
        .await;
        let err = match ready {
            Ok(Ok(status)) if status == expected => return Ok(()),
            Ok(Ok(status)) => anyhow::anyhow!("GET /v2/ answered {status}, expected {expected}"),
            Ok(Err(status)) => anyhow::anyhow!("docker-registry exited ({status})"),
            Err(e) => e,
        };
        self.kill();
        let log_text = self.log_text();
        let this_run = log_text
            .get(usize::try_from(log_start).unwrap_or(0)..)
            .unwrap_or(&log_text);
        let port_taken = this_run.contains("address already in use");
        let err = err.context(format!(
            "starting docker-registry on {}; its log:\n{this_run}",
            self.addr
        ));
        Err(if port_taken {
            LaunchError::PortTaken(err)
        } else {
            LaunchError::Other(err)
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The user and password, for a registry started with htpasswd.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's temporary directory (config, htpasswd, log, storage).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage root (`docker/registry/v2/...` lives below it).
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The registry's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file holding blob `digest` (`sha256:<hex>` or bare hex) in the registry's storage,
    /// so a test can corrupt or remove it. It exists only once the blob was pushed.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = hex_of(digest);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    /// The registry's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `user:password` for skopeo's `--creds` flags.
    fn creds_arg(&self) -> Option<String> {
        self.credentials.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// Pushes the image tagged `tag` in the OCI layout `dir` to `repo_tag` (e.g.
    /// `skiff/hello:v1`) with `skopeo copy`, converting it to `format`; `all_platforms`
    /// pushes every manifest of an image index (`--all`).
    pub async fn push_oci_layout(
        &self,
        dir: &Path,
        tag: &str,
        repo_tag: &str,
        format: PushFormat,
        all_platforms: bool,
    ) -> anyhow::Result<()> {
        let mut args = vec!["copy".to_owned(), "--dest-tls-verify=false".to_owned()];
        match format {
            PushFormat::Oci => args.push("--preserve-digests".to_owned()),
            PushFormat::V2s2 => args.extend(["--format".to_owned(), "v2s2".to_owned()]),
        }
        if all_platforms {
            args.push("--all".to_owned());
        }
        if let Some(creds) = self.creds_arg() {
            args.extend(["--dest-creds".to_owned(), creds]);
        }
        args.push(format!("oci:{}:{tag}", dir.display()));
        args.push(format!("docker://{}/{repo_tag}", self.addr));
        skopeo(&args)
            .await
            .with_context(|| format!("pushing oci:{}:{tag} to {repo_tag}", dir.display()))?;
        Ok(())
    }

    /// `skopeo inspect` of `repo_tag` with this registry's credentials: the manifest as stored
    /// when `raw`, skopeo's summary (`Digest`, `Layers`, `LayersData`, ...) otherwise.
    pub async fn inspect(&self, repo_tag: &str, raw: bool) -> anyhow::Result<serde_json::Value> {
        let mut args = vec!["inspect".to_owned(), "--tls-verify=false".to_owned()];
        if raw {
            args.push("--raw".to_owned());
        }
        match self.creds_arg() {
            Some(creds) => args.extend(["--creds".to_owned(), creds]),
            None => args.push("--no-creds".to_owned()),
        }
        args.push(format!("docker://{}/{repo_tag}", self.addr));
        let out = skopeo(&args).await?;
        serde_json::from_str(&out).with_context(|| format!("parsing skopeo inspect output:\n{out}"))
    }

    /// `GET path` without credentials, accepting every manifest media type.
    pub async fn get_anonymous(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(&self.addr, path, &accept_manifests(), REQUEST_TIMEOUT).await
    }

    /// `GET path` with this registry's credentials (if any), accepting every manifest media
    /// type.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        let mut headers = accept_manifests();
        if let Some(creds) = self.creds_arg() {
            headers.push((
                "Authorization".to_owned(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(creds)
                ),
            ));
        }
        http_get(&self.addr, path, &headers, REQUEST_TIMEOUT).await
    }

    /// Kills the registry with SIGKILL, as a crash mid-pull would. Storage is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same address and storage (after [`kill`](Self::kill),
    /// or killing it first).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await.map_err(|e| match e {
            LaunchError::PortTaken(e) => e.context("restarting: another process took the port"),
            LaunchError::Other(e) => e.context("restarting the registry"),
        })
    }

    /// Kills the registry and removes its directory.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.kill();
        if let Some(root) = self.root.take() {
            root.close().context("removing the registry directory")?;
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking()
            && let Some(root) = self.root.take()
        {
            let kept = root.keep();
            eprintln!(
                "test failed: registry storage, config and registry.log kept in {}",
                kept.display()
            );
        }
    }
}

/// Why [`Registry::launch`] failed: losing the port race is retried, the rest is not.
enum LaunchError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for LaunchError {
    fn from(e: anyhow::Error) -> LaunchError {
        LaunchError::Other(e)
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_addr() -> anyhow::Result<String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 for a port")?;
    let port = listener.local_addr().context("local address")?.port();
    Ok(format!("127.0.0.1:{port}"))
}

fn accept_manifests() -> Vec<(String, String)> {
    vec![(
        "Accept".to_owned(),
        [
            MEDIA_TYPE_MANIFEST,
            MEDIA_TYPE_INDEX,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_LIST,
        ]
        .join(", "),
    )]
}

/// A plain HTTP/1.0 `GET` (so the server closes the connection and sends no chunked body),
/// failing after `timeout`.
async fn http_get(
    addr: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .context("sending the request")?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .context("reading the response")?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("GET {path} on {addr} timed out"))?
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no end of headers in a {}-byte response", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Runs `skopeo` with `args`; returns its stdout, or an error with its exit status and
/// stderr.
pub async fn skopeo<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<String> {
    // Passwords stay out of error messages.
    let mut shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    for i in 1..shown.len() {
        if ["--creds", "--src-creds", "--dest-creds"].contains(&shown[i - 1].as_str()) {
            shown[i] = "<redacted>".to_owned();
        }
    }
    let out = tokio::process::Command::new(SKOPEO_BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running skopeo (apt-get install skopeo)")?;
    if !out.status.success() {
        bail!(
            "`skopeo {}` failed ({}): {}",
            shown.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("skopeo printed non-UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    // A registry that loses its port to another process is reported as a port race (which
    // `start` retries), with the registry's log in the error.
    #[tokio::test]
    async fn a_taken_port_is_reported_as_a_race() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        let mut registry = Registry::start().await.expect("starting");
        registry.kill();
        registry.addr = squatter.local_addr().expect("address").to_string();
        match registry.launch().await {
            Err(LaunchError::PortTaken(e)) => {
                assert!(format!("{e:#}").contains("address already in use"), "{e:#}");
            }
            Err(LaunchError::Other(e)) => panic!("not seen as a port race: {e:#}"),
            Ok(()) => panic!("started on a taken port"),
        }
        assert!(registry.pid().is_none(), "the failed registry was reaped");
    }

    // Status, headers and body are split where HTTP puts them.
    #[test]
    fn responses_parse() {
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Basic realm=\"x\"\r\n\r\n{}",
        )
        .expect("parses");
        assert_eq!(r.status, 401);
        assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"x\""));
        assert_eq!(r.body, b"{}");
    }
}
