//! Command-line parsing and the wiring shared by commands.

mod check;
mod demo;
mod doctor;
mod probe;
mod serve;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// plumb: a TCP load balancer that never silently black-holes a connection.
#[derive(Debug, Parser)]
#[command(name = "plumb", version, about, long_about = None)]
pub struct Args {
    /// Diagnostic log format on stderr: text for people, json (one object per line)
    /// for log pipelines. Filter with RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    log_format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer.
    #[command(
        after_help = "Examples:\n  plumb serve -c examples/tcp.toml\n  RUST_LOG=debug plumb serve -c plumb.toml\n\nSIGTERM or Ctrl-C: stop accepting, let open connections finish for\nruntime.shutdown_grace (default 30s), then close them and exit 0.\nSIGHUP (or POST /api/v1/reload): re-read the file and apply the difference\nwithout cutting connections."
    )]
    Serve {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Take the listening sockets over from the plumb serving upgrades at
        /// SOCKET (default: the config's runtime.upgrade_socket), then let it drain:
        /// a binary upgrade that refuses no connection.
        #[arg(long, value_name = "SOCKET", num_args = 0..=1)]
        #[allow(
            clippy::option_option,
            reason = "clap: absent, given bare, or given a value"
        )]
        take_over: Option<Option<PathBuf>>,
    },
    /// Validate a config file: print every error with its field path; exit 1 if any.
    #[command(
        after_help = "Examples:\n  plumb check -c examples/tcp.toml\n  plumb check -c plumb.toml --format json"
    )]
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Output format: text, or json (one object per error).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Probe every resolved address of each URL separately, phase by phase.
    #[command(
        after_help = "Examples:\n  plumb probe http://example.com/ https://example.com/\n  plumb probe tcp://db.internal:5432 -4 --count 10 --every 2s\n  plumb probe http://api.test/health --resolve api.test:80:10.0.0.7 --warn 300ms --format json\n\nExit 0 when every address was ok or warn, 1 when any failed."
    )]
    Probe(probe::ProbeArgs),
    /// Run checks against a target and name what is wrong, with evidence and a fix.
    #[command(
        after_help = "Checks: addresses (every address, several times), syn (SYN retransmissions on \
sequential connects), idle-hold (a request while idle connections are held), http (where the \
time goes).\n\nExamples:\n  plumb doctor http://api.internal/health\n  plumb doctor https://shop.test/ --check syn,addresses --format json\n\nExit 0 when no check found a problem, 1 when one did, 2 on a usage error."
    )]
    Doctor(doctor::DoctorArgs),
    /// Three local HTTP origins with plumb in front; no file, no setup. Ctrl-C stops it.
    #[command(
        after_help = "Examples:\n  plumb demo\n  plumb demo --listen 127.0.0.1:0 --tcp-listen 127.0.0.1:0 --admin 127.0.0.1:0 --balance least_conn\n  then: curl http://127.0.0.1:8080/   (again and again: each origin answers in turn)"
    )]
    Demo {
        /// Where plumb listens for clients.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where plumb's TCP listener (bytes, not requests) listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        tcp_listen: std::net::SocketAddr,
        /// Where the admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Balancing algorithm: round_robin, least_conn or random_two.
        #[arg(long, default_value = "round_robin")]
        balance: String,
    },
}

/// Output formats of data-producing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Diagnostic logs go to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(args: &Args) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        Format::Text => builder.init(),
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Runs the chosen command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Serve { config, take_over } => serve::run(&config, take_over),
        Command::Check { config, format } => Ok(check::run(&config, format)),
        Command::Probe(a) => probe::run(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Demo {
            listen,
            tcp_listen,
            admin,
            balance,
        } => demo::run(listen, tcp_listen, admin, &balance),
    }
}

/// The runtime of a measuring command (probe, doctor): one thread, so a socket's
/// readiness is seen by the task that waits for it without a hand-off between
/// threads that would add to the times measured.
fn measuring_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The runtime `plumb serve` and `plumb demo` run on: a current-thread runtime,
/// which is the data plane's worker 0 (the server starts the other
/// `runtime.workers - 1` threads, each with a current-thread runtime of its own;
/// see `plumb_core::workers`). Every task runs on the thread that drives its
/// sockets, with no hand-off between a scheduler's threads and the I/O driver:
/// measured in bench/RESULTS.md, tokio's multi-thread scheduler with a single
/// worker spends about 4 µs more system time per proxied request (waking its
/// parked driver through an eventfd) than the same code on a current-thread
/// runtime.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The signals plumb acts on, installed as soon as the runtime exists so that a
/// SIGTERM right after start is already graceful (and a SIGHUP cannot kill plumb).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must be called inside the runtime.
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let get = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(signal = name, error = %e, "cannot install a signal handler");
                None
            }
        };
        Signals {
            term: get(SignalKind::terminate(), "SIGTERM"),
            int: get(SignalKind::interrupt(), "SIGINT"),
            hup: get(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Resolves on SIGTERM or SIGINT; calls `on_hup` on each SIGHUP meanwhile.
    async fn shutdown(mut self, mut on_hup: impl FnMut()) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        loop {
            tokio::select! {
                () = recv(&mut self.term) => { tracing::info!(signal = "SIGTERM", "signal received"); return; }
                () = recv(&mut self.int) => { tracing::info!(signal = "SIGINT", "signal received"); return; }
                () = recv(&mut self.hup) => { tracing::info!(signal = "SIGHUP", "signal received: reloading the config"); on_hup(); }
            }
        }
    }
}
