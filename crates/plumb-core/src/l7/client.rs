//! Upstream HTTP/1.1 connections: a keep-alive pool per backend, connecting, and
//! sending one request with the response-head timer.
//!
//! A connection is driven either by plumb itself (`h1.rs`: requests without a body
//! and without an upgrade, read in the client's own task) or by hyper's client (a
//! body to stream, or an upgrade); one plumb drives is handed to hyper when such a
//! request takes it from the pool.
//!
//! Kept-alive connections are bounded (`upstream.max_idle_per_backend`) and closed
//! after `upstream.idle_timeout`, shorter than backends' own keep-alive timeouts, so
//! plumb is the side that closes an idle connection. When a reused connection turns
//! out to be closed before the request left (the stale keep-alive race), the request
//! comes back and is sent again on a fresh connection.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use plumb_config::model;

use super::h1::{RawBody, RawConn};
use super::headers::Upstream;
use crate::cause::Cause;
use crate::upstream;
use crate::workers::Sharded;
use crate::{lock, FastMap};

/// A body sent upstream: the client's (streamed) or an empty one.
pub(crate) type UpBody = UnsyncBoxBody<Bytes, BoxError>;
/// Errors inside bodies.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A request's head as it goes upstream: origin-form target, HTTP/1.1, and the
/// client's fields as plumb rewrites them. plumb's own path writes it out as it is;
/// hyper's client gets a [`Request`] made of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) fields: Upstream<'a>,
}

impl UpHead<'_> {
    pub(crate) fn to_request(self, body: UpBody) -> Request<UpBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = Version::HTTP_11;
        *r.headers_mut() = self.fields.to_map();
        r
    }
}

/// Idle kept-alive connections, by backend, on one shelf per core: a worker
/// thread takes its own connections back and returns them under a lock the other
/// workers do not take, and a connection always goes back to the shelf of the
/// worker whose I/O driver watches its socket. A worker whose shelf has none for a
/// backend takes one from another shelf before it connects. The bound per backend
/// holds across shelves, through a count they share.
#[derive(Debug, Default)]
pub(crate) struct KeepAlive {
    shelves: Sharded<Mutex<FastMap<SocketAddr, Kept>>>,
    /// The count of connections kept per backend, all shelves together; consulted
    /// when a shelf first keeps a connection to the backend.
    counts: Mutex<FastMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One shelf's idle connections to one backend, newest last.
#[derive(Debug)]
struct Kept {
    idle: Vec<Idle>,
    /// Shared with the other shelves' [`Kept`] for the same backend.
    count: Arc<AtomicUsize>,
}

/// An upstream connection: driven by plumb, or by hyper's client.
#[derive(Debug)]
pub(crate) enum UpConn {
    Raw(RawConn),
    Hyper(HyperConn),
}

/// A connection hyper's client drives: the request sender, and the socket (shared,
/// so that its `TCP_INFO` can be read while hyper owns the connection).
#[derive(Debug)]
pub(crate) struct HyperConn {
    pub(crate) tx: http1::SendRequest<UpBody>,
    pub(crate) stream: Arc<TcpStream>,
    /// The worker that runs hyper's task for the connection.
    pub(crate) worker: usize,
}

impl UpConn {
    pub(crate) fn stream(&self) -> &Arc<TcpStream> {
        match self {
            UpConn::Raw(r) => &r.stream,
            UpConn::Hyper(h) => &h.stream,
        }
    }

    /// The worker the connection belongs to (see [`KeepAlive`]).
    fn worker(&self) -> usize {
        match self {
            UpConn::Raw(r) => r.worker,
            UpConn::Hyper(h) => h.worker,
        }
    }

    /// Whether an idle connection can no longer carry a request.
    fn is_closed(&self) -> bool {
        match self {
            UpConn::Raw(r) => !r.usable(),
            UpConn::Hyper(h) => h.tx.is_closed(),
        }
    }

    /// The connection for a request: one with a body or an upgrade needs hyper's
    /// client (`raw` false), and a connection plumb drove is handed to it.
    pub(crate) async fn for_request(
        self,
        raw: bool,
        addr: SocketAddr,
        settings: &model::Pool,
    ) -> Result<UpConn, upstream::ConnectError> {
        match self {
            UpConn::Raw(r) if !raw => {
                let stream = r.into_stream().ok_or_else(|| upstream::ConnectError {
                    addr,
                    cause: Cause::UpstreamBadResponse,
                    source: io::Error::other("bytes left over from the last response"),
                })?;
                handshake(addr, stream, settings).await.map(UpConn::Hyper)
            }
            up => Ok(up),
        }
    }
}

/// A response body from a backend: read by plumb, or by hyper's client.
#[derive(Debug)]
pub(crate) enum UpResp {
    Raw(RawBody),
    Hyper(Incoming),
}

impl Body for UpResp {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpResp::Raw(b) => Pin::new(b).poll_frame(cx),
            UpResp::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpResp::Raw(b) => b.is_end_stream(),
            UpResp::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpResp::Raw(b) => b.size_hint(),
            UpResp::Hyper(b) => b.size_hint(),
        }
    }
}

#[derive(Debug)]
struct Idle {
    up: UpConn,
    since: Instant,
}

impl KeepAlive {
    /// The newest idle connection to `addr` that is open, ready and not expired:
    /// from the calling worker's shelf, or failing that from another's.
    pub(crate) fn take(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<UpConn> {
        self.shelves.mine_first().find_map(|shelf| {
            let mut shelf = lock(shelf);
            let kept = shelf.get_mut(&addr)?;
            while let Some(i) = kept.idle.pop() {
                kept.count.fetch_sub(1, Ordering::AcqRel);
                if i.since.elapsed() < idle_timeout && !i.up.is_closed() {
                    return Some(i.up);
                }
            }
            None
        })
    }

    /// Keeps a connection for reuse, on its worker's shelf, unless `max` to its
    /// backend are already kept.
    pub(crate) fn put(&self, addr: SocketAddr, up: UpConn, max: usize) {
        if max == 0 || up.is_closed() {
            return;
        }
        let mut shelf = lock(self.shelves.get(up.worker()));
        let kept = shelf.entry(addr).or_insert_with(|| Kept {
            idle: Vec::new(),
            count: Arc::clone(lock(&self.counts).entry(addr).or_default()),
        });
        let room = kept
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if room.is_ok() {
            kept.idle.push(Idle {
                up,
                since: Instant::now(),
            });
        }
    }

    /// Closes expired and dead connections, and all connections to backends that may
    /// not be used (dropping the sender ends the connection).
    pub(crate) fn sweep(&self, idle_timeout: Duration, usable: impl Fn(SocketAddr) -> bool) {
        for shelf in self.shelves.iter() {
            lock(shelf).retain(|addr, kept| {
                let before = kept.idle.len();
                let in_use = usable(*addr);
                if in_use {
                    kept.idle
                        .retain(|i| i.since.elapsed() < idle_timeout && !i.up.is_closed());
                } else {
                    kept.idle.clear();
                }
                kept.count
                    .fetch_sub(before - kept.idle.len(), Ordering::AcqRel);
                // A backend's entry stays while it is in use: its count is shared.
                in_use
            });
        }
        // A count goes only once no shelf holds it (a shelf may have kept a
        // connection to the backend since its turn above): a shelf holding an old
        // count while the others start a new one would split the bound.
        lock(&self.counts).retain(|addr, count| usable(*addr) || Arc::strong_count(count) > 1);
    }

    /// Idle connections kept now, all backends.
    pub(crate) fn len(&self) -> usize {
        self.shelves
            .iter()
            .map(|s| lock(s).values().map(|k| k.idle.len()).sum::<usize>())
            .sum()
    }
}

/// A new connection to `addr`: driven by plumb (`raw`), or by hyper's client.
pub(crate) async fn connect(
    addr: SocketAddr,
    settings: &model::Pool,
    raw: bool,
) -> Result<UpConn, upstream::ConnectError> {
    let stream = Arc::new(upstream::connect(addr, &settings.tcp, settings.timeouts.connect).await?);
    if raw {
        return Ok(UpConn::Raw(RawConn::new(stream)));
    }
    handshake(addr, stream, settings).await.map(UpConn::Hyper)
}

/// Hands a connected socket to hyper's client.
async fn handshake(
    addr: SocketAddr,
    stream: Arc<TcpStream>,
    settings: &model::Pool,
) -> Result<HyperConn, upstream::ConnectError> {
    let io = super::io::SharedStream::write_stall(Arc::clone(&stream), settings.timeouts.idle);
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| upstream::ConnectError {
            addr,
            cause: Cause::UpstreamConnectError,
            source: io::Error::other(e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend.addr = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(HyperConn {
        tx,
        stream,
        worker: crate::workers::current(),
    })
}

/// How long a kept-alive connection may take to turn to its next request before it
/// is given up for a fresh one.
const READY_WAIT: Duration = Duration::from_secs(1);

/// How sending a request went.
pub(crate) enum Sent {
    /// A response head arrived.
    Answered(Response<UpResp>),
    /// The request never left: the connection was already closed. It can be sent
    /// again, body and all (`None`: it had no body, and is made again from its head).
    Returned(Option<Request<UpBody>>, Cause, String),
    /// It may have reached the backend; no response head came.
    Failed(Cause, String),
    /// The kept-alive connection had not finished its last exchange in time (hyper
    /// was still writing a request body a backend had already answered): the
    /// request never left and goes on another connection; nothing failed.
    Busy(Request<UpBody>),
}

/// Sends a request on `up`: `req` when it has a body or an upgrade (a connection
/// taken for it with `raw` false, so hyper's), else the bodyless request `head`.
/// Waits at most `response_header` for the response head (from when the request has
/// been sent); a write the backend does not take for `stall` fails.
pub(crate) async fn send(
    up: &mut UpConn,
    req: Option<Request<UpBody>>,
    head: UpHead<'_>,
    response_header: Duration,
    stall: Duration,
    exchange: &super::body::Exchange,
    reused: bool,
) -> Sent {
    match (up, req) {
        (UpConn::Raw(raw), None) => {
            // No body: the request counts as sent from the start.
            let sent_at = exchange.request_sent_at().unwrap_or_else(Instant::now);
            super::h1::send(raw, head, sent_at, response_header, stall).await
        }
        (UpConn::Hyper(h), req) => {
            let req = req.unwrap_or_else(|| head.to_request(super::empty()));
            send_hyper(&mut h.tx, req, response_header, exchange, reused).await
        }
        // Not reached: `for_request` and `connect` give a request with a body
        // hyper's connections only. Were it, the request goes back untouched.
        (UpConn::Raw(_), Some(req)) => Sent::Returned(
            Some(req),
            Cause::UpstreamConnectError,
            "a request with a body offered to a connection without hyper's client".into(),
        ),
    }
}

/// [`send`] through hyper's client.
async fn send_hyper(
    tx: &mut http1::SendRequest<UpBody>,
    req: Request<UpBody>,
    response_header: Duration,
    exchange: &super::body::Exchange,
    reused: bool,
) -> Sent {
    // A connection just back in the pool may still be finishing its last response
    // in hyper's task: wait for it (briefly; it is one poll away) unless it is
    // ready. A fresh connection has just completed its handshake.
    let ready = if tx.is_ready() {
        Ok(())
    } else if reused {
        match tokio::time::timeout(READY_WAIT, tx.ready()).await {
            Ok(r) => r.map_err(|_| "connection closed before the request"),
            Err(_) => return Sent::Busy(req),
        }
    } else {
        tx.ready()
            .await
            .map_err(|_| "connection closed before the request")
    };
    if let Err(why) = ready {
        return Sent::Returned(Some(req), Cause::UpstreamClosedEarly, why.to_string());
    }
    // The response-head timer starts once the whole request has gone upstream: a
    // client still uploading is bounded by the body idle timer, and a slow upload is
    // not the backend's fault.
    let exchange_sent = async {
        exchange.request_sent().await;
        let since = exchange
            .request_sent_at()
            .unwrap_or_else(tokio::time::Instant::now);
        tokio::time::sleep_until(since + response_header).await;
    };
    let result = tokio::select! {
        r = tx.try_send_request(req) => Ok(r),
        () = exchange_sent => Err(()),
    };
    match result {
        Err(()) => Sent::Failed(
            Cause::UpstreamResponseTimeout,
            format!("no response head within {}ms", response_header.as_millis()),
        ),
        Ok(Ok(resp)) => Sent::Answered(resp.map(UpResp::Hyper)),
        Ok(Err(mut e)) => {
            let cause = cause_of(e.error());
            let text = describe(e.error());
            match e.take_message() {
                Some(req) => Sent::Returned(Some(req), cause, text),
                None => Sent::Failed(cause, text),
            }
        }
    }
}

/// The cause of an upstream hyper error, found by walking `source()`.
pub(crate) fn cause_of(e: &hyper::Error) -> Cause {
    if let Some(io) = find_io(e) {
        return before_response(io);
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        Cause::UpstreamClosedEarly
    } else if e.is_parse() || e.is_parse_status() {
        Cause::UpstreamBadResponse
    } else if e.is_timeout() {
        Cause::UpstreamResponseTimeout
    } else {
        Cause::UpstreamIoError
    }
}

/// The cause of an I/O error on the backend leg before a response head: a reset is
/// `upstream_reset_before_response`; a write the backend stopped taking (its window
/// stayed shut) its idle timeout.
pub(crate) fn before_response(e: &io::Error) -> Cause {
    match Cause::of_io_error(e, crate::cause::Side::Upstream) {
        Cause::UpstreamReset => Cause::UpstreamResetBeforeResponse,
        other => other,
    }
}

fn find_io<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// An error and its sources, in one line.
pub(crate) fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
