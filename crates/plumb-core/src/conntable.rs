//! The connection table: every client connection plumb holds, which backend
//! connection it feeds, and a way to tell it to close. Drain, deregistration,
//! shutdown and the admin API all act on connections through this table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use crate::cause::{Cause, Side};
use crate::lock;

/// How to close both legs of a connection when told to from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseHow {
    /// RST both legs (`SO_LINGER` 0): the client learns at once that its bytes went
    /// nowhere.
    Reset,
    /// FIN both legs (`shutdown(Write)`): an orderly end of stream.
    Fin,
}

/// An order to close a connection, with the cause it will be logged under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOrder {
    /// Why.
    pub cause: Cause,
    /// RST or FIN.
    pub how: CloseHow,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Reading the PROXY header or connecting to a backend.
    Connecting,
    /// Bytes flow both ways.
    Established,
    /// The client sent FIN; the backend may still send.
    ClientHalfClosed,
    /// The backend sent FIN; the client may still send.
    UpstreamHalfClosed,
}

impl ConnState {
    /// The name used in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Established => "established",
            ConnState::ClientHalfClosed => "client_half_closed",
            ConnState::UpstreamHalfClosed => "upstream_half_closed",
        }
    }
}

/// One client connection, as the table sees it.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    listener: Arc<str>,
    pool: Arc<str>,
    client: SocketAddr,
    started: Instant,
    backend: Mutex<Option<SocketAddr>>,
    from_client: AtomicU64,
    to_client: AtomicU64,
    state: AtomicU8,
    /// Milliseconds since `started` of the last byte moved, either way.
    last_activity_ms: AtomicU64,
    /// Which side sent the last byte: 0 nobody, 1 client, 2 upstream.
    last_sender: AtomicU8,
    /// The order to close, once given; the connection's task looks when woken.
    order: Mutex<Option<CloseOrder>>,
    /// Whether `order` is set: a wake-up without an order takes no lock.
    ordered: AtomicBool,
    /// The connection's task, woken by an order or a nudge. One task serves a
    /// connection, so one waker is enough (a channel would be 200 bytes more for
    /// every idle connection).
    waker: AtomicWaker,
    /// An HTTP connection's first byte: 0 awaited, 1 arrived, 2 awaited too long.
    first_byte: AtomicU8,
    /// The two sockets, once connected, for reading `TCP_INFO` from outside the task.
    legs: Mutex<Legs>,
}

#[derive(Debug, Default)]
struct Legs {
    client: Option<Weak<tokio::net::TcpStream>>,
    upstream: Option<Weak<tokio::net::TcpStream>>,
}

impl Conn {
    /// The connection's id, unique for the life of the process.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The listener that accepted it.
    pub fn listener(&self) -> &str {
        &self.listener
    }
    /// The pool it is proxied to.
    pub fn pool(&self) -> &str {
        &self.pool
    }
    /// The client's address (from the PROXY header when the listener accepts one).
    pub fn client(&self) -> SocketAddr {
        self.client
    }
    /// The backend being connected to, or carrying the connection.
    pub fn backend(&self) -> Option<SocketAddr> {
        *self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// How long ago it was accepted.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
    /// Bytes received from the client and sent to the backend.
    pub fn bytes_from_client(&self) -> u64 {
        self.from_client.load(Ordering::Relaxed)
    }
    /// Bytes received from the backend and sent to the client.
    pub fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }
    /// Where it is in its life.
    pub fn state(&self) -> ConnState {
        match self.state.load(Ordering::Relaxed) {
            1 => ConnState::Established,
            2 => ConnState::ClientHalfClosed,
            3 => ConnState::UpstreamHalfClosed,
            _ => ConnState::Connecting,
        }
    }
    /// `TCP_INFO` of the client leg and the backend leg, when they are open and known.
    pub fn tcp_info(&self) -> (Option<plumb_sys::TcpInfo>, Option<plumb_sys::TcpInfo>) {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        let read = |w: &Option<Weak<tokio::net::TcpStream>>| {
            w.as_ref()
                .and_then(Weak::upgrade)
                .and_then(|s| plumb_sys::tcp_info(&*s).ok())
        };
        (read(&legs.client), read(&legs.upstream))
    }

    pub(crate) fn set_legs(
        &self,
        client: Option<&Arc<tokio::net::TcpStream>>,
        upstream: Option<&Arc<tokio::net::TcpStream>>,
    ) {
        let mut legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = client {
            legs.client = Some(Arc::downgrade(c));
        }
        if let Some(u) = upstream {
            legs.upstream = Some(Arc::downgrade(u));
        }
    }

    /// Tells the connection's task to close both legs.
    pub fn close(&self, order: CloseOrder) {
        *self.order.lock().unwrap_or_else(|p| p.into_inner()) = Some(order);
        self.ordered.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Wakes the connection's task to look at something it does not wait on by
    /// itself (plumb starting to drain).
    pub(crate) fn nudge(&self) {
        self.waker.wake();
    }

    /// The order to close, if one was given.
    pub(crate) fn order(&self) -> Option<CloseOrder> {
        if !self.ordered.load(Ordering::Acquire) {
            return None;
        }
        *self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready with the order to close once one is given; registers the task to be
    /// woken by an order or a nudge. Only the connection's own task may poll this.
    pub(crate) fn poll_order(&self, cx: &mut Context<'_>) -> Poll<CloseOrder> {
        self.waker.register(cx.waker());
        match self.order() {
            Some(o) => Poll::Ready(o),
            None => Poll::Pending,
        }
    }

    /// The first byte arrived: the first-byte deadline no longer concerns it.
    pub(crate) fn spoke(&self) {
        self.first_byte.store(1, Ordering::Relaxed);
    }

    /// The first-byte deadline passed: wakes the task to close the connection, unless
    /// the first byte came.
    pub(crate) fn silence_expired(&self) {
        if self
            .first_byte
            .compare_exchange(0, 2, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Whether the first-byte deadline passed with nothing received.
    pub(crate) fn silent_too_long(&self) -> bool {
        self.first_byte.load(Ordering::Acquire) == 2
    }

    /// Waits for an order to close.
    pub(crate) async fn ordered(&self) -> CloseOrder {
        std::future::poll_fn(|cx| self.poll_order(cx)).await
    }

    pub(crate) fn set_state(&self, s: ConnState) {
        let v = match s {
            ConnState::Connecting => 0,
            ConnState::Established => 1,
            ConnState::ClientHalfClosed => 2,
            ConnState::UpstreamHalfClosed => 3,
        };
        self.state.store(v, Ordering::Relaxed);
    }
    pub(crate) fn set_backend(&self, addr: Option<SocketAddr>) {
        *self.backend.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }
    /// Records `n` bytes written on from `from` to the other side.
    pub(crate) fn moved(&self, from: Side, n: usize) {
        let counter = match from {
            Side::Client => &self.from_client,
            Side::Upstream => &self.to_client,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }
    /// Records activity from `from` (a read, before its bytes are written on).
    pub(crate) fn touch(&self, from: Side) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
        let who = match from {
            Side::Client => 1,
            Side::Upstream => 2,
        };
        self.last_sender.store(who, Ordering::Relaxed);
    }
    /// When the last byte moved (the accept time if none has).
    pub(crate) fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
    /// Who sent the last byte, if anyone.
    pub(crate) fn last_sender(&self) -> Option<Side> {
        match self.last_sender.load(Ordering::Relaxed) {
            1 => Some(Side::Client),
            2 => Some(Side::Upstream),
            _ => None,
        }
    }
}

/// All live connections, in one shard per core: a worker thread adds and removes
/// its connections under a lock the other workers do not take.
#[derive(Debug, Default)]
pub struct ConnTable {
    next_id: AtomicU64,
    shards: crate::workers::Sharded<Mutex<HashMap<u64, Arc<Conn>>>>,
}

/// A connection's place in the table; leaving the table when dropped.
#[derive(Debug)]
pub struct Registration {
    table: Arc<ConnTable>,
    conn: Arc<Conn>,
    shard: usize,
}

impl Registration {
    /// The entry.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(self.table.shards.get(self.shard)).remove(&self.conn.id);
    }
}

impl ConnTable {
    /// Adds a connection; it leaves the table when the registration is dropped.
    /// Close orders reach it through [`Conn::ordered`].
    pub fn register(
        self: &Arc<Self>,
        listener: Arc<str>,
        pool: Arc<str>,
        client: SocketAddr,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(Conn {
            id,
            listener,
            pool,
            client,
            started: Instant::now(),
            backend: Mutex::new(None),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            state: AtomicU8::new(0),
            last_activity_ms: AtomicU64::new(0),
            last_sender: AtomicU8::new(0),
            order: Mutex::new(None),
            ordered: AtomicBool::new(false),
            first_byte: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            legs: Mutex::new(Legs::default()),
        });
        let shard = self.shards.mine();
        lock(self.shards.get(shard)).insert(id, Arc::clone(&conn));
        Registration {
            table: Arc::clone(self),
            conn,
            shard,
        }
    }

    /// A copy of the current entries, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<Arc<Conn>> = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            v.extend(lock(shard).values().cloned());
        }
        v.sort_by_key(|c| c.id);
        v
    }

    /// The live connection with this id (looked for first in the calling
    /// worker's shard, where its accept loop registered it).
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Conn>> {
        self.shards
            .mine_first()
            .find_map(|s| lock(s).get(&id).cloned())
    }

    /// Connections registered since the table was made (open or closed).
    pub fn opened_total(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every connection's task to look at plumb's state (see [`Conn::nudge`]).
    pub(crate) fn nudge_all(&self) {
        for c in self.snapshot() {
            c.nudge();
        }
    }

    /// Orders every connection to close.
    pub fn close_all(&self, order: CloseOrder) -> usize {
        let conns = self.snapshot();
        for c in &conns {
            c.close(order);
        }
        conns.len()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicU64);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn entry() -> (Registration, Arc<Wakes>) {
        let table = Arc::new(ConnTable::default());
        let reg = table.register(
            Arc::from("l"),
            Arc::from("p"),
            "127.0.0.1:1".parse().unwrap(),
        );
        (reg, Arc::new(Wakes::default()))
    }

    /// An entry whose task has looked for an order once (and so is registered to be
    /// woken).
    fn waiting() -> (Registration, Arc<Wakes>) {
        let (reg, wakes) = entry();
        let waker = Arc::clone(&wakes).into();
        assert!(reg
            .conn()
            .poll_order(&mut Context::from_waker(&waker))
            .is_pending());
        (reg, wakes)
    }

    const ORDER: CloseOrder = CloseOrder {
        cause: Cause::Shutdown,
        how: CloseHow::Reset,
    };

    #[test]
    fn an_order_wakes_the_waiting_task_and_is_seen_by_it() {
        let (reg, wakes) = entry();
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let mut waiting = Box::pin(reg.conn().ordered());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        reg.conn().close(ORDER);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(ORDER));
        // An order given before anyone waits is there at the first look.
        let (reg, _) = entry();
        reg.conn().close(ORDER);
        assert_eq!(
            Box::pin(reg.conn().ordered()).as_mut().poll(&mut cx),
            Poll::Ready(ORDER)
        );
    }

    #[test]
    fn a_nudge_wakes_without_an_order() {
        let (reg, wakes) = waiting();
        reg.table.nudge_all();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(reg.conn().order().is_none());
    }

    #[test]
    fn the_first_byte_deadline_concerns_only_a_silent_connection() {
        let (reg, wakes) = waiting();
        reg.conn().silence_expired();
        assert!(reg.conn().silent_too_long());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);

        let (reg, wakes) = waiting();
        reg.conn().spoke();
        reg.conn().silence_expired();
        assert!(!reg.conn().silent_too_long());
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "a connection that spoke was woken"
        );
    }

    #[test]
    fn a_registration_leaves_the_table_when_dropped() {
        let (reg, _) = entry();
        let table = Arc::clone(&reg.table);
        let id = reg.conn().id();
        assert!(table.get(id).is_some());
        drop(reg);
        assert!(table.get(id).is_none());
        assert!(table.is_empty());
    }
}
