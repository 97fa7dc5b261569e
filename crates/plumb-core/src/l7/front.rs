//! HTTP/1.1 from clients without hyper's server, for the requests most of a load
//! balancer's traffic is made of: a head with no body and no protocol switch.
//!
//! The connection's task reads and parses each request head itself, calls the same
//! handler hyper's server calls, and writes the response (head and body) into one
//! buffer per connection: no dispatcher, no service future boxed per request, and a
//! short response goes out in one `send`. Everything else is hyper's: the first
//! request that is not plain HTTP/1.1 without a body (HTTP/2's preface, HTTP/1.0, a
//! body, `Expect`, `Upgrade`, `CONNECT`, an absolute-form target) or that does not
//! parse, or a head larger than `max_header_bytes`, hands the connection over, with
//! the bytes read so far put back in front of the socket ([`Rewind`]). From then on
//! hyper serves it exactly as it serves every connection without this path: its
//! errors (400, 431) are plumb's, through `ClientIo`, as before.
//!
//! What a client sees matches hyper's server: the body framed by its length when
//! known and chunked otherwise, no trailers (the `Trailer` field that would
//! announce them is hop-by-hop, so hyper's server sent none either), no length on
//! a 1xx or 204, `connection: close` on the last response (the client's
//! `Connection: close`, plumb closing the connection), and a `date` field when the
//! response has none. Field names are plumb's own in lower case and a backend's as
//! it sent them. A client that closes (or resets) while its request is in flight,
//! or while a response waits for the backend's next bytes, ends the exchange as it
//! does under hyper (`client_closed_early`); one that closes behind a pipelined
//! request has that request answered first. A response body that fails mid-way
//! ends the connection without its last chunk, so that the client sees it cut.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::Empty;
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::io::H2_PREFACE;
use super::{headers, Answer, HttpConn};

/// The most header fields in a request head: hyper's server's limit (it answers 431
/// beyond it, as plumb does after the hand-over).
const MAX_FIELDS: usize = 100;
/// Room made for each read from the client.
const READ_CHUNK: usize = 8 * 1024;
/// Response bytes gathered before a write: a head and a short body go out in one
/// `send`; a larger body frame is written as it is, not copied.
const GATHER: usize = 16 * 1024;
/// The response buffer's first size.
const OUT_START: usize = 1024;

/// How plumb's own serving of a connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The connection is done (closed by either side, or failed).
    Closed,
    /// hyper serves the rest; these bytes were read and are to be read again.
    HandOff(Bytes),
}

/// One request head, parsed.
#[derive(Debug)]
struct Head {
    req: Request<Empty<Bytes>>,
    /// HEAD: the response has no body, whatever its fields say.
    head_method: bool,
    /// The client sent `Connection: close`.
    close: bool,
}

#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per head and taken apart at once; boxing would allocate per request"
)]
enum Parsed {
    Head(Head),
    /// Not all of the head is here yet.
    Partial,
    /// For hyper: not a request this path serves, or not one that parses.
    Hyper,
}

/// Serves `io` until it closes, or until a request that hyper is to serve.
pub(super) async fn serve<I>(conn: &Arc<HttpConn>, io: &mut I) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // As much as hyper would buffer for a head before its 431.
    let limit = conn.ctx.settings.max_header_bytes.max(8192);
    let mut buf = BytesMut::new();
    // Room for a usual head and a short body: no regrowth field by field.
    let mut out: Vec<u8> = Vec::with_capacity(OUT_START);
    let mut first = true;
    loop {
        let head = loop {
            if !buf.is_empty() {
                if first {
                    let n = buf.len().min(H2_PREFACE.len());
                    if buf[..n] == H2_PREFACE[..n] {
                        return Ended::HandOff(buf.freeze());
                    }
                }
                match parse(&mut buf) {
                    Parsed::Head(h) => break h,
                    Parsed::Hyper => return Ended::HandOff(buf.freeze()),
                    Parsed::Partial if buf.len() >= limit => return Ended::HandOff(buf.freeze()),
                    Parsed::Partial => {}
                }
            }
            // Nothing in flight: plumb closing the connection (its keep-alive idle
            // time, a drain) ends it here, a head begun or not, as hyper does.
            let read = poll_fn(|cx| {
                if conn.closing() {
                    return Poll::Ready(None);
                }
                read_more(io, cx, &mut buf).map(Some)
            })
            .await;
            match read {
                None => {
                    let _ = io.shutdown().await;
                    return Ended::Closed;
                }
                Some(Ok(0)) => return Ended::Closed,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading from the client failed");
                    return Ended::Closed;
                }
            }
        };
        first = false;
        let Head {
            req,
            head_method,
            close,
        } = head;

        // The exchange, while the client is watched: its close (or reset) abandons
        // the request, as hyper does. Only while nothing is buffered behind the
        // request: a client that pipelined and then closed gets its answers.
        let exchange = super::handle(Arc::clone(conn), req);
        tokio::pin!(exchange);
        let resp = poll_fn(|cx| {
            if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(match r {
                    Ok(r) => r,
                    Err(never) => match never {},
                }));
            }
            if client_gone(io, cx, &mut buf) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(resp) = resp else {
            return Ended::Closed;
        };
        let last = close || conn.closing();
        if let Err(e) = respond(io, &mut buf, &mut out, resp, head_method, last).await {
            tracing::debug!(error = %e, "the response to the client was cut");
            return Ended::Closed;
        }
        // An idle connection keeps no large write buffer.
        if out.capacity() > 4096 {
            out = Vec::with_capacity(OUT_START);
        }
        if last {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
        if !buf.is_empty() {
            // What the client sent behind this request starts the next head.
            conn.watch.head_pending();
        }
    }
}

/// Whether the client closed (or reset) its connection, looked at only while
/// nothing it sent is buffered: bytes that arrive are kept (the next head) and end
/// the watch.
fn client_gone<I: AsyncRead + Unpin>(io: &mut I, cx: &mut Context<'_>, buf: &mut BytesMut) -> bool {
    if !buf.is_empty() {
        return false;
    }
    matches!(read_more(io, cx, buf), Poll::Ready(Ok(0) | Err(_)))
}

/// One read into `buf`, with room made first.
fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Parses the head at the start of `buf`, and takes it out when it is one this path
/// serves.
fn parse(buf: &mut BytesMut) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut r = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (r.method, r.path, r.version) else {
        return Parsed::Hyper;
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    // One allocation for the target and all the values: the head is copied once
    // and each is a slice of the copy (the read buffer stays the connection's).
    let copy = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let part = |s: &[u8]| {
        let at = (s.as_ptr() as usize).wrapping_sub(base);
        if at < len && s.len() <= len - at {
            copy.slice(at..at + s.len())
        } else {
            Bytes::copy_from_slice(s)
        }
    };
    let Ok(uri) = Uri::from_maybe_shared(part(target.as_bytes())) else {
        return Parsed::Hyper;
    };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut close = false;
    for f in r.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            return Parsed::Hyper;
        };
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Parsed::Hyper;
        }
        if name == header::CONNECTION {
            close |= headers::list_items(f.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
        let Ok(value) = HeaderValue::from_maybe_shared(part(f.value)) else {
            return Parsed::Hyper;
        };
        headers.append(name, value);
    }
    buf.advance(len);
    let head_method = method == Method::HEAD;
    let mut req = Request::new(Empty::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Head(Head {
        req,
        head_method,
        close,
    })
}

/// Writes `resp` to the client: the head, then the body framed by its length (a
/// `content-length` the handler kept, or the body's exact size) or in chunks.
/// `head_method`: the request was HEAD (the head only). `last`: the connection
/// closes after it. `read`: the client's read buffer (its close is watched for
/// while the body waits for the backend).
async fn respond<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    out: &mut Vec<u8>,
    answer: Answer,
    head_method: bool,
    last: bool,
) -> io::Result<()> {
    let (parts, mut body) = answer.resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // The backend's own reason phrase, when it gave one that is not the usual.
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // RFC 9112 §6.3: no body, and no framing, for 1xx, 204 and 304; no length at
    // all on a 1xx or 204 (RFC 9110 §8.6).
    let no_framing = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    let mut has_date = false;
    let mut has_length = false;
    // plumb's fields (lower case), then the backend's as it sent them. One length
    // line: a repeated one is not passed on twice.
    let fields = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .chain(answer.raw.iter().flat_map(|r| r.iter()));
    for (name, value) in fields {
        match name.len() {
            4 => has_date |= name.eq_ignore_ascii_case(b"date"),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if has_length || no_length {
                    continue;
                }
                has_length = true;
            }
            _ => {}
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if !no_framing && !has_length {
        let exact = body.size_hint().exact();
        if head_method {
            // A HEAD response carries the length the body would have, when known.
            if let Some(n) = exact.filter(|_| !body.is_end_stream()) {
                push_length(out, n);
            }
        } else if body.is_end_stream() {
            push_length(out, 0);
        } else if let Some(n) = exact {
            push_length(out, n);
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            chunked = true;
        }
    }
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        date::push(out);
    }
    out.extend_from_slice(b"\r\n");
    if head_method || no_framing {
        io.write_all(out).await?;
        out.clear();
        return io.flush().await;
    }

    loop {
        // A frame ready now joins the head in `out`; before waiting for one, what
        // is gathered goes out, flushed (TLS), and the client is watched.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                poll_fn(|cx| {
                    if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    if client_gone(io, cx, read) {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionAborted)));
                    }
                    Poll::Pending
                })
                .await?
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(io::Error::other(e)),
        };
        // Trailers are not passed on (see above).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            push_hex(out, data.len());
        }
        if out.len() + data.len() <= GATHER {
            out.extend_from_slice(&data);
        } else {
            if !out.is_empty() {
                io.write_all(out).await?;
                out.clear();
            }
            io.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "content-length: {n}\r\n");
}

/// A chunk's size line.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    use std::io::Write as _;
    let _ = write!(out, "{n:x}\r\n");
}

/// The `date` field, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn push(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(c.1.as_bytes());
            out.extend_from_slice(b"\r\n");
        });
    }
}

/// A connection handed to hyper: the bytes plumb read are read again first.
#[derive(Debug)]
pub(super) struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(pre: Bytes, io: I) -> Rewind<I> {
        Rewind { pre, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
