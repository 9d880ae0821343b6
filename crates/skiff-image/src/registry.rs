//! A client of the OCI distribution API: manifests and blobs, with token and basic auth,
//! retries, mirrors, and verified streaming downloads.
//!
//! # Design
//! Built on reqwest rather than `oci-client` (see ARCHITECTURE.md): skiff needs the response
//! headers of failures (`Retry-After` on 429/503, the registry's own error body), to try
//! mirrors per request with their own credentials, and to stream a blob straight into the
//! content store while hashing it, resuming with `Range` after a dropped connection.
//!
//! Every request is retried on connection errors, timeouts, 429 and 5xx with exponential
//! backoff and full jitter, waiting at least what `Retry-After` asks (capped). A 401 is
//! answered once per request by the challenge it carries: `Bearer` fetches a token from the
//! realm (with basic credentials when the daemon has them), `Basic` sends the credentials.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::auth::CredentialStore;
use crate::manifest::{ACCEPT as MANIFEST_ACCEPT, Descriptor, MAX_MANIFEST_BYTES};

/// How requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Longest wait a `Retry-After` may impose.
    pub max_retry_after: Duration,
    /// Randomize delays (full jitter); tests turn it off.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        if self.jitter {
            let ms = exp.as_millis().max(1) as u64;
            Duration::from_millis(rand::random_range(ms / 2..=ms))
        } else {
            exp
        }
    }
}

/// Registry settings of the daemon.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries reached over plain HTTP (loopback registries always are).
    pub insecure: Vec<String>,
    /// Mirrors per registry, tried in order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Timeout to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
}

impl RegistryOptions {
    /// Defaults: 10 s to connect, 60 s of read silence.
    pub fn new() -> Self {
        RegistryOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            ..Default::default()
        }
    }
}

/// Where requests for one registry (or one of its mirrors) go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as users name it: `docker.io`, `127.0.0.1:5000`.
    pub host: String,
    /// The base URL: `https://registry-1.docker.io`.
    pub base: String,
    /// Whether this is a mirror of another registry.
    pub mirror: bool,
}

/// A registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached (after retries).
    #[error("cannot reach registry {registry}")]
    Connect {
        /// The registry host.
        registry: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error.
    #[error("registry {registry} answered {status}: {message}")]
    Status {
        /// The registry host.
        registry: String,
        /// The HTTP status.
        status: u16,
        /// The registry's own message (`CODE: message`), or the body's start.
        message: String,
    },
    /// Authentication failed or is missing.
    #[error("registry {registry} refused access (401): {message}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What the registry said, and what to do.
        message: String,
    },
    /// A blob's bytes do not hash to its digest.
    #[error("blob {digest} from registry {registry} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The registry host.
        registry: String,
        /// The expected digest.
        digest: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// A blob is not the size its descriptor says.
    #[error(
        "blob {digest} from registry {registry} has {actual} bytes, not the {expected} its manifest says"
    )]
    SizeMismatch {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: String,
        /// The size in the descriptor.
        expected: u64,
        /// The size received (so far).
        actual: u64,
    },
    /// A manifest is larger than skiff accepts.
    #[error("manifest from registry {registry} is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge {
        /// The registry host.
        registry: String,
    },
    /// Gave up after retrying.
    #[error("registry {registry}: gave up after {attempts} attempts")]
    Exhausted {
        /// The registry host.
        registry: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<RegistryError>,
    },
    /// Writing the download failed.
    #[error("writing blob {digest} to `{path}`")]
    Write {
        /// The blob.
        digest: String,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The digest string is malformed.
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
}

impl RegistryError {
    /// A short reason for metrics and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Connect { .. } => "unreachable",
            RegistryError::Status { status: 404, .. } => "not_found",
            RegistryError::Status { status: 429, .. } => "throttled",
            RegistryError::Status { .. } => "registry_error",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => "corrupt",
            RegistryError::ManifestTooLarge { .. } => "invalid",
            RegistryError::Exhausted { last, .. } => last.reason(),
            RegistryError::Write { .. } => "io",
            RegistryError::BadDigest(_) => "invalid",
        }
    }

    fn retryable(&self) -> bool {
        match self {
            RegistryError::Connect { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || (500..600).contains(status),
            _ => false,
        }
    }
}

/// Checks that `digest` is `sha256:<64 hex>` and returns the hex.
pub fn sha256_hex(digest: &str) -> Result<&str, RegistryError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(hex)
        }
        _ => Err(RegistryError::BadDigest(digest.to_owned())),
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The registry's error body (`{"errors":[{"code","message"}]}`) as one line.
fn registry_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|i| format!("{}: {}", i.code, i.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => {
            let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
            if text.trim().is_empty() {
                "(no message)".to_owned()
            } else {
                text.trim().to_owned()
            }
        }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP date.
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    let secs = when.as_second().saturating_sub(now.as_second());
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (
                &quoted[..end],
                quoted[end + 1..]
                    .trim_start()
                    .trim_start_matches(',')
                    .trim_start(),
            )
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim(), n.trim_start()),
                None => (after.trim(), ""),
            }
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = next;
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The raw bytes (their digest is the manifest's identity).
    pub body: Vec<u8>,
    /// `sha256:` of the body.
    pub digest: String,
    /// The Content-Type the registry sent.
    pub content_type: Option<String>,
    /// The endpoint that served it.
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone)]
enum AuthState {
    None,
    Bearer(String),
    Basic,
}

/// A client of OCI registries.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    options: RegistryOptions,
    credentials: CredentialStore,
    tokens: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl RegistryClient {
    /// A client with the daemon's registry options and credentials.
    pub fn new(options: RegistryOptions, credentials: CredentialStore) -> Self {
        let _ = crate::rustls_install();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with these settings always builds");
        RegistryClient {
            http,
            options,
            credentials,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoints to try for `registry`: its mirrors in order, then itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .options
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| self.endpoint(m, true))
            .collect();
        out.push(self.endpoint(registry, false));
        out
    }

    fn endpoint(&self, host: &str, mirror: bool) -> Endpoint {
        let (scheme_given, bare) = match host.split_once("://") {
            Some((s, rest)) => (Some(s), rest.trim_end_matches('/')),
            None => (None, host),
        };
        let insecure = is_loopback(bare) || self.options.insecure.iter().any(|i| i == bare);
        let scheme = scheme_given.unwrap_or(if insecure { "http" } else { "https" });
        let api_host = if bare == "docker.io" {
            "registry-1.docker.io"
        } else {
            bare
        };
        Endpoint {
            host: bare.to_owned(),
            base: format!("{scheme}://{api_host}"),
            mirror,
        }
    }

    fn cached_token(&self, ep: &Endpoint, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(&(ep.base.clone(), scope.to_owned()))
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(t, _)| t.clone())
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Unauthorized {
            registry: ep.host.clone(),
            message: format!("the token realm `{realm}` is not a URL: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = crate::auth::credentials_for(&self.credentials, &ep.host) {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|source| RegistryError::Connect {
            registry: ep.host.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| RegistryError::Connect {
                registry: ep.host.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message: format!(
                    "the token service answered {status}: {}",
                    registry_message(&body)
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message: format!("the token service answered something other than a token: {e}"),
            })?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| RegistryError::Unauthorized {
                registry: ep.host.clone(),
                message: "the token service answered without a token".to_owned(),
            })?;
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(10, 3600).saturating_sub(5));
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                (ep.base.clone(), scope.to_owned()),
                (token.clone(), Instant::now() + ttl),
            );
        }
        Ok(token)
    }

    /// Sends a GET with auth and retries. `extra` adds headers (Accept, Range).
    async fn get(
        &self,
        ep: &Endpoint,
        repo: &str,
        path: &str,
        extra: &[(reqwest::header::HeaderName, String)],
    ) -> Result<Response, RegistryError> {
        let scope = format!("repository:{repo}:pull");
        let url = format!("{}{}", ep.base, path);
        let policy = &self.options.retry;
        let mut auth = match self.cached_token(ep, &scope) {
            Some(t) => AuthState::Bearer(t),
            None => AuthState::None,
        };
        let mut answered_challenge = false;
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.get(&url);
            for (k, v) in extra {
                req = req.header(k, v);
            }
            match &auth {
                AuthState::Bearer(t) => req = req.header(AUTHORIZATION, format!("Bearer {t}")),
                AuthState::Basic => {
                    if let Some(c) = crate::auth::credentials_for(&self.credentials, &ep.host) {
                        req = req.basic_auth(&c.username, Some(&c.password));
                    }
                }
                AuthState::None => {}
            }
            let (err, wait) = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !answered_challenge => {
                    answered_challenge = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|h| h.to_str().ok())
                        .and_then(parse_challenge);
                    match challenge {
                        Some(Challenge::Bearer {
                            realm,
                            service,
                            scope: s,
                        }) => {
                            let scope = s.unwrap_or_else(|| scope.clone());
                            auth = AuthState::Bearer(
                                self.fetch_token(ep, &realm, service.as_deref(), &scope)
                                    .await?,
                            );
                            continue;
                        }
                        Some(Challenge::Basic)
                            if crate::auth::credentials_for(&self.credentials, &ep.host)
                                .is_some() =>
                        {
                            auth = AuthState::Basic;
                            continue;
                        }
                        _ => {
                            let body = resp.bytes().await.unwrap_or_default();
                            return Err(self.unauthorized(ep, &body));
                        }
                    }
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(self.unauthorized(ep, &body));
                }
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let wait = retry_after(resp.headers());
                    let body = resp.bytes().await.unwrap_or_default();
                    (
                        RegistryError::Status {
                            registry: ep.host.clone(),
                            status,
                            message: registry_message(&body),
                        },
                        wait,
                    )
                }
                Err(source) => (
                    RegistryError::Connect {
                        registry: ep.host.clone(),
                        source,
                    },
                    None,
                ),
            };
            attempt += 1;
            if !err.retryable() {
                return Err(err);
            }
            if attempt >= policy.attempts {
                return Err(RegistryError::Exhausted {
                    registry: ep.host.clone(),
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            let delay = wait
                .map(|w| w.min(policy.max_retry_after))
                .unwrap_or_default()
                .max(policy.backoff(attempt - 1));
            warn!(registry = %ep.host, url = %url, attempt, delay_ms = delay.as_millis() as u64, error = %crate::chain(&err), "registry request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn unauthorized(&self, ep: &Endpoint, body: &[u8]) -> RegistryError {
        let hint = if crate::auth::credentials_for(&self.credentials, &ep.host).is_some() {
            "the credentials the daemon has for it were refused"
        } else {
            "the daemon has no credentials for it (set registry_auth_file to a Docker config.json)"
        };
        RegistryError::Unauthorized {
            registry: ep.host.clone(),
            message: format!("{}; {hint}", registry_message(body)),
        }
    }

    /// Fetches a manifest (by tag or digest) from one endpoint; a digest reference is verified.
    pub async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        repo: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let resp = self
            .get(
                ep,
                repo,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[(ACCEPT, MANIFEST_ACCEPT.to_owned())],
            )
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_MANIFEST_BYTES)
        {
            return Err(RegistryError::ManifestTooLarge {
                registry: ep.host.clone(),
            });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Connect {
                registry: ep.host.clone(),
                source,
            })?;
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::ManifestTooLarge {
                    registry: ep.host.clone(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let digest = digest_of(&body);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::DigestMismatch {
                registry: ep.host.clone(),
                digest: reference.to_owned(),
                actual: digest,
            });
        }
        debug!(registry = %ep.host, repo, reference, digest = %digest, "manifest fetched");
        Ok(FetchedManifest {
            body,
            digest,
            content_type,
            endpoint: ep.clone(),
        })
    }

    /// Downloads a blob into `dest` (created or truncated), verifying its size and digest as
    /// it streams; a dropped connection resumes with `Range` when the registry allows it.
    /// `progress` is called with the bytes received so far. On error `dest` may hold a
    /// partial download; the caller removes it.
    pub async fn fetch_blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        desc: &Descriptor,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        sha256_hex(&desc.digest)?;
        let write_err = |source| RegistryError::Write {
            digest: desc.digest.clone(),
            path: dest.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write_err)?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let policy = &self.options.retry;
        let mut stream_failures = 0u32;
        loop {
            let extra: Vec<(reqwest::header::HeaderName, String)> = if received > 0 {
                vec![(RANGE, format!("bytes={received}-"))]
            } else {
                vec![]
            };
            let resp = self
                .get(
                    ep,
                    repo,
                    &format!("/v2/{repo}/blobs/{}", desc.digest),
                    &extra,
                )
                .await?;
            if received > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                // The registry ignored the range: start over.
                debug!(registry = %ep.host, digest = %desc.digest, "range not honoured; restarting the download");
                file.set_len(0).await.map_err(write_err)?;
                file = tokio::fs::File::create(dest).await.map_err(write_err)?;
                hasher = Sha256::new();
                received = 0;
            }
            let mut stream = resp.bytes_stream();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        received += bytes.len() as u64;
                        if received > desc.size {
                            return Err(RegistryError::SizeMismatch {
                                registry: ep.host.clone(),
                                digest: desc.digest.clone(),
                                expected: desc.size,
                                actual: received,
                            });
                        }
                        hasher.update(&bytes);
                        file.write_all(&bytes).await.map_err(write_err)?;
                        progress(received);
                    }
                    Err(source) => {
                        failed = Some(RegistryError::Connect {
                            registry: ep.host.clone(),
                            source,
                        });
                        break;
                    }
                }
            }
            match failed {
                None => break,
                Some(err) => {
                    stream_failures += 1;
                    if stream_failures >= policy.attempts {
                        return Err(RegistryError::Exhausted {
                            registry: ep.host.clone(),
                            attempts: stream_failures,
                            last: Box::new(err),
                        });
                    }
                    let delay = policy.backoff(stream_failures - 1);
                    warn!(registry = %ep.host, digest = %desc.digest, received, delay_ms = delay.as_millis() as u64, error = %crate::chain(&err), "blob download interrupted; resuming");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if received != desc.size {
            return Err(RegistryError::SizeMismatch {
                registry: ep.host.clone(),
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: received,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                registry: ep.host.clone(),
                digest: desc.digest.clone(),
                actual,
            });
        }
        file.sync_all().await.map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bearer challenges are parsed with quoted and bare parameters.
    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "a realm is required"
        );
    }

    /// Registry error bodies become one readable line.
    #[test]
    fn reads_registry_errors() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(registry_message(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(registry_message(b"<html>oops</html>"), "<html>oops</html>");
    }

    /// Loopback registries use HTTP, others HTTPS unless listed insecure; docker.io maps to
    /// its API host; mirrors come first.
    #[test]
    fn endpoints() {
        let mut options = RegistryOptions::new();
        options.insecure.push("registry.lan:5000".into());
        options
            .mirrors
            .insert("docker.io".into(), vec!["127.0.0.1:5001".into()]);
        let c = RegistryClient::new(options, CredentialStore::default());
        let eps = c.endpoints("docker.io");
        assert_eq!(eps[0].base, "http://127.0.0.1:5001");
        assert!(eps[0].mirror);
        assert_eq!(eps[1].base, "https://registry-1.docker.io");
        assert_eq!(
            c.endpoints("registry.lan:5000")[0].base,
            "http://registry.lan:5000"
        );
        assert_eq!(
            c.endpoints("localhost:5000")[0].base,
            "http://localhost:5000"
        );
        assert_eq!(c.endpoints("ghcr.io")[0].base, "https://ghcr.io");
    }

    /// Retry-After is read as seconds or as an HTTP date.
    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    /// Backoff doubles up to its cap; without jitter it is exact.
    #[test]
    fn backoff_doubles() {
        let p = RetryPolicy {
            jitter: false,
            ..Default::default()
        };
        assert_eq!(p.backoff(0), Duration::from_millis(250));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(30), Duration::from_secs(10));
    }
}
