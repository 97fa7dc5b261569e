//! The `plumb` binary: parses the command line, sets up logging, and hands off to one
//! command module. Exit codes: 0 ok, 1 a check failed or the config is invalid, 2 a
//! usage error (clap's own).
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of the system allocator. A proxied request makes a couple of
/// dozen short-lived allocations, and glibc's malloc/free cost about an eighth of
/// the proxy's instructions per request; jemalloc also packs an idle connection's
/// state tighter (bench/RESULTS.md: −6% instructions per request, 842 instead of
/// 1,016 bytes per idle connection; mimalloc was faster still but used 1,748).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
