//! The PROXY protocol: plumb tells backends who the client is (`send_proxy`), and
//! believes a trusted front that tells it (`accept_proxy`). Headers sent to backends
//! are decoded here by hand, independently of plumb's parser.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use plumb_config::ProxyVersion;
use plumb_core::proxy_protocol::build_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{config, read_to_end, Plumb};

const STEP: Duration = Duration::from_secs(5);
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A header as decoded by the test.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    source: SocketAddr,
    destination: SocketAddr,
}

/// Reads a v1 header (up to CRLF, byte by byte) and decodes it.
async fn read_v1(s: &mut TcpStream) -> Seen {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        assert!(line.len() < 108, "v1 header too long: {line:?}");
        let mut b = [0u8; 1];
        tokio::time::timeout(STEP, s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        line.push(b[0]);
    }
    let text = std::str::from_utf8(&line).unwrap();
    let parts: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
    assert_eq!(parts.len(), 6, "v1 header {text:?}");
    assert_eq!(parts[0], "PROXY", "v1 header {text:?}");
    let src_ip: IpAddr = parts[2].parse().unwrap();
    let dst_ip: IpAddr = parts[3].parse().unwrap();
    let family = if src_ip.is_ipv4() { "TCP4" } else { "TCP6" };
    assert_eq!(parts[1], family, "v1 header {text:?}");
    Seen {
        source: SocketAddr::new(src_ip, parts[4].parse().unwrap()),
        destination: SocketAddr::new(dst_ip, parts[5].parse().unwrap()),
    }
}

/// Reads a v2 header (signature, version/command, family, length, addresses, TLVs)
/// and decodes it.
async fn read_v2(s: &mut TcpStream) -> Seen {
    let mut fixed = [0u8; 16];
    tokio::time::timeout(STEP, s.read_exact(&mut fixed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fixed[..12], V2_SIGNATURE, "v2 signature: {fixed:?}");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; len];
    tokio::time::timeout(STEP, s.read_exact(&mut rest))
        .await
        .unwrap()
        .unwrap();
    match fixed[13] {
        0x11 => {
            assert!(len >= 12);
            let ip = |i: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    rest[i],
                    rest[i + 1],
                    rest[i + 2],
                    rest[i + 3],
                ))
            };
            let port = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
            Seen {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            assert!(len >= 36);
            let ip = |i: usize| {
                let b: [u8; 16] = rest[i..i + 16].try_into().unwrap();
                IpAddr::from(b)
            };
            let port = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
            Seen {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        other => panic!("v2 family/protocol byte {other:#x}, expected TCP over IPv4 or IPv6"),
    }
}

async fn read_header(s: &mut TcpStream, v: ProxyVersion) -> Seen {
    match v {
        ProxyVersion::V1 => read_v1(s).await,
        ProxyVersion::V2 => read_v2(s).await,
    }
}

fn name(v: ProxyVersion) -> &'static str {
    match v {
        ProxyVersion::V1 => "v1",
        ProxyVersion::V2 => "v2",
    }
}

/// Reads exactly `want.len()` bytes and checks them, then checks nothing else is
/// pending (the backend got no stray header bytes).
async fn expect_exactly(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, want);
}

async fn accept(l: &TcpListener) -> TcpStream {
    tokio::time::timeout(STEP, l.accept())
        .await
        .expect("plumb never connected to the backend")
        .unwrap()
        .0
}

#[tokio::test]
async fn send_proxy_tells_the_backend_the_client_and_the_listener() {
    for v in [ProxyVersion::V1, ProxyVersion::V2] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            &format!("send_proxy = \"{}\"", name(v)),
            "",
        );
        let plumb = Plumb::start(&toml).await;
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        client.write_all(b"payload after header").await.unwrap();
        let mut b = accept(&backend).await;
        let seen = read_header(&mut b, v).await;
        assert_eq!(
            seen,
            Seen {
                source: client.local_addr().unwrap(),
                destination: plumb.addr(),
            },
            "{v:?}"
        );
        expect_exactly(&mut b, b"payload after header").await;
        // And the other way, untouched.
        b.write_all(b"reply").await.unwrap();
        drop(b);
        let (got, err) = read_to_end(&mut client).await;
        assert!(err.is_none(), "{v:?}: {err:?}");
        assert_eq!(got, b"reply", "{v:?}");
        drop(client);
        let log = plumb.wait_log(1).await;
        // The header plumb wrote is not counted as client bytes.
        assert_eq!(log[0]["bytes_from_client"], 20, "{v:?}: {log:?}");
        assert_eq!(log[0]["bytes_to_client"], 5, "{v:?}: {log:?}");
        assert_eq!(log[0]["cause"], serde_json::Value::Null, "{v:?}: {log:?}");
    }
}

/// The header a trusted front sends for client 192.0.2.10:4242.
fn front_header(v: ProxyVersion, plumb: SocketAddr) -> Vec<u8> {
    let src: SocketAddr = "192.0.2.10:4242".parse().unwrap();
    match v {
        // Written out by hand: what a real front (HAProxy, an NLB) sends.
        ProxyVersion::V1 => format!(
            "PROXY TCP4 192.0.2.10 {} 4242 {}\r\n",
            plumb.ip(),
            plumb.port()
        )
        .into_bytes(),
        ProxyVersion::V2 => build_header(ProxyVersion::V2, src, plumb),
    }
}

#[tokio::test]
async fn accept_proxy_then_send_proxy_passes_the_real_client_on() {
    for (recv, send) in [
        (ProxyVersion::V1, ProxyVersion::V1),
        (ProxyVersion::V2, ProxyVersion::V2),
        (ProxyVersion::V1, ProxyVersion::V2),
        (ProxyVersion::V2, ProxyVersion::V1),
    ] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            &format!("send_proxy = \"{}\"", name(send)),
            "accept_proxy = true",
        );
        let plumb = Plumb::start(&toml).await;
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        let mut bytes = front_header(recv, plumb.addr());
        bytes.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        client.write_all(&bytes).await.unwrap();

        let mut b = accept(&backend).await;
        let seen = read_header(&mut b, send).await;
        assert_eq!(
            seen,
            Seen {
                source: "192.0.2.10:4242".parse().unwrap(),
                destination: plumb.addr(),
            },
            "in {recv:?}, out {send:?}"
        );
        expect_exactly(&mut b, b"GET / HTTP/1.0\r\n\r\n").await;
        b.write_all(b"HTTP/1.0 204 No Content\r\n\r\n")
            .await
            .unwrap();
        drop(b);
        let (got, err) = read_to_end(&mut client).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, b"HTTP/1.0 204 No Content\r\n\r\n");
        drop(client);

        let log = plumb.wait_log(1).await;
        assert_eq!(log[0]["client"], "192.0.2.10:4242", "{log:?}");
        // The front's header is not client payload.
        assert_eq!(log[0]["bytes_from_client"], 18, "{log:?}");
        assert_eq!(log[0]["bytes_to_client"], 27, "{log:?}");
        assert_eq!(log[0]["cause"], serde_json::Value::Null, "{log:?}");
    }
}

/// The destination a front reports is passed on as is, not replaced by plumb's own.
#[tokio::test]
async fn accept_proxy_keeps_the_fronts_destination() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "send_proxy = \"v1\"",
        "accept_proxy = true",
    );
    let plumb = Plumb::start(&toml).await;
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    client
        .write_all(b"PROXY TCP4 192.0.2.10 198.51.100.1 4242 443\r\nx")
        .await
        .unwrap();
    let mut b = accept(&backend).await;
    let seen = read_v1(&mut b).await;
    assert_eq!(seen.source, "192.0.2.10:4242".parse().unwrap());
    assert_eq!(seen.destination, "198.51.100.1:443".parse().unwrap());
    expect_exactly(&mut b, b"x").await;
}

/// A front may speak for an IPv6 client on an IPv4 listener: the v6 source is logged,
/// and passed on in a v6 header (the destination mapped into v6).
#[tokio::test]
async fn accept_proxy_with_an_ipv6_client() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "send_proxy = \"v2\"",
        "accept_proxy = true",
    );
    let plumb = Plumb::start(&toml).await;
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    let header = format!(
        "PROXY TCP6 2001:db8::10 ::ffff:{} 4242 {}\r\n",
        plumb.addr().ip(),
        plumb.addr().port()
    );
    client
        .write_all(format!("{header}v6").as_bytes())
        .await
        .unwrap();
    let mut b = accept(&backend).await;
    let seen = read_v2(&mut b).await;
    assert_eq!(seen.source, "[2001:db8::10]:4242".parse().unwrap());
    assert_eq!(
        seen.destination,
        SocketAddr::new(
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            plumb.addr().port()
        )
    );
    expect_exactly(&mut b, b"v6").await;
    drop(b);
    drop(client);
    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["client"], "[2001:db8::10]:4242", "{log:?}");
}

/// `PROXY UNKNOWN` (v1) and a `LOCAL` command (v2) are how a front health-checks
/// through plumb: the connection's own peer address stands, in the log and in the
/// header passed on.
#[tokio::test]
async fn unknown_and_local_headers_keep_the_peer_address() {
    let local_v2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    for header in [&b"PROXY UNKNOWN\r\n"[..], local_v2] {
        let what = header.escape_ascii().to_string();
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            "send_proxy = \"v1\"",
            "accept_proxy = true",
        );
        let plumb = Plumb::start(&toml).await;
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        let me = client.local_addr().unwrap();
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(b"ping");
        client.write_all(&bytes).await.unwrap();
        let mut b = accept(&backend).await;
        let seen = read_v1(&mut b).await;
        assert_eq!(
            seen,
            Seen {
                source: me,
                destination: plumb.addr(),
            },
            "{what}"
        );
        expect_exactly(&mut b, b"ping").await;
        drop(b);
        drop(client);
        let log = plumb.wait_log(1).await;
        assert_eq!(log[0]["client"], me.to_string(), "{what}: {log:?}");
    }
}

/// Without `send_proxy`, the backend gets the payload alone: the front's header is
/// consumed by plumb, and not one payload byte with it.
#[tokio::test]
async fn accepted_header_is_stripped_and_payload_is_intact() {
    for v in [ProxyVersion::V1, ProxyVersion::V2] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            "",
            "accept_proxy = true",
        );
        let plumb = Plumb::start(&toml).await;
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        // Header and the first payload bytes in one segment.
        let mut first = front_header(v, plumb.addr());
        first.extend_from_slice(&payload[..10]);
        client.write_all(&first).await.unwrap();
        client.write_all(&payload[10..]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut b = accept(&backend).await;
        let (got, err) = tokio::time::timeout(STEP, read_to_end(&mut b))
            .await
            .unwrap();
        assert!(err.is_none(), "{v:?}: {err:?}");
        assert_eq!(got.len(), payload.len(), "{v:?}");
        assert!(got == payload, "{v:?}: payload altered");
        drop(b);
        let log = plumb.wait_log(1).await;
        assert_eq!(log[0]["client"], "192.0.2.10:4242", "{v:?}: {log:?}");
        assert_eq!(log[0]["bytes_from_client"], 100_000, "{v:?}: {log:?}");
    }
}

/// Reads from a client plumb should reset; returns when the RST came (a FIN, bytes
/// or silence fail the test).
async fn expect_reset(client: &mut TcpStream, what: &str) -> Instant {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(STEP, client.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: no reset within 5s"));
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Instant::now(),
        Err(e) => panic!("{what}: expected a reset, got {e}"),
        Ok(0) => panic!("{what}: expected a reset, got a FIN"),
        Ok(n) => panic!("{what}: expected a reset, got bytes {:?}", &buf[..n]),
    }
}

#[tokio::test]
async fn malformed_header_resets_the_client_as_bad_request() {
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 192.0.2.10 4242\r\n",
        b"PROXY TCP9 192.0.2.10 127.0.0.1 4242 80\r\n",
        // A CR inside the line, then a non-ASCII (but valid UTF-8) character.
        b"PROXY \r\xc3\xa9 TCP4 192.0.2.10 127.0.0.1 4242 80\r\n",
        // Control bytes where the addresses go.
        b"PROXY TCP4 192.0.2.10\t127.0.0.1 4242 80\r\n",
        // v2 signature with an impossible version/command byte.
        b"\r\n\r\n\0\r\nQUIT\n\xff\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02",
    ] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            "",
            "accept_proxy = true",
        );
        let plumb = Plumb::start(&toml).await;
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        client.write_all(bad).await.unwrap();
        expect_reset(&mut client, &bad.escape_ascii().to_string()).await;
        let log = plumb.wait_log(1).await;
        assert_eq!(log[0]["cause"], "bad_request", "{bad:?}: {log:?}");
        assert_eq!(log[0]["attempts"], 0, "{bad:?}: {log:?}");
        assert_eq!(
            log[0]["backend"],
            serde_json::Value::Null,
            "{bad:?}: {log:?}"
        );
        // No backend was ever contacted.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), backend.accept())
                .await
                .is_err(),
            "{bad:?}: plumb connected to the backend"
        );
    }
}

#[tokio::test]
async fn header_not_sent_in_time_resets_the_client() {
    // Nothing at all, and a header cut off mid-line (a slow or stuck front).
    for sent in [&b""[..], b"PROXY TCP4 192.0.2.10 "] {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let toml = config(
            &[backend.local_addr().unwrap().to_string()],
            "",
            "accept_proxy = true\ntimeouts = { header_read = \"300ms\" }",
        );
        let plumb = Plumb::start(&toml).await;
        let t0 = Instant::now();
        let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
        client.write_all(sent).await.unwrap();
        let at = expect_reset(&mut client, &sent.escape_ascii().to_string()).await;
        let d = at.duration_since(t0);
        assert!(
            d >= Duration::from_millis(295),
            "{sent:?}: reset after {d:?}, before header_read"
        );
        assert!(
            d <= Duration::from_millis(1250),
            "{sent:?}: reset after {d:?}"
        );
        let log = plumb.wait_log(1).await;
        assert_eq!(
            log[0]["cause"], "client_header_timeout",
            "{sent:?}: {log:?}"
        );
        assert_eq!(log[0]["attempts"], 0, "{sent:?}: {log:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), backend.accept())
                .await
                .is_err(),
            "{sent:?}: plumb connected to the backend"
        );
    }
}
