//! plumb's own HTTP/1.1 upstream exchange against a scripted backend on loopback: the
//! bytes of the request, each framing of the response, when the connection may be
//! used again, and the cause of each way it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{encode_head, parse_head, send, BodyError, RawBody, RawConn};
use crate::cause::Cause;
use crate::l7::client::{Sent, UpHead, UpResp};
use crate::l7::headers::{ForwardedFor, Rewrite, Upstream};
use hyper::header::{HeaderName, HeaderValue};

/// A client's request head and plumb's rewrite of it.
struct Req {
    parts: hyper::http::request::Parts,
    rewrite: Rewrite,
}

impl Req {
    fn head(&self) -> UpHead<'_> {
        UpHead {
            method: &self.parts.method,
            uri: &self.parts.uri,
            fields: Upstream {
                fields: &self.parts.headers,
                rewrite: &self.rewrite,
            },
        }
    }
}

fn request(method: &str, target: &str) -> Req {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "example.test")
        .header("connection", "keep-alive")
        .header("x-two", "a")
        .header("x-two", "b")
        .body(())
        .unwrap()
        .into_parts();
    let rewrite = Rewrite::new(
        &parts.headers,
        false,
        &ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http"),
        "example.test",
        (
            HeaderName::from_static("plumb-request-id"),
            HeaderValue::from_static("r1"),
        ),
        None,
        false,
    );
    Req { parts, rewrite }
}

/// A connected pair: plumb's side as a `RawConn`, and the backend's socket.
async fn pair() -> (RawConn, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (backend, _) = l.accept().await.unwrap();
    (RawConn::new(Arc::new(client)), backend)
}

/// Reads one request head (up to the blank line) from the backend's side.
async fn read_head(backend: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            backend.read(&mut byte).await.unwrap(),
            1,
            "request head cut short"
        );
        got.push(byte[0]);
    }
    got
}

/// Plays the backend: for each exchange, reads one request head and writes the
/// answer's pieces 20 ms apart; then closes (`close`) or holds the connection for 5 s.
fn script(mut backend: TcpStream, exchanges: Vec<Vec<&'static [u8]>>, close: bool) {
    tokio::spawn(async move {
        for pieces in exchanges {
            read_head(&mut backend).await;
            for (i, piece) in pieces.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                backend.write_all(piece).await.unwrap();
            }
        }
        if !close {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

async fn exchange(conn: &mut RawConn, method: &str, timeout: Duration) -> Sent {
    send(
        conn,
        request(method, "/p?q=1").head(),
        Instant::now(),
        timeout,
        Duration::from_secs(5),
    )
    .await
}

fn answered(sent: Sent) -> (hyper::http::response::Parts, RawBody) {
    match sent {
        Sent::Answered(resp) => {
            let (mut parts, body) = resp.into_parts();
            match body {
                UpResp::Raw(mut b) => {
                    // The fields as hyper's server would get them.
                    b.take_fields()
                        .expect("a raw response carries its fields")
                        .append_to(&mut parts.headers);
                    (parts, b)
                }
                UpResp::Hyper(_) => panic!("not read by plumb"),
            }
        }
        Sent::Failed(c, t) => panic!("failed: {c}: {t}"),
        Sent::Returned(_, c, t) => panic!("returned: {c}: {t}"),
        Sent::Busy(_) => panic!("busy"),
    }
}

fn failed(sent: Sent) -> (Cause, String) {
    match sent {
        Sent::Failed(c, t) => (c, t),
        Sent::Answered(r) => panic!("answered {}", r.status()),
        Sent::Returned(_, c, t) => panic!("returned: {c}: {t}"),
        Sent::Busy(_) => panic!("busy"),
    }
}

/// Sets the body's home to a slot the test can look into.
fn homed(body: &mut RawBody) -> Arc<Mutex<Option<RawConn>>> {
    let slot = Arc::new(Mutex::new(None));
    let s = Arc::clone(&slot);
    body.home(Box::new(move |c| *s.lock().unwrap() = Some(c)));
    slot
}

fn went_home(slot: &Arc<Mutex<Option<RawConn>>>) -> Option<RawConn> {
    slot.lock().unwrap().take()
}

fn cause_of(e: &(dyn std::error::Error + 'static)) -> Cause {
    e.downcast_ref::<BodyError>().expect("a BodyError").cause
}

#[test]
fn request_head_is_origin_form_http11_with_every_field() {
    let mut buf = bytes::BytesMut::new();
    encode_head(&mut buf, request("GET", "/p?q=1").head());
    assert_eq!(
        std::str::from_utf8(&buf).unwrap(),
        "GET /p?q=1 HTTP/1.1\r\nhost: example.test\r\nx-two: a\r\nx-two: b\r\n\
         x-forwarded-for: 192.0.2.1\r\nx-forwarded-proto: http\r\n\
         forwarded: for=192.0.2.1;proto=http;host=example.test\r\nplumb-request-id: r1\r\n\r\n"
    );
}

#[tokio::test]
async fn length_framed_response_is_read_and_the_connection_reused() {
    let (mut conn, mut backend) = pair().await;
    for round in 0..2 {
        let t = tokio::spawn(async move {
            let head = read_head(&mut backend).await;
            backend
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
                .await
                .unwrap();
            (backend, head)
        });
        let (parts, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
        let slot = homed(&mut body);
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-a"], "b");
        assert_eq!(parts.headers["content-length"], "5");
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello", "round {round}");
        let (b, head) = t.await.unwrap();
        backend = b;
        assert!(head.starts_with(b"GET /p?q=1 HTTP/1.1\r\n"));
        conn = went_home(&slot).expect("a framed response ends with the connection pooled");
        assert!(conn.usable());
    }
}

#[tokio::test]
async fn chunked_response_is_decoded_with_its_trailers() {
    let (mut conn, backend) = pair().await;
    script(
        backend,
        vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\nA\r\n, world!!!\r\n0\r\nX-Sum: 7\r\n\r\n",
        ]],
        false,
    );
    let (_, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
    let slot = homed(&mut body);
    let all = body.collect().await.unwrap();
    assert_eq!(all.trailers().unwrap()["x-sum"], "7");
    assert_eq!(&all.to_bytes()[..], b"hello, world!!!");
    assert!(went_home(&slot).is_some());
}

#[tokio::test]
async fn interim_responses_are_skipped_and_bodiless_ones_end_at_once() {
    let (mut conn, backend) = pair().await;
    script(
        backend,
        vec![
            vec![b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\nX-B: 1\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"],
        ],
        false,
    );
    let (parts, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
    assert_eq!(parts.status, StatusCode::NO_CONTENT);
    assert_eq!(parts.headers["x-b"], "1");
    assert!(
        !parts.headers.contains_key("link"),
        "the 103's fields stay with it"
    );
    let slot = homed(&mut body);
    let mut conn = went_home(&slot).expect("a 204 ends at once");
    // A HEAD response announces a length it does not send.
    let (parts, mut body) = answered(exchange(&mut conn, "HEAD", Duration::from_secs(5)).await);
    assert_eq!(parts.headers["content-length"], "100");
    assert!(hyper::body::Body::is_end_stream(&body));
    let slot = homed(&mut body);
    assert!(went_home(&slot).is_some());
}

#[tokio::test]
async fn close_delimited_and_connection_close_responses_are_not_reused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 3\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: x-a, close\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc"[..],
        &b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..],
        // Bytes after the response: something is wrong with this connection.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1"[..],
        // Both lengths: read by the chunks, the Content-Length dropped, and not
        // reused (how responses are smuggled).
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
    ] {
        let (mut conn, backend) = pair().await;
        script(backend, vec![vec![answer]], true);
        let (parts, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
        if parts.headers.contains_key("transfer-encoding") {
            assert!(!parts.headers.contains_key("content-length"));
        }
        let slot = homed(&mut body);
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abc");
        assert!(
            went_home(&slot).is_none(),
            "{:?} must not be reused",
            String::from_utf8_lossy(answer)
        );
    }
}

#[test]
fn hop_by_hop_fields_and_those_connection_names_are_left_out() {
    let fields = |head: &[u8]| {
        let mut buf = bytes::BytesMut::from(head);
        let (_, _, reusable, raw) = parse_head(&mut buf, false).unwrap().unwrap();
        assert!(buf.is_empty());
        let kept: Vec<String> = raw
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        (kept, reusable)
    };
    let (kept, reusable) = fields(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(reusable);
    assert_eq!(kept, ["Content-Length=0"]);
    // A field the Connection line names goes too, in any case, wherever it is.
    let (kept, reusable) = fields(
        b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive, x-hop\r\nTE: trailers\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nProxy-Authorization: y\r\nX-Keep: 2\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(reusable);
    assert_eq!(kept, ["X-Keep=2", "Content-Length=0"]);
    // Chunked with a length: the length is not passed on (nor reused).
    let (kept, reusable) = fields(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\nX-A: 1\r\n\r\n",
    );
    assert!(!reusable);
    assert_eq!(kept, ["X-A=1"]);
}

#[tokio::test]
async fn a_close_inside_the_body_fails_it_as_closed_early() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"[..],
    ] {
        let (mut conn, backend) = pair().await;
        script(backend, vec![vec![answer]], true);
        let (_, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
        let slot = homed(&mut body);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(&first.into_data().unwrap()[..], b"abc");
        let e = body.frame().await.unwrap().unwrap_err();
        assert_eq!(cause_of(e.as_ref()), Cause::UpstreamClosedEarly, "{e}");
        assert!(went_home(&slot).is_none());
    }
}

#[tokio::test]
async fn broken_responses_are_bad_responses() {
    for (answer, why) in [
        (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "does not parse"),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
            "disagree",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n"[..],
            "not a number",
        ),
        (
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..],
            "asked for no upgrade",
        ),
    ] {
        let (mut conn, backend) = pair().await;
        script(backend, vec![vec![answer]], false);
        let (cause, text) = failed(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
        assert_eq!(cause, Cause::UpstreamBadResponse, "{text}");
        assert!(text.contains(why), "{text:?} should say {why:?}");
    }
    // A broken chunk fails the body the same way.
    let (mut conn, backend) = pair().await;
    script(
        backend,
        vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]],
        false,
    );
    let (_, mut body) = answered(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
    let e = body.frame().await.unwrap().unwrap_err();
    assert_eq!(cause_of(e.as_ref()), Cause::UpstreamBadResponse);
}

#[tokio::test]
async fn no_head_in_time_is_a_response_timeout_and_a_close_is_closed_early() {
    let (mut conn, mut backend) = pair().await;
    let keep = tokio::spawn(async move {
        read_head(&mut backend).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        backend
    });
    let t0 = Instant::now();
    let (cause, text) = failed(exchange(&mut conn, "GET", Duration::from_millis(300)).await);
    assert_eq!(cause, Cause::UpstreamResponseTimeout);
    assert!(text.contains("300ms"), "{text}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    keep.abort();

    let (mut conn, mut backend) = pair().await;
    tokio::spawn(async move {
        read_head(&mut backend).await;
        drop(backend);
    });
    let (cause, _) = failed(exchange(&mut conn, "GET", Duration::from_secs(5)).await);
    assert_eq!(cause, Cause::UpstreamClosedEarly);
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_or_wrote_to_is_not_usable() {
    let (conn, backend) = pair().await;
    assert!(conn.usable());
    drop(backend);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!conn.usable(), "the backend's FIN went unnoticed");

    let (conn, mut backend) = pair().await;
    backend
        .write_all(b"HTTP/1.1 408 Timeout\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!conn.usable(), "stray bytes went unnoticed");
}

#[test]
fn chunk_size_lines_are_read_strictly() {
    for (line, size) in [
        (&b"5\r"[..], Some(5)),
        (b"1aF\r", Some(0x1af)),
        (b"0000000000000000000a\r", Some(10)),
        (b"5 ;name=value\r", Some(5)),
        (b"5;a=\"b c\"\r", Some(5)),
        (b"+5\r", None),
        (b" 5\r", None),
        (b"5\r\r", None),
        (b"5", None),
        (b"\r", None),
        (b"5x\r", None),
        (b"5;ext\rmore\r", None),
        (b"1000000000000000\r", None),
    ] {
        assert_eq!(
            super::chunk_size(line),
            size,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[tokio::test]
async fn endless_interim_responses_are_cut_off() {
    let (mut conn, mut backend) = pair().await;
    tokio::spawn(async move {
        read_head(&mut backend).await;
        // More interim bytes than a head may take, then silence: bounded.
        for _ in 0..20_000 {
            if backend
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let (cause, text) = failed(exchange(&mut conn, "GET", Duration::from_secs(10)).await);
    assert_eq!(cause, Cause::UpstreamBadResponse, "{text}");
    assert!(text.contains("no complete response head"), "{text}");
}
