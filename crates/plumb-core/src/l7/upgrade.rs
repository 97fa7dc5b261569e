//! Upgraded connections (WebSocket and other `Upgrade` handshakes): once the backend
//! answers 101, both sides are handed over by hyper and proxied as a tunnel, with the
//! pool's `tunnel_idle` timer, in the connection table under their backend (so drain
//! and mark-down reach them), and logged when they end.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::Exchange;
use super::client::UpConn;
use crate::cause::{Cause, Side};
use crate::conntable::{Conn, ConnState};
use crate::listener::ListenerCtx;
use crate::pool::{ActiveGuard, Pool};

pub(super) async fn tunnel(
    ctx: Arc<ListenerCtx>,
    pool: Arc<Pool>,
    exchange: Arc<Exchange>,
    client_on: OnUpgrade,
    upstream_on: OnUpgrade,
    guard: ActiveGuard,
    tx: UpConn,
) {
    let (client, upstream) = tokio::join!(client_on, upstream_on);
    let (client, upstream) = match (client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) => {
            exchange.fail(
                Cause::ClientClosedEarly,
                format!("client upgrade failed: {e}"),
            );
            exchange.finish();
            return;
        }
        (_, Err(e)) => {
            exchange.fail(
                Cause::UpstreamClosedEarly,
                format!("backend upgrade failed: {e}"),
            );
            exchange.finish();
            return;
        }
    };
    drop(tx);
    let peer = exchange
        .with(|s| s.client)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let reg = ctx
        .shared
        .conns
        .register(Arc::clone(&ctx.name), Arc::clone(pool.name()), peer);
    let conn = reg.conn();
    conn.set_backend(Some(guard.backend().addr()));
    conn.set_state(ConnState::Established);
    let idle = pool.settings().timeouts.tunnel_idle;
    // A WebSocket client may leave its messages unread for as long as a tunnel may
    // be silent: its writes are bounded by `tunnel_idle` from here, not by `idle`.
    if let Some(watch) = exchange.with(|s| s.client_watch.clone()) {
        watch.set_write_stall(idle);
    }
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    let c2u = pump(&mut cr, &mut uw, Side::Client, conn);
    let u2c = pump(&mut ur, &mut cw, Side::Upstream, conn);
    tokio::pin!(c2u, u2c);
    let (mut c_done, mut u_done) = (false, false);
    let timer = tokio::time::sleep_until(conn.last_activity() + idle);
    tokio::pin!(timer);
    let ended: Option<Cause> = loop {
        tokio::select! {
            r = &mut c2u, if !c_done => match r {
                Ok(()) => c_done = true,
                Err(cause) => break Some(cause),
            },
            r = &mut u2c, if !u_done => match r {
                Ok(()) => u_done = true,
                Err(cause) => break Some(cause),
            },
            () = &mut timer => {
                let deadline = conn.last_activity() + idle;
                if tokio::time::Instant::now() >= deadline {
                    break Some(match conn.last_sender() {
                        Some(Side::Client) => Cause::UpstreamIdleTimeout,
                        _ => Cause::ClientIdleTimeout,
                    });
                }
                timer.as_mut().reset(deadline);
            }
            order = conn.ordered() => break Some(order.cause),
        }
        if c_done && u_done {
            break None;
        }
    };
    exchange.with(|s| {
        s.bytes_in += conn.bytes_from_client();
        s.bytes_out += conn.bytes_to_client();
    });
    if let Some(cause) = ended {
        if cause == Cause::UpstreamReset {
            pool.report_failure(guard.backend(), cause);
        }
        exchange.fail(cause, "tunnel ended");
    }
    drop(guard);
    exchange.finish();
}

/// Copies one direction until EOF (then half-closes the destination) or an error.
async fn pump<R, W>(src: &mut R, dst: &mut W, from: Side, conn: &Conn) -> Result<(), Cause>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = src
            .read(&mut buf)
            .await
            .map_err(|e| Cause::of_io_error(&e, from))?;
        if n == 0 {
            let _ = dst.shutdown().await;
            return Ok(());
        }
        conn.touch(from);
        dst.write_all(&buf[..n])
            .await
            .map_err(|e| Cause::of_io_error(&e, from.other()))?;
        conn.moved(from, n);
    }
}
