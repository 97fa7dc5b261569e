//! Regression tests for what a review of the HTTP proxy found: a backend's own 400
//! reaches the client untouched; one host per request; upgraded tunnels count
//! against max_connections and wait for shutdown; a slow upload is not a response
//! timeout; keepalive_idle is not cut short by the head timer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http_basics::{get, http_config, origin, response, Client, Step};
use crate::support::Plumb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_400_and_431_pass_through_untouched() {
    let o = origin(|r| {
        let status = if r.path.ends_with("431") { 431 } else { 400 };
        vec![Step::Write(response(
            status,
            &[("x-from", "origin")],
            b"origin says no",
        ))]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    for (path, status) in [("/a/400", 400), ("/b/431", 431)] {
        let r = get(plumb.addr(), path, &[]).await;
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(r.header("x-from"), Some("origin"), "{r:?}");
        assert_eq!(
            r.header("plumb-error"),
            None,
            "a backend's answer is not plumb's error: {r:?}"
        );
        assert_eq!(r.text(), "origin says no");
    }
    // And the connection keeps working after a backend 400 on keep-alive.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /c/400 HTTP/1.1\r\nHost: x\r\n\r\nGET /d/400 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let first = c.response().await;
    let second = c.response().await;
    assert_eq!((first.status, second.status), (400, 400));
    assert_eq!(second.header("x-from"), Some("origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_per_request() {
    let o = origin(|r| {
        vec![Step::Write(crate::http_basics::ok(
            r.header("host").unwrap_or("-"),
        ))]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    // Absolute-form target against a different Host: refused, not guessed.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET http://public.example/ HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("plumb-error"), Some("bad_request"));
    // Two Host headers: refused.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 400, "{r:?}");
    // Absolute-form agreeing with Host: the backend sees that host.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET http://same.example/ HTTP/1.1\r\nHost: same.example\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "same.example");
    assert!(o
        .seen()
        .iter()
        .all(|q| q.header("host") == Some("same.example")));
}

async fn upgrade(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed before 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_max_connections_and_wait_for_shutdown() {
    let o = origin(|_| {
        vec![
            Step::Write(response(
                101,
                &[("connection", "Upgrade"), ("upgrade", "websocket")],
                b"",
            )),
            Step::Echo,
        ]
    })
    .await;
    let plumb = Plumb::start(&format!(
        "[runtime]\nshutdown_grace = \"1s\"\n{}",
        http_config(&[o.addr], "", "max_connections = 2\n")
    ))
    .await;
    let mut t1 = upgrade(plumb.addr()).await;
    let _t2 = upgrade(plumb.addr()).await;
    // A third connection is over the limit even though hyper let go of the first two.
    // (A reset that fast can already fail the connect.)
    match TcpStream::connect(plumb.addr()).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(mut third) => {
            let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
                .await
                .unwrap();
            assert!(
                matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                    || matches!(r, Ok(0)),
                "third connection was served: {r:?}"
            );
        }
    }
    // Shutdown waits for the tunnels (grace 1 s), then closes them with cause shutdown.
    t1.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    t1.read_exact(&mut echo).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let stopping = tokio::spawn(plumb.stop_and_keep_log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    t1.write_all(b"pong").await.unwrap();
    t1.read_exact(&mut echo).await.unwrap();
    assert_eq!(
        &echo, b"pong",
        "the tunnel was cut before the grace period ended"
    );
    let log = stopping.await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "shutdown did not wait for the tunnels"
    );
    assert!(
        log.iter()
            .any(|l| l["upgraded"] == true && l["cause"] == "shutdown"),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_a_response_timeout() {
    let o = origin(|_| vec![Step::Write(crate::http_basics::ok("got it"))]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.timeouts]\nresponse_header = \"300ms\"\n",
        "",
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
        .await;
    // Ten bytes over a second: slower than response_header, never idle for long.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send(b"x").await;
    }
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "got it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_idle_longer_than_header_read_is_honoured() {
    let o = origin(|_| vec![Step::Write(crate::http_basics::ok("hi"))]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "",
        "[listener.timeouts]\nheader_read = \"200ms\"\nkeepalive_idle = \"1500ms\"\n",
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    // Idle for 1.3 s: longer than header_read plus hyper's 1 s backstop (1.2 s),
    // shorter than keepalive_idle. The connection must still serve.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status, 200);
    // And keepalive_idle itself still closes a kept-alive connection. (A fresh
    // connection that sends nothing is header_read's: see http_timeouts.)
    let mut c2 = Client::connect(plumb.addr()).await;
    c2.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c2.response().await.status, 200);
    let t0 = tokio::time::Instant::now();
    assert!(
        c2.until_eof(Duration::from_secs(4)).await.is_some(),
        "keepalive_idle never closed the connection"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "closed after {:?}, before keepalive_idle",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_slip_past_a_route() {
    let o = origin(|r| vec![Step::Write(crate::http_basics::ok(r.path.clone()))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    for path in ["/public/../admin", "/public/%2e%2e/admin", "/./x"] {
        let r = get(plumb.addr(), path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.header("plumb-error"), Some("bad_request"), "{path}");
    }
    assert!(o.seen().is_empty(), "a dot-segment path reached the origin");
    assert_eq!(get(plumb.addr(), "/a..b/c.d", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_ends_http_requests_in_flight() {
    let o = origin(|r| {
        if r.path == "/stream" {
            // A head and a first chunk, then silence far longer than the drain.
            vec![
                Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst".to_vec()),
                Step::Sleep(Duration::from_secs(10)),
            ]
        } else {
            vec![Step::Sleep(Duration::from_secs(10))]
        }
    })
    .await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.drain]\ntimeout = \"500ms\"\n",
        "",
    ))
    .await;
    // One response streaming, one request waiting for its head.
    let mut streaming = Client::connect(plumb.addr()).await;
    streaming
        .send(b"GET /stream HTTP/1.1\r\nHost: x\r\nplumb-request-id: streaming\r\n\r\n")
        .await;
    let head = streaming.head().await.unwrap();
    assert_eq!(head.status, 200);
    let mut waiting = Client::connect(plumb.addr()).await;
    waiting
        .send(b"GET /wait HTTP/1.1\r\nHost: x\r\nplumb-request-id: waiting\r\nConnection: close\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = tokio::time::Instant::now();
    plumb
        .server
        .pool("app")
        .unwrap()
        .drain(o.addr, None, false)
        .unwrap();
    // The waiting request is answered 503 backend_drained at the deadline.
    let r = waiting.response().await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("plumb-error"), Some("backend_drained"));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    // The streaming response is cut, not left hanging until the origin's 10 s.
    let cut = streaming.until_eof(Duration::from_secs(2)).await;
    assert!(
        cut.is_some(),
        "the streaming response outlived the drain deadline"
    );
    let line = crate::http_basics::log_line(&plumb, "streaming").await;
    assert_eq!(line["cause"], "backend_drained", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_get_413() {
    let o = origin(|_| vec![Step::Write(crate::http_basics::ok("stored"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "max_body_bytes = 100\n")).await;
    // Announced too large: refused before anything goes upstream.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("plumb-error"), Some("request_too_large"));
    assert!(
        o.seen().is_empty(),
        "an announced oversized body reached the origin"
    );
    // Chunked, growing past the limit: 413 too.
    let mut c = Client::connect(plumb.addr()).await;
    let mut req = b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"64\r\n");
        req.extend_from_slice(&[b'z'; 100]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("plumb-error"), Some("request_too_large"));
    // Within the limit: through.
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nConnection: close\r\n\r\n")
        .await;
    c.send(&[b'a'; 50]).await;
    assert_eq!(c.response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_requests_with_connection_close() {
    let o = origin(|_| {
        vec![
            Step::Sleep(Duration::from_millis(500)),
            Step::Write(crate::http_basics::ok("late")),
        ]
    })
    .await;
    let plumb = Plumb::start(&format!(
        "[runtime]\nshutdown_grace = \"3s\"\n{}",
        http_config(&[o.addr], "", "")
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(plumb.stop_and_keep_log());
    // The request in flight is still answered, told the connection closes, and then
    // the connection ends: no further request can start on it.
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "late");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(
        c.until_eof(Duration::from_secs(2)).await.is_some(),
        "the connection stayed open"
    );
    let log = stopping.await.unwrap();
    assert!(
        log.iter()
            .any(|l| l["path"] == "/slow" && l["status"] == 200 && l["cause"].is_null()),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_log_both_legs_tcp_info() {
    let o = origin(|_| vec![Step::Write(crate::http_basics::ok("hi"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let r = get(
        plumb.addr(),
        "/tcp-info",
        &[("plumb-request-id", "tcpinfo")],
    )
    .await;
    assert_eq!(r.status, 200);
    let l = crate::http_basics::log_line(&plumb, "tcpinfo").await;
    for leg in ["client_tcp", "upstream_tcp"] {
        assert!(l[leg]["rtt_ms"].is_number(), "{leg} missing: {l}");
        assert!(l[leg]["total_retrans"].is_number(), "{l}");
        assert_eq!(l[leg]["suspected_blackhole"], false, "{l}");
    }
}
