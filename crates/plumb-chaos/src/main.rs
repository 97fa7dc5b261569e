//! `plumb-chaos`: the fault matrix. It starts three backends (processes of its
//! own, `plumb-chaos backend`), a `plumb serve` in front of them, drives HTTP
//! requests and long-lived TCP connections through it, injects faults one at a
//! time and then together, and classifies how every request and connection
//! ended: success, an explicit error (an HTTP status with `plumb-error`, or a
//! reset or close), or **silent** (no answer and no close within the client's
//! timeout). Then it checks that no POST reached a backend twice, that every
//! error a client saw is in plumb's access log with the same cause and request
//! id, and that plumb's memory and descriptors came back to their baseline.
//! Exit 0 only when all of that holds. docs/reliability.md has the matrix.

#![allow(
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test driver: wall-clock deadlines, and a panic is a failed run"
)]

mod backend;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "plumb-chaos", version, about = "The fault matrix for plumb")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the matrix (or a soak) against a plumb binary.
    Run(run::Args),
    /// A backend (started by `run`): HTTP and TCP echo, switched by a mode file.
    Backend {
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        echo: SocketAddr,
        #[arg(long)]
        mode_file: PathBuf,
        #[arg(long)]
        posts_file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Backend {
            http,
            echo,
            mode_file,
            posts_file,
        } => match backend::serve(http, echo, mode_file, posts_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plumb-chaos backend: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => match run::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("plumb-chaos: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Parses "5s", "250ms", "3m".
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration (such as 5s, 250ms, 3m)")),
    }
}
