//! The HTTP (L7) proxy: HTTP/1.1 and HTTP/2 (h2c) from clients, HTTP/1.1 to backends.
//!
//! Each client connection is served by hyper; each request is routed to a pool, sent
//! to a backend on a kept-alive or fresh connection, and answered with the backend's
//! response streamed through, or with an error made by plumb that names its cause
//! (`plumb-error` header, a short body, the access log). Retries: a connect failure
//! moves on to the next backend; a kept-alive connection found closed before the
//! request left is replaced by a fresh one; an idempotent request without a body is
//! retried on `upstream_reset_before_response` / `upstream_closed_early` within the
//! pool's retry budget. A request that may have reached a backend and is not
//! idempotent is never sent twice.

mod body;
pub(crate) mod client;
mod front;
pub(crate) mod h1;
pub(crate) mod headers;
mod io;
mod quiet;
pub(crate) mod route;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::accesslog::Attempt;
use crate::cause::Cause;
use crate::listener::ListenerCtx;
use crate::pool::Pool;
use body::{Direction, Exchange, State, Tracked};
use client::{Sent, UpBody};

/// What plumb answers with.
pub(crate) type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, client::BoxError>;

/// What the handler answers: the response, and, when plumb read it from the backend
/// itself, the backend's fields as they came (written out as they are to an HTTP/1.1
/// client, see `front`; joined into the response's map for hyper's server).
#[derive(Debug)]
pub(crate) struct Answer {
    resp: Response<RespBody>,
    raw: Option<h1::RawFields>,
}

impl Answer {
    /// The response as hyper's server takes it.
    fn into_response(self) -> Response<RespBody> {
        let mut resp = self.resp;
        if let Some(raw) = self.raw {
            raw.append_to(resp.headers_mut());
        }
        resp
    }
}

impl From<Response<RespBody>> for Answer {
    fn from(resp: Response<RespBody>) -> Answer {
        Answer { resp, raw: None }
    }
}

/// One client connection.
#[derive(Debug)]
struct HttpConn {
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    /// The client's address and `http` or `https`, as the forwarding headers say them.
    forwarded: headers::ForwardedFor,
    /// Requests (and upgraded tunnels) in progress.
    in_flight: AtomicUsize,
    /// When the connection last had nothing in flight.
    idle_since: Mutex<Instant>,
    /// Whether a request head is being read, and since when.
    watch: Arc<io::HeadWatch>,
    /// The client socket (plain listeners), for `TCP_INFO`.
    stream: Option<Arc<TcpStream>>,
    /// This connection's entry in the connection table.
    table: Arc<crate::conntable::Conn>,
    /// plumb is closing the connection (its keep-alive idle time, a drain): no
    /// request after the one in flight, which is answered with `connection: close`.
    closing: AtomicBool,
}

impl HttpConn {
    fn request_started(&self) -> Option<std::time::Duration> {
        self.watch.head_done();
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        (before == 0).then(|| {
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
        })
    }

    fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            self.watch.idle();
        }
    }

    fn close_soon(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn idle_deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
                + self.ctx.settings.keepalive_idle,
        )
    }
}

/// One client connection's task: serves it until it ends, its keep-alive idle time
/// passes, or plumb shuts down (graceful: GOAWAY for HTTP/2, `Connection: close`
/// for HTTP/1.1).
///
/// Until a plain connection's first byte arrives, only this small future exists for
/// it (with its connection-table entry and tokio's registration of the socket, the
/// whole cost of an idle connection; its deadline is an entry in the accept loop's
/// [`FirstByteDeadlines`](crate::listener)): hyper's connection (its read buffer,
/// its state machine) is made, boxed, once there is something to read. Written by
/// hand: an `async fn` would keep its arguments twice and be twice the size.
pub(crate) struct Serve {
    phase: Phase,
    /// The connection's slot under `max_connections`, held until the task ends.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

enum Phase {
    FirstByte {
        ctx: Arc<ListenerCtx>,
        stream: TcpStream,
        reg: crate::conntable::Registration,
    },
    Served(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    Done,
}

impl Serve {
    /// A plain listener's connection waits for its first byte until the accept loop's
    /// deadline (see `Conn::silence_expired`); a TLS one goes straight to its
    /// handshake, bounded by `header_read` there.
    pub(crate) fn new(
        ctx: Arc<ListenerCtx>,
        stream: TcpStream,
        reg: crate::conntable::Registration,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Serve {
        reg.conn()
            .set_state(crate::conntable::ConnState::Established);
        let phase = if ctx.tls.is_none() {
            Phase::FirstByte { ctx, stream, reg }
        } else {
            Phase::Served(served(ctx, stream, reg, None))
        };
        Serve {
            phase,
            _permit: permit,
        }
    }
}

impl std::future::Future for Serve {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            // Taken out while polled, put back while pending.
            match std::mem::replace(&mut this.phase, Phase::Done) {
                Phase::FirstByte { ctx, stream, reg } => {
                    match poll_first_byte(cx, &ctx, &stream, reg.conn()) {
                        Poll::Pending => {
                            this.phase = Phase::FirstByte { ctx, stream, reg };
                            return Poll::Pending;
                        }
                        Poll::Ready(None) => {
                            closed(&ctx, &reg, None);
                            return Poll::Ready(());
                        }
                        Poll::Ready(Some(early)) => {
                            this.phase = Phase::Served(served(ctx, stream, reg, Some(early)));
                        }
                    }
                }
                Phase::Served(mut f) => {
                    if f.as_mut().poll(cx).is_pending() {
                        this.phase = Phase::Served(f);
                        return Poll::Pending;
                    }
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// How much the first read of a plain connection takes: a whole request head,
/// usually, so that hyper (its protocol detection, then its parser) is handed it
/// without another system call.
const FIRST_READ: usize = 4096;

/// Ready(Some) once a plain connection's first bytes are read (or its end of stream
/// or error, which are hyper's to see and report); Ready(None) once it is to be
/// closed unserved: silent since accept for `header_read` (or the keep-alive idle
/// time, if shorter, as any connection with nothing in flight), plumb draining, or an
/// order to close.
fn poll_first_byte(
    cx: &mut std::task::Context<'_>,
    ctx: &ListenerCtx,
    stream: &TcpStream,
    conn: &crate::conntable::Conn,
) -> std::task::Poll<Option<std::io::Result<Bytes>>> {
    use std::io::ErrorKind::WouldBlock;
    use std::task::Poll;
    // A first byte that arrives with the deadline is served.
    while let Poll::Ready(r) = stream.poll_read_ready(cx) {
        if let Err(e) = r {
            conn.spoke();
            return Poll::Ready(Some(Err(e)));
        }
        // tokio may report a socket readable that is not (a fresh one often is):
        // then nothing is read, tokio forgets the readiness, and the wait goes on. A
        // read shorter than asked for emptied the socket: the readiness is cleared
        // then too, so that hyper's next read waits instead of asking the kernel.
        let mut first = bytes::BytesMut::with_capacity(FIRST_READ);
        let read = io::read_drained(stream, FIRST_READ, || stream.try_read_buf(&mut first));
        match read {
            Err(e) if e.kind() == WouldBlock => continue,
            Err(e) => {
                conn.spoke();
                return Poll::Ready(Some(Err(e)));
            }
            // Bytes, or the end of the stream (nothing read: hyper reads it again).
            Ok(_) => {
                conn.spoke();
                return Poll::Ready(Some(Ok(first.freeze())));
            }
        }
    }
    // Registers the task for the deadline, an order, and the nudge that comes with
    // draining.
    let ordered = conn.poll_order(cx).is_ready();
    if conn.silent_too_long() {
        tracing::debug!(listener = %ctx.name, client.addr = %conn.client(), "closing a connection that sent nothing (header_read or keepalive_idle)");
        crate::sockopt::send_fin(stream);
        return Poll::Ready(None);
    }
    if ordered || ctx.shared.drain_started() {
        return Poll::Ready(None);
    }
    Poll::Pending
}

/// The rest of a connection's life, boxed: an idle connection's task stays as small
/// as its wait for the first byte.
fn served(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    reg: crate::conntable::Registration,
    early: Option<std::io::Result<Bytes>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let span = tracing::debug_span!("conn", listener = %ctx.name, client.addr = %reg.conn().client(), protocol = "http");
    Box::pin(tracing::Instrument::instrument(
        serve_in_span(ctx, stream, reg, early),
        span,
    ))
}

/// `early`: a plain connection's first read.
async fn serve_in_span(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    reg: crate::conntable::Registration,
    early: Option<std::io::Result<Bytes>>,
) {
    let peer = reg.conn().client();
    // Writes to the client are bounded by the routed pool's `timeouts.idle`; until
    // a request is routed, by the default pool's (plumb's own answers only).
    let write_stall = ctx
        .pool
        .as_ref()
        .map_or(plumb_config::model::DEFAULT_BODY_IDLE, |p| {
            p.settings().timeouts.idle
        });
    let watch = Arc::new(io::HeadWatch::new(write_stall));
    let failed = match ctx.tls.clone() {
        None => {
            let stream = Arc::new(stream);
            reg.conn().set_legs(Some(&stream), None);
            let client_io = io::ClientIo::new(
                Arc::clone(&stream),
                early,
                Arc::clone(&watch),
                Arc::clone(&ctx),
                peer,
            );
            run_connection(
                &ctx,
                client_io,
                peer,
                Some(&stream),
                watch,
                "http",
                reg.conn(),
            )
            .await;
            // The client leg's TCP_INFO at close: the black-hole signature on a
            // response plumb could not get acknowledged.
            if plumb_sys::tcp_info(&*stream).is_ok_and(|i| i.suspected_blackhole()) {
                tracing::warn!(leg = "client", "suspected_blackhole: data outstanding and retransmitted with no acknowledgement at close");
                ctx.shared
                    .metrics
                    .suspected_blackhole
                    .get_or_create(&crate::metrics::LegLabels {
                        listener: ctx.name.to_string(),
                        pool: ctx.pool_name().to_string(),
                        leg: "client".to_string(),
                    })
                    .inc();
            }
            None
        }
        // Boxed: the handshake and a TLS connection's state would otherwise make
        // every plain connection's future as large as a TLS one's.
        Some(tls) => Box::pin(serve_tls(&ctx, &tls, stream, reg.conn(), watch)).await,
    };
    closed(&ctx, &reg, failed);
    drop(reg);
}

/// A TLS connection: the handshake, bounded by `header_read` and ended at once by
/// an order or a drain (nothing was asked yet), then its requests. Returns the
/// cause when the handshake failed.
async fn serve_tls(
    ctx: &Arc<ListenerCtx>,
    tls: &crate::tls::Tls,
    stream: TcpStream,
    table: &Arc<crate::conntable::Conn>,
    watch: Arc<io::HeadWatch>,
) -> Option<Cause> {
    let peer = table.client();
    let handshake = tokio::time::timeout(ctx.settings.header_read, tls.acceptor().accept(stream));
    let handshake = tokio::select! {
        r = handshake => Some(r),
        _ = table.ordered() => None,
        () = ctx.shared.draining.cancelled() => None,
    };
    match handshake {
        None => None,
        Some(Ok(Ok(tls_stream))) => {
            let watched = io::Watched::new(tls_stream, Arc::clone(&watch));
            run_connection(ctx, watched, peer, None, watch, "https", table).await;
            None
        }
        Some(Ok(Err(e))) => {
            tracing::info!(listener = %ctx.name, client.addr = %peer, cause = %Cause::ClientTlsError, error = %e, "TLS handshake failed");
            Some(Cause::ClientTlsError)
        }
        Some(Err(_)) => {
            tracing::info!(listener = %ctx.name, client.addr = %peer, cause = %Cause::ClientHeaderTimeout, "TLS handshake not completed in time");
            Some(Cause::ClientHeaderTimeout)
        }
    }
}

/// Counts a client connection's end in the listener's metrics.
fn closed(ctx: &ListenerCtx, reg: &crate::conntable::Registration, failed: Option<Cause>) {
    ctx.metrics.closed(
        &ctx.shared.metrics,
        &ctx.name,
        ctx.pool_name(),
        failed,
        reg.conn().age(),
    );
}

#[allow(
    clippy::too_many_arguments,
    reason = "one caller per transport; the pieces of one connection"
)]
async fn run_connection<I>(
    ctx: &Arc<ListenerCtx>,
    client_io: I,
    peer: SocketAddr,
    plain: Option<&Arc<TcpStream>>,
    watch: Arc<io::HeadWatch>,
    proto: &'static str,
    table: &Arc<crate::conntable::Conn>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::task::Poll;
    let conn = Arc::new(HttpConn {
        ctx: Arc::clone(ctx),
        peer,
        forwarded: headers::ForwardedFor::new(peer, proto),
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
        watch: Arc::clone(&watch),
        stream: plain.cloned(),
        table: Arc::clone(table),
        closing: AtomicBool::new(false),
    });
    let svc_conn = Arc::clone(&conn);
    // The request's future is made inside the block, not captured by it: a block
    // that captured it would hold it twice (once as made, once as awaited), and
    // hyper's HTTP/2 server moves the whole of it into a task for every stream.
    // The span is made here, in the connection's: hyper's HTTP/2 server runs the
    // future in a task of its own, where no span is current.
    let service = service_fn(move |req| {
        let conn = Arc::clone(&svc_conn);
        let span = request_span(&req);
        async move {
            let answer = tracing::Instrument::instrument(handle_in_span(conn, req), span);
            answer.await.map(Answer::into_response)
        }
    });
    let mut forced = false;
    // A connection that sends nothing gets `header_read` for its first byte, as a
    // slow head does (nginx and HAProxy time the first request from accept), and
    // is then closed without an answer: no request, nothing to answer (browsers'
    // pre-opened connections end this way).
    let opened = Instant::now();
    {
        // plumb serves HTTP/1.1 requests without a body itself (`front`); the first
        // request it does not serve hands the connection to hyper for good.
        let own = Arc::clone(&conn);
        let served = async move {
            let mut io = client_io;
            let rest = match front::serve(&own, &mut io).await {
                front::Ended::Closed => return Ok(()),
                front::Ended::HandOff(rest) => rest,
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Plain listeners: plumb's own head timer (below) answers 408, and hyper's is
            // off (it would arm a boxed timer for every request). TLS listeners keep hyper's
            // as the bound on a head: it starts as soon as a kept-alive connection goes
            // idle, so it must not be shorter than keepalive_idle.
            let hyper_head_timer = plain.is_none().then(|| {
                ctx.settings.header_read.max(ctx.settings.keepalive_idle)
                    + std::time::Duration::from_secs(1)
            });
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(hyper_head_timer)
                .max_buf_size(ctx.settings.max_header_bytes.max(8192))
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(
                    u32::try_from(ctx.settings.max_header_bytes).unwrap_or(u32::MAX),
                );
            // Boxed, and made only here: hyper's connection (its HTTP/1 and HTTP/2
            // state) is several KiB that every connection's future would otherwise
            // carry, and copy when it is boxed at accept.
            let mut served = Box::pin(builder.serve_connection_with_upgrades(
                TokioIo::new(front::Rewind::new(rest, io)),
                service,
            ));
            let mut shut = false;
            std::future::poll_fn(|cx| {
                if !shut && own.closing() {
                    served.as_mut().graceful_shutdown();
                    shut = true;
                }
                std::future::Future::poll(served.as_mut(), cx)
            })
            .await
        };
        tokio::pin!(served);
        let mut closing = false;
        // One timer per connection, looked at only when it fires: requests start
        // and end without waking this task. At each wake it is re-armed to the
        // earliest moment something could be due: a head's `header_read`, the first
        // byte's, the keep-alive idle time, or, while no head is being read,
        // `header_read` from now (a head starting later cannot be due before that).
        let header_read = ctx.settings.header_read;
        let keepalive_idle = ctx.settings.keepalive_idle;
        let timer = tokio::time::sleep_until(opened + header_read.min(keepalive_idle));
        tokio::pin!(timer);
        let mut timer = quiet::Quiet::new(timer);
        loop {
            tokio::select! {
                () = &mut timer => {
                    let now = Instant::now();
                    if !watch.any_byte() && now >= opened + header_read {
                        tracing::debug!(listener = %ctx.name, client.addr = %peer, "closing a connection that sent nothing within header_read");
                        if let Some(stream) = plain {
                            crate::sockopt::send_fin(stream);
                        }
                        break;
                    }
                    let head = watch.head_started();
                    if head.is_some_and(|t| now >= t + header_read) {
                        match plain {
                            Some(stream) => header_timeout(ctx, stream, peer),
                            None => {
                                // TLS: the 408 cannot be written beside hyper inside
                                // the TLS session; the connection is closed, and the
                                // cause logged and counted all the same.
                                let detail = format!(
                                    "no complete request head within {}ms",
                                    header_read.as_millis()
                                );
                                let _ = raw_error(ctx, peer, Cause::ClientHeaderTimeout, detail);
                            }
                        }
                        break;
                    }
                    let idle = conn.idle_deadline();
                    if !closing && idle.is_some_and(|d| now >= d) {
                        conn.close_soon();
                        closing = true;
                    }
                    let mut next = idle.filter(|_| !closing).unwrap_or(now + keepalive_idle);
                    if !watch.any_byte() {
                        next = next.min(opened + header_read);
                    }
                    next = next.min(match head {
                        Some(t) => t + header_read,
                        None => now + header_read,
                    });
                    timer.get_mut().as_mut().reset(next.max(now + std::time::Duration::from_millis(1)));
                    timer.rouse();
                }
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(listener = %ctx.name, client.addr = %peer, error = %e, "client connection ended with an error");
                    }
                    break;
                }
                // An order, or the start of a drain: the drain's nudge wakes this
                // task through the table, so no waiter is kept on the drain token
                // (shared by every connection; each poll of one takes its lock),
                // and its start is an atomic flag.
                order = std::future::poll_fn(|cx| match table.poll_order(cx) {
                    Poll::Ready(_) => Poll::Ready(true),
                    Poll::Pending if !closing && ctx.shared.drain_started() => Poll::Ready(false),
                    Poll::Pending => Poll::Pending,
                }) => {
                    if order {
                        // Forced close (shutdown grace over): drop the connection.
                        forced = true;
                        break;
                    }
                    conn.close_soon();
                    closing = true;
                }
            }
        }
    }
    // Upgraded tunnels outlive hyper's connection: the client connection (its slot
    // under max_connections, its place in the table) lasts until they end.
    while !forced && conn.in_flight.load(Ordering::Acquire) > 0 {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = table.ordered() => break,
        }
    }
}

/// A request head did not arrive in time: answer 408 with the cause ourselves (hyper
/// has written nothing for this request yet), log it, and close.
fn header_timeout(ctx: &Arc<ListenerCtx>, stream: &TcpStream, peer: SocketAddr) {
    let detail = format!(
        "no complete request head within {}ms",
        ctx.settings.header_read.as_millis()
    );
    let bytes = raw_error(ctx, peer, Cause::ClientHeaderTimeout, detail);
    let _ = stream.try_write(&bytes);
    crate::sockopt::send_fin(stream);
}

/// A complete HTTP/1.1 error response, made before any request reached the service
/// (a head too slow, malformed, or too large), with `plumb-error`, a request id and a
/// body naming the cause, and its access-log line; the connection closes after it.
pub(crate) fn raw_error(
    ctx: &Arc<ListenerCtx>,
    peer: SocketAddr,
    cause: Cause,
    detail: String,
) -> Vec<u8> {
    let status = StatusCode::from_u16(cause.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let reason = status.canonical_reason().unwrap_or("");
    let rid = headers::new_request_id();
    let request_id = rid.to_str().unwrap_or_default();
    let body = format!(
        "{} {reason}: {cause}\nrequest id: {request_id}\n",
        status.as_u16()
    );
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nplumb-error: {cause}\r\n{}: {request_id}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        ctx.settings.request_id_header,
        body.len()
    );
    let exchange = Exchange::new(
        Arc::clone(ctx),
        State {
            client: Some(peer),
            request_id: Some(rid.clone()),
            method: None,
            version: "HTTP/1.1",
            status: status.as_u16(),
            bytes_out: body.len() as u64,
            started: Some(Instant::now()),
            header_read: (cause == Cause::ClientHeaderTimeout).then_some(ctx.settings.header_read),
            ..State::default()
        },
        Box::new(|| {}),
    );
    exchange.fail(cause, detail);
    exchange.finish();
    format!("{head}{body}").into_bytes()
}

/// One request, in its span. A plain function, not an `async fn` around
/// `handle_in_span`: each async layer would keep its own copy of the request and
/// make the future hyper holds (and moves) for every request larger.
fn handle<B>(
    conn: Arc<HttpConn>,
    req: Request<B>,
) -> tracing::instrument::Instrumented<impl std::future::Future<Output = Result<Answer, Infallible>>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<client::BoxError>,
{
    let span = request_span(&req);
    tracing::Instrument::instrument(handle_in_span(conn, req), span)
}

/// A request's span: its method and path, and later its pool and backend.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        pool = tracing::field::Empty,
        backend.addr = tracing::field::Empty,
    )
}

async fn handle_in_span<B>(conn: Arc<HttpConn>, mut req: Request<B>) -> Result<Answer, Infallible>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<client::BoxError>,
{
    let t0 = Instant::now();
    let header_read = conn.request_started();
    let ctx = Arc::clone(&conn.ctx);
    // The host as sent (request target's authority, else the Host header), kept as
    // the header value it is: no copy unless it came from the authority (HTTP/2).
    let host_from_header = req.uri().authority().is_none();
    let host_val: Option<HeaderValue> = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let host_raw: &str = host_val
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let host = route::normalize_host(host_raw);
    let target = req.uri().clone();
    let path = target.path();
    let request_id =
        headers::request_id(req.headers(), &ctx.rid_header, ctx.settings.keep_request_id);
    let version = match req.version() {
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let done_conn = Arc::clone(&conn);
    let exchange = Exchange::new(
        Arc::clone(&ctx),
        State {
            client: Some(conn.peer),
            request_id: Some(request_id.clone()),
            method: Some(req.method().clone()),
            host: host_val.clone(),
            target: Some(target.clone()),
            version,
            started: Some(t0),
            header_read,
            client_stream: conn.stream.clone(),
            client_watch: Some(Arc::clone(&conn.watch)),
            ..State::default()
        },
        Box::new(move || done_conn.request_done()),
    );

    // One host per request: routing and the backend must see the same one. Two Host
    // headers, or a Host that disagrees with the request target's authority
    // (absolute-form, or HTTP/2's :authority), is refused rather than guessed at.
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    let ambiguous = hosts.len() > 1
        || match (req.uri().authority(), hosts.first()) {
            (Some(a), Some(h)) => !h.to_str().is_ok_and(|h| h.eq_ignore_ascii_case(a.as_str())),
            _ => false,
        };
    if ambiguous {
        return Ok(error_response(
            &ctx,
            &exchange,
            Cause::BadRequest,
            "the request names more than one host (Host headers or Host against the request target)".into(),
        ));
    }

    // Routes match the path as sent; a path with dot-segments could match one route
    // and mean another once the backend resolves it (`/public/../admin`).
    if route::has_dot_segments(path) {
        return Ok(error_response(
            &ctx,
            &exchange,
            Cause::BadRequest,
            "the path has dot-segments ('.' or '..')".into(),
        ));
    }

    let Some(pool) = route::first_match(&ctx.routes, &host, path)
        .cloned()
        .or_else(|| ctx.pool.clone())
    else {
        return Ok(error_response(
            &ctx,
            &exchange,
            Cause::NoRoute,
            "no route matches and the listener has no default pool".into(),
        ));
    };
    exchange.with(|s| s.pool = Some(Arc::clone(pool.name())));
    tracing::Span::current().record("pool", tracing::field::display(pool.name()));
    // Read once for the whole request: each read of a pool's settings takes its
    // lock and counts a shared reference, on memory every worker writes.
    let settings = pool.settings();
    pool.note_request(&settings);

    // The request as it goes upstream: origin-form, HTTP/1.1, hop-by-hop gone.
    let upgrade = req.version() != Version::HTTP_2 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // The backend sees the host the request was routed by (already there when it
    // came from the one Host header), and one Cookie line where HTTP/2 split them.
    let set_host =
        !(host_from_header && !host_raw.is_empty() && parts.headers.contains_key(header::HOST));
    let rewrite = headers::Rewrite::new(
        &parts.headers,
        upgrade,
        &conn.forwarded,
        host_raw,
        (rid_header(&ctx), request_id.clone()),
        set_host.then(|| match &host_val {
            Some(v) if !host_raw.is_empty() => v.clone(),
            _ => HeaderValue::from_static(""),
        }),
        version == "HTTP/2.0",
    );
    let uri: Uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let method = parts.method;
    let idempotent = matches!(
        method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if let Some(max) = ctx.settings.max_body_bytes {
        let announced = body
            .size_hint()
            .exact()
            .or(Some(body.size_hint().lower()))
            .unwrap_or(0);
        if announced > max {
            return Ok(error_response(
                &ctx,
                &exchange,
                Cause::RequestTooLarge,
                format!(
                    "the request body ({announced} bytes) is larger than max_body_bytes ({max})"
                ),
            ));
        }
    }
    let bodyless = body.is_end_stream();
    if bodyless {
        exchange.mark_request_sent();
    }
    // plumb drives the upstream exchange itself unless hyper's client must stream a
    // body or hand over an upgraded connection.
    let raw = bodyless && client_upgrade.is_none();
    conn.watch.set_write_stall(settings.timeouts.idle);
    // A bodyless request is made again from its head on each attempt: only a body
    // (hyper's client streams it) has to be carried from one attempt to the next.
    let mut body_slot: Option<UpBody> = (!raw).then(|| {
        Tracked::new(
            body,
            settings.timeouts.idle,
            Direction::Request,
            Arc::clone(&exchange),
        )
        .limit(ctx.settings.max_body_bytes)
        .boxed_unsync()
    });
    let up_head = client::UpHead {
        method: &method,
        uri: &uri,
        fields: headers::Upstream {
            fields: &parts.headers,
            rewrite: &rewrite,
        },
    };

    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<(Cause, String)> = None;
    while tried.len() < settings.connect_attempts {
        let guard = match pool.pick(&tried) {
            Ok(g) => g,
            Err(e) => {
                if tried.is_empty() {
                    last = Some((e.cause(), e.to_string()));
                }
                break;
            }
        };
        let addr = guard.backend().addr();
        tracing::Span::current().record("backend.addr", tracing::field::display(addr));
        tried.push(addr);
        // `None`: plumb writes the request from `up_head` itself.
        let mut req: Option<Request<UpBody>> = if raw {
            None
        } else {
            let Some(body) = body_slot.take().or_else(|| bodyless.then(empty)) else {
                break; // The body is gone with an earlier attempt: nothing left to send.
            };
            Some(up_head.to_request(body))
        };
        let mut fresh_retry_done = false;
        let mut skip_idle = false;
        loop {
            exchange.with(|s| s.attempts += 1);
            let t_attempt = Instant::now();
            let idle = if skip_idle {
                None
            } else {
                pool.http_idle.take(addr, settings.upstream.idle_timeout)
            };
            // A kept-alive connection that cannot be handed over (not expected: the
            // pool keeps none with bytes left over) is closed; a fresh one is made.
            let taken = match idle {
                Some(up) => up.for_request(req.is_none(), addr, &settings).await.ok(),
                None => None,
            };
            let (mut tx, reused) = match taken {
                Some(up) => (up, true),
                None => match client::connect(addr, &settings, req.is_none()).await {
                    Ok(tx) => {
                        pool.metrics
                            .connected(pool.name(), addr, t_attempt.elapsed());
                        exchange.with(|s| s.connect = Some(t_attempt.elapsed()));
                        (tx, false)
                    }
                    Err(e) => {
                        pool.report_failure(guard.backend(), e.cause);
                        record_attempt(&exchange, addr, e.cause, t_attempt);
                        last = Some((e.cause, e.source.to_string()));
                        body_slot = req.map(Request::into_body);
                        break;
                    }
                },
            };
            // A drain deadline or a mark-down ends the wait for the response too.
            exchange.with(|s| s.upstream_stream = Some(Arc::clone(tx.stream())));
            conn.table.set_legs(None, Some(tx.stream()));
            let abort = guard.backend().abort_ticket();
            // The send boxed: its 1.6 KB would otherwise be carried (and, for an
            // HTTP/2 stream, copied into its task) in every request's future.
            let sent = tokio::select! {
                s = Box::pin(client::send(&mut tx, req, up_head, settings.timeouts.response_header, settings.timeouts.idle, &exchange, reused)) => s,
                () = abort.token.cancelled() => Sent::Failed(
                    guard.backend().abort_cause(),
                    "the backend was drained or marked down while the request waited".to_string(),
                ),
            };
            match sent {
                Sent::Answered(resp) => {
                    pool.report_success(guard.backend());
                    exchange.with(|s| {
                        s.backend = Some(addr);
                        s.first_byte = Some(t0.elapsed());
                        s.error = None;
                    });
                    return Ok(respond(
                        &ctx,
                        &pool,
                        &settings,
                        &exchange,
                        &request_id,
                        resp,
                        tx,
                        guard,
                        client_upgrade,
                        &method,
                        abort,
                    ));
                }
                Sent::Busy(back) => {
                    // The kept-alive connection is still finishing its last
                    // exchange: it goes back to the pool once hyper turns to the
                    // next request, and this one goes on a fresh connection.
                    tracing::debug!(backend.addr = %addr, "kept-alive connection still busy; sending on a fresh one");
                    let keep = Arc::clone(&pool);
                    let max_idle = settings.upstream.max_idle_per_backend;
                    let wait = settings.upstream.idle_timeout;
                    if let client::UpConn::Hyper(mut h) = tx {
                        tokio::spawn(async move {
                            if let Ok(Ok(())) = tokio::time::timeout(wait, h.tx.ready()).await {
                                keep.http_idle.put(addr, client::UpConn::Hyper(h), max_idle);
                            }
                        });
                    }
                    skip_idle = true;
                    req = Some(back);
                    continue;
                }
                Sent::Returned(back, cause, text) if reused && !fresh_retry_done => {
                    // The stale keep-alive race: the backend had closed this idle
                    // connection. The request never left; send it on a fresh one.
                    tracing::debug!(backend.addr = %addr, cause = %cause, error = %text, "kept-alive connection was closed; retrying on a fresh one");
                    fresh_retry_done = true;
                    req = back;
                    drop(tx);
                    // A fresh connection: make sure the next take() misses.
                    while pool
                        .http_idle
                        .take(addr, settings.upstream.idle_timeout)
                        .is_some()
                    {}
                    continue;
                }
                Sent::Returned(back, cause, text) => {
                    pool.report_failure(guard.backend(), cause);
                    record_attempt(&exchange, addr, cause, t_attempt);
                    last = Some((cause, text));
                    body_slot = back.map(Request::into_body);
                    break;
                }
                Sent::Failed(cause, text) => {
                    // The client's own body failed (it stalled or went away
                    // mid-upload): the backend is not to blame, and the answer names
                    // the client's cause, as the log does.
                    if let Some(client_cause) =
                        exchange.with(|s| s.cause).filter(|c| c.is_client_side())
                    {
                        return Ok(error_response(&ctx, &exchange, client_cause, text));
                    }
                    let stale = reused
                        && !fresh_retry_done
                        && idempotent
                        && bodyless
                        && matches!(
                            cause,
                            Cause::UpstreamResetBeforeResponse | Cause::UpstreamClosedEarly
                        );
                    if stale {
                        // The stale keep-alive race, lost a moment later: the backend
                        // closed this idle connection as the request went out. An
                        // idempotent request without a body is sent again on a fresh
                        // connection to the same backend; not a backend failure.
                        tracing::debug!(backend.addr = %addr, cause = %cause, error = %text, "kept-alive connection closed under the request; retrying on a fresh one");
                        fresh_retry_done = true;
                        while pool
                            .http_idle
                            .take(addr, settings.upstream.idle_timeout)
                            .is_some()
                        {}
                        req = (!raw).then(|| up_head.to_request(empty()));
                        continue;
                    }
                    if !matches!(
                        cause,
                        Cause::UpstreamResponseTimeout
                            | Cause::BackendDrained
                            | Cause::BackendMarkedDown
                    ) {
                        pool.report_failure(guard.backend(), cause);
                    }
                    record_attempt(&exchange, addr, cause, t_attempt);
                    let retry = idempotent
                        && bodyless
                        && matches!(
                            cause,
                            Cause::UpstreamResetBeforeResponse | Cause::UpstreamClosedEarly
                        )
                        && pool.allow_retry();
                    last = Some((cause, text));
                    if !retry {
                        let (cause, text) = last.take().unwrap_or((cause, String::new()));
                        return Ok(error_response(&ctx, &exchange, cause, text));
                    }
                    break;
                }
            }
        }
    }
    let (cause, text) = last.unwrap_or((Cause::NoHealthyBackend, "no backend to try".to_string()));
    Ok(error_response(&ctx, &exchange, cause, text))
}

/// The request-id header name.
fn rid_header(ctx: &ListenerCtx) -> header::HeaderName {
    ctx.rid_header.clone()
}

fn record_attempt(exchange: &Exchange, addr: SocketAddr, cause: Cause, t: Instant) {
    exchange.with(|s| {
        s.failed.push(Attempt {
            backend: addr,
            cause,
            elapsed: t.elapsed(),
        })
    });
}

fn empty() -> UpBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The backend's response, on its way to the client.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one exchange"
)]
fn respond(
    ctx: &Arc<ListenerCtx>,
    pool: &Arc<Pool>,
    settings: &plumb_config::model::Pool,
    exchange: &Arc<Exchange>,
    request_id: &HeaderValue,
    mut resp: Response<client::UpResp>,
    tx: client::UpConn,
    guard: crate::pool::ActiveGuard,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    method: &Method,
    abort: crate::pool::AbortTicket,
) -> Answer {
    let status = resp.status();
    exchange.with(|s| s.status = status.as_u16());
    let guard_backend = &Arc::clone(guard.backend());
    let addr = guard.backend().addr();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_on) = client_upgrade {
            let upstream_on = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            parts
                .headers
                .insert(rid_header(ctx), headers::id_field(request_id.clone()));
            exchange.with(|s| s.upgraded = true);
            ctx.shared.tasks.spawn(upgrade::tunnel(
                Arc::clone(ctx),
                Arc::clone(pool),
                Arc::clone(exchange),
                client_on,
                upstream_on,
                guard,
                tx,
            ));
            let empty = Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            return Response::from_parts(parts, empty).into();
        }
    }
    let (mut parts, mut body) = resp.into_parts();
    // The fields of a response plumb read itself: hop-by-hop ones already left out.
    let mut raw = match &mut body {
        client::UpResp::Raw(b) => b.take_fields(),
        client::UpResp::Hyper(_) => None,
    };
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || body.is_end_stream();
    // Pooled (by hyper's client) only if hyper will keep the connection: HTTP/1.1,
    // no `Connection: close`, no switch of protocols, and a body whose end is framed
    // (a length or chunks) rather than the backend's close.
    let hyper_reusable = matches!(tx, client::UpConn::Hyper(_))
        && parts.version == Version::HTTP_11
        && status != StatusCode::SWITCHING_PROTOCOLS
        && (no_body
            || parts.headers.contains_key(header::CONTENT_LENGTH)
            || parts.headers.contains_key(header::TRANSFER_ENCODING))
        && !headers::lists(&parts.headers, &header::CONNECTION, "close");
    match &mut raw {
        Some(raw) => raw.remove(ctx.rid_header.as_str()),
        None => headers::strip_hop_by_hop(&mut parts.headers, false),
    }
    parts
        .headers
        .insert(rid_header(ctx), headers::id_field(request_id.clone()));
    let keep = Arc::clone(pool);
    let max_idle = settings.upstream.max_idle_per_backend;
    let on_end: Box<dyn FnOnce() + Send> = match tx {
        client::UpConn::Raw(_) => {
            // plumb reads this response itself: its body puts the connection back
            // once it has read it to a framed end (`h1::RawBody`).
            if let client::UpResp::Raw(raw) = &mut body {
                raw.home(Box::new(move |conn| {
                    keep.http_idle
                        .put(addr, client::UpConn::Raw(conn), max_idle);
                }));
            }
            Box::new(move || drop(guard))
        }
        client::UpConn::Hyper(mut h) => {
            let sent = Arc::clone(exchange);
            Box::new(move || {
                drop(guard);
                if !hyper_reusable {
                    return;
                }
                if sent.request_sent_at().is_some() {
                    // The response was read to its end and the request had gone
                    // out: the connection goes back to the pool now. hyper's
                    // connection task may be one poll from turning to the next
                    // request; whoever takes it waits for that (`client::send`), as
                    // hyper's own pool does.
                    keep.http_idle.put(addr, client::UpConn::Hyper(h), max_idle);
                } else {
                    // The backend answered before the request body was all sent (a
                    // 401 or 413 to an upload): the connection is busy until the
                    // upload ends, so it is pooled only once hyper says it is ready,
                    // within a second.
                    tokio::spawn(async move {
                        if let Ok(Ok(())) =
                            tokio::time::timeout(std::time::Duration::from_secs(1), h.tx.ready())
                                .await
                        {
                            keep.http_idle.put(addr, client::UpConn::Hyper(h), max_idle);
                        }
                    });
                }
            })
        }
    };
    let backend = Arc::clone(guard_backend);
    let mut tracked = Tracked::new(
        body,
        settings.timeouts.idle,
        Direction::Response,
        Arc::clone(exchange),
    )
    .on_end(on_end)
    .abort_on(backend, abort);
    if no_body {
        body::end_now(&mut tracked);
    }
    Answer {
        resp: Response::from_parts(parts, tracked.boxed_unsync()),
        raw,
    }
}

/// An error made by plumb: the cause's status, `plumb-error`, the request id, and a
/// short body naming the cause (with backend details only when the listener allows).
fn error_response(ctx: &ListenerCtx, exchange: &Exchange, cause: Cause, detail: String) -> Answer {
    let status = StatusCode::from_u16(cause.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let (rid, rid_text) = exchange.with(|s| (s.request_id.clone(), s.request_id().to_owned()));
    let mut text = format!(
        "{} {}: {cause}\nrequest id: {rid_text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if ctx.settings.expose_error_details {
        exchange.with(|s| {
            for a in &s.failed {
                text.push_str(&format!(
                    "attempt: {} {} after {:.1}ms\n",
                    a.backend,
                    a.cause,
                    a.elapsed.as_secs_f64() * 1000.0
                ));
            }
        });
        if !detail.is_empty() {
            text.push_str(&format!("detail: {detail}\n"));
        }
    }
    exchange.with(|s| {
        s.status = status.as_u16();
        s.bytes_out = text.len() as u64;
    });
    exchange.fail(cause, detail);
    exchange.finish();
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("plumb-error", HeaderValue::from_static(cause.as_str()));
    if let Some(v) = rid {
        h.insert(rid_header(ctx), headers::id_field(v));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.into()
}
