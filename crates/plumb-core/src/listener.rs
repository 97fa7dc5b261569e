//! Listening sockets and the accept loop.
//!
//! The accept loop never waits on anything but `accept`: a connection over the
//! listener's `max_connections` is accepted and reset at once (never left in the
//! kernel's queue, where the client would only see a silent SYN timeout), and accept
//! errors such as `EMFILE` back off and retry instead of ending the loop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use plumb_config::model;

use crate::accesslog::{End, Record};
use crate::cause::Cause;
use crate::pool::Pool;
use crate::server::Shared;
use crate::sockopt;

/// A listener's sockets, bound and listening, not yet accepting.
#[derive(Debug)]
pub struct BoundListener {
    /// The listener's name in the config.
    pub name: String,
    /// One socket per configured address and worker (at least), grouped by
    /// address: sockets of one address share it through `SO_REUSEPORT`, and each
    /// gets an accept loop on a worker of its own.
    pub sockets: Vec<std::net::TcpListener>,
}

impl BoundListener {
    /// The addresses actually bound (useful with port 0), each once.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in self.sockets.iter().filter_map(|s| s.local_addr().ok()) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// Listener name.
    pub listener: String,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Binds every listener of a config, one socket per address and worker
/// ([`crate::workers::count`]). Nothing is accepted until the server runs.
pub fn bind_all(config: &model::Config) -> Result<Vec<BoundListener>, BindError> {
    bind_all_with(config, &mut HashMap::new())
}

/// Like [`bind_all`], but an address found in `inherited` (listening sockets a
/// previous plumb handed over) uses those sockets, taken out of the map, before
/// binding new ones: the same sockets and accept queues, so no connection attempt
/// is refused or left unanswered while one process hands over to the next (every
/// socket handed over is accepted on, even beyond one per worker). The listener's
/// backlog and socket options are applied to them again.
pub fn bind_all_with(
    config: &model::Config,
    inherited: &mut HashMap<SocketAddr, Vec<std::net::TcpListener>>,
) -> Result<Vec<BoundListener>, BindError> {
    let per_addr = crate::workers::count(config);
    config
        .listeners
        .iter()
        .map(|l| bind_with(l, per_addr, BindMode::Listen, inherited))
        .collect()
}

/// Binds one listener's addresses with its MSS clamp, `per_addr` sockets each,
/// not yet listening (a reload's new sockets): each listens when its accept loop
/// starts ([`listen`]), so a reload that fails after binding leaves no connection
/// queued on a socket nobody will accept on.
pub fn bind(l: &model::Listener, per_addr: usize) -> Result<BoundListener, BindError> {
    bind_with(l, per_addr, BindMode::Later, &mut HashMap::new())
}

/// Whether new sockets listen as they are bound (at start) or only when their
/// accept loops start (a reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindMode {
    Listen,
    Later,
}

fn bind_with(
    l: &model::Listener,
    per_addr: usize,
    bind_mode: BindMode,
    inherited: &mut HashMap<SocketAddr, Vec<std::net::TcpListener>>,
) -> Result<BoundListener, BindError> {
    let mut sockets = Vec::with_capacity(l.listen.len() * per_addr);
    for addr in &l.listen {
        let failed = |source| BindError {
            listener: l.name.clone(),
            addr: *addr,
            source,
        };
        let mut group = Vec::with_capacity(per_addr);
        let handed = inherited.remove(addr).unwrap_or_default();
        // At start, new sockets listen at once (a connection waits in the queue
        // until plumb accepts). Beside sockets handed over by a running plumb,
        // which goes on accepting on them, they listen only when their accept
        // loops start: until then the running plumb takes every new connection,
        // and if this one fails first, none was queued on a socket it held.
        let listen_now = handed.is_empty() && bind_mode == BindMode::Listen;
        for socket in handed {
            group.push(adopt(socket, l.backlog, &l.tcp).map_err(failed)?);
        }
        while group.len() < per_addr.max(1) {
            // With port 0, the first socket picks the port and the others join it.
            let at = match group.first() {
                Some(first) => first.local_addr().map_err(failed)?,
                None => *addr,
            };
            let socket = bind_one(at, &l.tcp).map_err(failed)?;
            if listen_now {
                listen(&socket, l.backlog).map_err(failed)?;
            }
            group.push(socket);
        }
        sockets.extend(group);
    }
    Ok(BoundListener {
        name: l.name.clone(),
        sockets,
    })
}

/// An inherited listening socket, set up as [`bind_one`] sets up a new one.
fn adopt(
    socket: std::net::TcpListener,
    backlog: u32,
    tcp: &model::TcpOptions,
) -> io::Result<std::net::TcpListener> {
    sockopt::apply_before_handshake(&socket, tcp)?;
    sockopt::apply_established(&socket, tcp);
    listen(&socket, backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Makes a bound socket listen with `backlog` (on a listening one, only the
/// backlog changes). A socket joins its address's `SO_REUSEPORT` group, and gets
/// a share of new connections, when it listens.
pub(crate) fn listen(socket: &std::net::TcpListener, backlog: u32) -> io::Result<()> {
    socket2::SockRef::from(socket).listen(i32::try_from(backlog).unwrap_or(i32::MAX))
}

/// A new socket bound to `addr` with the listener's options, not yet listening.
fn bind_one(addr: SocketAddr, tcp: &model::TcpOptions) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // One socket per worker shares the address, and a reload binds a changed
    // listener's new sockets beside the old ones before closing the old, so that
    // the address never stops accepting. Linux only lets sockets of the same user
    // share a port this way.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:80` and `0.0.0.0:80` are separate listeners in plumb's config.
        socket.set_only_v6(true)?;
    }
    // The MSS clamp on a listening socket sets the MSS advertised in every SYN-ACK.
    sockopt::apply_before_handshake(&socket, tcp)?;
    // Linux copies TCP_NODELAY, keepalive and TCP_USER_TIMEOUT from the listening
    // socket to every accepted one: set them once here, not per connection.
    sockopt::apply_established(&socket, tcp);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Counters of one listener, read by the admin API and metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Connections ended, indexed by [`End::index`].
    ends: [AtomicU64; End::COUNT],
    /// Second (on the server's clock, plus one) of the last "refused" warning, to log
    /// at most one a second during a flood.
    last_refusal_warning: AtomicU64,
}

impl ListenerStats {
    /// Connections accepted (including those reset at the limit).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections reset at once because of `max_connections`.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Connections ended, by `end` (`client_closed`, `upstream_closed` or a cause).
    pub fn ends(&self) -> BTreeMap<&'static str, u64> {
        End::all()
            .filter_map(|e| {
                let n = self.ends[e.index()].load(Ordering::Relaxed);
                (n > 0).then_some((e.as_str(), n))
            })
            .collect()
    }
    pub(crate) fn ended(&self, end: End) {
        self.ends[end.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a connection task needs from its listener.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub(crate) name: Arc<str>,
    pub(crate) settings: model::Listener,
    /// The default pool (required for TCP; HTTP requests no route matches).
    pub(crate) pool: Option<Arc<Pool>>,
    /// HTTP: TLS termination, when configured.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    /// HTTP routes, resolved to pools, in config order.
    pub(crate) routes: Vec<(plumb_config::model::Route, Arc<Pool>)>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<ListenerStats>,
    pub(crate) limit: Option<Arc<Semaphore>>,
    /// This listener's metric handles.
    pub(crate) metrics: crate::metrics::ListenerMetrics,
    /// HTTP: the request-id header's name (validated by plumb-config), made once.
    pub(crate) rid_header: hyper::header::HeaderName,
}

impl ListenerCtx {
    /// The default pool's name, or "" when there is none.
    pub(crate) fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("", |p| p.name())
    }
}

/// Where an accept loop finds its listener's current settings; a reload that changes
/// settings but not addresses swaps the context here without touching the socket.
#[derive(Debug)]
pub(crate) struct ListenerSlot {
    ctx: std::sync::RwLock<Arc<ListenerCtx>>,
}

impl ListenerSlot {
    pub(crate) fn new(ctx: Arc<ListenerCtx>) -> Arc<ListenerSlot> {
        Arc::new(ListenerSlot {
            ctx: std::sync::RwLock::new(ctx),
        })
    }

    pub(crate) fn current(&self) -> Arc<ListenerCtx> {
        Arc::clone(&self.ctx.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn replace(&self, ctx: Arc<ListenerCtx>) {
        *self.ctx.write().unwrap_or_else(|p| p.into_inner()) = ctx;
    }
}

/// Accepts until `stop` is cancelled.
pub(crate) async fn accept_loop(
    slot: Arc<ListenerSlot>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let local = listener.local_addr().ok();
    let mut backoff = Duration::from_millis(5);
    let mut ctx = slot.current();
    let mut deadlines = FirstByteDeadlines::default();
    // Armed for the earliest deadline whenever there is one.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // After an accept error, accepting pauses (the deadlines do not).
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);
    let mut paused = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = timer.as_mut(), if deadlines.next().is_some() => {
                if let Some(at) = deadlines.expire(&ctx.shared.conns, Instant::now()) {
                    timer.as_mut().reset(at);
                }
                continue;
            }
            () = pause.as_mut(), if paused => {
                paused = false;
                continue;
            }
            r = listener.accept(), if !paused => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. The queue keeps
                // its connections; try again shortly, and say so.
                tracing::warn!(listener = %ctx.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                pause.as_mut().reset(Instant::now() + backoff);
                paused = true;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        ctx = slot.current();
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.accepted.inc();
        let permit = match &ctx.limit {
            None => None,
            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    refuse(&ctx, stream, peer);
                    continue;
                }
            },
        };
        let task_ctx = Arc::clone(&ctx);
        // Two task types, each as large as its own future: an idle HTTP connection
        // does not carry the size of a TCP tunnel's state.
        if task_ctx.settings.protocol == plumb_config::model::Protocol::Http {
            let pool = ctx
                .pool
                .as_ref()
                .map_or_else(|| Arc::from(""), |p| Arc::clone(p.name()));
            let reg = ctx.shared.conns.register(Arc::clone(&ctx.name), pool, peer);
            if ctx.tls.is_none() {
                let quiet = ctx.settings.header_read.min(ctx.settings.keepalive_idle);
                let at = Instant::now() + quiet;
                if deadlines.next().is_none_or(|next| at < next) {
                    timer.as_mut().reset(at);
                }
                deadlines.push(at, reg.conn().id());
            }
            ctx.shared
                .tasks
                .spawn(crate::l7::Serve::new(task_ctx, stream, reg, permit));
        } else {
            let local = stream.local_addr().ok().or(local).unwrap_or(peer);
            ctx.shared.tasks.spawn(async move {
                crate::l4::serve(task_ctx, stream, peer, local).await;
                drop(permit);
            });
        }
    }
    // The socket closes now: a reload that binds anew must not leave it taking
    // handshakes nobody accepts.
    drop(listener);
    tracing::debug!(listener = %ctx.name, "accept loop stopped");
    // The connections still waiting for a first byte keep their deadlines (a
    // listener removed or bound anew by a reload); at shutdown, draining closes
    // them instead.
    while let Some(at) = deadlines.next() {
        tokio::select! {
            () = tokio::time::sleep_until(at) => {
                deadlines.expire(&ctx.shared.conns, Instant::now());
            }
            () = ctx.shared.draining.cancelled() => break,
        }
    }
}

/// When each plain HTTP connection accepted by one accept loop must have sent its
/// first byte (`header_read`, or the keep-alive idle time if shorter), earliest
/// first. One 24-byte entry per connection accepted in the last `header_read`,
/// looked at by the accept loop, instead of a timer in every connection's task (a
/// timer is 112 bytes and makes the task a size class larger): idle connections
/// are what a flood is made of. An entry stays until its deadline even if its
/// connection spoke or closed sooner (found gone in the table, then skipped), so
/// the heap is bounded by accept rate x `header_read`: 24 MB at 100,000 new
/// connections a second and the default 10 s.
#[derive(Debug, Default)]
struct FirstByteDeadlines(BinaryHeap<Reverse<(Instant, u64)>>);

impl FirstByteDeadlines {
    fn push(&mut self, at: Instant, conn_id: u64) {
        self.0.push(Reverse((at, conn_id)));
    }

    fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((at, _))| *at)
    }

    /// Tells each connection whose deadline is past, if it is still open; returns the
    /// next deadline.
    fn expire(&mut self, table: &crate::conntable::ConnTable, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.0.peek() {
            if at > now {
                break;
            }
            self.0.pop();
            if let Some(conn) = table.get(id) {
                conn.silence_expired();
            }
        }
        // After a burst, give the memory back.
        if self.0.capacity() > 1024 && self.0.len() < self.0.capacity() / 4 {
            self.0.shrink_to(self.0.len() * 2);
        }
        self.next()
    }
}

/// Errors that concern only the connection being accepted (it died in the queue).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn refuse(ctx: &ListenerCtx, stream: tokio::net::TcpStream, peer: SocketAddr) {
    sockopt::arm_reset(&stream);
    drop(stream);
    ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
    ctx.shared
        .metrics
        .connections_refused
        .get_or_create(&crate::metrics::ListenerCauseLabels {
            listener: ctx.name.to_string(),
            cause: Cause::ListenerConnectionLimit.as_str().to_string(),
        })
        .inc();
    let end = End::Failed(Cause::ListenerConnectionLimit);
    ctx.stats.ended(end);
    // One warning a second at most: this runs in the accept loop, during a flood.
    let now_s = ctx.shared.started.elapsed().as_secs() + 1;
    let last = ctx
        .stats
        .last_refusal_warning
        .swap(now_s, Ordering::Relaxed);
    if last != now_s {
        tracing::warn!(
            listener = %ctx.name,
            client.addr = %peer,
            cause = %Cause::ListenerConnectionLimit,
            refused_total = ctx.stats.refused(),
            "connection refused at max_connections (logged at most once a second)"
        );
    }
    ctx.shared.access_log.write(&Record {
        listener: &ctx.name,
        pool: ctx.pool_name(),
        client: peer,
        backend: None,
        attempts: 0,
        failed_attempts: &[],
        bytes_from_client: 0,
        bytes_to_client: 0,
        duration: Duration::ZERO,
        end,
        error: None,
        client_tcp: None,
        upstream_tcp: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntable::ConnTable;

    #[test]
    fn first_byte_deadlines_expire_in_time_order_and_skip_closed_connections() {
        let table = Arc::new(ConnTable::default());
        let reg = |port: u16| {
            table.register(
                Arc::from("l"),
                Arc::from("p"),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
        };
        let (a, b, c) = (reg(1), reg(2), reg(3));
        let closed = reg(4);
        let t0 = Instant::now();
        let mut d = FirstByteDeadlines::default();
        // Pushed out of order, as after a reload that shortens header_read.
        d.push(t0 + Duration::from_millis(300), c.conn().id());
        d.push(t0 + Duration::from_millis(100), a.conn().id());
        d.push(t0 + Duration::from_millis(150), closed.conn().id());
        d.push(t0 + Duration::from_millis(200), b.conn().id());
        drop(closed);
        assert_eq!(d.next(), Some(t0 + Duration::from_millis(100)));

        d.expire(&table, t0 + Duration::from_millis(200));
        assert!(a.conn().silent_too_long());
        assert!(b.conn().silent_too_long(), "a deadline equal to now is due");
        assert!(!c.conn().silent_too_long());
        assert_eq!(d.next(), Some(t0 + Duration::from_millis(300)));

        d.expire(&table, t0 + Duration::from_millis(300));
        assert!(c.conn().silent_too_long());
        assert_eq!(d.next(), None);
    }

    #[test]
    fn first_byte_deadlines_give_memory_back_after_a_burst() {
        let table = ConnTable::default();
        let t0 = Instant::now();
        let mut d = FirstByteDeadlines::default();
        for id in 0..10_000 {
            d.push(t0 + Duration::from_millis(id), id);
        }
        d.expire(&table, t0 + Duration::from_millis(9_899));
        assert_eq!(d.0.len(), 100);
        assert!(d.0.capacity() < 1_000, "capacity {}", d.0.capacity());
    }
}
