//! Connect retries: a backend that refuses or times out is skipped for the next one,
//! each backend at most once and at most `connect_attempts` times; bytes the client
//! sent meanwhile are not lost; when every attempt fails the client gets an RST.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{blackhole, config, echo, read_to_end, refusing_addr, Plumb};

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Sends `msg`, half-closes, and returns everything read back until EOF.
async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(addr).await;
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let (got, err) = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut s))
        .await
        .expect("no EOF within 10 s");
    assert!(err.is_none(), "read failed: {err:?}");
    got
}

/// Connects and expects plumb to reset the connection within `limit`. The reset can
/// come so fast that it is already there when `connect` checks the socket's error, so
/// `connect` failing with ConnectionReset counts; otherwise the first read must fail
/// with ConnectionReset (not return EOF, not hang).
async fn connect_expect_reset(addr: SocketAddr, early: &[u8], limit: Duration) {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        // A write may also meet the RST already; only the read's verdict matters.
        let _ = s.write_all(early).await;
        let mut buf = [0u8; 64];
        match s.read(&mut buf).await {
            Ok(n) => panic!("expected a reset, read returned Ok({n})"),
            Err(e) => Err(e),
        }
    };
    let r: std::io::Result<()> = tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| panic!("no reset within {limit:?}"));
    let e = r.expect_err("unreachable: the attempt only returns errors");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
}

fn failed(line: &Value) -> &Vec<Value> {
    line["failed_attempts"]
        .as_array()
        .expect("failed_attempts is an array")
}

/// A refusing backend and a healthy one: every client connection succeeds; the ones
/// that tried the refusing backend first show 2 attempts and the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_skipped() {
    let refusing = refusing_addr();
    let good = echo().await;
    let plumb = Plumb::start(&config(
        &[refusing.to_string(), good.addr.to_string()],
        "",
        "",
    ))
    .await;

    const N: usize = 6;
    for k in 0..N {
        let msg = format!("hello {k}");
        let got = round_trip(plumb.addr(), msg.as_bytes()).await;
        assert_eq!(got, msg.as_bytes(), "connection {k}");
        plumb.wait_log(k + 1).await;
    }

    let log = plumb.wait_log(N).await;
    let mut retried = 0;
    for line in &log {
        assert_eq!(line["end"], "client_closed", "{line}");
        assert_eq!(line["backend"], good.addr.to_string(), "{line}");
        match line["attempts"].as_u64() {
            Some(1) => assert!(failed(line).is_empty(), "{line}"),
            Some(2) => {
                retried += 1;
                let f = failed(line);
                assert_eq!(f.len(), 1, "{line}");
                assert_eq!(f[0]["cause"], "upstream_connect_refused", "{line}");
                assert_eq!(f[0]["backend"], refusing.to_string(), "{line}");
            }
            other => panic!("attempts {other:?}: {line}"),
        }
    }
    // Round robin starts with the first backend, the refusing one, and keeps coming
    // back to it: over 6 connections it is tried first more than once.
    assert!(
        retried >= 2,
        "the refusing backend was tried first only {retried} times: {log:?}"
    );
    assert_eq!(
        log[0]["attempts"], 2,
        "the first connection tries the first backend: {}",
        log[0]
    );
}

/// A black-holed backend (SYNs dropped) and a healthy one, connect timeout 300 ms:
/// the connection succeeds after about 300 ms, the failed attempt is a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_moves_to_next_backend() {
    let hole = blackhole();
    let good = echo().await;
    let plumb = Plumb::start(&config(
        &[hole.addr.to_string(), good.addr.to_string()],
        "[pool.timeouts]\nconnect = \"300ms\"",
        "",
    ))
    .await;

    let t0 = Instant::now();
    let got = round_trip(plumb.addr(), b"ping").await;
    let elapsed = t0.elapsed();
    assert_eq!(got, b"ping");
    assert!(
        elapsed >= Duration::from_millis(290),
        "answered in {elapsed:?}: the black hole was not tried first?"
    );
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["end"], "client_closed", "{line}");
    assert_eq!(line["backend"], good.addr.to_string(), "{line}");
    let f = failed(line);
    assert_eq!(f.len(), 1, "{line}");
    assert_eq!(f[0]["cause"], "upstream_connect_timeout", "{line}");
    assert_eq!(f[0]["backend"], hole.addr.to_string(), "{line}");
    let ms = f[0]["ms"].as_f64().unwrap();
    assert!(
        (290.0..1000.0).contains(&ms),
        "timed-out attempt took {ms} ms: {line}"
    );
}

/// Bytes written at once, while plumb is still waiting 300 ms on the black hole,
/// all reach the healthy backend and come back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_survive_a_failed_attempt() {
    let hole = blackhole();
    let good = echo().await;
    let plumb = Plumb::start(&config(
        &[hole.addr.to_string(), good.addr.to_string()],
        "[pool.timeouts]\nconnect = \"300ms\"",
        "",
    ))
    .await;

    let mut rng = fastrand::Rng::with_seed(7);
    let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
        .take(32 * 1024)
        .collect();

    let t0 = Instant::now();
    let mut s = connect(plumb.addr()).await;
    // Two writes, both before any backend is connected.
    s.write_all(&data[..100]).await.unwrap();
    s.write_all(&data[100..]).await.unwrap();
    let written = t0.elapsed();
    assert!(
        written < Duration::from_millis(250),
        "writing took {written:?}; the test needs it to finish before plumb connects"
    );
    s.shutdown().await.unwrap();

    let (got, err) = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut s))
        .await
        .expect("no EOF within 10 s");
    assert!(err.is_none(), "read failed: {err:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "the black hole was not tried first"
    );
    assert_eq!(got.len(), data.len(), "bytes lost or added");
    assert!(got == data, "bytes differ");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(
        failed(line)[0]["cause"],
        "upstream_connect_timeout",
        "{line}"
    );
    assert_eq!(line["bytes_from_client"], data.len(), "{line}");
    assert_eq!(line["bytes_to_client"], data.len(), "{line}");
    assert_eq!(line["end"], "client_closed", "{line}");
}

/// Checks a log line of a connection whose every attempt failed with `cause`.
fn assert_all_failed(line: &Value, cause: &str, attempts: usize, backends: &[SocketAddr]) {
    assert_eq!(line["end"], cause, "{line}");
    assert_eq!(line["cause"], cause, "{line}");
    assert_eq!(line["attempts"], attempts, "{line}");
    assert!(line["backend"].is_null(), "{line}");
    let f = failed(line);
    assert_eq!(f.len(), attempts, "{line}");
    let mut seen = HashSet::new();
    for a in f {
        assert_eq!(a["cause"], cause, "{line}");
        let b: SocketAddr = a["backend"].as_str().unwrap().parse().unwrap();
        assert!(backends.contains(&b), "unknown backend {b}: {line}");
        assert!(seen.insert(b), "backend {b} tried twice: {line}");
    }
}

/// Three refusing backends, default connect_attempts (3): each is tried once, then the
/// client is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_refused_resets_the_client() {
    let backends = [refusing_addr(), refusing_addr(), refusing_addr()];
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let plumb = Plumb::start(&config(&names, "", "")).await;

    connect_expect_reset(plumb.addr(), b"anyone?", Duration::from_secs(2)).await;

    let log = plumb.wait_log(1).await;
    assert_all_failed(&log[0], "upstream_connect_refused", 3, &backends);
}

/// Three refusing backends, connect_attempts = 2: only two are tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_attempts_bounds_the_tries() {
    let backends = [refusing_addr(), refusing_addr(), refusing_addr()];
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let plumb = Plumb::start(&config(&names, "connect_attempts = 2", "")).await;

    for k in 0..3 {
        connect_expect_reset(plumb.addr(), b"", Duration::from_secs(2)).await;
        let log = plumb.wait_log(k + 1).await;
        assert_all_failed(&log[k], "upstream_connect_refused", 2, &backends);
    }
}

/// Two refusing backends, connect_attempts = 5: each backend is tried at most once,
/// so two attempts, not five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_is_tried_at_most_once() {
    let backends = [refusing_addr(), refusing_addr()];
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let plumb = Plumb::start(&config(&names, "connect_attempts = 5", "")).await;

    connect_expect_reset(plumb.addr(), b"", Duration::from_secs(2)).await;
    let log = plumb.wait_log(1).await;
    assert_all_failed(&log[0], "upstream_connect_refused", 2, &backends);
}

/// Two black holes, connect timeout 300 ms: both time out (about 600 ms), then the
/// client is reset with cause upstream_connect_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_timed_out_resets_the_client() {
    let holes = [blackhole(), blackhole()];
    let backends: Vec<SocketAddr> = holes.iter().map(|h| h.addr).collect();
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let plumb = Plumb::start(&config(&names, "[pool.timeouts]\nconnect = \"300ms\"", "")).await;

    let t0 = Instant::now();
    connect_expect_reset(plumb.addr(), b"", Duration::from_secs(3)).await;
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(580),
        "reset after {elapsed:?}, before two 300 ms attempts"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "reset after {elapsed:?}"
    );

    let log = plumb.wait_log(1).await;
    assert_all_failed(&log[0], "upstream_connect_timeout", 2, &backends);
    for a in failed(&log[0]) {
        let ms = a["ms"].as_f64().unwrap();
        assert!(
            (290.0..1000.0).contains(&ms),
            "attempt took {ms} ms: {}",
            log[0]
        );
    }
}
