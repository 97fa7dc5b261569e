//! The `plumb` binary: parses the command line, sets up logging, and hands off to one
//! command module. Exit codes: 0 ok, 1 a check failed or the config is invalid, 2 a
//! usage error (clap's own).
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plumb: {e:#}");
            ExitCode::from(1)
        }
    }
}
