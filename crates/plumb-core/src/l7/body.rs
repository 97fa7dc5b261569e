//! Bodies in flight: counted, bounded by the idle timer between chunks, and the
//! request's access-log line written when the response body ends (or is abandoned).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::client::BoxError;
use crate::accesslog::{Attempt, HttpRecord};
use crate::cause::Cause;
use crate::listener::ListenerCtx;

/// Everything the access log says about one request, filled in as it goes.
pub(crate) struct Exchange {
    ctx: Arc<ListenerCtx>,
    state: Mutex<State>,
    done: AtomicBool,
    /// Decrements the connection's in-flight count when the exchange ends.
    on_done: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// When the whole request (body included) had been handed upstream: the
    /// response-head timer starts there, not while a client is still uploading.
    request_sent: Mutex<Option<Instant>>,
    /// Wakes a sender waiting for `request_sent`.
    request_sent_now: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) pool: Option<Arc<str>>,
    pub(crate) client: Option<SocketAddr>,
    /// None only before a request was read.
    pub(crate) request_id: Option<hyper::header::HeaderValue>,
    /// None: no request was read (`-` in the log).
    pub(crate) method: Option<hyper::Method>,
    pub(crate) host: Option<hyper::header::HeaderValue>,
    /// The request target, whose path is logged.
    pub(crate) target: Option<hyper::Uri>,
    pub(crate) version: &'static str,
    pub(crate) status: u16,
    pub(crate) backend: Option<SocketAddr>,
    pub(crate) attempts: u32,
    pub(crate) failed: Vec<Attempt>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) header_read: Option<Duration>,
    pub(crate) connect: Option<Duration>,
    pub(crate) first_byte: Option<Duration>,
    pub(crate) started: Option<Instant>,
    pub(crate) cause: Option<Cause>,
    pub(crate) error: Option<String>,
    pub(crate) upgraded: bool,
    /// The client's socket, for its `TCP_INFO` at the end.
    pub(crate) client_stream: Option<Arc<tokio::net::TcpStream>>,
    /// The backend connection's socket, for its `TCP_INFO` at the end.
    pub(crate) upstream_stream: Option<Arc<tokio::net::TcpStream>>,
    /// The client connection's watch: says whether a write to the client ran out
    /// of its stall bound (the client stopped reading) when the exchange is
    /// abandoned.
    pub(crate) client_watch: Option<Arc<super::io::HeadWatch>>,
}

impl State {
    pub(crate) fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn method_str(&self) -> &str {
        self.method.as_ref().map_or("-", hyper::Method::as_str)
    }

    fn path(&self) -> &str {
        self.target.as_ref().map_or("", hyper::Uri::path)
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // hyper drops a request's future when the client goes away before the
        // response head: the request still gets its log line and its count.
        if !self.done.load(Ordering::Acquire) {
            self.client_gone("the client closed before the response");
            self.finish();
        }
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("state", &self.state)
            .finish()
    }
}

impl Exchange {
    pub(crate) fn new(
        ctx: Arc<ListenerCtx>,
        state: State,
        on_done: Box<dyn FnOnce() + Send>,
    ) -> Arc<Exchange> {
        Arc::new(Exchange {
            ctx,
            state: Mutex::new(state),
            done: AtomicBool::new(false),
            on_done: Mutex::new(Some(on_done)),
            request_sent: Mutex::new(None),
            request_sent_now: tokio::sync::Notify::new(),
        })
    }

    /// hyper abandoned the exchange because the client connection ended: the client
    /// stopped reading (a write to it ran out of its stall bound) or went away.
    fn client_gone(&self, closed: &str) {
        let stalled = self.with(|s| s.client_watch.as_ref().and_then(|w| w.write_stalled()));
        match stalled {
            Some(stall) => self.fail(
                Cause::ClientIdleTimeout,
                format!("the client took no bytes for {}ms", stall.as_millis()),
            ),
            None => self.fail(Cause::ClientClosedEarly, closed),
        }
    }

    /// The request (body included) has gone upstream.
    pub(crate) fn mark_request_sent(&self) {
        let mut sent = self.request_sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.is_none() {
            *sent = Some(Instant::now());
            self.request_sent_now.notify_one();
        }
    }

    /// When the request had gone upstream, if it has.
    pub(crate) fn request_sent_at(&self) -> Option<Instant> {
        *self.request_sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the request has gone upstream (at once if it has).
    pub(crate) async fn request_sent(&self) {
        while self.request_sent_at().is_none() {
            self.request_sent_now.notified().await;
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records a cause unless one is already there (the first failure is the story).
    pub(crate) fn fail(&self, cause: Cause, error: impl Into<String>) {
        self.with(|s| {
            if s.cause.is_none() {
                s.cause = Some(cause);
                s.error = Some(error.into());
            }
        });
    }

    /// Writes the access-log line, once.
    pub(crate) fn finish(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(f) = self
            .on_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            f();
        }
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let total = s.started.map(|t| t.elapsed()).unwrap_or_default();
        // Each leg's TCP_INFO (a system call per leg) when the access log writes it,
        // or when the request failed and the black-hole signature may explain why.
        // A request that succeeded has just handed its response to the kernel:
        // nothing can be unacknowledged for long yet, and the connection's own check
        // at close still looks at the client leg.
        let want_tcp = self.ctx.shared.access_log.enabled() || s.cause.is_some();
        let tcp = |leg: &Option<Arc<tokio::net::TcpStream>>| {
            leg.as_ref()
                .filter(|_| want_tcp)
                .and_then(|st| plumb_sys::tcp_info(&**st).ok())
        };
        let (client_tcp, upstream_tcp) = (tcp(&s.client_stream), tcp(&s.upstream_stream));
        for (leg, info) in [("client", client_tcp), ("upstream", upstream_tcp)] {
            if info.is_some_and(|i| i.suspected_blackhole()) {
                tracing::warn!(leg, request_id = %s.request_id(), "suspected_blackhole: data outstanding and retransmitted with no acknowledgement");
                self.ctx
                    .shared
                    .metrics
                    .suspected_blackhole
                    .get_or_create(&crate::metrics::LegLabels {
                        listener: self.ctx.name.to_string(),
                        pool: s.pool.as_deref().unwrap_or("").to_string(),
                        leg: leg.to_string(),
                    })
                    .inc();
            }
        }
        let m = &self.ctx.metrics;
        m.request(
            &self.ctx.shared.metrics,
            &self.ctx.name,
            s.pool.as_ref(),
            s.status,
            s.cause,
        );
        if let Some(h) = &m.request_duration {
            h.observe(total.as_secs_f64());
        }
        if let (Some(fb), Some(h)) = (s.first_byte, &m.first_byte) {
            h.observe(fb.as_secs_f64());
        }
        if let Some(cause) = s.cause {
            self.ctx.shared.recent.push(crate::recent::RecentError {
                at: std::time::SystemTime::now(),
                listener: self.ctx.name.to_string(),
                cause,
                backend: s.backend,
                client: s
                    .client
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                request_id: Some(s.request_id().to_string()),
                request: Some(format!("{} {}", s.method_str(), s.path())),
                status: Some(s.status),
            });
            tracing::info!(
                listener = %self.ctx.name,
                request_id = %s.request_id(),
                status = s.status,
                cause = %cause,
                backend.addr = s.backend.map(|b| b.to_string()),
                error = s.error.as_deref(),
                "request failed"
            );
        }
        // The line is put together only for a log that writes it.
        if !self.ctx.shared.access_log.enabled() {
            return;
        }
        self.ctx.shared.access_log.write_http(&HttpRecord {
            listener: &self.ctx.name,
            pool: s.pool.as_deref(),
            client: s
                .client
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            request_id: s.request_id(),
            method: s.method_str(),
            host: s.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            path: s.path(),
            version: s.version,
            status: s.status,
            backend: s.backend,
            attempts: s.attempts,
            failed_attempts: &s.failed,
            bytes_from_client: s.bytes_in,
            bytes_to_client: s.bytes_out,
            header_read: s.header_read,
            connect: s.connect,
            first_byte: s.first_byte,
            total,
            cause: s.cause,
            error: s.error.clone(),
            upgraded: s.upgraded,
            client_tcp,
            upstream_tcp,
        });
    }
}

/// Which body a [`Tracked`] wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to backend.
    Request,
    /// Backend to client.
    Response,
}

/// The idle timer fired inside a body.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub(crate) struct BodyIdle(pub(crate) Duration);

/// The backend was drained or marked down while its response was streaming.
#[derive(Debug, thiserror::Error)]
#[error("response ended: {0}")]
pub(crate) struct BodyAborted(pub(crate) Cause);

/// A body that counts its bytes into the exchange, fails after `idle` without a
/// chunk, and (for responses) ends the exchange when it ends or is dropped.
pub(crate) struct Tracked<B: Body> {
    inner: B,
    idle: Duration,
    /// Made the first time a chunk is not there at once: a body whose bytes are
    /// already in (most small responses) never registers a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the chunk being waited for was asked for.
    asked: Instant,
    direction: Direction,
    exchange: Arc<Exchange>,
    /// Run when the body ended cleanly (returns a kept-alive connection to its pool).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    ended: bool,
    /// Whether the idle timer runs for the chunk being waited for.
    armed: bool,
    /// Requests: the most body bytes allowed (`max_body_bytes`).
    limit: Option<u64>,
    /// Bytes passed so far.
    seen: u64,
    /// Responses: the backend's abort (drain deadline, mark-down) ends the body.
    abort: Option<AbortWatch>,
}

/// The backend's abort ticket as it was when the request began, and the wait on
/// its token, made only once the body has to wait for bytes: a response whose
/// bytes are all in (most small ones) checks the backend's count of aborts and
/// never registers, boxes or unregisters a waiter.
struct AbortWatch {
    ticket: crate::pool::AbortTicket,
    waiting: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    backend: Arc<crate::pool::Backend>,
}

impl<B: Body> std::fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("direction", &self.direction)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<B: Body> Tracked<B> {
    pub(crate) fn new(
        inner: B,
        idle: Duration,
        direction: Direction,
        exchange: Arc<Exchange>,
    ) -> Tracked<B> {
        Tracked {
            inner,
            idle,
            timer: None,
            asked: Instant::now(),
            direction,
            exchange,
            on_end: None,
            ended: false,
            armed: false,
            limit: None,
            seen: 0,
            abort: None,
        }
    }

    pub(crate) fn limit(mut self, limit: Option<u64>) -> Tracked<B> {
        self.limit = limit;
        self
    }

    /// Ends the body when the backend aborts the requests of `ticket` (taken when
    /// the request was sent).
    pub(crate) fn abort_on(
        mut self,
        backend: Arc<crate::pool::Backend>,
        ticket: crate::pool::AbortTicket,
    ) -> Tracked<B> {
        self.abort = Some(AbortWatch {
            ticket,
            waiting: None,
            backend,
        });
        self
    }

    pub(crate) fn on_end(mut self, f: Box<dyn FnOnce() + Send>) -> Tracked<B> {
        self.on_end = Some(f);
        self
    }

    /// Whether every byte of the body has passed. A request body is complete when its
    /// announced length has arrived, even before the end of the stream: an HTTP/2
    /// client may send END_STREAM in a later, empty DATA frame, and hyper's HTTP/1
    /// writer stops at the length without asking for it, so the response-head timer
    /// must not wait for that frame.
    fn complete(&self) -> bool {
        self.inner.is_end_stream()
            || (self.direction == Direction::Request && self.inner.size_hint().exact() == Some(0))
    }

    /// The backend's abort ended the body.
    fn aborted(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let cause = self
            .abort
            .as_ref()
            .map_or(Cause::BackendDrained, |a| a.backend.abort_cause());
        self.exchange
            .fail(cause, "the backend was drained or marked down mid-response");
        self.ended = true;
        Poll::Ready(Some(Err(Box::new(BodyAborted(cause)))))
    }

    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some(f) = self.on_end.take() {
            f();
        }
        match self.direction {
            Direction::Response => self.exchange.finish(),
            Direction::Request => self.exchange.mark_request_sent(),
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this
            .abort
            .as_ref()
            .is_some_and(|a| a.backend.aborted_since(a.ticket.count))
        {
            return this.aborted();
        }
        // The idle timer measures silence from the moment the next chunk is asked
        // for, not from the last one delivered: while the other side could not take
        // a chunk (back-pressure), nobody was waiting on this body.
        if !this.armed {
            this.asked = Instant::now();
            this.armed = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    if let Some(max) = this.limit {
                        if this.seen > max {
                            // A body without an announced length that grew too large.
                            this.exchange.fail(
                                Cause::RequestTooLarge,
                                format!("the request body is larger than max_body_bytes ({max})"),
                            );
                            this.ended = true;
                            return Poll::Ready(Some(Err(Box::new(BodyAborted(
                                Cause::RequestTooLarge,
                            )))));
                        }
                    }
                    this.exchange.with(|s| match this.direction {
                        Direction::Request => s.bytes_in += n,
                        Direction::Response => s.bytes_out += n,
                    });
                }
                this.armed = false;
                if this.complete() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                let cause = match this.direction {
                    Direction::Request => client_body_cause(e.as_ref()),
                    Direction::Response => match e.downcast_ref::<hyper::Error>() {
                        Some(h) => match super::client::cause_of(h) {
                            Cause::UpstreamResetBeforeResponse => Cause::UpstreamReset,
                            other => other,
                        },
                        None => e
                            .downcast_ref::<super::h1::BodyError>()
                            .map_or(Cause::UpstreamIoError, |b| b.cause),
                    },
                };
                this.exchange
                    .fail(cause, super::client::describe(e.as_ref()));
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(AbortWatch {
                    ticket, waiting, ..
                }) = &mut this.abort
                {
                    let wait = waiting
                        .get_or_insert_with(|| Box::pin(ticket.token.clone().cancelled_owned()));
                    if wait.as_mut().poll(cx).is_ready() {
                        return this.aborted();
                    }
                }
                let deadline = this.asked + this.idle;
                let timer = match &mut this.timer {
                    Some(t) => {
                        if t.deadline() != deadline {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    let cause = match this.direction {
                        Direction::Request => Cause::ClientIdleTimeout,
                        Direction::Response => Cause::UpstreamIdleTimeout,
                    };
                    this.exchange.fail(
                        cause,
                        format!("no body bytes for {}ms", this.idle.as_millis()),
                    );
                    this.ended = true;
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Tracked<B> {
    fn drop(&mut self) {
        if !self.ended && self.complete() {
            // hyper stops polling once the body says it is complete (a known length
            // fully sent): that is a clean end.
            self.end();
        }
        if self.direction == Direction::Response {
            if !self.ended {
                // hyper drops a body it never had to poll (HEAD, 204, 304): that
                // is a clean end. Otherwise the client went away mid-response.
                self.exchange
                    .client_gone("the client closed before the response ended");
            }
            self.exchange.finish();
        }
    }
}

/// Why a client's request body failed: it reset (RST), closed early (FIN before the
/// announced length), or something else on its leg.
fn client_body_cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                // FIN before the announced length: it closed, it did not reset.
                return Cause::ClientClosedEarly;
            }
            return Cause::of_io_error(io, crate::cause::Side::Client);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return Cause::ClientClosedEarly;
            }
        }
        cur = err.source();
    }
    Cause::ClientIoError
}

/// A response body that is empty by nature (HEAD, 204, 304): hyper may never poll it,
/// so it ends now.
pub(crate) fn end_now<B: Body>(t: &mut Tracked<B>) {
    t.end();
}
