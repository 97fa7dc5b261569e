//! HTTP timers: the request head (`header_read`, slowloris gets a 408), the idle
//! keep-alive client connection (`keepalive_idle`, never while a request is in
//! flight), and the silence inside a body (`pool.timeouts.idle`) on either side.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use crate::http_basics::{assert_plumb_error, http_config, log_line, ok, origin, Client, Step, T};
use crate::support::{eventually, Plumb};

const HEADER_READ: &str = "[listener.timeouts]\nheader_read = \"300ms\"\n";
const KEEPALIVE: &str = "[listener.timeouts]\nkeepalive_idle = \"300ms\"\n";
const BODY_IDLE: &str = "[pool.timeouts]\nidle = \"300ms\"\n";
const RESPONSE_HEADER: &str = "[pool.timeouts]\nresponse_header = \"300ms\"\n";

/// A connection that never sends a byte is closed about `header_read` after it
/// opened, without an answer (there is no request to answer); found by the
/// fault matrix, where 10,000 such connections stayed open until keepalive_idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_header_read() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", HEADER_READ)).await;
    let mut c = Client::connect(plumb.addr()).await;
    let t0 = Instant::now();
    let (rest, _) = c
        .until_eof(Duration::from_secs(3))
        .await
        .expect("a connection that sent nothing stayed open");
    let took = t0.elapsed();
    assert!(rest.is_empty(), "an answer to no request: {rest:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after {took:?}, expected about 300 ms"
    );
}

/// Shutdown closes a connection that has sent nothing at once, long before its
/// `header_read` and the shutdown grace: it has no request to finish. (It waits on no
/// timer or token of its own; the connection table wakes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_silent_connection_at_once() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&format!(
        "[runtime]\nshutdown_grace = \"5s\"\n{}",
        http_config(
            &[o.addr],
            "",
            "[listener.timeouts]\nheader_read = \"10s\"\n"
        )
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let stopping = tokio::spawn(plumb.stop_and_keep_log());
    let (rest, _) = c
        .until_eof(Duration::from_secs(4))
        .await
        .expect("a connection that sent nothing stayed open through shutdown");
    assert!(rest.is_empty(), "an answer to no request: {rest:?}");
    let closed = t0.elapsed();
    stopping.await.unwrap();
    let stopped = t0.elapsed();
    assert!(
        closed < Duration::from_secs(2) && stopped < Duration::from_secs(3),
        "closed after {closed:?}, plumb stopped after {stopped:?}; the grace is 5 s"
    );
}

/// A partial request head, then silence: 408 `client_header_timeout` about 300 ms
/// after the first byte, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_head_gets_408() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", HEADER_READ)).await;
    let mut c = Client::connect(plumb.addr()).await;
    let t0 = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Partial: 1\r\n")
        .await;
    let r = timeout(Duration::from_secs(3), c.try_response(false))
        .await
        .expect("no answer to a partial head within 3 s")
        .expect("a 408, not a bare close");
    let took = t0.elapsed();
    let rid = assert_plumb_error(&r, 408, "client_header_timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "408 after {took:?}, expected about 300 ms"
    );
    let (rest, _) = c
        .until_eof(Duration::from_secs(2))
        .await
        .expect("the connection stayed open after the 408");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(o.seen().is_empty(), "the origin saw a request");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "client_header_timeout", "{l}");
    assert_eq!(l["status"], 408, "{l}");
    assert_eq!(l["attempts"], 0, "{l}");
}

/// Slowloris: a head dribbled a byte every 50 ms is cut at the same 300 ms (the timer
/// runs from the first byte; new bytes do not extend it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_head_gets_408_on_time() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", HEADER_READ)).await;
    let mut c = Client::connect(plumb.addr()).await;
    let t0 = Instant::now();
    c.send(b"GET /loris HTTP/1.1\r\nHost: h\r\nX-Dribble: ")
        .await;
    let mut answer = None;
    for _ in 0..60 {
        let _ = c.stream.write_all(b"x").await;
        if let Ok(r) = timeout(Duration::from_millis(50), c.head()).await {
            answer = Some(r.expect("a 408 head"));
            break;
        }
    }
    let took = t0.elapsed();
    let mut r = answer.expect("no answer while dribbling for 3 s");
    c.body(&mut r, false).await.unwrap();
    assert_plumb_error(&r, 408, "client_header_timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "408 after {took:?}, expected about 300 ms"
    );
    assert!(o.seen().is_empty());
}

/// After a response, an idle keep-alive connection is closed (EOF, no bytes) about
/// `keepalive_idle` later; so is a connection that never sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed() {
    let o = origin(|_| vec![Step::Write(ok("hi"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", KEEPALIVE)).await;

    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "hi");
    let t0 = Instant::now();
    let (rest, err) = c
        .until_eof(Duration::from_secs(3))
        .await
        .expect("the idle connection was not closed within 3 s");
    let took = t0.elapsed();
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    assert!(err.is_none(), "a FIN, not an error: {err:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "closed after {took:?}, expected about 300 ms"
    );

    let mut silent = Client::connect(plumb.addr()).await;
    let t0 = Instant::now();
    let (rest, _) = silent
        .until_eof(Duration::from_secs(3))
        .await
        .expect("a silent connection was not closed within 3 s");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    plumb.server.flush_access_log(Duration::from_secs(1)).await;
    assert_eq!(
        plumb.log().len(),
        1,
        "closing an idle connection logs no request"
    );
}

/// A request in flight longer than `keepalive_idle` is not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_outlives_keepalive_idle() {
    let o = origin(|_| {
        vec![
            Step::Sleep(Duration::from_millis(900)),
            Step::Write(ok("late")),
        ]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", KEEPALIVE)).await;
    let mut c = Client::connect(plumb.addr()).await;
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "late");
    assert!(t0.elapsed() >= Duration::from_millis(850));
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["cause"], Value::Null, "{l}");
}

/// The origin sends the head and half the body, then stalls: about 300 ms later the
/// client's body read ends short of Content-Length, logged `upstream_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_cut() {
    let o = origin(|_| {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        head.extend_from_slice(&[b'a'; 500]);
        vec![Step::Write(head), Step::Hang]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /half HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let mut r = timeout(T, c.head()).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    let rid = r.rid().to_string();
    let t0 = Instant::now();
    let body = timeout(Duration::from_secs(3), c.body(&mut r, false))
        .await
        .expect("the stalled body was never cut");
    let took = t0.elapsed();
    assert!(body.is_err(), "the body completed? {r:?}");
    assert!(r.body.len() < 1000);
    assert!(
        took < Duration::from_millis(1500),
        "cut after {took:?}, expected about 300 ms"
    );
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "upstream_idle_timeout", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["bytes_to_client"], 500, "{l}");
    assert_eq!(l["backend"], o.addr.to_string(), "{l}");
}

/// Sends half of a 1000-byte upload with this request id, then stalls.
async fn stall_upload(c: &mut Client, rid: &str) {
    let mut req = format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nplumb-request-id: {rid}\r\nContent-Length: 1000\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[b'u'; 500]);
    c.send(&req).await;
}

/// The client sends half of its upload and stalls: about 300 ms later plumb gives up
/// (answers or closes), logs `client_idle_timeout`, and the origin's request ends
/// incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_cut() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    stall_upload(&mut c, "stalled-upload").await;
    let t0 = Instant::now();
    let _ = timeout(Duration::from_secs(3), c.try_response(false))
        .await
        .expect("plumb neither answered nor closed within 3 s");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "cut after {took:?}, expected about 300 ms"
    );
    let l = log_line(&plumb, "stalled-upload").await;
    assert_eq!(l["cause"], "client_idle_timeout", "{l}");
    assert_eq!(l["bytes_from_client"], 500, "{l}");
    assert!(
        eventually(Duration::from_secs(2), || o
            .seen()
            .first()
            .is_some_and(|s| !s.complete))
        .await,
        "the origin must see an incomplete upload: {:?}",
        o.seen()
    );
}

/// When plumb answers a stalled upload, the answer names the cause the log names:
/// 408 `client_idle_timeout`, not a 502 that blames the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_answer_names_the_logged_cause() {
    let o = origin(|_| vec![Step::Write(ok("never"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    stall_upload(&mut c, "stalled-answer").await;
    let answer = timeout(Duration::from_secs(3), c.try_response(false))
        .await
        .expect("plumb neither answered nor closed within 3 s");
    let l = log_line(&plumb, "stalled-answer").await;
    assert_eq!(l["cause"], "client_idle_timeout", "{l}");
    if let Ok(r) = &answer {
        assert_plumb_error(r, 408, "client_idle_timeout");
        assert_eq!(l["status"], 408, "{l}");
    }
}

/// A client's stalled upload is the client's failure, not the backend's: it must not
/// count towards the backend's errors or passive ejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_not_blamed_on_the_backend() {
    let o = origin(|_| vec![Step::Write(ok("fine"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    stall_upload(&mut c, "stalled-2").await;
    let _ = timeout(Duration::from_secs(3), c.try_response(false))
        .await
        .expect("plumb neither answered nor closed within 3 s");
    log_line(&plumb, "stalled-2").await;
    let b = plumb.server.pool("app").unwrap().backend(o.addr).unwrap();
    assert!(
        b.errors().is_empty() && b.consecutive_failures() == 0,
        "the client's stall was counted against the backend: errors {:?}, consecutive failures {}",
        b.errors(),
        b.consecutive_failures()
    );
}

/// A request body whose frames the test hands over one by one (an HTTP/2 client
/// that decides when to send END_STREAM).
struct Frames(tokio::sync::mpsc::Receiver<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// An HTTP/2 client sends its whole announced body (Content-Length: 5) but holds
/// END_STREAM back, as clients may (it comes in a later, empty DATA frame). The
/// backend reads the 5 bytes and never answers: the response-head timer must start
/// when the fifth byte went upstream, so the client gets 504
/// `upstream_response_timeout` about `response_header` (300 ms) later, not an
/// answer only when it finally ends its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_body_complete_before_end_stream_starts_the_response_timer() {
    let o = origin(|_| vec![Step::Hang]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], RESPONSE_HEADER, "")).await;
    let stream = tokio::net::TcpStream::connect(plumb.addr()).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, Frames>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (frames, body) = tokio::sync::mpsc::channel(4);
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{}/upload", plumb.addr()))
        .header("content-length", "5")
        .header("plumb-request-id", "h2-late-end")
        .body(Frames(body))
        .unwrap();
    frames
        .send(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"hello",
        )))
        .await
        .unwrap();
    let t0 = Instant::now();
    // `frames` stays open (END_STREAM held back) until the answer came.
    let resp = timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .expect("no answer within 5 s: the response-head timer never started")
        .expect("an answer, not a reset stream");
    let took = t0.elapsed();
    drop(frames);
    assert_eq!(resp.status(), 504, "{resp:?}");
    assert_eq!(
        resp.headers()
            .get("plumb-error")
            .map(|v| v.to_str().unwrap()),
        Some("upstream_response_timeout"),
        "{resp:?}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2000),
        "504 after {took:?}, expected about 300 ms"
    );
    let seen = o.seen();
    assert!(
        seen.first()
            .is_some_and(|r| r.complete && r.body == b"hello"),
        "the backend must have had the whole body: {seen:?}"
    );
    let l = log_line(&plumb, "h2-late-end").await;
    assert_eq!(l["cause"], "upstream_response_timeout", "{l}");
    assert_eq!(l["bytes_from_client"], 5, "{l}");
}

/// The backend reads a request head and then stops reading: its window shuts while
/// the client still uploads. hyper can then neither send the body (so the body's
/// idle timer is not polled) nor get an answer (so the response-head timer never
/// starts). The write towards the backend is bounded by `pool.timeouts.idle`
/// (300 ms here): the client gets 504 `upstream_idle_timeout`, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_an_upload_is_cut_after_idle() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        // Hold the socket without reading until the test ends.
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(s);
    });
    let plumb = Plumb::start(&http_config(&[backend_addr], BODY_IDLE, "")).await;
    let stream = tokio::net::TcpStream::connect(plumb.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    const TOTAL: usize = 256 << 20;
    let uploader = tokio::spawn(async move {
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nplumb-request-id: unread-upload\r\nContent-Length: {TOTAL}\r\n\r\n"
        );
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        // Bounded in bytes and time; it stops at the first error (plumb closed).
        let _ = timeout(Duration::from_secs(10), async {
            while sent < TOTAL {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
        })
        .await;
    });
    let t0 = Instant::now();
    let mut got = Vec::new();
    let read = timeout(Duration::from_secs(8), async {
        let mut buf = vec![0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let took = t0.elapsed();
    uploader.abort();
    holder.abort();
    assert!(
        read.is_ok(),
        "no answer within 8 s while the backend would not read the upload"
    );
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 504 "),
        "expected a 504, got {head:?}"
    );
    assert!(
        head.contains("\r\nplumb-error: upstream_idle_timeout\r\n"),
        "expected plumb-error upstream_idle_timeout: {head:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the answer came {took:?} after the upload started"
    );
    let l = log_line(&plumb, "unread-upload").await;
    assert_stalled(&l, "upstream_idle_timeout");
}

/// The client reads a response head and then stops reading a large body: its
/// window shuts, hyper can write nothing more, and the backend's body is not
/// polled (its idle timer does not run). The write towards the client is bounded
/// by the pool's `timeouts.idle` (300 ms): the exchange ends, logged
/// `client_idle_timeout` with the bytes that did get out, instead of holding the
/// client and the backend connection for as long as the client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_response_is_cut_after_idle() {
    const BODY: usize = 128 << 20;
    let o = big_response_origin(BODY).await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /big HTTP/1.1\r\nHost: h\r\nplumb-request-id: unread-download\r\n\r\n")
        .await;
    let r = timeout(T, c.head()).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    let t0 = Instant::now();
    // The client reads nothing more; the exchange must end on its own.
    let l = log_line(&plumb, "unread-download").await;
    let took = t0.elapsed();
    assert_stalled(&l, "client_idle_timeout");
    let out = l["bytes_to_client"].as_u64().unwrap_or(0);
    assert!(out > 0 && out < BODY as u64, "{l}");
    assert!(
        took < Duration::from_secs(3),
        "ended {took:?} after the head"
    );
    drop(c);
}

/// The log line of an exchange ended by the 300 ms write-stall bound.
fn assert_stalled(l: &Value, cause: &str) {
    assert_eq!(l["cause"], cause, "{l}");
    assert!(
        l["error"]
            .as_str()
            .is_some_and(|d| d.contains("took no bytes for 300ms")),
        "{l}"
    );
}

/// An origin answering every request with `len` bytes of body.
async fn big_response_origin(len: usize) -> crate::http_basics::Origin {
    origin(move |_| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        r.resize(r.len() + len, b'd');
        vec![Step::Write(r)]
    })
    .await
}

/// A client that reads a large response slowly but steadily (a small receive
/// buffer, 4 kB every 50 ms) is slow, not stalled: the kernel may not report the
/// socket writable for far longer than `timeouts.idle` (300 ms here), yet bytes
/// are acknowledged all the time, and plumb must keep serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_is_not_cut() {
    let o = big_response_origin(64 << 20).await;
    let plumb = Plumb::start(&http_config(&[o.addr], BODY_IDLE, "")).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(plumb.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: h\r\nplumb-request-id: slow-reader\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    // 40 rounds of 50 ms: two seconds, more than six times the bound.
    for _ in 0..40 {
        let n = timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("plumb stopped sending to a reader that was reading")
            .unwrap_or(0);
        assert!(
            n > 0,
            "plumb closed a slow but steady reader after {got} bytes"
        );
        got += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !plumb.log().iter().any(|l| l["request_id"] == "slow-reader"),
        "the exchange ended while the client was still reading: {:?}",
        plumb.log()
    );
    drop(s);
}
