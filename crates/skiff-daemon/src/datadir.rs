//! The data directory: its lock, the API token, and `endpoints.json`.
//!
//! Layout:
//! - `skiff.lock`: held (flock) by the running daemon, so two daemons never share a store.
//! - `token`: the API bearer token, mode 0600, generated at first start.
//! - `state.db` (+ `-wal`, `-shm`): the state store.
//! - `endpoints.json`: the addresses the daemon actually listens on (useful with port 0), read
//!   by the CLI on the same machine.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The file holding the API token.
pub const TOKEN_FILE: &str = "token";
/// The file naming the daemon's listening addresses.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// The state store file.
pub const STORE_FILE: &str = "state.db";
/// The key Secrets are encrypted with (unless `secret_key_file` names another).
pub const SECRET_KEY_FILE: &str = "secret.key";
const LOCK_FILE: &str = "skiff.lock";

/// A data-directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// An I/O error on a path.
    #[error("{action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon holds the lock.
    #[error("another skiff daemon is already using the data directory `{}`", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The token file is empty or malformed.
    #[error("the API token file `{}` is empty or malformed; delete it to have a new token generated", path.display())]
    BadToken {
        /// The token file.
        path: PathBuf,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + use<> {
    let path = path.to_path_buf();
    move |source| DataDirError::Io {
        action,
        path,
        source,
    }
}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Where the daemon listens, as written to `endpoints.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The API base URL, e.g. `http://127.0.0.1:7070`.
    pub api: String,
    /// The ingress address, e.g. `127.0.0.1:8080`.
    pub ingress: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename, fsync of the dir).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(contents).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl DataDir {
    /// Creates (mode 0700) and locks the data directory.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(io("creating the data directory", path))?;
        let meta = fs::metadata(path).map_err(io("reading", path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(io("restricting permissions of", path))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(DataDirError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io("locking", &lock_path)(e.into())),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the API token, generating one (32 random bytes, hex) at first start.
    pub fn ensure_token(&self) -> Result<String, DataDirError> {
        let path = self.path.join(TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(DataDirError::BadToken { path });
                }
                let mode = fs::metadata(&path)
                    .map_err(io("reading", &path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "token file was readable by others; restricting it to 0600");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io("restricting permissions of", &path))?;
                }
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::rng().random();
                let token = hex::encode(bytes);
                write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
                info!(path = %path.display(), "generated a new API token");
                Ok(token)
            }
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// Records where the daemon listens.
    pub fn write_endpoints(&self, endpoints: &Endpoints) -> Result<(), DataDirError> {
        let json = serde_json::to_vec_pretty(endpoints).expect("endpoints serialize");
        write_atomic(&self.path.join(ENDPOINTS_FILE), &json, 0o644)
    }

    /// Removes `endpoints.json` at shutdown.
    pub fn remove_endpoints(&self) {
        let _ = fs::remove_file(self.path.join(ENDPOINTS_FILE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token is generated once, 0600, and read back unchanged.
    #[test]
    fn token_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(&dir.path().join("data")).expect("open");
        let t1 = data.ensure_token().expect("token");
        let t2 = data.ensure_token().expect("token");
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = fs::metadata(data.path().join(TOKEN_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(data.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }

    /// A second daemon cannot lock the same data directory.
    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = DataDir::open(dir.path()).expect("first");
        let err = DataDir::open(dir.path()).expect_err("locked");
        assert!(matches!(err, DataDirError::Locked { .. }), "{err}");
    }

    /// A token file that is too short is refused with a way out.
    #[test]
    fn malformed_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(dir.path()).expect("open");
        fs::write(data.path().join(TOKEN_FILE), "short\n").expect("write");
        let err = data.ensure_token().expect_err("bad token");
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
