//! HTTP/1.1 to a backend without hyper's client task, for the requests most of a load
//! balancer's traffic is made of: no body, no protocol switch.
//!
//! The request head is written from the parsed request into the connection's own
//! buffer, and the response is read, parsed and framed by the task that serves the
//! client: no channel, no second task and no wake-up between the two per request.
//! Requests with a body (which must stream while the response may already come) and
//! upgrades go through hyper's client (`client.rs`), which a connection from here can
//! be handed to at any time between two exchanges.
//!
//! Framing follows RFC 9112 §6: no body for HEAD, 1xx, 204 and 304; chunked when
//! Transfer-Encoding ends in `chunked` (and then Content-Length is dropped); else
//! Content-Length (every value must agree); else the body runs to the backend's close.
//! A connection goes back to the pool only when its response was framed (not
//! close-delimited), HTTP/1.1, without `Connection: close`, read to its end, and
//! nothing followed it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode, Version};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client::{before_response, BoxError, Sent, UpHead, UpResp};
use super::headers;
use super::io::read_drained;
use crate::cause::{Cause, Side};

/// How much is read from a backend at a time.
const READ_CHUNK: usize = 8 * 1024;
/// The most bytes read while waiting for a response head, interim (1xx) responses
/// included: hyper's client's default buffer limit (8 KiB + 100 x 4 KiB), which the
/// requests with a body still go through.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a response head or a trailer section.
const MAX_FIELDS: usize = 100;
/// The longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// An upstream connection driven by plumb itself: the socket, and one buffer that
/// holds the request head on the way out and the response on the way in.
#[derive(Debug)]
pub(crate) struct RawConn {
    pub(crate) stream: Arc<TcpStream>,
    buf: BytesMut,
    /// The worker whose I/O driver watches the socket (the one that connected it).
    pub(crate) worker: usize,
}

impl RawConn {
    pub(crate) fn new(stream: Arc<TcpStream>) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
            worker: crate::workers::current(),
        }
    }

    /// Whether an idle connection can carry a request: nothing (no FIN, no RST, no
    /// stray bytes) arrived while it waited. The reactor's readiness answers without
    /// a system call; only when it says "readable" is the socket asked.
    pub(crate) fn usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the backend closed or sent something unasked for (either way
            // the connection is done), or the last read filled the buffer exactly and
            // left the readiness set.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The socket and an empty buffer, for hyper's client (a request with a body or
    /// an upgrade).
    pub(crate) fn into_stream(self) -> Option<Arc<TcpStream>> {
        self.buf.is_empty().then_some(self.stream)
    }
}

/// Reads what the socket has into `buf` (see [`read_drained`]).
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    let room = buf.capacity() - buf.len();
    read_drained(stream, room, || stream.try_read_buf(buf))
}

/// Writes `head` (origin-form target, HTTP/1.1, its fields as plumb rewrites them)
/// into `buf`.
pub(crate) fn encode_head(buf: &mut BytesMut, head: UpHead<'_>) {
    buf.clear();
    let method = head.method.as_str();
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    buf.reserve(method.len() + target.len() + head.fields.len_bound() + 16);
    buf.extend_from_slice(method.as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.fields.iter() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Sends the bodyless request `head` on `conn` and reads the response head, waiting for
/// it at most `response_header` from `sent_at`. A write the backend does not take for
/// `stall` fails as its idle timeout.
pub(crate) async fn send(
    conn: &mut RawConn,
    head: UpHead<'_>,
    sent_at: Instant,
    response_header: Duration,
    stall: Duration,
) -> Sent {
    encode_head(&mut conn.buf, head);
    let head_request = head.method == Method::HEAD;
    // The response-head timer runs from when the request counts as sent (no body:
    // from the start), through the write too.
    let deadline = tokio::time::sleep_until(sent_at + response_header);
    tokio::pin!(deadline);
    let timed_out = || {
        Sent::Failed(
            Cause::UpstreamResponseTimeout,
            format!("no response head within {}ms", response_header.as_millis()),
        )
    };
    let mut off = 0;
    while off < conn.buf.len() {
        match conn.stream.try_write(&conn.buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Each wake is progress: the backend acknowledged bytes and freed
                // room. No room for `stall` is a backend that stopped reading.
                tokio::select! {
                    r = tokio::time::timeout(stall, conn.stream.writable()) => {
                        if r.is_err() {
                            return Sent::Failed(
                                Cause::UpstreamIdleTimeout,
                                format!("the backend took no request bytes for {}ms", stall.as_millis()),
                            );
                        }
                    }
                    () = &mut deadline => return timed_out(),
                }
            }
            Err(e) => {
                let cause = before_response(&e);
                let text = format!("writing the request: {e}");
                if off == 0 {
                    // Nothing of the request left: it can go elsewhere as it is.
                    conn.buf.clear();
                    return Sent::Returned(None, cause, text);
                }
                // A backend may answer a head it refuses (431, 400) and close before
                // reading the rest: that answer is the one to pass on.
                conn.buf.clear();
                return match read_now(conn, head_request) {
                    Some(answer) => answer,
                    None => Sent::Failed(cause, text),
                };
            }
        }
    }
    conn.buf.clear();

    // Bytes taken while waiting for the final head (interim 1xx responses included):
    // a backend that keeps sending without ever completing one is cut off.
    let mut seen = 0usize;
    loop {
        if deadline.is_elapsed() {
            return timed_out();
        }
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_request) {
                Ok(Some(head)) => return answer(conn, head),
                Ok(None) => {}
                Err(why) => return Sent::Failed(Cause::UpstreamBadResponse, why),
            }
        }
        if seen > MAX_HEAD {
            return Sent::Failed(
                Cause::UpstreamBadResponse,
                format!("no complete response head in the first {MAX_HEAD} bytes"),
            );
        }
        match read_some(&conn.stream, &mut conn.buf) {
            Ok(0) => {
                return Sent::Failed(
                    Cause::UpstreamClosedEarly,
                    if conn.buf.is_empty() {
                        "the backend closed the connection without a response".to_string()
                    } else {
                        "the backend closed the connection inside the response head".to_string()
                    },
                )
            }
            Ok(n) => {
                seen += n;
                // A backend that always has bytes would never let the task yield.
                tokio::task::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    r = conn.stream.readable() => {
                        if let Err(e) = r {
                            return Sent::Failed(before_response(&e), e.to_string());
                        }
                    }
                    () = &mut deadline => return timed_out(),
                }
            }
            Err(e) => return Sent::Failed(before_response(&e), e.to_string()),
        }
    }
}

/// The response head parsed: the body reads on from the connection's buffer.
fn answer(conn: &mut RawConn, (parts, framing, reusable, fields): Head) -> Sent {
    let body = RawBody {
        stream: Arc::clone(&conn.stream),
        buf: std::mem::take(&mut conn.buf),
        worker: conn.worker,
        framing,
        reusable,
        home: None,
        fields: Some(fields),
    };
    Sent::Answered(Response::from_parts(parts, UpResp::Raw(body)))
}

/// A complete response head already received, without waiting for more; the
/// connection is not used again.
fn read_now(conn: &mut RawConn, head_request: bool) -> Option<Sent> {
    loop {
        match read_some(&conn.stream, &mut conn.buf) {
            Ok(n) if n > 0 && conn.buf.len() <= MAX_HEAD => {}
            _ => break,
        }
    }
    match parse_head(&mut conn.buf, head_request) {
        Ok(Some((parts, framing, _, fields))) => {
            Some(answer(conn, (parts, framing, false, fields)))
        }
        _ => None,
    }
}

type Head = (hyper::http::response::Parts, Framing, bool, RawFields);

/// A response head's fields as the backend sent them, less the hop-by-hop ones: one
/// copy of the head, and where each field's name and value lie in it. An HTTP/1.1
/// client gets them written out as they came (`front`); only hyper's server (HTTP/2
/// clients, connections handed to it) has them made into a `HeaderMap`, which costs
/// a name lookup, a hash and a checked value per field.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawFields {
    head: Bytes,
    lines: Vec<Line>,
}

/// Where one field's name and value lie in the head.
#[derive(Debug, Clone, Copy)]
struct Line {
    name: (u32, u32),
    value: (u32, u32),
}

impl RawFields {
    /// Each field's name and value, in the order the backend sent them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.lines
            .iter()
            .map(|l| (self.bytes(l.name), self.bytes(l.value)))
    }

    fn bytes(&self, (from, to): (u32, u32)) -> &[u8] {
        &self.head[from as usize..to as usize]
    }

    /// Leaves out every field named `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        let head = &self.head;
        self.lines.retain(|l| {
            !head[l.name.0 as usize..l.name.1 as usize].eq_ignore_ascii_case(name.as_bytes())
        });
    }

    /// Adds the fields to `map` (for hyper's server). The head parsed, so every
    /// name and value is valid; one that were not would be left out.
    pub(crate) fn append_to(&self, map: &mut HeaderMap) {
        map.reserve(self.lines.len());
        for l in &self.lines {
            let name = HeaderName::from_bytes(self.bytes(l.name));
            let value = HeaderValue::from_maybe_shared(
                self.head.slice(l.value.0 as usize..l.value.1 as usize),
            );
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }
}

/// Which of the fields that decide framing and reuse a head has.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    /// `Transfer-Encoding`, and whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    content_length: bool,
    /// `Connection` lists `close`.
    close: bool,
}

/// The Content-Length values of a head: the one length, or why there is none.
#[derive(Debug, Default, Clone, Copy)]
struct Lengths {
    length: Option<u64>,
    bad: Option<&'static str>,
}

impl Lengths {
    fn add(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            let why = match n {
                None => Some("the response Content-Length is not a number"),
                Some(n) if self.length.is_some_and(|l| l != n) => {
                    Some("the response has Content-Length values that disagree")
                }
                Some(n) => {
                    self.length = Some(n);
                    None
                }
            };
            if self.bad.is_none() {
                self.bad = why;
            }
        }
    }
}

/// Parses a response head at the start of `buf` and takes it off. Interim responses
/// (1xx other than 101) are skipped. `Ok(None)`: more bytes are needed.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, String> {
    let config = httparse::ParserConfig::default();
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut r = httparse::Response::new(&mut []);
        let len = match config.parse_response_with_uninit_headers(&mut r, buf, &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("the response head does not parse: {e}")),
        };
        let code = r.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| format!("the response status {code} is not valid"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("101 Switching Protocols to a request that asked for no upgrade".into());
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // One allocation for all the fields: the head is copied once and each field
        // is where it lies in the copy.
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| -> Result<(u32, u32), String> {
            let at = (s.as_ptr() as usize).wrapping_sub(base);
            if at < len && s.len() <= len - at {
                Ok((at as u32, (at + s.len()) as u32))
            } else {
                Err("the response head does not parse".to_string())
            }
        };
        let mut present = Present::default();
        let mut lengths = Lengths::default();
        let mut lines = Vec::with_capacity(r.headers.len());
        // Fields a `Connection` line names: hop-by-hop too (RFC 9110 §7.6.1).
        let mut named: Vec<&[u8]> = Vec::new();
        for f in r.headers.iter() {
            let name = f.name.as_bytes();
            match headers::hop_position(name) {
                Some(headers::CONNECTION_HOP) => {
                    for t in headers::list_items(f.value) {
                        present.close |= t.eq_ignore_ascii_case(b"close");
                        if !headers::names_no_field(t) {
                            named.push(t);
                        }
                    }
                }
                // The last coding decides.
                Some(headers::TRANSFER_ENCODING_HOP) => {
                    let last = headers::list_items(f.value).rfind(|t| !t.is_empty());
                    present.transfer_encoding = match last {
                        Some(t) => Some(t.eq_ignore_ascii_case(b"chunked")),
                        None => present.transfer_encoding.or(Some(false)),
                    };
                }
                Some(_) => {}
                None => {
                    if name.eq_ignore_ascii_case(b"content-length") {
                        present.content_length = true;
                        lengths.add(f.value);
                    }
                    lines.push(Line {
                        name: span(name)?,
                        value: span(f.value)?,
                    });
                }
            }
        }
        let reason = r.reason.filter(|r| Some(*r) != status.canonical_reason());
        let reason = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        let head = Bytes::copy_from_slice(&buf[..len]);
        let mut raw = RawFields { head, lines };
        for n in &named {
            if let Ok(n) = std::str::from_utf8(n) {
                raw.remove(n);
            }
        }
        buf.advance(len);

        let framing = framing(&mut raw, present, lengths, status, head_request)?;
        // Transfer-Encoding with Content-Length is how responses are smuggled (RFC
        // 9112 §6.3): read by the coding, and the connection is not used again.
        let smuggling = present.transfer_encoding.is_some() && present.content_length;
        let reusable = version == Version::HTTP_11
            && !matches!(framing, Framing::UntilClose)
            && !smuggling
            && !present.close;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        if let Some(reason) = reason {
            resp.extensions_mut().insert(reason);
        }
        let (parts, ()) = resp.into_parts();
        return Ok(Some((parts, framing, reusable, raw)));
    }
}

/// How the response body ends (RFC 9112 §6.3).
fn framing(
    raw: &mut RawFields,
    present: Present,
    lengths: Lengths,
    status: StatusCode,
    head: bool,
) -> Result<Framing, String> {
    if head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if let Some(chunked) = present.transfer_encoding {
        // The coding decides; a Content-Length beside it is wrong and is not passed on.
        if present.content_length {
            raw.remove("content-length");
        }
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    if !present.content_length {
        return Ok(Framing::UntilClose);
    }
    if let Some(why) = lengths.bad {
        return Err(why.to_string());
    }
    Ok(match lengths.length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many body bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    UntilClose,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of the chunk's data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Why a response body read from a backend failed.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub(crate) struct BodyError {
    pub(crate) cause: Cause,
    text: String,
}

fn body_error(cause: Cause, text: impl Into<String>) -> BoxError {
    Box::new(BodyError {
        cause,
        text: text.into(),
    })
}

/// Where a connection goes once its response has ended cleanly (its pool).
pub(crate) type Home = Box<dyn FnOnce(RawConn) + Send>;

/// A response body read straight from the backend's socket.
pub(crate) struct RawBody {
    stream: Arc<TcpStream>,
    buf: BytesMut,
    /// The connection's [`RawConn::worker`].
    worker: usize,
    framing: Framing,
    reusable: bool,
    home: Option<Home>,
    /// The response head's fields, until `respond` takes them.
    fields: Option<RawFields>,
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("framing", &self.framing)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

impl RawBody {
    /// The response head's fields (once).
    pub(crate) fn take_fields(&mut self) -> Option<RawFields> {
        self.fields.take()
    }

    /// Sets where the connection goes when the body ends; at once if it already has.
    pub(crate) fn home(&mut self, home: Home) {
        self.home = Some(home);
        if self.framing == Framing::Done {
            self.done();
        }
    }

    /// The body ended where its framing said: the connection goes home if it may be
    /// used again and nothing followed the response.
    fn done(&mut self) {
        self.framing = Framing::Done;
        if self.reusable && self.buf.is_empty() {
            if let Some(home) = self.home.take() {
                home(RawConn {
                    stream: Arc::clone(&self.stream),
                    buf: std::mem::take(&mut self.buf),
                    worker: self.worker,
                });
            }
        }
    }

    /// Reads more from the backend. `Ready(Ok(0))` is its close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, BoxError>> {
        loop {
            match read_some(&self.stream, &mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(self.stream.poll_read_ready(cx)) {
                        return Poll::Ready(Err(io_error(&e)));
                    }
                }
                Err(e) => return Poll::Ready(Err(io_error(&e))),
            }
        }
    }

    /// Up to `max` bytes of what is buffered, as a data frame.
    fn take_data(&mut self, max: u64) -> Bytes {
        let n = usize::try_from(max).map_or(self.buf.len(), |m| m.min(self.buf.len()));
        self.buf.split_to(n).freeze()
    }

    /// One step of chunked decoding on what is buffered: `None` when more bytes are
    /// needed.
    fn chunked_step(&mut self, state: Chunk) -> Option<Result<Option<Frame<Bytes>>, BoxError>> {
        let bad = |why: &str| Some(Err(body_error(Cause::UpstreamBadResponse, why)));
        match state {
            Chunk::Size => {
                let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return bad("a chunk-size line is too long");
                    }
                    return None;
                };
                let Some(size) = chunk_size(&self.buf[..nl]) else {
                    return bad("a chunk-size line is not hex digits, optional extensions, CRLF");
                };
                self.buf.advance(nl + 1);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Some(Ok(None))
            }
            Chunk::Data(left) => {
                if self.buf.is_empty() {
                    return None;
                }
                let data = self.take_data(left);
                let left = left - data.len() as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Some(Ok(Some(Frame::data(data))))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return None;
                }
                if &self.buf[..2] != b"\r\n" {
                    return bad("a chunk's data is not followed by CRLF");
                }
                self.buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                Some(Ok(None))
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                match httparse::parse_headers(&self.buf, &mut fields) {
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_HEAD {
                            return bad("the trailer section is too large");
                        }
                        None
                    }
                    Err(e) => Some(Err(body_error(
                        Cause::UpstreamBadResponse,
                        format!("the trailer section does not parse: {e}"),
                    ))),
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(n, v);
                            }
                        }
                        self.buf.advance(len);
                        self.done();
                        Some(Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers))))
                    }
                }
            }
        }
    }
}

/// The size on a chunk-size line (without its LF): hex digits, then optional spaces
/// or tabs, then optional `;` extensions, then CR. Strict, so that plumb reads a
/// chunked body exactly as a careful backend or client would (no `+`, no bare CR).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if digits == 0 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return None;
    }
    let significant = &line[line[..digits].iter().take_while(|&&b| b == b'0').count()..digits];
    if significant.len() > 15 {
        return None;
    }
    significant.iter().try_fold(0u64, |n, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

/// An I/O error inside a response body.
fn io_error(e: &io::Error) -> BoxError {
    body_error(Cause::of_io_error(e, Side::Upstream), e.to_string())
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !this.buf.is_empty() {
                        let data = this.take_data(left);
                        let left = left - data.len() as u64;
                        if left == 0 {
                            this.done();
                        } else {
                            this.framing = Framing::Length(left);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(body_error(
                            Cause::UpstreamClosedEarly,
                            format!("the backend closed the connection with {left} body bytes still to come"),
                        ))));
                    }
                }
                Framing::UntilClose => {
                    if !this.buf.is_empty() {
                        let data = this.take_data(u64::MAX);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.done();
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(state) => match this.chunked_step(state) {
                    Some(Ok(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                    Some(Ok(None)) => {}
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => {
                        if ready!(this.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(body_error(
                                Cause::UpstreamClosedEarly,
                                "the backend closed the connection inside a chunked body",
                            ))));
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
