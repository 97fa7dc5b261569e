//! One probe of one address: connect, read the kernel's view of the handshake, send
//! a request (HTTP), and time each phase against the budget.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{Options, Scheme, Target};

/// The verdict on one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Within the warn threshold, no SYN retransmitted.
    Ok,
    /// Succeeded, but slower than `--warn` or with SYN retransmissions.
    Warn,
    /// Failed; `cause` says how.
    Fail,
}

impl Status {
    /// The lowercase name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// What TCP_INFO said.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TcpFacts {
    /// Smoothed round-trip time, ms.
    pub rtt_ms: f64,
    /// Retransmissions after the handshake.
    pub retransmits: u32,
    /// Path MTU the kernel uses.
    pub pmtu: u32,
    /// Send MSS.
    pub snd_mss: u32,
}

/// One probe of one address (DESIGN.md §7).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// The target URL.
    pub url: String,
    /// Its host.
    pub host: String,
    /// The address probed.
    pub address: SocketAddr,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// The verdict.
    pub status: Status,
    /// Why it failed: `dns_error`, `connect_timeout`, `connect_refused`,
    /// `unreachable`, `connect_error`, `response_timeout`, `reset`, `closed`,
    /// `bad_response`, `http_status`.
    pub cause: Option<&'static str>,
    /// The error or the reason for a warning, in words.
    pub detail: Option<String>,
    /// The response status (HTTP).
    pub http_status: Option<u16>,
    /// Phase times in milliseconds.
    pub dns: f64,
    /// Connect (the handshake).
    pub connect: Option<f64>,
    /// TLS handshake (https).
    pub tls: Option<f64>,
    /// Request sent to response head.
    pub ttfb: Option<f64>,
    /// Start of connect to the end of the response.
    pub total: f64,
    /// SYNs retransmitted before the handshake completed (TCP_INFO right after
    /// connect; while connecting, for a connect that never completed).
    pub syn_retransmits: Option<u32>,
    /// TCP_INFO at the end.
    pub tcp_info: Option<TcpFacts>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Probes one address of `target`. `dns` is the time its resolution took.
pub async fn probe_address(
    target: &Target,
    addr: SocketAddr,
    dns: Duration,
    opts: &Options,
) -> ProbeResult {
    let mut r = ProbeResult {
        url: target.url.clone(),
        host: target.host.clone(),
        address: addr,
        family: if addr.is_ipv4() { "ipv4" } else { "ipv6" },
        status: Status::Ok,
        cause: None,
        detail: None,
        http_status: None,
        dns: ms(dns),
        connect: None,
        tls: None,
        ttfb: None,
        total: 0.0,
        syn_retransmits: None,
        tcp_info: None,
    };
    let t0 = Instant::now();
    let deadline = t0 + opts.timeout;
    let stream = match connect(addr, deadline, &mut r).await {
        Some(s) => s,
        None => {
            r.total = ms(t0.elapsed());
            r.status = Status::Fail;
            return r;
        }
    };
    r.connect = Some(ms(t0.elapsed()));
    match target.scheme {
        Scheme::Tcp => {}
        Scheme::Http => http(Shared(&stream), target, opts, deadline, t0, &mut r).await,
        Scheme::Https => {
            if let Some(tls) = handshake(&stream, target, opts, deadline, t0, &mut r).await {
                http(tls, target, opts, deadline, t0, &mut r).await;
            }
        }
    }
    if let Ok(i) = plumb_sys::tcp_info(&stream) {
        r.tcp_info = Some(TcpFacts {
            rtt_ms: f64::from(i.rtt) / 1000.0,
            retransmits: i
                .total_retrans
                .saturating_sub(r.syn_retransmits.unwrap_or(0)),
            pmtu: i.pmtu,
            snd_mss: i.snd_mss,
        });
    }
    r.total = ms(t0.elapsed());
    if r.cause.is_some() {
        r.status = Status::Fail;
    } else if r.syn_retransmits.unwrap_or(0) > 0 {
        r.status = Status::Warn;
        r.detail = Some(format!(
            "the handshake needed {} SYN retransmission(s): SYNs were dropped (a full listen queue, a firewall, a connection-tracking limit)",
            r.syn_retransmits.unwrap_or(0)
        ));
    } else if t0.elapsed() > opts.warn {
        r.status = Status::Warn;
        r.detail = Some(format!("slower than --warn {}ms", opts.warn.as_millis()));
    }
    r
}

/// Connects within the budget; on failure fills `cause` and returns `None`.
async fn connect(addr: SocketAddr, deadline: Instant, r: &mut ProbeResult) -> Option<TcpStream> {
    let socket = match socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .and_then(|s| s.set_nonblocking(true).map(|()| s))
    // As curl and Go do: without it Nagle holds the TLS Finished and the request
    // behind the server's delayed ACK of the ChangeCipherSpec record, and ~40 ms
    // of that wait would be reported as the server's ttfb.
    .and_then(|s| s.set_tcp_nodelay(true).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            r.cause = Some("connect_error");
            r.detail = Some(e.to_string());
            return None;
        }
    };
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => {
            set_connect_error(r, &e);
            return None;
        }
    }
    let stream = match TcpStream::from_std(socket.into()) {
        Ok(s) => s,
        Err(e) => {
            r.cause = Some("connect_error");
            r.detail = Some(e.to_string());
            return None;
        }
    };
    let ready = tokio::time::timeout_at(deadline, stream.writable()).await;
    // Read how many SYNs went out before the handshake (or the give-up).
    let info = plumb_sys::tcp_info(&stream).ok();
    match ready {
        Err(_) => {
            r.syn_retransmits = info.map(|i| u32::from(i.retransmits));
            r.cause = Some("connect_timeout");
            r.detail = Some(format!(
                "no handshake in time ({} SYN retransmission(s) went unanswered)",
                r.syn_retransmits.unwrap_or(0)
            ));
            None
        }
        Ok(Err(e)) => {
            set_connect_error(r, &e);
            None
        }
        Ok(Ok(())) => match plumb_sys::take_error(&stream) {
            Ok(Some(e)) => {
                r.syn_retransmits = info.map(|i| i.total_retrans);
                set_connect_error(r, &e);
                None
            }
            _ => {
                r.syn_retransmits = info.map(|i| i.total_retrans);
                Some(stream)
            }
        },
    }
}

fn set_connect_error(r: &mut ProbeResult, e: &io::Error) {
    r.cause = Some(match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect_refused",
        io::ErrorKind::TimedOut => "connect_timeout",
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
        _ => "connect_error",
    });
    r.detail = Some(e.to_string());
}

/// The TLS handshake, timed; `None` (with the cause set) when it fails.
async fn handshake<'a>(
    stream: &'a TcpStream,
    target: &Target,
    opts: &Options,
    deadline: Instant,
    t0: Instant,
    r: &mut ProbeResult,
) -> Option<tokio_rustls::client::TlsStream<Shared<'a>>> {
    let Some(config) = opts.tls.clone() else {
        r.cause = Some("tls_error");
        r.detail = Some("no TLS settings for an https target".to_string());
        return None;
    };
    let name = match rustls::pki_types::ServerName::try_from(target.host.clone()) {
        Ok(n) => n,
        Err(e) => {
            r.cause = Some("tls_error");
            r.detail = Some(format!(
                "{:?} cannot be a TLS server name: {e}",
                target.host
            ));
            return None;
        }
    };
    let started = Instant::now();
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout_at(deadline, connector.connect(name, Shared(stream))).await {
        Ok(Ok(tls)) => {
            r.tls = Some(ms(started.elapsed()));
            Some(tls)
        }
        Ok(Err(e)) => {
            r.cause = Some("tls_error");
            r.detail = Some(e.to_string());
            None
        }
        Err(_) => {
            r.cause = Some("tls_error");
            r.detail = Some(format!(
                "no TLS handshake within the {}ms budget",
                deadline.duration_since(t0).as_millis()
            ));
            None
        }
    }
}

async fn http<IO>(
    io: IO,
    target: &Target,
    opts: &Options,
    deadline: Instant,
    t0: Instant,
    r: &mut ProbeResult,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io = TokioIo::new(io);
    let handshake = tokio::time::timeout_at(deadline, http1::handshake::<_, Full<Bytes>>(io)).await;
    let (mut tx, conn) = match handshake {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            r.cause = Some("connect_error");
            r.detail = Some(e.to_string());
            return;
        }
        Err(_) => {
            r.cause = Some("response_timeout");
            return;
        }
    };
    let mut builder = Request::builder()
        .method(opts.method.as_str())
        .uri(target.path.as_str())
        .header(hyper::header::HOST, target.host_header())
        .header(
            hyper::header::USER_AGENT,
            concat!("plumb-probe/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &opts.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = Full::new(Bytes::from(opts.data.clone().unwrap_or_default()));
    let req = match builder.body(body) {
        Ok(req) => req,
        Err(e) => {
            r.cause = Some("connect_error");
            r.detail = Some(format!("cannot build the request: {e}"));
            return;
        }
    };
    let sent_at = Instant::now();
    let exchange = async {
        let resp = tx.send_request(req).await?;
        let ttfb = sent_at.elapsed();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await;
        Ok::<_, hyper::Error>((ttfb, status, body.map(|_| ())))
    };
    // The connection must be driven while the exchange runs; if it ends first (the
    // server closed after answering), the exchange may still have its answer.
    let exchange = tokio::time::timeout_at(deadline, exchange);
    tokio::pin!(exchange, conn);
    let result = tokio::select! {
        res = &mut exchange => res,
        _ = &mut conn => exchange.await,
    };
    match result {
        Err(_) => {
            r.cause = Some("response_timeout");
            r.detail = Some(format!(
                "no complete response within the {}ms budget",
                deadline.duration_since(t0).as_millis()
            ));
        }
        Ok(Err(e)) => {
            r.cause = Some(if is_reset(&e) {
                "reset"
            } else if e.is_incomplete_message() {
                "closed"
            } else if e.is_parse() {
                "bad_response"
            } else {
                "reset"
            });
            r.detail = Some(e.to_string());
        }
        Ok(Ok((ttfb, status, body))) => {
            r.ttfb = Some(ms(ttfb));
            r.http_status = Some(status);
            if let Err(e) = body {
                r.cause = Some(if is_reset(&e) { "reset" } else { "closed" });
                r.detail = Some(format!("the body ended early: {e}"));
            } else if !(opts.expect_status.0..=opts.expect_status.1).contains(&status) {
                r.cause = Some("http_status");
                r.detail = Some(format!(
                    "status {status}, expected {}-{}",
                    opts.expect_status.0, opts.expect_status.1
                ));
            }
        }
    }
}

fn is_reset(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            );
        }
        cur = err.source();
    }
    false
}

/// `&TcpStream` as hyper I/O, so the probe keeps the socket for TCP_INFO.
struct Shared<'a>(&'a TcpStream);

impl tokio::io::AsyncRead for Shared<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for Shared<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Ok(n) => return std::task::Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let _ = plumb_sys::shutdown_write(self.0);
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_sockets_do_not_wait_for_nagle() {
        // Nagle on the probe socket added ~40 ms to every https ttfb (the TLS
        // Finished and the request waited for a delayed ACK): the option must be on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut r = ProbeResult {
            url: format!("tcp://{addr}"),
            host: "127.0.0.1".into(),
            address: addr,
            family: "ipv4",
            status: Status::Ok,
            cause: None,
            detail: None,
            http_status: None,
            dns: 0.0,
            connect: None,
            tls: None,
            ttfb: None,
            total: 0.0,
            syn_retransmits: None,
            tcp_info: None,
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let stream = connect(addr, deadline, &mut r).await.unwrap();
        assert!(stream.nodelay().unwrap(), "{r:?}");
    }
}
