//! One module per subcommand.

pub mod apply;
pub mod delete;
pub mod describe;
pub mod eventing;
pub mod get;
pub mod images;
pub mod jobs;
pub mod logs;
pub mod observe;
pub mod rollout;
pub mod scale;
pub mod secrets;
pub mod server;
pub mod validate;

use std::io::Read;

use crate::exit::{Exit, FAILURE};

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &str) -> Result<String, Exit> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Exit::new(FAILURE, format!("reading standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| Exit::new(FAILURE, format!("reading {path}: {e}")))?;
    }
    Ok(text)
}

/// The name a file is reported under.
pub fn display_name(path: &str) -> &str {
    if path == "-" { "<stdin>" } else { path }
}
