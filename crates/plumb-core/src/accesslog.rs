//! The access log: one JSON object per line, one line per client connection, written
//! when the connection ends. Its fields are a contract (docs/access-log.md).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cause::Cause;

/// Where access-log lines go.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    Off,
    Stderr,
    File(Mutex<File>),
}

/// How a connection ended: a normal close, or a [`Cause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed first (FIN), then the backend.
    ClientClosed,
    /// The backend closed first (FIN), then the client.
    UpstreamClosed,
    /// It failed, or was closed by plumb, for this cause.
    Failed(Cause),
}

impl End {
    /// The `end` field: `client_closed`, `upstream_closed` or a cause.
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::UpstreamClosed => "upstream_closed",
            End::Failed(c) => c.as_str(),
        }
    }

    /// The cause, when the connection did not end normally.
    pub fn cause(self) -> Option<Cause> {
        match self {
            End::Failed(c) => Some(c),
            _ => None,
        }
    }
}

/// A failed connect attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The backend tried.
    pub backend: SocketAddr,
    /// Why it failed.
    pub cause: Cause,
    /// How long it took to fail.
    pub elapsed: Duration,
}

/// What is logged about one connection.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// Pool name.
    pub pool: &'a str,
    /// Client address (from the PROXY header when accepted).
    pub client: SocketAddr,
    /// The backend that carried the connection, if any.
    pub backend: Option<SocketAddr>,
    /// Connect attempts made, successful or not.
    pub attempts: u32,
    /// The attempts that failed, in order.
    pub failed_attempts: &'a [Attempt],
    /// Bytes from the client to the backend.
    pub bytes_from_client: u64,
    /// Bytes from the backend to the client.
    pub bytes_to_client: u64,
    /// Accept to close.
    pub duration: Duration,
    /// How it ended.
    pub end: End,
    /// The I/O error behind the end, if any.
    pub error: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    kind: &'static str,
    listener: &'a str,
    pool: &'a str,
    client: String,
    backend: Option<String>,
    attempts: u32,
    failed_attempts: Vec<AttemptLine>,
    bytes_from_client: u64,
    bytes_to_client: u64,
    duration_ms: f64,
    end: &'static str,
    cause: Option<&'static str>,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct AttemptLine {
    backend: String,
    cause: &'static str,
    ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl AccessLog {
    /// No access log.
    pub fn off() -> AccessLog {
        AccessLog { sink: Sink::Off }
    }

    /// Lines go to standard error.
    pub fn stderr() -> AccessLog {
        AccessLog { sink: Sink::Stderr }
    }

    /// Lines are appended to `path`, which is created if needed.
    pub fn file(path: &Path) -> io::Result<AccessLog> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLog {
            sink: Sink::File(Mutex::new(f)),
        })
    }

    /// Writes one line. A failing sink is reported through tracing and otherwise
    /// ignored: losing a log line must never break a connection.
    pub fn write(&self, r: &Record<'_>) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: "tcp",
            listener: r.listener,
            pool: r.pool,
            client: r.client.to_string(),
            backend: r.backend.map(|b| b.to_string()),
            attempts: r.attempts,
            failed_attempts: r
                .failed_attempts
                .iter()
                .map(|a| AttemptLine {
                    backend: a.backend.to_string(),
                    cause: a.cause.as_str(),
                    ms: ms(a.elapsed),
                })
                .collect(),
            bytes_from_client: r.bytes_from_client,
            bytes_to_client: r.bytes_to_client,
            duration_ms: ms(r.duration),
            end: r.end.as_str(),
            cause: r.end.cause().map(Cause::as_str),
            error: r.error.as_deref(),
        };
        let mut buf = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise access log line");
                return;
            }
        };
        buf.push(b'\n');
        let result = match &self.sink {
            Sink::Off => Ok(()),
            Sink::Stderr => io::stderr().lock().write_all(&buf),
            Sink::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write_all(&buf),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write access log line");
        }
    }
}
