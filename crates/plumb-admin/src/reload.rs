//! Reloading the config file: read, validate, apply. Shared by `POST /api/v1/reload`
//! and SIGHUP, so both behave the same.

use std::path::Path;

use plumb_config::ConfigErrors;
use plumb_core::server::{ReloadError, ReloadSummary};
use plumb_core::Server;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// plumb was not started from a file (`plumb demo`).
    #[error("plumb was not started from a config file; nothing to reload")]
    NoFile,
    /// The file could not be read.
    #[error("cannot read {0}")]
    Read(String),
    /// The file is not a valid config.
    #[error("the config file has {} error(s)", .0 .0.len())]
    Invalid(ConfigErrors),
    /// The new config could not be applied (a listener address could not be bound).
    #[error(transparent)]
    Apply(#[from] ReloadError),
}

/// Reads `path` and applies it to `server`; returns what changed and the file's
/// checksum.
pub fn from_file(server: &Server, path: &Path) -> Result<(ReloadSummary, String), Failed> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failed::Read(format!("{}: {e}", path.display())))?;
    let config = plumb_config::parse(&text)
        .and_then(plumb_core::discovery::supported)
        .map_err(Failed::Invalid)?;
    Ok((server.reload(&config)?, checksum(&text)))
}

/// `sha256:` and the hex SHA-256 of a config file's text.
pub fn checksum(text: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{:x}", Sha256::digest(text.as_bytes()))
}
