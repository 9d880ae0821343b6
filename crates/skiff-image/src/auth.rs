//! Registry credentials from a Docker-style `config.json` (`{"auths": {...}}`).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// Why a credentials file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// Unreadable.
    #[error("reading registry credentials `{path}`")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a Docker config.json.
    #[error("registry credentials `{path}` are not a Docker config.json: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Credentials by registry host (`docker.io`, `127.0.0.1:5000`).
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    by_registry: BTreeMap<String, Credentials>,
}

/// Normalizes a config.json key (`https://index.docker.io/v1/`, `ghcr.io`, …) to a host.
fn normalize_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(key)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

impl CredentialStore {
    /// Reads a Docker config.json.
    pub fn from_file(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text).map_err(|message| AuthFileError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Reads config.json text.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in file.auths {
            let creds = match (
                &entry.username,
                &entry.password,
                &entry.auth,
                &entry.identity_token,
            ) {
                (Some(u), Some(p), _, _) => Credentials {
                    username: u.clone(),
                    password: p.clone(),
                },
                (_, _, Some(auth), _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                    let (u, p) = text
                        .split_once(':')
                        .ok_or_else(|| format!("auths.{key}.auth must encode `user:password`"))?;
                    Credentials {
                        username: u.to_owned(),
                        password: p.to_owned(),
                    }
                }
                (_, _, _, Some(token)) => Credentials {
                    username: "<token>".to_owned(),
                    password: token.clone(),
                },
                _ => continue,
            };
            by_registry.insert(normalize_key(&key), creds);
        }
        Ok(CredentialStore { by_registry })
    }

    /// Adds credentials for a registry (tests, future `imagePullSecrets`).
    pub fn insert(&mut self, registry: &str, creds: Credentials) {
        self.by_registry.insert(normalize_key(registry), creds);
    }

    /// The credentials for `registry`, if any.
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.by_registry.get(&normalize_key(registry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both `auth` and username/password entries are read, keys normalized to hosts.
    #[test]
    fn reads_docker_config() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"username": "a", "password": "b"},
            "ghcr.io": {}
        }}"#;
        let store = CredentialStore::from_json(json).expect("valid");
        assert_eq!(
            store.get("docker.io").map(|c| c.username.as_str()),
            Some("user")
        );
        assert_eq!(
            store.get("docker.io").map(|c| c.password.as_str()),
            Some("pass")
        );
        assert_eq!(
            store.get("127.0.0.1:5000").map(|c| c.password.as_str()),
            Some("b")
        );
        assert!(store.get("ghcr.io").is_none());
        assert!(CredentialStore::from_json(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(
            !format!("{:?}", store.get("docker.io")).contains("pass"),
            "Debug hides passwords"
        );
    }
}

tokio::task_local! {
    /// Credentials of the pull in progress (a revision's `imagePullSecrets`), tried before
    /// the daemon's own for the same registry.
    static PULL_CREDENTIALS: CredentialStore;
}

/// Runs `f` (a pull) with `creds` tried first for their registries.
pub async fn with_pull_credentials<F: std::future::Future>(
    creds: CredentialStore,
    f: F,
) -> F::Output {
    PULL_CREDENTIALS.scope(creds, f).await
}

/// The credentials of the pull in progress, if it has any of its own.
pub fn pull_credentials() -> Option<CredentialStore> {
    PULL_CREDENTIALS.try_with(Clone::clone).ok()
}

/// The credentials for `registry`: the pull's own (see [`with_pull_credentials`]), else
/// `daemon`'s.
pub fn credentials_for(daemon: &CredentialStore, registry: &str) -> Option<Credentials> {
    PULL_CREDENTIALS
        .try_with(|c| c.get(registry).cloned())
        .ok()
        .flatten()
        .or_else(|| daemon.get(registry).cloned())
}
