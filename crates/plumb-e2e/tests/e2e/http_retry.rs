//! HTTP retries: a connect failure moves to the next backend; a kept-alive connection
//! the backend closed is replaced by a fresh one; an idempotent bodiless request is
//! retried on another backend after `upstream_reset_before_response`, within the
//! pool's retry budget; a request that may have been processed and is not idempotent
//! is never sent twice.
//!
//! Round robin over [first, second] with equal weights is deterministic here: request
//! 1 picks first (and a retry goes to second), request 2 picks second, request 3 first
//! again, and so on; the tests still count rather than rely on the exact order.

use std::time::Duration;

use serde_json::Value;

use crate::http_basics::{get, http_config, log_line, ok, origin, Client, Step};
use crate::support::{eventually, refusing_addr, Plumb};

fn failed(l: &Value) -> &Vec<Value> {
    l["failed_attempts"].as_array().expect("failed_attempts")
}

/// A refusing backend before a good one: every request succeeds; those that tried the
/// refusing one first show 2 attempts and the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_moves_to_the_next_backend() {
    let refusing = refusing_addr();
    let good = origin(|_| vec![Step::Write(ok("good"))]).await;
    let plumb = Plumb::start(&http_config(&[refusing, good.addr], "", "")).await;
    let mut retried = 0;
    for _ in 0..4 {
        let r = get(plumb.addr(), "/", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "good");
        assert!(r.header("plumb-error").is_none());
        let l = log_line(&plumb, r.rid()).await;
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["cause"], Value::Null, "{l}");
        assert_eq!(l["backend"], good.addr.to_string(), "{l}");
        if l["attempts"] == 2 {
            retried += 1;
            assert_eq!(failed(&l).len(), 1, "{l}");
            assert_eq!(failed(&l)[0]["backend"], refusing.to_string(), "{l}");
            assert_eq!(failed(&l)[0]["cause"], "upstream_connect_refused", "{l}");
        } else {
            assert_eq!(l["attempts"], 1, "{l}");
            assert_eq!(failed(&l).len(), 0, "{l}");
        }
    }
    assert!(
        retried >= 1,
        "round robin never picked the refusing backend first"
    );
}

/// The origin answers with keep-alive and then closes the idle connection (FIN). The
/// next request goes out on a fresh connection and succeeds: no error, no failed
/// attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keepalive_connection_is_replaced() {
    let o = origin(|r| {
        if r.conn == 0 {
            vec![
                Step::Write(ok("first")),
                Step::Sleep(Duration::from_millis(100)),
                Step::Close,
            ]
        } else {
            vec![Step::Write(ok("second"))]
        }
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let pool = plumb.server.pool("app").unwrap();
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "first");
    assert!(
        eventually(Duration::from_secs(2), || pool.idle_connections() == 1).await,
        "the connection was not kept"
    );
    assert!(eventually(Duration::from_secs(2), || o.closed() == 1).await);
    // No waiting for plumb to notice the FIN: the request goes now.
    c.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "second");
    assert!(r.header("plumb-error").is_none(), "{r:?}");
    assert_eq!(o.accepted(), 2);
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["cause"], Value::Null, "{l}");
    assert_eq!(failed(&l).len(), 0, "{l}");
    assert!(
        l["connect_ms"].as_f64().is_some(),
        "a fresh connection: {l}"
    );
}

/// The keep-alive race proper: the origin closes its idle connection just as the next
/// request arrives on it (closing with the request unread, so the kernel sends an RST).
/// The request cannot have been processed; an idempotent request must be sent again
/// on a fresh connection, even when the pool has only this backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_idempotent_request_is_resent() {
    let o = origin(|r| {
        if r.conn == 0 {
            vec![Step::Write(ok("first")), Step::CloseOnNextRequest]
        } else {
            vec![Step::Write(ok("second"))]
        }
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let pool = plumb.server.pool("app").unwrap();
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "first");
    assert!(eventually(Duration::from_secs(2), || pool.idle_connections() == 1).await);
    c.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(
        o.closed(),
        1,
        "the origin dropped the kept-alive connection"
    );
    assert_eq!(
        r.status, 200,
        "an idempotent request on a reused connection the backend closed was not resent: {r:?}"
    );
    assert_eq!(r.text(), "second");
}

/// A resetting backend and a good one: idempotent GETs that hit the resetting one
/// first are retried on the good one (200, 2 attempts, the reset in the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_get_is_retried_after_a_reset() {
    let resetting = origin(|_| vec![Step::Reset]).await;
    let good = origin(|_| vec![Step::Write(ok("good"))]).await;
    let plumb = Plumb::start(&http_config(
        &[resetting.addr, good.addr],
        "[pool.passive]\nconsecutive_failures = 0\n",
        "",
    ))
    .await;
    let mut retried = 0;
    for i in 0..4 {
        let r = get(plumb.addr(), &format!("/get/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "good");
        let l = log_line(&plumb, r.rid()).await;
        assert_eq!(l["cause"], Value::Null, "{l}");
        assert_eq!(l["backend"], good.addr.to_string(), "{l}");
        if l["attempts"] == 2 {
            retried += 1;
            assert_eq!(failed(&l)[0]["backend"], resetting.addr.to_string(), "{l}");
            assert_eq!(
                failed(&l)[0]["cause"],
                "upstream_reset_before_response",
                "{l}"
            );
        }
    }
    assert!(retried >= 1);
    assert_eq!(
        resetting.seen().len(),
        retried,
        "one reset per retried request"
    );
    assert_eq!(
        good.seen().len(),
        4,
        "each request reached the good origin once"
    );
}

/// A POST (with a body) to a backend that reads it and resets: 502
/// `upstream_reset_before_response`, and the other backend never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_after_a_reset() {
    let resetting = origin(|_| vec![Step::Reset]).await;
    let good = origin(|_| vec![Step::Write(ok("good"))]).await;
    let plumb = Plumb::start(&http_config(
        &[resetting.addr, good.addr],
        "[pool.passive]\nconsecutive_failures = 0\n",
        "",
    ))
    .await;
    let mut refused = 0;
    for i in 0..4 {
        let mut c = Client::connect(plumb.addr()).await;
        let body = format!("order={i}");
        c.send(
            format!(
                "POST /order/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let r = c.response().await;
        let path = format!("/order/{i}");
        let at_resetting = resetting.seen().iter().any(|s| s.path == path);
        let at_good: Vec<_> = good.seen().into_iter().filter(|s| s.path == path).collect();
        if at_resetting {
            refused += 1;
            assert_eq!(r.status, 502, "{r:?}");
            assert_eq!(
                r.header("plumb-error"),
                Some("upstream_reset_before_response")
            );
            assert!(at_good.is_empty(), "POST {path} was sent twice");
            let l = log_line(&plumb, r.rid()).await;
            assert_eq!(l["cause"], "upstream_reset_before_response", "{l}");
            assert_eq!(l["attempts"], 1, "{l}");
            assert_eq!(l["method"], "POST", "{l}");
        } else {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(at_good.len(), 1);
            assert_eq!(at_good[0].body, body.as_bytes());
        }
    }
    assert!(
        refused >= 1,
        "round robin never picked the resetting backend"
    );
}

/// `retry_budget_percent = 0`: only the initial allowance of retries (10) is spent,
/// then idempotent requests that meet a reset get the 502. Measured: with round robin
/// over [resetting, good] every other request meets the reset first; the first 10 of
/// those are retried (200), every later one is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_bounds_retries() {
    let resetting = origin(|_| vec![Step::Reset]).await;
    let good = origin(|_| vec![Step::Write(ok("good"))]).await;
    let plumb = Plumb::start(&http_config(
        &[resetting.addr, good.addr],
        "retry_budget_percent = 0\n[pool.passive]\nconsecutive_failures = 0\n",
        "",
    ))
    .await;
    // Outcomes of the requests that met the resetting backend first, in order.
    let mut met_reset: Vec<u16> = Vec::new();
    for i in 0..40 {
        if met_reset.len() >= 14 {
            break;
        }
        let before = resetting.seen().len();
        let r = get(plumb.addr(), &format!("/b/{i}"), &[]).await;
        if resetting.seen().len() > before {
            met_reset.push(r.status);
            let l = log_line(&plumb, r.rid()).await;
            if r.status == 200 {
                assert_eq!(l["attempts"], 2, "{l}");
            } else {
                assert_eq!(
                    r.header("plumb-error"),
                    Some("upstream_reset_before_response")
                );
                assert_eq!(l["attempts"], 1, "not retried: {l}");
                assert_eq!(l["cause"], "upstream_reset_before_response", "{l}");
            }
        } else {
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    assert_eq!(met_reset.len(), 14, "{met_reset:?}");
    let mut want = vec![200u16; 10];
    want.extend([502u16; 4]);
    assert_eq!(
        met_reset, want,
        "the first 10 are retried, then the budget is spent"
    );
}

/// A backend that answers before it has read the whole upload (a 401 to a POST)
/// keeps that connection busy until the upload ends. The connection must not be
/// handed to the next request meanwhile: that request is served at once on another
/// connection, not after waiting out the busy one (regression: it used to wait a
/// second and then drop every kept-alive connection to the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_uploading_is_not_given_to_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Each connection: read a head; a POST is answered 401 at once and its
    // announced body is then read and thrown away; anything else gets 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    if head.starts_with("post") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let _ = s
                            .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        while buf.len() < len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..len);
                    } else {
                        let _ = s.write_all(&ok("fine")).await;
                    }
                }
            });
        }
    });
    let plumb = Plumb::start(&http_config(&[backend], "", "")).await;

    let mut uploader = Client::connect(plumb.addr()).await;
    uploader
        .send(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345")
        .await;
    let early = tokio::time::timeout(Duration::from_secs(5), uploader.head())
        .await
        .expect("the early answer within 5 s")
        .expect("the early answer");
    assert_eq!(early.status, 401);
    // The upload is still going (5 of 10 bytes): the next request must not wait
    // for its connection, nor be sent twice.
    let t0 = tokio::time::Instant::now();
    let r = get(plumb.addr(), "/next", &[]).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "fine");
    assert_eq!(
        log_line(&plumb, r.rid()).await["attempts"],
        1,
        "the next request was first tried on the connection still uploading"
    );
    assert!(
        took < Duration::from_millis(900),
        "the next request waited {took:?} (for the connection still uploading?)"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the next request went on a second connection"
    );
    // The upload ends; its connection is then ready and kept for reuse: two
    // requests at once find two kept-alive connections, and no third is opened.
    uploader.send(b"67890").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a, b) = tokio::join!(
        get(plumb.addr(), "/again", &[]),
        get(plumb.addr(), "/again", &[])
    );
    assert_eq!(
        (a.text(), b.text()),
        ("fine".to_string(), "fine".to_string())
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "both kept-alive connections were reused, none thrown away"
    );
    server.abort();
}
