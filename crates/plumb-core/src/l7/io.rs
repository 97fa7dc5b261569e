//! The client connection's I/O as hyper sees it, with one addition: it notices when a
//! request head has started arriving, so that a client that sends a head too slowly
//! (slowloris) gets a 408 with cause `client_header_timeout` from plumb instead of a
//! silent close. The socket is shared (`Arc`), so the connection task can still write
//! that 408 and close while hyper holds the I/O.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the connection task learns from the bytes hyper reads.
#[derive(Debug, Default)]
pub(crate) struct HeadWatch {
    /// When the first byte of a request head arrived while nothing was in flight;
    /// cleared when that request reaches the service.
    started: Mutex<Option<Instant>>,
    /// Whether nothing is in flight (bytes now start a new head).
    waiting: AtomicBool,
    /// The client speaks HTTP/2 (its streams are bounded by hyper; no head watch).
    h2: AtomicBool,
    /// Whether the first bytes were looked at yet.
    seen_first: AtomicBool,
}

impl HeadWatch {
    pub(crate) fn new() -> HeadWatch {
        HeadWatch {
            waiting: AtomicBool::new(true),
            ..HeadWatch::default()
        }
    }

    /// A request reached the service: its head is complete.
    pub(crate) fn head_done(&self) {
        self.waiting.store(false, Ordering::Release);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Nothing is in flight any more: the next bytes start a new head.
    pub(crate) fn idle(&self) {
        self.waiting.store(true, Ordering::Release);
    }

    /// When the head being read started, for an HTTP/1 connection.
    /// Whether the client has sent any byte yet.
    pub(crate) fn any_byte(&self) -> bool {
        self.seen_first.load(Ordering::Acquire)
    }

    pub(crate) fn head_started(&self) -> Option<Instant> {
        if self.h2.load(Ordering::Acquire) {
            return None;
        }
        *self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes(&self, data: &[u8]) {
        if !self.seen_first.swap(true, Ordering::AcqRel)
            && data.starts_with(&H2_PREFACE[..data.len().min(H2_PREFACE.len())])
            && !data.is_empty()
        {
            self.h2.store(true, Ordering::Release);
        }
        if self.waiting.load(Ordering::Acquire) {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            if started.is_none() {
                *started = Some(Instant::now());
            }
        }
    }
}

/// Any stream (TLS) whose decrypted reads feed the head watch.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    pub(crate) inner: T,
    pub(crate) watch: Arc<HeadWatch>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.watch.bytes(new);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A socket shared between hyper (which drives it) and plumb (which reads its
/// `TCP_INFO`): reads and writes go straight to the `&TcpStream`.
#[derive(Debug)]
pub(crate) struct SharedStream(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Two costs of the obvious `try_read(buf.initialize_unfilled())` avoided here,
        // both per request on each leg: zeroing hyper's whole read buffer before every
        // read, and a second `recv` that can only say "would block". A short read
        // means the socket's receive queue is empty: the closure then reports
        // WouldBlock so that tokio forgets the readiness (as its own `TcpStream`
        // does), and the bytes read are returned all the same.
        let want = buf.remaining();
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let mut drained = false;
            let read = self.0.try_io(tokio::io::Interest::READABLE, || {
                let n = plumb_sys::recv_into(&*self.0, buf)?;
                if n > 0 && n < want {
                    drained = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match read {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(_) if drained => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = plumb_sys::shutdown_write(&*self.0);
        Poll::Ready(Ok(()))
    }
}

/// The client socket of a plain listener, as hyper sees it: reads feed the head
/// watch, and hyper's own bare 400/431 answers are replaced by plumb's.
#[derive(Debug)]
pub(crate) struct ClientIo {
    pub(crate) inner: Watched<SharedStream>,
    pub(crate) ctx: Arc<crate::listener::ListenerCtx>,
    pub(crate) peer: std::net::SocketAddr,
    /// plumb's own error response being written in place of hyper's, and how much
    /// of it is out.
    pub(crate) rewritten: Option<(Vec<u8>, usize)>,
}

impl ClientIo {
    pub(crate) fn new(
        stream: Arc<TcpStream>,
        watch: Arc<HeadWatch>,
        ctx: Arc<crate::listener::ListenerCtx>,
        peer: std::net::SocketAddr,
    ) -> ClientIo {
        ClientIo {
            inner: Watched {
                inner: SharedStream(stream),
                watch,
            },
            ctx,
            peer,
            rewritten: None,
        }
    }

    /// hyper answers a request head it cannot parse (400) or that is too large (431)
    /// on its own, before any request reaches plumb, with a bare response. Such a
    /// write is replaced by plumb's error response naming the cause, so that every
    /// error a client gets from plumb says why.
    fn replacement(&self, data: &[u8]) -> Option<Vec<u8>> {
        // Only while a request head is being read and none has reached plumb, and
        // only a response without plumb's request-id header: every response plumb
        // forwards or makes carries it, hyper's own never does. A backend's 400 is
        // never touched.
        let watch = &self.inner.watch;
        if !watch.waiting.load(Ordering::Acquire) || watch.head_started().is_none() {
            return None;
        }
        let head_end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(data.len());
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        if head.contains(&format!("\r\n{}:", self.ctx.settings.request_id_header)) {
            return None;
        }
        let cause = if data.starts_with(b"HTTP/1.1 400 ") || data.starts_with(b"HTTP/1.0 400 ") {
            crate::cause::Cause::BadRequest
        } else if data.starts_with(b"HTTP/1.1 431 ") || data.starts_with(b"HTTP/1.0 431 ") {
            crate::cause::Cause::RequestHeaderTooLarge
        } else {
            return None;
        };
        let detail = match cause {
            crate::cause::Cause::RequestHeaderTooLarge => format!(
                "the request head is larger than max_header_bytes ({} bytes)",
                self.ctx.settings.max_header_bytes
            ),
            _ => "the request could not be parsed as HTTP".to_string(),
        };
        Some(super::raw_error(&self.ctx, self.peer, cause, detail))
    }

    /// Writes hyper's `total` bytes as plumb's replacement instead: `Ready(total)`
    /// once all of it is out; after that, the connection ends (hyper closes after
    /// such an error anyway) and further writes fail rather than vanish.
    fn poll_replaced(&mut self, cx: &mut Context<'_>, total: usize) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, done)) = &mut self.rewritten else {
                return Poll::Ready(Ok(total));
            };
            if *done >= bytes.len() {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            *done += n;
            if *done >= bytes.len() {
                let _ = plumb_sys::shutdown_write(&*self.inner.inner.0);
                return Poll::Ready(Ok(total));
            }
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() {
            if let Some(bytes) = self.replacement(data) {
                self.rewritten = Some((bytes, 0));
            }
        }
        if self.rewritten.is_some() {
            return self.poll_replaced(cx, data.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            if let Some(bytes) = self.replacement(first) {
                self.rewritten = Some((bytes, 0));
            }
        }
        if self.rewritten.is_some() {
            let total = bufs.iter().map(|b| b.len()).sum();
            return self.poll_replaced(cx, total);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
