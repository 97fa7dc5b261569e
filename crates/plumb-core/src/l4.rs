//! The TCP (L4) proxy: one task per client connection.
//!
//! The task reads the PROXY header if the listener expects one, connects to a backend
//! (trying the next one on refusal or timeout, each backend at most once, up to the
//! pool's `connect_attempts`), then runs the [`tunnel`] until one side ends it, and
//! finally closes both legs the way the ending calls for and writes the access log.
//!
//! While it connects it does not read from the client: bytes the client sends early
//! wait in the kernel's receive buffer and are delivered once a backend is connected,
//! so a failed attempt loses none of them.

mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::accesslog::{Attempt, End, Record};
use crate::cause::{Cause, Side};
use crate::conntable::{CloseHow, Conn, ConnState};
use crate::listener::ListenerCtx;
use crate::pool::ActiveGuard;
use crate::proxy_protocol::{self, ProxyHeaderError};
use crate::sockopt;
use crate::upstream;

pub use tunnel::Outcome;

/// Serves one accepted client connection to its end.
pub(crate) async fn serve(
    ctx: Arc<ListenerCtx>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let Some(pool) = ctx.pool.clone() else {
        // Validation requires a pool on TCP listeners; never leave a client hanging.
        sockopt::arm_reset(&client);
        return;
    };
    let started = Instant::now();
    let span = tracing::debug_span!(
        "conn",
        listener = %ctx.name,
        client.addr = %peer,
        pool = %pool.name(),
        backend.addr = tracing::field::Empty,
    );
    async move {
        let reg = ctx
            .shared
            .conns
            .register(Arc::clone(&ctx.name), Arc::clone(pool.name()), peer);
        let mut record = Finish {
            client_addr: peer,
            backend: None,
            attempts: 0,
            failed: Vec::new(),
            end: End::ClientClosed,
            error: None,
            tcp: None,
        };

        // 1. The PROXY header, if the front sends one.
        let mut destination = local;
        if ctx.settings.accept_proxy {
            match tokio::time::timeout(
                ctx.settings.header_read,
                proxy_protocol::read_header(&mut client),
            )
            .await
            {
                Ok(Ok(h)) => {
                    if let Some(src) = h.source {
                        record.client_addr = src;
                        tracing::Span::current()
                            .record("client.addr", tracing::field::display(src));
                    }
                    if let Some(dst) = h.destination {
                        destination = dst;
                    }
                }
                Ok(Err(e)) => {
                    let cause = match &e {
                        ProxyHeaderError::Io(io) => Cause::of_io_error(io, Side::Client),
                        ProxyHeaderError::Malformed(_) => Cause::BadRequest,
                    };
                    sockopt::arm_reset(&client);
                    record.end = End::Failed(cause);
                    record.error = Some(e.to_string());
                    return finish(&ctx, &reg, record, started);
                }
                Err(_) => {
                    sockopt::arm_reset(&client);
                    record.end = End::Failed(Cause::ClientHeaderTimeout);
                    return finish(&ctx, &reg, record, started);
                }
            }
        }

        // 2. A backend.
        let upstream = match connect_with_retries(&ctx, &client, reg.conn(), &mut record).await {
            Some(u) => u,
            None => {
                sockopt::arm_reset(&client);
                return finish(&ctx, &reg, record, started);
            }
        };
        let (mut upstream, active) = upstream;
        let conn = reg.conn();
        tracing::Span::current().record(
            "backend.addr",
            tracing::field::display(active.backend().addr()),
        );
        if let Some(version) = pool.settings().send_proxy {
            // A fresh socket's send buffer always has room for a header of at most a
            // few hundred bytes, so this write completes at once or fails at once.
            let header = proxy_protocol::build_header(version, record.client_addr, destination);
            if let Err(e) = upstream.write_all(&header).await {
                sockopt::arm_reset(&client);
                sockopt::arm_reset(&upstream);
                record.end = End::Failed(Cause::of_io_error(&e, Side::Upstream));
                record.error = Some(e.to_string());
                return finish(&ctx, &reg, record, started);
            }
        }
        conn.set_state(ConnState::Established);
        let client = Arc::new(client);
        let upstream = Arc::new(upstream);
        conn.set_legs(Some(&client), Some(&upstream));

        // 3. Bytes both ways until one side ends it.
        let outcome = tunnel::run(
            &client,
            &upstream,
            conn,
            pool.settings().timeouts.tunnel_idle,
        )
        .await;
        // What the kernel knows of both legs, read before they close.
        record.tcp = Some((
            plumb_sys::tcp_info(&*client).ok(),
            plumb_sys::tcp_info(&*upstream).ok(),
        ));
        match outcome {
            Outcome::Closed { first } => {
                record.end = match first {
                    Side::Client => End::ClientClosed,
                    Side::Upstream => End::UpstreamClosed,
                };
            }
            Outcome::Broken { side, cause, error } => {
                if side == Side::Upstream {
                    pool.report_failure(active.backend(), cause);
                }
                // Whoever broke, the other leg gets an RST: it must not believe its
                // bytes are still going somewhere.
                sockopt::arm_reset(&client);
                sockopt::arm_reset(&upstream);
                record.end = End::Failed(cause);
                record.error = Some(error.to_string());
            }
            Outcome::Idle { cause, pending } => {
                close_both(&client, &upstream, CloseHow::Fin, pending);
                record.end = End::Failed(cause);
            }
            Outcome::Ordered { order, pending } => {
                close_both(&client, &upstream, order.how, pending);
                record.end = End::Failed(order.cause);
            }
        }
        drop(upstream);
        drop(active);
        drop(client);
        finish(&ctx, &reg, record, started);
    }
    .instrument(span)
    .await
}

/// Closes both legs when plumb ends a connection itself. FIN only when asked for and
/// nothing is held in a pump: a FIN after dropped bytes would pass off a truncated
/// stream as a complete one, so then it is RST.
fn close_both(client: &TcpStream, upstream: &TcpStream, how: CloseHow, pending: bool) {
    if how == CloseHow::Fin && !pending {
        sockopt::send_fin(client);
        sockopt::send_fin(upstream);
    } else {
        sockopt::arm_reset(client);
        sockopt::arm_reset(upstream);
    }
}

/// What the access log needs beyond the connection table's counters.
struct Finish {
    client_addr: SocketAddr,
    backend: Option<SocketAddr>,
    attempts: u32,
    failed: Vec<Attempt>,
    end: End,
    error: Option<String>,
    /// `TCP_INFO` of the client and backend legs at close.
    tcp: Option<(Option<plumb_sys::TcpInfo>, Option<plumb_sys::TcpInfo>)>,
}

/// Tries backends until one connects. `None`: the client must be reset; `record.end`
/// says why.
async fn connect_with_retries(
    ctx: &ListenerCtx,
    client: &TcpStream,
    conn: &Conn,
    record: &mut Finish,
) -> Option<(TcpStream, ActiveGuard)> {
    let Some(pool) = &ctx.pool else {
        record.end = End::Failed(Cause::NoHealthyBackend);
        return None;
    };
    let settings = pool.settings();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_cause = Cause::NoHealthyBackend;
    while tried.len() < settings.connect_attempts {
        let guard = match pool.pick(&tried) {
            Ok(g) => g,
            Err(e) => {
                // Nothing (more) to try. After failed attempts, their cause is the
                // story; with none made, the pick error is.
                if tried.is_empty() {
                    last_cause = e.cause();
                }
                break;
            }
        };
        let addr = guard.backend().addr();
        // In the table from the pick on, so a drain or mark-down reaches a connection
        // that is still connecting.
        conn.set_backend(Some(addr));
        tried.push(addr);
        record.attempts += 1;
        let t0 = Instant::now();
        if let Some(stream) = guard.backend().take_idle() {
            // A pre-opened connection (`upstream.preconnect`): no handshake to wait for.
            record.backend = Some(addr);
            record.error = None;
            return Some((stream, guard));
        }
        let attempt = upstream::connect(addr, &settings.tcp, settings.timeouts.connect);
        let result = tokio::select! {
            r = attempt => r,
            order = conn.ordered() => {
                record.end = End::Failed(order.cause);
                return None;
            }
            // The client gave up meanwhile: stop here rather than open a backend
            // connection nobody will use. Nothing is read from the client.
            e = tunnel::socket_error(client) => {
                conn.set_backend(None);
                record.end = End::Failed(Cause::of_io_error(&e, Side::Client));
                record.error = Some(e.to_string());
                return None;
            }
        };
        match result {
            Ok(stream) => {
                pool.metrics.connected(pool.name(), addr, t0.elapsed());
                pool.report_success(guard.backend());
                record.backend = Some(addr);
                record.error = None;
                return Some((stream, guard));
            }
            Err(e) => {
                conn.set_backend(None);
                tracing::debug!(backend.addr = %addr, cause = %e.cause, error = %e.source, "connect attempt failed");
                pool.report_failure(guard.backend(), e.cause);
                last_cause = e.cause;
                record.failed.push(Attempt {
                    backend: addr,
                    cause: e.cause,
                    elapsed: t0.elapsed(),
                });
                record.error = Some(e.source.to_string());
            }
        }
    }
    record.end = End::Failed(last_cause);
    None
}

fn finish(ctx: &ListenerCtx, reg: &crate::conntable::Registration, f: Finish, started: Instant) {
    let conn = reg.conn();
    let duration = started.elapsed();
    match f.end.cause() {
        Some(cause) => tracing::info!(
            cause = %cause,
            backend.addr = f.backend.map(|b| b.to_string()),
            attempts = f.attempts,
            error = f.error.as_deref(),
            "connection failed"
        ),
        None => tracing::debug!(end = f.end.as_str(), "connection closed"),
    }
    ctx.stats.ended(f.end);
    if let Some(cause) = f.end.cause() {
        ctx.shared.recent.push(crate::recent::RecentError {
            at: std::time::SystemTime::now(),
            listener: ctx.name.to_string(),
            cause,
            backend: f.backend,
            client: f.client_addr,
            request_id: None,
            request: None,
            status: None,
        });
    }
    let (client_tcp, upstream_tcp) = f.tcp.unwrap_or((None, None));
    for (leg, info) in [("client", client_tcp), ("upstream", upstream_tcp)] {
        if info.is_some_and(|i| i.suspected_blackhole()) {
            tracing::warn!(
                leg,
                backend.addr = f.backend.map(|b| b.to_string()),
                "suspected_blackhole: data outstanding and retransmitted with no acknowledgement at close (a path MTU black hole looks like this)"
            );
            ctx.shared
                .metrics
                .suspected_blackhole
                .get_or_create(&crate::metrics::LegLabels {
                    listener: ctx.name.to_string(),
                    pool: ctx.pool_name().to_string(),
                    leg: leg.to_string(),
                })
                .inc();
        }
    }
    ctx.metrics.closed(
        &ctx.shared.metrics,
        &ctx.name,
        ctx.pool_name(),
        f.end.cause(),
        duration,
    );
    ctx.shared.access_log.write(&Record {
        listener: &ctx.name,
        pool: ctx.pool_name(),
        client: f.client_addr,
        backend: f.backend,
        attempts: f.attempts,
        failed_attempts: &f.failed,
        bytes_from_client: conn.bytes_from_client(),
        bytes_to_client: conn.bytes_to_client(),
        duration,
        end: f.end,
        error: f.error,
        client_tcp,
        upstream_tcp,
    });
}
