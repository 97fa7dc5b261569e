#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::{parse, respond, Parsed};
use crate::l7::{Answer, RespBody};

fn parsed(head: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(head);
    let p = parse(&mut buf);
    (p, buf)
}

#[test]
fn a_plain_get_is_served_here_and_taken_off_the_buffer() {
    let (p, rest) = parsed(
        b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: Keep-Alive, Close\r\n\r\nGET /next",
    );
    let Parsed::Head(h) = p else { panic!("{p:?}") };
    assert_eq!(&rest[..], b"GET /next", "the pipelined bytes stay");
    assert_eq!(h.req.uri(), "/a?b=1");
    assert_eq!(h.req.headers()["host"], "x");
    assert!(h.close && h.trailers && !h.head_method);
    let (p, _) = parsed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(p, Parsed::Head(h) if h.head_method && !h.close && !h.trailers));
}

#[test]
fn whatever_this_path_does_not_serve_goes_to_hyper_untouched() {
    for head in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
    ] {
        let (p, rest) = parsed(head);
        assert!(
            matches!(p, Parsed::Hyper),
            "{:?}: {p:?}",
            String::from_utf8_lossy(head)
        );
        assert_eq!(&rest[..], head, "nothing is taken off for hyper");
    }
    let (p, rest) = parsed(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(matches!(p, Parsed::Partial));
    assert_eq!(rest.len(), 25);
}

/// A body whose size is not known: it gives its frames one at a time.
struct Frames(Vec<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = crate::l7::client::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(self.0.remove(0))))
    }
}

fn answer(status: u16, fields: &[(&'static str, &'static str)], body: RespBody) -> Answer {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (n, v) in fields {
        resp.headers_mut().append(*n, HeaderValue::from_static(v));
    }
    resp.into()
}

fn full(text: &'static str) -> RespBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn written(a: Answer, head_method: bool, last: bool, trailers: bool) -> String {
    let mut wire: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    respond(&mut wire, &mut out, a, head_method, last, trailers)
        .await
        .unwrap();
    String::from_utf8(wire).unwrap()
}

#[tokio::test]
async fn a_known_length_is_sent_as_content_length_with_a_date_when_missing() {
    let got = written(
        answer(200, &[("x-a", "1")], full("hello")),
        false,
        false,
        false,
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "),
        "{got}"
    );
    assert!(got.ends_with(" GMT\r\n\r\nhello"), "{got}");
    assert!(!got.contains("connection:"), "{got}");
    // A date given is not doubled; the last response says the connection closes.
    let got = written(
        answer(404, &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")], full("")),
        false,
        true,
        false,
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

#[tokio::test]
async fn an_unknown_length_is_chunked_and_trailers_go_only_to_who_asked() {
    let frames = || {
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("7"));
        Frames(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from_static(b", world!!!")),
            Frame::trailers(t),
        ])
        .boxed_unsync()
    };
    let got = written(answer(200, &[("date", "d")], frames()), false, false, true).await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\na\r\n, world!!!\r\n0\r\nx-sum: 7\r\n\r\n"
    );
    let got = written(answer(200, &[("date", "d")], frames()), false, false, false).await;
    assert!(got.ends_with("\r\n0\r\n\r\n"), "{got}");
}

#[tokio::test]
async fn head_and_bodiless_statuses_send_no_body() {
    // HEAD: the length the body would have, and none of its bytes.
    let got = written(
        answer(200, &[("date", "d")], full("hello")),
        true,
        false,
        false,
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
    );
    // A length the backend gave is passed on as it is, and not doubled.
    let got = written(
        answer(200, &[("date", "d"), ("content-length", "100")], full("")),
        true,
        false,
        false,
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 100\r\n\r\n"
    );
    for status in [204, 304] {
        let got = written(
            answer(status, &[("date", "d")], full("")),
            false,
            false,
            false,
        )
        .await;
        assert!(got.ends_with("\r\ndate: d\r\n\r\n"), "{status}: {got}");
    }
}

#[tokio::test]
async fn a_large_frame_is_written_whole_after_the_head() {
    let big = "x".repeat(super::GATHER + 1);
    let body = Full::new(Bytes::from(big.clone()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let got = written(answer(200, &[("date", "d")], body), false, false, false).await;
    let head = format!(
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    assert_eq!(got, format!("{head}{big}"));
}

#[tokio::test]
async fn a_body_that_fails_ends_the_response_with_an_error() {
    struct Broken;
    impl Body for Broken {
        type Data = Bytes;
        type Error = crate::l7::client::BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Err("backend reset".into())))
        }
    }
    let mut wire: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let r = respond(
        &mut wire,
        &mut out,
        answer(200, &[("date", "d")], Broken.boxed_unsync()),
        false,
        false,
        false,
    )
    .await;
    assert!(r.is_err());
    assert!(
        !String::from_utf8_lossy(&wire).contains("0\r\n\r\n"),
        "a cut body must not look complete"
    );
}
