//! The client connection's I/O as hyper sees it, with one addition: it notices when a
//! request head has started arriving, so that a client that sends a head too slowly
//! (slowloris) gets a 408 with cause `client_header_timeout` from plumb instead of a
//! silent close. The socket is shared (`Arc`), so the connection task can still write
//! that 408 and close while hyper holds the I/O.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::cause::WriteStalled;

/// The start of the HTTP/2 connection preface (enough to tell it from HTTP/1).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

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
    /// How long a write to the client may find its window shut before the
    /// connection is given up (the routed pool's `timeouts.idle`), in ms.
    write_stall_ms: AtomicU64,
    /// That bound ran out: the client stopped reading.
    write_stalled: AtomicBool,
}

impl HeadWatch {
    /// `write_stall` bounds writes to the client until a request sets its pool's.
    pub(crate) fn new(write_stall: Duration) -> HeadWatch {
        HeadWatch {
            waiting: AtomicBool::new(true),
            write_stall_ms: AtomicU64::new(millis(write_stall)),
            ..HeadWatch::default()
        }
    }

    /// Writes to the client are bounded by this from now on (the pool a request
    /// was routed to: its `timeouts.idle`).
    pub(crate) fn set_write_stall(&self, stall: Duration) {
        self.write_stall_ms.store(millis(stall), Ordering::Relaxed);
    }

    /// The bound a write to the client ran out of, if one did.
    pub(crate) fn write_stalled(&self) -> Option<Duration> {
        self.write_stalled
            .load(Ordering::Acquire)
            .then(|| Duration::from_millis(self.write_stall_ms.load(Ordering::Relaxed)))
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

    /// Whether the client has sent any byte yet.
    pub(crate) fn any_byte(&self) -> bool {
        self.seen_first.load(Ordering::Acquire)
    }

    /// When the head being read started, for an HTTP/1 connection.
    pub(crate) fn head_started(&self) -> Option<Instant> {
        if self.h2.load(Ordering::Acquire) {
            return None;
        }
        *self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes read earlier (behind a request, pipelined) begin the next head now
    /// that nothing is in flight: its `header_read` runs from here.
    pub(crate) fn head_pending(&self) {
        if self.waiting.load(Ordering::Acquire) {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            if started.is_none() {
                *started = Some(Instant::now());
            }
        }
    }

    /// Bytes read from the client: the first tell HTTP/2's preface from HTTP/1, and
    /// with nothing in flight they start a head's `header_read`.
    fn bytes(&self, data: &[u8]) {
        if !self.seen_first.swap(true, Ordering::AcqRel)
            && data.starts_with(&H2_PREFACE[..data.len().min(H2_PREFACE.len())])
            && !data.is_empty()
        {
            self.h2.store(true, Ordering::Release);
        }
        self.head_pending();
    }
}

/// Any stream (TLS) whose decrypted reads feed the head watch, and whose writes
/// are bounded by the watch's write-stall time: a client that stops reading a
/// response (its window stays shut) is given up after the routed pool's
/// `timeouts.idle`, as an upload is when it stops.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    pub(crate) inner: T,
    pub(crate) watch: Arc<HeadWatch>,
    blocked: StallTimer,
}

impl<T: Acked> Watched<T> {
    pub(crate) fn new(inner: T, watch: Arc<HeadWatch>) -> Watched<T> {
        Watched {
            inner,
            watch,
            blocked: StallTimer::default(),
        }
    }

    fn written(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                self.blocked.clear();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall =
                    Duration::from_millis(self.watch.write_stall_ms.load(Ordering::Relaxed));
                let inner = &self.inner;
                let r = self.blocked.poll(cx, stall, || inner.acked());
                if r.is_ready() {
                    self.watch.write_stalled.store(true, Ordering::Release);
                }
                r
            }
        }
    }
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

impl<T: AsyncWrite + Acked + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(r, cx)
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The timer of a write that could not go out: armed at the first such poll (not
/// re-armed at each), disarmed once a write goes out. When it runs out, the
/// socket's acknowledged byte count (`TCP_INFO`) decides: a reader that took
/// bytes meanwhile is slow, not stalled, and the timer starts over. (Linux
/// reports a socket writable only once a third of its send buffer is free, so a
/// slow reader can go a long time without a writable signal.)
#[derive(Debug, Default)]
struct StallTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The peer's acknowledged bytes when the timer was (re)armed.
    acked: Option<u64>,
}

impl StallTimer {
    /// `Ready(Err(WriteStalled))` once the peer took no byte for `stall`.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        stall: Duration,
        acked: impl Fn() -> Option<u64>,
    ) -> Poll<io::Result<usize>> {
        if !self.armed {
            self.armed = true;
            self.acked = acked();
            let deadline = Instant::now() + stall;
            match &mut self.sleep {
                Some(t) => t.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        loop {
            let Some(timer) = self.sleep.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now_acked = acked();
            if now_acked.is_some() && now_acked != self.acked {
                // Progress, just no writable signal yet: start over.
                self.acked = now_acked;
                timer.as_mut().reset(Instant::now() + stall);
                continue;
            }
            self.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled(stall),
            )));
        }
    }

    fn clear(&mut self) {
        self.armed = false;
    }
}

/// How many bytes the peer of a stream's socket has acknowledged, for the stall
/// timer; `None` where that cannot be read.
pub(crate) trait Acked {
    fn acked(&self) -> Option<u64>;
}

impl Acked for SharedStream {
    fn acked(&self) -> Option<u64> {
        acked_by_peer(&self.socket)
    }
}

impl Acked for tokio_rustls::server::TlsStream<TcpStream> {
    fn acked(&self) -> Option<u64> {
        acked_by_peer(self.get_ref().0)
    }
}

fn acked_by_peer(socket: &TcpStream) -> Option<u64> {
    plumb_sys::tcp_info(socket).ok().map(|i| i.bytes_acked)
}

/// A socket shared between hyper (which drives it) and plumb (which reads its
/// `TCP_INFO`): reads and writes go straight to the `&TcpStream`.
///
/// A write the peer does not take (its receive window stays shut) fails after
/// `stall`, when set, with [`WriteStalled`]: a backend that stops reading an upload
/// neither polls the request body (so its idle timer never runs) nor answers (so the
/// response-head timer never starts), and without this bound the request would wait
/// for as long as the client does.
#[derive(Debug)]
pub(crate) struct SharedStream {
    pub(crate) socket: Arc<TcpStream>,
    stall: Option<Duration>,
    blocked: StallTimer,
    /// What was read before hyper took the socket (a client's first bytes, or the
    /// error that came instead), handed out before the socket is read again.
    early: Option<io::Result<bytes::Bytes>>,
}

impl SharedStream {
    /// Writes are not bounded here (another timer bounds them).
    pub(crate) fn new(socket: Arc<TcpStream>) -> SharedStream {
        SharedStream {
            socket,
            stall: None,
            blocked: StallTimer::default(),
            early: None,
        }
    }

    /// Writes the peer takes no byte of for `stall` fail with [`WriteStalled`].
    pub(crate) fn write_stall(socket: Arc<TcpStream>, stall: Duration) -> SharedStream {
        SharedStream {
            socket,
            stall: Some(stall),
            blocked: StallTimer::default(),
            early: None,
        }
    }

    /// Reads hand out `early` first.
    pub(crate) fn with_early(mut self, early: Option<io::Result<bytes::Bytes>>) -> SharedStream {
        self.early = early;
        self
    }

    /// A write could not go out: pending until the stall bound (if any) runs out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.stall {
            Some(stall) => {
                let socket = &self.socket;
                self.blocked.poll(cx, stall, || acked_by_peer(socket))
            }
            None => Poll::Pending,
        }
    }

    fn wrote(&mut self, r: io::Result<usize>) -> Poll<io::Result<usize>> {
        self.blocked.clear();
        Poll::Ready(r)
    }
}

/// Writes of at most this many bytes in several pieces are copied together first.
const GATHER_MAX: usize = 4096;

/// One vectored write. A small one in several pieces (hyper's head and a short body)
/// is copied into one buffer and sent with `send`: `writev` costs the kernel about a
/// quarter of a microsecond more per call on loopback, far more than the copy. Large
/// writes stay vectored, so a big body is not copied in user space.
fn write_gathered(socket: &TcpStream, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total > GATHER_MAX {
        return socket.try_write_vectored(bufs);
    }
    let mut pieces = bufs.iter().filter(|b| !b.is_empty());
    match (pieces.next(), pieces.next()) {
        (None, _) => return Ok(0),
        (Some(one), None) => return socket.try_write(one),
        _ => {}
    }
    // A heap buffer: zeroing a stack array of GATHER_MAX bytes costs more than the
    // allocation.
    let mut flat = Vec::with_capacity(total);
    for b in bufs {
        flat.extend_from_slice(b);
    }
    socket.try_write(&flat)
}

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
        let this = self.get_mut();
        match this.early.take() {
            None => {}
            Some(Err(e)) => return Poll::Ready(Err(e)),
            Some(Ok(mut early)) if !early.is_empty() => {
                let n = early.len().min(buf.remaining());
                buf.put_slice(&early.split_to(n));
                if !early.is_empty() {
                    this.early = Some(Ok(early));
                }
                return Poll::Ready(Ok(()));
            }
            // The end of the stream: the socket says it again.
            Some(Ok(_)) => {}
        }
        let want = buf.remaining();
        loop {
            ready!(this.socket.poll_read_ready(cx))?;
            let socket = &this.socket;
            match read_drained(socket, want, || plumb_sys::recv_into(&**socket, buf)) {
                Ok(_) => return Poll::Ready(Ok(())),
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
        let this = self.get_mut();
        loop {
            match this.socket.poll_write_ready(cx) {
                Poll::Pending => return this.stalled(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match this.socket.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return this.wrote(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.socket.poll_write_ready(cx) {
                Poll::Pending => return this.stalled(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match write_gathered(&this.socket, bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return this.wrote(r),
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
        let _ = plumb_sys::shutdown_write(&*self.socket);
        Poll::Ready(Ok(()))
    }
}

/// One read from `stream` by `read` (which returns the count), with room for `room`
/// bytes. A read shorter than that emptied the socket: tokio's readiness is cleared
/// then (as its own `TcpStream::poll_read` does), so that the next read waits for the
/// reactor instead of making a system call that can only say "would block". The
/// bytes read are returned all the same. `WouldBlock`: nothing was there.
pub(crate) fn read_drained(
    stream: &TcpStream,
    room: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut got = 0;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        got = read()?;
        if got > 0 && got < room {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
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
    /// `early`: what the first-byte wait read (bytes, or the error that came).
    pub(crate) fn new(
        stream: Arc<TcpStream>,
        early: Option<io::Result<bytes::Bytes>>,
        watch: Arc<HeadWatch>,
        ctx: Arc<crate::listener::ListenerCtx>,
        peer: std::net::SocketAddr,
    ) -> ClientIo {
        ClientIo {
            inner: Watched::new(SharedStream::new(stream).with_early(early), watch),
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
                let _ = plumb_sys::shutdown_write(&*self.inner.inner.socket);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::SharedStream;

    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (Arc::new(ours), theirs)
    }

    #[tokio::test]
    async fn early_bytes_come_first_in_pieces_then_the_socket() {
        let (ours, mut theirs) = pair().await;
        let mut s = SharedStream::new(ours).with_early(Some(Ok(bytes::Bytes::from_static(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest",
        ))));
        // hyper's version check asks for 24 bytes, then its parser for more.
        let mut first = [0u8; 24];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        theirs.write_all(b" and more").await.unwrap();
        let mut next = [0u8; 64];
        let n = s.read(&mut next).await.unwrap();
        assert_eq!(
            &next[..n],
            b"rest",
            "the early bytes end before the socket's"
        );
        let mut tail = [0u8; 9];
        s.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b" and more");
    }

    #[tokio::test]
    async fn an_early_error_is_returned_once_and_an_early_end_is_read_again() {
        let (ours, theirs) = pair().await;
        let mut s = SharedStream::new(Arc::clone(&ours))
            .with_early(Some(Err(std::io::ErrorKind::ConnectionReset.into())));
        let mut buf = [0u8; 8];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        drop(theirs);
        assert_eq!(
            s.read(&mut buf).await.unwrap(),
            0,
            "then the socket: its FIN"
        );

        let (ours, theirs) = pair().await;
        drop(theirs);
        let mut s = SharedStream::new(ours).with_early(Some(Ok(bytes::Bytes::new())));
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn vectored_writes_keep_their_bytes_in_order_small_or_large() {
        let (ours, mut theirs) = pair().await;
        let mut s = SharedStream::new(ours);
        let big = vec![b'b'; super::GATHER_MAX + 1];
        let cases: [&[&[u8]]; 5] = [
            &[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"body"],
            &[b"", b"one piece"],
            &[b"", b""],
            &[b"head:", &big],
            &[&big[..super::GATHER_MAX - 1], b"x"],
        ];
        for pieces in cases {
            let want: Vec<u8> = pieces.concat();
            let mut bufs: Vec<std::io::IoSlice<'_>> =
                pieces.iter().map(|p| std::io::IoSlice::new(p)).collect();
            let mut left: &mut [std::io::IoSlice<'_>] = &mut bufs;
            if want.is_empty() {
                assert_eq!(s.write_vectored(left).await.unwrap(), 0);
                continue;
            }
            let mut sent = 0;
            while sent < want.len() {
                let n = s.write_vectored(left).await.unwrap();
                assert!(n > 0, "a write that takes nothing");
                std::io::IoSlice::advance_slices(&mut left, n);
                sent += n;
            }
            let got = arrived(&mut theirs, want.len()).await;
            assert!(
                got == want,
                "bytes changed on the way ({} bytes)",
                want.len()
            );
        }
    }

    /// The next `n` bytes the peer gets, within 10 s: bytes that went missing fail
    /// the test rather than hang it.
    async fn arrived(theirs: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            theirs.read_exact(&mut got),
        )
        .await
        .expect("fewer bytes arrived than were written")
        .unwrap();
        got
    }

    /// Up to a full send buffer, each small gathered write says how many bytes it
    /// took, and exactly those bytes arrive: a count that ran ahead of a short send
    /// would shift everything after it.
    #[tokio::test]
    async fn a_short_gathered_write_counts_only_what_was_sent() {
        let (ours, mut theirs) = pair().await;
        let mut s = SharedStream::new(ours);
        let mut want = Vec::new();
        let mut short = 0;
        // Bounded: loopback send buffers hold a few MB at most.
        for i in 0..20_000u32 {
            let tag = u8::try_from(i % 251).unwrap();
            let head = [tag; 100];
            let body = vec![tag ^ 0x5a; 3000];
            let pieces = [std::io::IoSlice::new(&head), std::io::IoSlice::new(&body)];
            let wrote = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                s.write_vectored(&pieces),
            )
            .await;
            let Ok(n) = wrote else { break }; // The send buffer is full.
            let n = n.unwrap();
            short += usize::from(n < 3100);
            want.extend_from_slice(&[&head[..], &body[..]].concat()[..n]);
        }
        assert!(short > 0, "the buffer never filled into a short write");
        let got = arrived(&mut theirs, want.len()).await;
        assert!(
            got == want,
            "the bytes that arrived differ from those counted"
        );
    }
}
