//! Hostile and broken client input on an HTTP listener: malformed request lines and
//! header names, obs-text header values, request smuggling with conflicting framing,
//! oversized heads, a client vanishing mid-body; then random bytes and random
//! mutations of valid requests (proptest) against a live listener, after which plumb
//! must still answer a normal request.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::http_basics::{
    assert_plumb_error, get, http_config, is_hex32, log_line, ok, origin, Client, Step,
};
use crate::support::{eventually, Plumb};

/// Sends `bytes` on a fresh connection and returns everything plumb sent back until it
/// closed (panics if it kept the connection open for 3 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut c = Client::connect(addr).await;
    c.send(bytes).await;
    let (got, _) = c
        .until_eof(Duration::from_secs(3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "plumb kept the connection open 3 s after {:?}",
                String::from_utf8_lossy(bytes)
            )
        });
    got
}

fn status_of(raw: &[u8]) -> Option<u16> {
    raw.strip_prefix(b"HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
}

const MALFORMED: &[&[u8]] = &[
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX(y): v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: no-name\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
];

/// Malformed request lines, header names and control bytes in values: 400, the
/// connection closed, nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    for bad in MALFORMED {
        let got = exchange(plumb.addr(), bad).await;
        assert_eq!(
            status_of(&got),
            Some(400),
            "{:?} -> {:?}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(&got)
        );
    }
    assert!(o.seen().is_empty(), "{:?}", o.seen());
    assert_eq!(get(plumb.addr(), "/", &[]).await.text(), "fine");
}

/// The refusal of a malformed request is an error made by plumb like any other: it
/// names its cause (`plumb-error: bad_request`), carries a request id, and is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_error_names_its_cause() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")
        .await;
    let r = c.response().await;
    let rid = assert_plumb_error(&r, 400, "bad_request");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "bad_request", "{l}");
    assert_eq!(l["status"], 400, "{l}");
}

/// obs-text (bytes 0x80-0xFF, not UTF-8) in a header value is opaque data: forwarded
/// byte for byte. A request id that is not ASCII is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_text_header_values_pass_intact() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(
        b"GET /obs HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\nX-Bytes: \xff\xfe\x80 end\r\nplumb-request-id: \xe9\xe9\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    let rid = r.rid().to_string();
    assert!(is_hex32(&rid), "a non-ASCII id is replaced: {rid:?}");
    let s = &o.seen()[0];
    assert_eq!(s.raw_header("x-latin"), Some(&b"caf\xe9"[..]));
    assert_eq!(s.raw_header("x-bytes"), Some(&b"\xff\xfe\x80 end"[..]));
    assert_eq!(s.all("plumb-request-id"), vec![rid.as_bytes()]);
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], Value::Null, "{l}");
}

/// Conflicting or obfuscated framing (CL.TE, TE.CL, bad Transfer-Encoding, differing
/// Content-Lengths, TE on HTTP/1.0): whatever plumb answers, the bytes after the first
/// request never reach the origin as a request of their own, the origin never sees
/// both framings at once, and plumb closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_do_not_reach_the_origin() {
    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let in_chunk = "GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nx=1";
    let cl_te_body = format!("0\r\n\r\n{smuggled}");
    let payloads = vec![
        // CL.TE: Content-Length covers the smuggled request; chunked ends before it.
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{cl_te_body}",
            cl_te_body.len()
        ),
        // TE.CL: the chunk holds the smuggled request; Content-Length stops before it.
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{in_chunk}\r\n0\r\n\r\n",
            in_chunk.len()
        ),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 40\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{smuggled}"),
    ];
    for p in &payloads {
        let before = o.seen().len();
        let got = exchange(plumb.addr(), p.as_bytes()).await;
        assert!(
            status_of(&got).is_some(),
            "no answer to {p:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        // Let anything plumb might still forward arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let new: Vec<_> = o.seen().into_iter().skip(before).collect();
        assert!(
            new.iter().all(|r| !r.path.contains("smuggled")),
            "smuggled request reached the origin for {p:?}: {new:?}"
        );
        assert!(
            new.len() <= 1,
            "{p:?} became {} requests: {new:?}",
            new.len()
        );
        for r in &new {
            assert!(
                r.header("content-length").is_none() || r.header("transfer-encoding").is_none(),
                "the origin got both framings for {p:?}: {r:?}"
            );
        }
    }
    assert_eq!(get(plumb.addr(), "/after", &[]).await.text(), "saw /after");
}

/// A head larger than `max_header_bytes` gets 431 (and one within it passes); a
/// listener with the default limit (64 KiB) takes the same head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_gets_431() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let toml = format!(
        "{}\n[[listener]]\nname = \"roomy\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n",
        http_config(&[o.addr], "", "max_header_bytes = 8192\n")
    );
    let plumb = Plumb::start(&toml).await;
    let (tight, roomy) = (plumb.addrs[0], plumb.addrs[1]);
    let big = "b".repeat(20 * 1024);
    let small = "s".repeat(4 * 1024);
    let req =
        |v: &str| format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {v}\r\nConnection: close\r\n\r\n");

    let got = exchange(tight, req(&big).as_bytes()).await;
    assert_eq!(
        status_of(&got),
        Some(431),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let got = exchange(tight, req(&small).as_bytes()).await;
    assert_eq!(
        status_of(&got),
        Some(200),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let got = exchange(roomy, req(&big).as_bytes()).await;
    assert_eq!(
        status_of(&got),
        Some(200),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        o.seen().len(),
        2,
        "the refused head never reached the origin"
    );
}

/// A 431 is an error made by plumb: `plumb-error: request_header_too_large`, a request
/// id, and a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_error_names_its_cause() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "max_header_bytes = 8192\n")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20 * 1024)
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await;
    let rid = assert_plumb_error(&r, 431, "request_header_too_large");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "request_header_too_large", "{l}");
}

/// A client goes away (FIN or RST) in the middle of a body that carries what looks
/// like another request: the origin never gets a complete body nor the forged
/// request, the half-sent upstream connection is not reused, and plumb goes on
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_body() {
    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    for (i, rst) in [false, true].into_iter().enumerate() {
        let mut c = Client::connect(plumb.addr()).await;
        let mut req =
            format!("POST /upload/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
                .into_bytes();
        req.extend_from_slice(b"GET /forged HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        req.extend_from_slice(&[b'p'; 100]);
        c.send(&req).await;
        let path = format!("/upload/{i}");
        assert!(
            eventually(Duration::from_secs(3), || o
                .seen()
                .iter()
                .any(|r| r.path == path))
            .await,
            "the upload never started"
        );
        if rst {
            socket2::SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        } else {
            c.stream.shutdown().await.unwrap();
        }
        drop(c);
        assert!(
            eventually(Duration::from_secs(3), || {
                o.seen().iter().any(|r| r.path == path && !r.complete)
            })
            .await,
            "the origin's upload did not end incomplete: {:?}",
            o.seen()
        );
        let r = get(plumb.addr(), &format!("/next/{i}"), &[]).await;
        assert_eq!(r.text(), format!("saw /next/{i}"));
        let seen = o.seen();
        let up = seen.iter().find(|r| r.path == path).unwrap();
        let next = seen
            .iter()
            .find(|r| r.path == format!("/next/{i}"))
            .unwrap();
        assert_ne!(
            up.conn, next.conn,
            "the half-sent upstream connection was reused"
        );
    }
    let seen = o.seen();
    assert!(seen.iter().all(|r| r.path != "/forged"), "{seen:?}");
    assert!(seen
        .iter()
        .filter(|r| r.path.starts_with("/upload"))
        .all(|r| !r.complete));
}

/// Starts an upload of 1000 announced bytes with request id `rid`, sends 100, waits
/// until the origin has the head, then vanishes: RST (`SO_LINGER` 0) or FIN.
async fn vanish_mid_upload(addr: SocketAddr, o: &crate::http_basics::Origin, rid: &str, rst: bool) {
    let mut c = Client::connect(addr).await;
    let path = format!("/vanish/{rid}");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nplumb-request-id: {rid}\r\nContent-Length: 1000\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[b'v'; 100]);
    c.send(&req).await;
    assert!(
        eventually(Duration::from_secs(3), || o
            .seen()
            .iter()
            .any(|r| r.path == path))
        .await,
        "the upload never started"
    );
    if rst {
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    } else {
        c.stream.shutdown().await.unwrap();
    }
}

/// Clients vanishing mid-upload are the clients' failure: no failed attempt with an
/// upstream cause is pinned on the backend, its error counters stay clean, and
/// passive ejection (here after 2 failures in a row) does not take it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_body_is_not_blamed_on_the_backend() {
    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.passive]\nconsecutive_failures = 2\nejection = \"30s\"\n",
        "",
    ))
    .await;
    let mut lines = Vec::new();
    for (i, rst) in [false, true, true].into_iter().enumerate() {
        let rid = format!("vanish-{i}");
        vanish_mid_upload(plumb.addr(), &o, &rid, rst).await;
        lines.push(log_line(&plumb, &rid).await);
    }
    let pool = plumb.server.pool("app").unwrap();
    let b = pool.backend(o.addr).unwrap();
    assert!(
        !b.is_ejected(pool.now_ms()),
        "clients vanishing mid-upload got a healthy backend ejected"
    );
    assert!(
        b.errors().is_empty(),
        "clients vanishing were counted against the backend: {:?}",
        b.errors()
    );
    for l in &lines {
        let failed = l["failed_attempts"].as_array().unwrap();
        assert!(
            failed
                .iter()
                .all(|a| !a["cause"].as_str().unwrap_or("").starts_with("upstream_")),
            "a client's disappearance was logged as the backend's failure: {l}"
        );
    }
}

/// Cause names keep one meaning each: a client that half-closes (FIN) mid-upload did
/// not reset anything; it closed early (`client_closed_early`). One that resets is
/// `client_reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_body_cause_matches_how() {
    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    vanish_mid_upload(plumb.addr(), &o, "by-rst", true).await;
    let l = log_line(&plumb, "by-rst").await;
    assert_eq!(l["cause"], "client_reset", "{l}");
    vanish_mid_upload(plumb.addr(), &o, "by-fin", false).await;
    let l = log_line(&plumb, "by-fin").await;
    assert_eq!(l["cause"], "client_closed_early", "{l}");
}

/// Templates for mutation: valid requests of several shapes.
const TEMPLATES: &[&[u8]] = &[
    b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
    b"POST /chunk HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://example.com/abs HTTP/1.1\r\nHost: other\r\n\r\n",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\0",
    b"\x7f",
    b"\xff",
    b"\r\n\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Upgrade: h2c\r\n",
    b"HTTP/1.0",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
    Token(usize, usize),
}

fn apply(mut buf: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = buf.len().max(1);
        match *m {
            Mutation::Set(i, b) => {
                if !buf.is_empty() {
                    buf[i % len] = b;
                }
            }
            Mutation::Insert(i, b) => buf.insert(i % (buf.len() + 1), b),
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(buf.len());
                if at < end {
                    buf.drain(at..end);
                }
            }
            Mutation::Truncate(i) => buf.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let at = i % len;
                let end = (at + n).min(buf.len());
                if at < end {
                    let seg = buf[at..end].to_vec();
                    buf.splice(at..at, seg);
                }
            }
            Mutation::Token(i, t) => {
                let at = i % (buf.len() + 1);
                let tok = TOKENS[t % TOKENS.len()];
                buf.splice(at..at, tok.iter().copied());
            }
        }
    }
    buf
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Mutation::Token(i, t)),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..600),
        4 => (0..TEMPLATES.len(), proptest::collection::vec(mutation(), 1..6))
            .prop_map(|(t, muts)| apply(TEMPLATES[t].to_vec(), &muts)),
    ]
}

/// One fuzz case with blocking sockets: send, half-close, read until plumb closes.
/// plumb must close (or reset) within 4 s, and whatever it sends must be HTTP.
/// Returns whether anything came back.
fn poke(addr: SocketAddr, bytes: &[u8]) -> Result<bool, TestCaseError> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| TestCaseError::fail(format!("plumb stopped accepting: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(TestCaseError::fail(format!(
                    "plumb kept the connection open 4 s after the client half-closed; got {:?}",
                    String::from_utf8_lossy(&out)
                )));
            }
            Err(_) => break,
        }
    }
    let h2 = bytes.starts_with(b"PRI * HTTP/2.0");
    if !out.is_empty() && !h2 && !out.starts_with(b"HTTP/1.1 ") {
        return Err(TestCaseError::fail(format!(
            "not an HTTP/1.1 answer: {:?}",
            String::from_utf8_lossy(&out)
        )));
    }
    Ok(!out.is_empty())
}

/// ~200 cases of random bytes and mutated requests; then plumb still answers a normal
/// request correctly and holds no leftover client connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_input_never_crashes_or_wedges() {
    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.timeouts]\nidle = \"300ms\"\nresponse_header = \"1s\"\n",
        "[listener.timeouts]\nheader_read = \"300ms\"\nkeepalive_idle = \"1s\"\n",
    ))
    .await;
    let addr = plumb.addr();
    let ran = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (ran2, answered2) = (Arc::clone(&ran), Arc::clone(&answered));
    let result = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 200,
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        });
        runner
            .run(&input(), |bytes| {
                ran2.fetch_add(1, Ordering::Relaxed);
                if poke(addr, &bytes)? {
                    answered2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    let (ran, answered) = (
        ran.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    eprintln!("fuzz: {ran} cases, {answered} answered with an HTTP response");
    assert!(ran >= 200, "only {ran} cases ran");
    assert!(
        answered > 0,
        "no case got an answer: the fuzzing never reached plumb"
    );
    let r = get(addr, "/still-alive", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "saw /still-alive");
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["cause"], Value::Null, "{l}");
    assert!(
        eventually(Duration::from_secs(3), || plumb.server.conns().is_empty()).await,
        "client connections left open: {}",
        plumb.server.conns().len()
    );
}

/// The same kind of input without the client's half-close: 200 connections at once
/// (in batches), each left open after its bytes. plumb's own timers (`header_read`,
/// `keepalive_idle`, the body idle timer) must close every one within 4 s, with
/// nothing but HTTP/1.1 on the wire; afterwards plumb answers normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_input_left_open_is_closed_by_timers() {
    use proptest::strategy::ValueTree;

    let o = origin(|r| vec![Step::Write(ok(format!("saw {}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.timeouts]\nidle = \"300ms\"\nresponse_header = \"1s\"\n",
        "[listener.timeouts]\nheader_read = \"300ms\"\nkeepalive_idle = \"300ms\"\n",
    ))
    .await;
    let addr = plumb.addr();
    let mut runner = TestRunner::deterministic();
    let inputs: Vec<Vec<u8>> = (0..200)
        .map(|_| input().new_tree(&mut runner).unwrap().current())
        .collect();
    for batch in inputs.chunks(50) {
        let mut set = tokio::task::JoinSet::new();
        for bytes in batch.iter().cloned() {
            set.spawn(async move {
                let mut c = Client::connect(addr).await;
                let _ = c.stream.write_all(&bytes).await;
                let got = c.until_eof(Duration::from_secs(4)).await;
                (bytes, got)
            });
        }
        while let Some(done) = set.join_next().await {
            let (bytes, got) = done.unwrap();
            let (out, _) = got.unwrap_or_else(|| {
                panic!(
                    "plumb kept a connection open 4 s after {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            let h2 = bytes.starts_with(b"PRI * HTTP/2.0");
            assert!(
                out.is_empty() || h2 || out.starts_with(b"HTTP/1.1 "),
                "{:?} -> {:?}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&out)
            );
        }
    }
    let r = get(addr, "/still-alive", &[]).await;
    assert_eq!(r.text(), "saw /still-alive");
    assert!(
        eventually(Duration::from_secs(3), || plumb.server.conns().is_empty()).await,
        "client connections left open: {}",
        plumb.server.conns().len()
    );
}
