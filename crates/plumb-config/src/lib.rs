//! plumb's configuration, in two layers.
//!
//! [`file`] mirrors the TOML file with serde and is deliberately loose: every scalar is
//! read as a raw TOML value so that one wrong type does not hide the other mistakes.
//! [`validate`] walks it, collects *every* error with its field path
//! (`pool[1].timeouts.connect: "3x" is not a duration`), fills in defaults, and builds
//! the [`model`], which is what runtime code sees: typed durations, socket addresses,
//! enums, no `Option` where a default exists.
//!
//! This crate never binds a socket and never touches the runtime, so `plumb check` and
//! `plumb serve` load a config through exactly the same path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod advice;
mod duration;
pub mod file;
pub mod model;
mod validate;

pub use advice::{advise, Advice};
pub use duration::{format_duration, parse_duration};
pub use model::*;
pub use validate::{ConfigError, ConfigErrors};

/// Parses and validates a config from TOML text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    validate::parse(text)
}

/// Reads, parses and validates a config file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests;
