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
    let (p, rest) =
        parsed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close\r\n\r\nGET /next");
    let Parsed::Head(h) = p else { panic!("{p:?}") };
    assert_eq!(&rest[..], b"GET /next", "the pipelined bytes stay");
    assert_eq!(h.req.uri(), "/a?b=1");
    assert_eq!(h.req.headers()["host"], "x");
    assert!(h.close && !h.head_method);
    let (p, _) = parsed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(p, Parsed::Head(h) if h.head_method && !h.close));
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

/// A client socket as `respond` sees it: what is written is kept; reads wait.
#[derive(Default)]
struct Wire(Vec<u8>);

impl tokio::io::AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn written(a: Answer, head_method: bool, last: bool) -> String {
    let mut wire = Wire::default();
    respond(
        &mut wire,
        &mut BytesMut::new(),
        &mut Vec::new(),
        a,
        head_method,
        last,
    )
    .await
    .unwrap();
    String::from_utf8(wire.0).unwrap()
}

#[tokio::test]
async fn a_known_length_is_sent_as_content_length_with_a_date_when_missing() {
    let got = written(answer(200, &[("x-a", "1")], full("hello")), false, false).await;
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
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

#[tokio::test]
async fn an_unknown_length_is_chunked_without_trailers() {
    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("7"));
    let frames = Frames(vec![
        Frame::data(Bytes::from_static(b"hello")),
        Frame::data(Bytes::new()),
        Frame::data(Bytes::from_static(b", world!!!")),
        Frame::trailers(t),
    ])
    .boxed_unsync();
    let got = written(answer(200, &[("date", "d")], frames), false, false).await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\na\r\n, world!!!\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn head_and_bodiless_statuses_send_no_body() {
    // HEAD: the length the body would have, and none of its bytes.
    let got = written(answer(200, &[("date", "d")], full("hello")), true, false).await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
    );
    // A length the backend gave is passed on as it is, once.
    let got = written(
        answer(
            200,
            &[
                ("date", "d"),
                ("content-length", "100"),
                ("content-length", "100"),
            ],
            full(""),
        ),
        true,
        false,
    )
    .await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 100\r\n\r\n"
    );
    // No body and no framing on a 204 or 304; a length only on the 304.
    for (status, rest) in [(204, ""), (304, "content-length: 7\r\n")] {
        let got = written(
            answer(status, &[("date", "d"), ("content-length", "7")], full("")),
            false,
            false,
        )
        .await;
        assert!(
            got.ends_with(&format!("\r\ndate: d\r\n{rest}\r\n")),
            "{status}: {got}"
        );
    }
}

#[tokio::test]
async fn a_large_frame_is_written_whole_after_the_head() {
    let big = "x".repeat(super::GATHER + 1);
    let body = Full::new(Bytes::from(big.clone()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let got = written(answer(200, &[("date", "d")], body), false, false).await;
    let head = format!(
        "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    assert_eq!(got, format!("{head}{big}"));
}

#[tokio::test]
async fn a_body_that_fails_mid_way_leaves_the_response_visibly_cut() {
    /// One chunk, then (after a wait, so the head and the chunk go out) a failure.
    struct Broken(u8);
    impl Body for Broken {
        type Data = Bytes;
        type Error = crate::l7::client::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0 += 1;
            match self.0 {
                1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc"))))),
                2 => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => Poll::Ready(Some(Err("backend reset".into()))),
            }
        }
    }
    let mut wire = Wire::default();
    let r = respond(
        &mut wire,
        &mut BytesMut::new(),
        &mut Vec::new(),
        answer(200, &[("date", "d")], Broken(0).boxed_unsync()),
        false,
        false,
    )
    .await;
    assert!(r.is_err());
    assert_eq!(
        String::from_utf8(wire.0).unwrap(),
        "HTTP/1.1 200 OK\r\ndate: d\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        "the head and the chunk went out, and no last chunk"
    );
}

#[tokio::test]
async fn a_client_that_closes_while_the_body_waits_ends_the_response() {
    /// A body that never gives a frame.
    struct Stalled;
    impl Body for Stalled {
        type Data = Bytes;
        type Error = crate::l7::client::BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }
    let (mut plumb_side, mut client) = tokio::io::duplex(4096);
    let mut read = BytesMut::new();
    let mut out = Vec::new();
    let responding = respond(
        &mut plumb_side,
        &mut read,
        &mut out,
        answer(200, &[("date", "d")], Stalled.boxed_unsync()),
        false,
        false,
    );
    let closer = async move {
        let mut head = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut head)
            .await
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 OK\r");
        drop(client);
    };
    let (r, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::join!(responding, closer)
    })
    .await
    .expect("the client's close must end the wait for the body");
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
}
