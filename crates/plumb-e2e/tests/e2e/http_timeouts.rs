//! HTTP timers: the request head (`header_read`, slowloris gets a 408), the idle
//! keep-alive client connection (`keepalive_idle`, never while a request is in
//! flight), and the silence inside a body (`pool.timeouts.idle`) on either side.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

use crate::http_basics::{assert_plumb_error, http_config, log_line, ok, origin, Client, Step, T};
use crate::support::{eventually, Plumb};

const HEADER_READ: &str = "[listener.timeouts]\nheader_read = \"300ms\"\n";
const KEEPALIVE: &str = "[listener.timeouts]\nkeepalive_idle = \"300ms\"\n";
const BODY_IDLE: &str = "[pool.timeouts]\nidle = \"300ms\"\n";

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
