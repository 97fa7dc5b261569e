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
//!
//! On Linux the bytes do not pass through user space: each chunk goes socket to
//! pipe to socket with `splice(2)` (as HAProxy's splice-auto does). A pipe is taken
//! from a small shared stock only while a chunk is in flight and returned once it is
//! empty, so an idle tunnel holds no pipe (and no extra descriptors). Where splice
//! is refused (EINVAL: a socket type that cannot splice) or no pipe can be had
//! (descriptor limit), the pump copies through a user-space buffer instead; the
//! byte accounting, back-pressure and RST watching are the same either way.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

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
            order = conn.ordered() => {
                return Outcome::Ordered { order, pending: pending() };
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
    match splice_pump(src, dst, from, conn, pending).await {
        Ok(end) => end,
        Err(NoSplice) => copy_pump(src, dst, from, conn, pending).await,
    }
}

/// Splice cannot be used on this pair (no byte has been moved by it).
struct NoSplice;

/// Pipes with nothing in them, kept for the next chunk of any tunnel.
static SPARE_PIPES: std::sync::Mutex<Vec<plumb_sys::Pipe>> = std::sync::Mutex::new(Vec::new());

/// Spare pipes kept at most (two descriptors each).
const SPARE_PIPES_MAX: usize = 64;

/// Pipes holding a chunk at once, at most: a pipe is held while its destination
/// is slow to take the chunk, and each holds two descriptors, which must not crowd
/// out accepts and backend connects. Past this, chunks are copied.
const PIPES_IN_USE_MAX: usize = 1024;

/// Bytes moved by splice, for the tests.
#[cfg(test)]
static SPLICED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static PIPES_IN_USE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A pipe lent to one chunk, counted in [`PIPES_IN_USE`] until given back or
/// dropped (a pipe dropped may hold bytes: it is closed with them).
struct Lent {
    pipe: plumb_sys::Pipe,
    _count: InUse,
}

/// One unit of [`PIPES_IN_USE`], released when dropped.
struct InUse;

impl InUse {
    fn take() -> Option<InUse> {
        if PIPES_IN_USE.fetch_add(1, Ordering::AcqRel) >= PIPES_IN_USE_MAX {
            PIPES_IN_USE.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InUse)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        PIPES_IN_USE.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lent {
    fn take() -> Option<Lent> {
        let count = InUse::take()?;
        let spare = SPARE_PIPES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let pipe = spare.or_else(|| plumb_sys::Pipe::new().ok())?;
        Some(Lent {
            pipe,
            _count: count,
        })
    }

    /// Only an empty pipe goes back to the stock.
    fn give_back(self) {
        let mut spare = SPARE_PIPES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if spare.len() < SPARE_PIPES_MAX {
            spare.push(self.pipe);
        }
    }
}

/// The zero-copy pump: `Err(NoSplice)` before the first byte if the kernel refuses
/// to splice these sockets; past the first byte it copies instead when no pipe can
/// be had or the kernel refuses a splice (the refused call moved nothing).
async fn splice_pump(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    conn: &Conn,
    pending: &AtomicBool,
) -> Result<PumpEnd, NoSplice> {
    let mut spliced = false;
    loop {
        if let Err(e) = src.readable().await {
            return Ok(PumpEnd::ReadFailed(e));
        }
        // No pipe is held while the destination has no room: a stalled reader
        // costs no descriptors.
        if let Err(end) = room(src, dst).await {
            return Ok(end);
        }
        let Some(lent) = Lent::take() else {
            if spliced {
                // Nothing is lost: the bytes are still in the socket.
                return Ok(copy_pump(src, dst, from, conn, pending).await);
            }
            return Err(NoSplice);
        };
        let n = match src.try_io(Interest::READABLE, || {
            lent.pipe.fill(src, plumb_sys::PIPE_CAPACITY)
        }) {
            Ok(0) => {
                lent.give_back();
                sockopt::send_fin(dst);
                return Ok(PumpEnd::Eof);
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                lent.give_back();
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                // The kernel will not splice this socket; the call moved nothing.
                drop(lent);
                if spliced {
                    return Ok(copy_pump(src, dst, from, conn, pending).await);
                }
                return Err(NoSplice);
            }
            Err(e) => return Ok(PumpEnd::ReadFailed(e)),
        };
        spliced = true;
        conn.touch(from);
        pending.store(true, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            if let Err(end) = room(src, dst).await {
                return Ok(end);
            }
            match dst.try_io(Interest::WRITABLE, || lent.pipe.drain(dst, left)) {
                Ok(0) => return Ok(PumpEnd::WriteFailed(io::ErrorKind::WriteZero.into())),
                Ok(k) => {
                    left -= k;
                    conn.moved(from, k);
                    #[cfg(test)]
                    SPLICED.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Ok(PumpEnd::WriteFailed(e)),
            }
        }
        lent.give_back();
        pending.store(false, Ordering::Relaxed);
    }
}

/// Waits for room in the destination, but gives up at once if the source fails
/// meanwhile: its RST must reach the other side now, not whenever the destination
/// reads again.
async fn room(src: &TcpStream, dst: &TcpStream) -> Result<(), PumpEnd> {
    tokio::select! {
        biased;
        r = dst.writable() => r.map_err(PumpEnd::WriteFailed),
        e = socket_error(src) => Err(PumpEnd::ReadFailed(e)),
    }
}

/// The portable pump: through a user-space buffer.
async fn copy_pump(
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
            if let Err(end) = room(src, dst).await {
                return end;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback sockets: (the test's end, the tunnel's end).
    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn data(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(7).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    /// Both directions at once, several MB each way (many pipe-fulls), then FIN from
    /// both: every byte arrives unchanged, the table counts them, the tunnel ends
    /// `Closed`. With `copy`, the portable pump carries both directions, one after
    /// the other.
    async fn both_ways(copy: bool) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, client_leg) = pair(&l).await;
        let (upstream_leg, mut backend) = {
            let (a, b) = pair(&l).await;
            (a, b)
        };
        let table = Arc::new(crate::conntable::ConnTable::default());
        let reg = table.register(Arc::from("l"), Arc::from("p"), client.local_addr().unwrap());
        let conn = Arc::clone(reg.conn());
        let up = data(3 << 20, 1);
        let down = data(2 << 20, 2);
        let tunnel = tokio::spawn(async move {
            if copy {
                let pending = AtomicBool::new(false);
                let end =
                    copy_pump(&client_leg, &upstream_leg, Side::Client, &conn, &pending).await;
                assert!(matches!(end, PumpEnd::Eof));
                // Then the other direction, until the backend's FIN.
                let end =
                    copy_pump(&upstream_leg, &client_leg, Side::Upstream, &conn, &pending).await;
                assert!(matches!(end, PumpEnd::Eof));
                None
            } else {
                Some(run(&client_leg, &upstream_leg, &conn, Duration::from_secs(10)).await)
            }
        });
        let (up2, down2) = (up.clone(), down.clone());
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();
        let (_, _, got_at_backend, got_at_client) =
            tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(
                    async {
                        cw.write_all(&up2).await.unwrap();
                        cw.shutdown().await.unwrap();
                    },
                    async {
                        bw.write_all(&down2).await.unwrap();
                        bw.shutdown().await.unwrap();
                    },
                    async {
                        let mut v = Vec::new();
                        br.read_to_end(&mut v).await.unwrap();
                        v
                    },
                    async {
                        let mut v = Vec::new();
                        cr.read_to_end(&mut v).await.unwrap();
                        v
                    },
                )
            })
            .await
            .expect("the tunnel stalled");
        assert!(got_at_backend == up, "client to backend bytes changed");
        assert!(got_at_client == down, "backend to client bytes changed");
        let outcome = tunnel.await.unwrap();
        if let Some(o) = outcome {
            assert!(matches!(o, Outcome::Closed { .. }), "{o:?}");
        }
        assert_eq!(reg.conn().bytes_from_client(), up.len() as u64);
        assert_eq!(reg.conn().bytes_to_client(), down.len() as u64);
    }

    #[tokio::test]
    async fn spliced_tunnel_moves_every_byte_both_ways() {
        let before = SPLICED.load(Ordering::Relaxed);
        both_ways(false).await;
        // The bytes went through pipes, not through the copying fallback.
        let spliced = SPLICED.load(Ordering::Relaxed) - before;
        assert!(
            spliced >= 5 << 20,
            "only {spliced} bytes were spliced: the tunnel fell back to copying"
        );
    }

    #[tokio::test]
    async fn copying_pump_moves_every_byte() {
        both_ways(true).await;
    }
}
