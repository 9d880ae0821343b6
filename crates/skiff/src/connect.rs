//! Finding the daemon and its token: flags, then environment, then the local data directory.

use std::path::{Path, PathBuf};

use skiff_client::Client;
use skiff_daemon::config::{DEFAULT_API_LISTEN, DEFAULT_DATA_DIR};
use skiff_daemon::datadir::{ENDPOINTS_FILE, Endpoints, TOKEN_FILE};

use crate::exit::{Exit, UNAUTHORIZED, USAGE};

/// How the CLI reaches the daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The daemon's API URL [default: from the data directory's endpoints.json, else
    /// http://127.0.0.1:7070].
    #[arg(long, env = "SKIFF_SERVER", global = true)]
    pub server: Option<String>,
    /// The API token [default: read from the data directory].
    #[arg(long, env = "SKIFF_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The daemon's data directory, where the token and endpoints of a local daemon are found.
    #[arg(long, env = "SKIFF_DATA_DIR", global = true, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

fn read_token(data_dir: &Path) -> Result<Option<String>, Exit> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Exit::new(
            UNAUTHORIZED,
            format!(
                "cannot read the API token {}: permission denied (run as root, or pass --token)",
                path.display()
            ),
        )),
        Err(e) => Err(Exit::new(
            UNAUTHORIZED,
            format!("cannot read the API token {}: {e}", path.display()),
        )),
    }
}

impl ConnectArgs {
    /// A client of the daemon these arguments point at.
    pub fn client(&self) -> Result<Client, Exit> {
        let server = match &self.server {
            Some(s) => s.clone(),
            None => std::fs::read(self.data_dir.join(ENDPOINTS_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Endpoints>(&b).ok())
                .map(|e| e.api)
                .unwrap_or_else(|| format!("http://{DEFAULT_API_LISTEN}")),
        };
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => read_token(&self.data_dir)?,
        };
        Client::new(&server, token).map_err(|e| Exit::new(USAGE, e.to_string()))
    }
}
