//! Moving bytes both ways between two connected sockets, and noticing every way the
//! exchange can end.
//!
//! Each direction is a pump: wait until the source is readable, read, write all of it
//! to the destination (waiting while the destination's buffer is full, which is how
//! back-pressure reaches the sender), repeat. A pump that reads EOF half-closes its
//! destination (FIN) and stops; the other direction goes on. A read error is the
//! source's failure, a write error the destination's. While a pump waits to write, it
//! also watches its source for an error, so an RST is passed on even when the other
//! side has stopped reading. The pumps borrow the sockets (`&TcpStream`), so when the
//! tunnel returns, its caller still owns both and decides how to close them.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::cause::{Cause, Side};
use crate::conntable::{CloseOrder, Conn, ConnState};
use crate::sockopt;

/// Size of each direction's buffer, allocated on the first byte (an idle connection
/// holds none).
const BUF_SIZE: usize = 32 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both sides sent FIN; `first` did so first.
    Closed {
        /// Who closed first.
        first: Side,
    },
    /// One side failed (reset, kernel timeout, unreachable).
    Broken {
        /// The side that failed.
        side: Side,
        /// Its cause.
        cause: Cause,
        /// The error underneath.
        error: io::Error,
    },
    /// No byte moved either way for the idle timeout.
    Idle {
        /// `client_idle_timeout` or `upstream_idle_timeout`: whoever owed the next byte.
        cause: Cause,
        /// Whether a pump held bytes it had not yet written on: closing with FIN would
        /// then pass off a truncated stream as a complete one.
        pending: bool,
    },
    /// Told to close from outside (drain, shutdown).
    Ordered {
        /// The order.
        order: CloseOrder,
        /// As for `Idle`.
        pending: bool,
    },
}

enum PumpEnd {
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

/// Runs until the exchange ends. The sockets are only borrowed.
pub(crate) async fn run(
    client: &TcpStream,
    upstream: &TcpStream,
    conn: &Conn,
    idle: Duration,
    orders: &mut watch::Receiver<Option<CloseOrder>>,
) -> Outcome {
    let c2u_pending = AtomicBool::new(false);
    let u2c_pending = AtomicBool::new(false);
    let c2u = pump(client, upstream, Side::Client, conn, &c2u_pending);
    let u2c = pump(upstream, client, Side::Upstream, conn, &u2c_pending);
    tokio::pin!(c2u, u2c);
    let pending = || c2u_pending.load(Ordering::Relaxed) || u2c_pending.load(Ordering::Relaxed);
    let mut client_done = false;
    let mut upstream_done = false;
    let mut first: Option<Side> = None;
    let idle_timer = tokio::time::sleep_until(conn.last_activity() + idle);
    tokio::pin!(idle_timer);

    loop {
        tokio::select! {
            end = &mut c2u, if !client_done => match end {
                PumpEnd::Eof => {
                    client_done = true;
                    first.get_or_insert(Side::Client);
                    conn.set_state(ConnState::ClientHalfClosed);
                }
                PumpEnd::ReadFailed(e) => return broken(Side::Client, e),
                PumpEnd::WriteFailed(e) => return broken(Side::Upstream, e),
            },
            end = &mut u2c, if !upstream_done => match end {
                PumpEnd::Eof => {
                    upstream_done = true;
                    first.get_or_insert(Side::Upstream);
                    conn.set_state(ConnState::UpstreamHalfClosed);
                }
                PumpEnd::ReadFailed(e) => return broken(Side::Upstream, e),
                PumpEnd::WriteFailed(e) => return broken(Side::Client, e),
            },
            // A side that already sent FIN is no longer read; watch it for an RST so
            // the other side learns of it at once rather than at its next write.
            e = socket_error(client), if client_done && !upstream_done => {
                return broken(Side::Client, e);
            }
            e = socket_error(upstream), if upstream_done && !client_done => {
                return broken(Side::Upstream, e);
            }
            () = &mut idle_timer => {
                let deadline = conn.last_activity() + idle;
                if tokio::time::Instant::now() >= deadline {
                    let cause = match conn.last_sender() {
                        // The client spoke last: the backend owes an answer.
                        Some(Side::Client) => Cause::UpstreamIdleTimeout,
                        _ => Cause::ClientIdleTimeout,
                    };
                    return Outcome::Idle { cause, pending: pending() };
                }
                idle_timer.as_mut().reset(deadline);
            }
            // The sender lives in the connection table entry this task holds, so
            // `changed` only fails if the entry is gone, which cannot happen here.
            Ok(()) = orders.changed() => {
                if let Some(order) = *orders.borrow_and_update() {
                    return Outcome::Ordered { order, pending: pending() };
                }
            }
        }
        if client_done && upstream_done {
            return Outcome::Closed {
                first: first.unwrap_or(Side::Client),
            };
        }
    }
}

fn broken(side: Side, error: io::Error) -> Outcome {
    Outcome::Broken {
        side,
        cause: Cause::of_io_error(&error, side),
        error,
    }
}

async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    conn: &Conn,
    pending: &AtomicBool,
) -> PumpEnd {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if let Err(e) = src.readable().await {
            return PumpEnd::ReadFailed(e);
        }
        if buf.is_empty() {
            buf.resize(BUF_SIZE, 0);
        }
        let n = match src.try_read(&mut buf) {
            Ok(0) => {
                sockopt::send_fin(dst);
                return PumpEnd::Eof;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return PumpEnd::ReadFailed(e),
        };
        conn.touch(from);
        pending.store(true, Ordering::Relaxed);
        let mut off = 0;
        while off < n {
            // Wait for room in the destination, but give up at once if the source
            // fails meanwhile: its RST must reach the other side now, not whenever
            // the destination reads again.
            tokio::select! {
                biased;
                r = dst.writable() => if let Err(e) = r {
                    return PumpEnd::WriteFailed(e);
                },
                e = socket_error(src) => return PumpEnd::ReadFailed(e),
            }
            match dst.try_write(&buf[off..n]) {
                Ok(0) => return PumpEnd::WriteFailed(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    off += k;
                    conn.moved(from, k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return PumpEnd::WriteFailed(e),
            }
        }
        pending.store(false, Ordering::Relaxed);
    }
}

/// Resolves with the socket's error once it has one (an RST arrived, or the kernel
/// gave up on the peer), reading nothing. tokio wakes `ERROR` waiters only when the error bit is set,
/// and nothing clears it, so this does not spin.
pub(crate) async fn socket_error(s: &TcpStream) -> io::Error {
    match s.ready(Interest::ERROR).await {
        Ok(_) => match plumb_sys::take_error(s) {
            Ok(Some(e)) => e,
            _ => io::ErrorKind::ConnectionReset.into(),
        },
        Err(e) => e,
    }
}
