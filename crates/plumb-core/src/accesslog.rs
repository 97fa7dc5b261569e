//! The access log: one JSON object per line, one line per client connection, written
//! when the connection ends. Its fields are a contract (docs/access-log.md).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cause::Cause;

/// Where access-log lines go. Lines are handed to a writer thread through a bounded
/// queue, so a slow disk or a full stderr pipe never blocks a connection task (or the
/// accept loop); when the queue is full the line is dropped and counted.
#[derive(Debug)]
pub struct AccessLog {
    queue: Option<SyncSender<Vec<u8>>>,
    dropped: AtomicU64,
    queued: AtomicU64,
    /// Lines the writer thread has written out (and flushed).
    written: Arc<AtomicU64>,
}

/// Lines the writer thread may be behind by before new ones are dropped.
const QUEUE: usize = 16 * 1024;

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
    /// How many distinct ends there are.
    pub const COUNT: usize = 2 + Cause::ALL.len();

    /// Every end, in index order.
    pub fn all() -> impl Iterator<Item = End> {
        [End::ClientClosed, End::UpstreamClosed]
            .into_iter()
            .chain(Cause::ALL.iter().map(|c| End::Failed(*c)))
    }

    /// A dense index, for counters.
    pub fn index(self) -> usize {
        match self {
            End::ClientClosed => 0,
            End::UpstreamClosed => 1,
            End::Failed(c) => 2 + c.index(),
        }
    }

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
    /// `TCP_INFO` of the client leg at close.
    pub client_tcp: Option<plumb_sys::TcpInfo>,
    /// `TCP_INFO` of the backend leg at close.
    pub upstream_tcp: Option<plumb_sys::TcpInfo>,
}

/// What the access log says of a leg's `TCP_INFO`.
#[derive(Serialize)]
struct TcpLine {
    rtt_ms: f64,
    total_retrans: u32,
    suspected_blackhole: bool,
}

fn tcp_line(i: Option<plumb_sys::TcpInfo>) -> Option<TcpLine> {
    i.map(|i| TcpLine {
        rtt_ms: f64::from(i.rtt) / 1000.0,
        total_retrans: i.total_retrans,
        suspected_blackhole: i.suspected_blackhole(),
    })
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
    client_tcp: Option<TcpLine>,
    upstream_tcp: Option<TcpLine>,
}

/// What is logged about one HTTP request.
#[derive(Debug, Clone)]
pub struct HttpRecord<'a> {
    /// Listener name.
    pub listener: &'a str,
    /// Pool the request was routed to, if any.
    pub pool: Option<&'a str>,
    /// Client address.
    pub client: SocketAddr,
    /// The request id (sent to the backend and back to the client).
    pub request_id: &'a str,
    /// Method.
    pub method: &'a str,
    /// Host (from `Host` or the HTTP/2 authority).
    pub host: &'a str,
    /// Path, without the query.
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: &'static str,
    /// Status sent to the client.
    pub status: u16,
    /// The backend that answered, if any.
    pub backend: Option<SocketAddr>,
    /// Attempts made (backends tried, plus a retry on a fresh connection when a
    /// kept-alive one turned out closed).
    pub attempts: u32,
    /// The attempts that failed, in order.
    pub failed_attempts: &'a [Attempt],
    /// Request body bytes from the client.
    pub bytes_from_client: u64,
    /// Response body bytes to the client.
    pub bytes_to_client: u64,
    /// Waiting for the request head after the connection opened or the previous
    /// response ended (first request: from accept).
    pub header_read: Option<Duration>,
    /// Connecting to the backend (none when a kept-alive connection was reused).
    pub connect: Option<Duration>,
    /// From the start of the request to the response head.
    pub first_byte: Option<Duration>,
    /// From the start of the request to the end of the response.
    pub total: Duration,
    /// Why it failed, if it did.
    pub cause: Option<Cause>,
    /// The error behind the cause.
    pub error: Option<String>,
    /// The connection was upgraded (WebSocket) and proxied as a tunnel.
    pub upgraded: bool,
    /// `TCP_INFO` of the client's connection at the end of the request.
    pub client_tcp: Option<plumb_sys::TcpInfo>,
    /// `TCP_INFO` of the backend connection at the end of the request.
    pub upstream_tcp: Option<plumb_sys::TcpInfo>,
}

#[derive(Serialize)]
struct HttpLine<'a> {
    ts: String,
    kind: &'static str,
    listener: &'a str,
    pool: Option<&'a str>,
    client: String,
    request_id: &'a str,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    version: &'static str,
    status: u16,
    backend: Option<String>,
    attempts: u32,
    failed_attempts: Vec<AttemptLine>,
    bytes_from_client: u64,
    bytes_to_client: u64,
    header_read_ms: Option<f64>,
    connect_ms: Option<f64>,
    first_byte_ms: Option<f64>,
    total_ms: f64,
    cause: Option<&'static str>,
    error: Option<&'a str>,
    upgraded: bool,
    client_tcp: Option<TcpLine>,
    upstream_tcp: Option<TcpLine>,
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
        AccessLog {
            queue: None,
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lines go to standard error.
    pub fn stderr() -> AccessLog {
        Self::spawn(Box::new(io::stderr()))
    }

    /// Lines are appended to `path`, which is created if needed.
    pub fn file(path: &Path) -> io::Result<AccessLog> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::spawn(Box::new(f)))
    }

    fn spawn(out: Box<dyn Write + Send>) -> AccessLog {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let done = Arc::clone(&written);
        let spawned = std::thread::Builder::new()
            .name("plumb-access-log".to_string())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let mut result = out.write_all(&line);
                    let mut n = 1;
                    // Write out whatever else is queued, then flush once.
                    while let Ok(line) = rx.try_recv() {
                        result = result.and_then(|()| out.write_all(&line));
                        n += 1;
                    }
                    if let Err(e) = result.and_then(|()| out.flush()) {
                        tracing::warn!(error = %e, "cannot write access log");
                    }
                    done.fetch_add(n, Ordering::Release);
                }
            });
        match spawned {
            Ok(_) => AccessLog {
                queue: Some(tx),
                dropped: AtomicU64::new(0),
                queued: AtomicU64::new(0),
                written,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; access log off");
                Self::off()
            }
        }
    }

    /// Waits (up to `limit`) until every queued line is written out.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.written.load(Ordering::Acquire) < self.queued.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one HTTP request's line.
    pub fn write_http(&self, r: &HttpRecord<'_>) {
        if self.queue.is_none() {
            return;
        }
        let line = HttpLine {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: "http",
            listener: r.listener,
            pool: r.pool,
            client: r.client.to_string(),
            request_id: r.request_id,
            method: r.method,
            host: r.host,
            path: r.path,
            version: r.version,
            status: r.status,
            backend: r.backend.map(|b| b.to_string()),
            attempts: r.attempts,
            failed_attempts: attempt_lines(r.failed_attempts),
            bytes_from_client: r.bytes_from_client,
            bytes_to_client: r.bytes_to_client,
            header_read_ms: r.header_read.map(ms),
            connect_ms: r.connect.map(ms),
            first_byte_ms: r.first_byte.map(ms),
            total_ms: ms(r.total),
            cause: r.cause.map(Cause::as_str),
            error: r.error.as_deref(),
            upgraded: r.upgraded,
            client_tcp: tcp_line(r.client_tcp),
            upstream_tcp: tcp_line(r.upstream_tcp),
        };
        self.queue_line(&line);
    }

    /// Queues one line. Losing a log line must never break or slow a connection: when
    /// the writer is behind, the line is dropped and counted.
    pub fn write(&self, r: &Record<'_>) {
        if self.queue.is_none() {
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
            failed_attempts: attempt_lines(r.failed_attempts),
            bytes_from_client: r.bytes_from_client,
            bytes_to_client: r.bytes_to_client,
            duration_ms: ms(r.duration),
            end: r.end.as_str(),
            cause: r.end.cause().map(Cause::as_str),
            error: r.error.as_deref(),
            client_tcp: tcp_line(r.client_tcp),
            upstream_tcp: tcp_line(r.upstream_tcp),
        };
        self.queue_line(&line);
    }

    fn queue_line(&self, line: &impl Serialize) {
        let Some(queue) = &self.queue else { return };
        let mut buf = match serde_json::to_vec(line) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise access log line");
                return;
            }
        };
        buf.push(b'\n');
        match queue.try_send(buf) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn attempt_lines(attempts: &[Attempt]) -> Vec<AttemptLine> {
    attempts
        .iter()
        .map(|a| AttemptLine {
            backend: a.backend.to_string(),
            cause: a.cause.as_str(),
            ms: ms(a.elapsed),
        })
        .collect()
}
