//! Passive ejection: connect failures seen by real traffic take a backend out of
//! rotation for `passive.ejection` (doubling while it keeps failing), reported as
//! unhealthy with the reason; and panic mode: when every backend is down or ejected,
//! plumb still tries one instead of refusing everything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::admin::{echo_round_trip, start_admin, AdminApi};
use crate::support::{echo, refusing_addr, Plumb};

fn pool_toml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbalance = \"round_robin\"\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// One echoed request through plumb; returns its access-log line.
async fn request(plumb: &Plumb, k: usize) -> Value {
    let before = plumb.log().len();
    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    echo_round_trip(&mut s, format!("request {k}").as_bytes()).await;
    drop(s);
    plumb.wait_log(before + 1).await[before].clone()
}

/// The failed attempts at `addr` in a log line.
fn failures_at(line: &Value, addr: SocketAddr) -> usize {
    line["failed_attempts"]
        .as_array()
        .expect("failed_attempts is an array")
        .iter()
        .filter(|f| f["backend"] == addr.to_string())
        .inspect(|f| assert_eq!(f["cause"], "upstream_connect_refused", "{line}"))
        .count()
}

/// The ejection's remaining milliseconds, from the backend's `reason`.
fn ejection_left(view: &Value) -> u64 {
    let reason = view["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason: {view}"));
    assert!(
        reason.contains("ejected"),
        "reason does not mention ejection: {view}"
    );
    reason
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no duration in the reason: {view}"))
}

/// Sends requests until `addr` has failed `n` more times; returns the time of the last.
async fn fail_until(plumb: &Plumb, addr: SocketAddr, n: usize, k: &mut usize) -> Instant {
    let mut failed = 0;
    for _ in 0..10 {
        let line = request(plumb, *k).await;
        *k += 1;
        assert_eq!(
            line["cause"],
            Value::Null,
            "the good backend serves: {line}"
        );
        failed += failures_at(&line, addr);
        if failed >= n {
            assert_eq!(failed, n, "{line}");
            return Instant::now();
        }
    }
    panic!("{addr} was tried only {failed} times in 10 requests");
}

async fn view(api: &AdminApi, addr: SocketAddr) -> Value {
    api.backend("app", addr).await.expect("listed")
}

/// Two refused connects in a row eject the refusing backend for 1 s: it is reported
/// unhealthy ("ejected ..."), and connections meanwhile make one attempt only; after
/// the ejection it is tried again, and two more failures eject it for twice as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_backend() {
    let bad = refusing_addr();
    let good = echo().await;
    let plumb = Plumb::start(&pool_toml(
        &[bad, good.addr],
        "connect_attempts = 2\n[pool.passive]\nconsecutive_failures = 2\nejection = \"1s\"\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;
    let mut k = 0;

    // One failure is not enough.
    fail_until(&plumb, bad, 1, &mut k).await;
    let v = view(&api, bad).await;
    assert_eq!(v["state"], "healthy", "{v}");
    assert_eq!(v["consecutive_failures"], 1, "{v}");

    // The second ejects it.
    fail_until(&plumb, bad, 1, &mut k).await;
    let seen = Instant::now();
    let v = view(&api, bad).await;
    assert_eq!(v["state"], "unhealthy", "{v}");
    assert_eq!(v["errors"]["upstream_connect_refused"], 2, "{v}");
    let left = ejection_left(&v);
    assert!(
        left > 700 && left <= 1000,
        "a 1 s ejection has {left} ms left: {v}"
    );

    // While ejected, connections make one attempt, at the good backend.
    for _ in 0..6 {
        let line = request(&plumb, k).await;
        k += 1;
        assert_eq!(line["attempts"], 1, "{line}");
        assert_eq!(line["backend"], good.addr.to_string(), "{line}");
    }
    assert!(
        seen.elapsed() < Duration::from_millis(left.saturating_sub(50)),
        "too slow: the ejection may have ended during the checks above"
    );

    // It ends on time.
    let (_, back) = api
        .expect_backend("app", bad, Duration::from_secs(2), "back", |b| {
            b.is_some_and(|b| b["state"] == "healthy")
        })
        .await;
    let took = back - seen;
    assert!(
        took + Duration::from_millis(50) >= Duration::from_millis(left)
            && took <= Duration::from_millis(left + 200),
        "ejection with {left} ms left ended after {took:?}"
    );

    // Tried again; still refusing, so two failures eject it again, now for 2 s.
    fail_until(&plumb, bad, 2, &mut k).await;
    let v = view(&api, bad).await;
    assert_eq!(v["state"], "unhealthy", "{v}");
    let left = ejection_left(&v);
    assert!(
        left > 1500 && left <= 2000,
        "the second ejection doubles: {left} ms left: {v}"
    );
    let line = request(&plumb, k).await;
    assert_eq!(line["attempts"], 1, "{line}");
}

/// Every backend refusing and ejected: a connection still makes attempts (panic
/// mode), and fails with the real cause, not `no_healthy_backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_ejected_still_attempts() {
    let r1 = refusing_addr();
    // Two distinct addresses (a freed port can come back at once).
    let r2 = (0..10)
        .map(|_| refusing_addr())
        .find(|a| *a != r1)
        .expect("ten free ports in a row were the same");
    let plumb = Plumb::start(&pool_toml(
        &[r1, r2],
        "connect_attempts = 2\n[pool.passive]\nconsecutive_failures = 1\nejection = \"10s\"\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;

    for k in 0..3 {
        // The reset can be there before `connect` returns; either way it is an RST.
        let attempt = async {
            let mut s = TcpStream::connect(plumb.addr()).await?;
            let mut buf = [0u8; 8];
            let n = s.read(&mut buf).await?;
            Ok::<_, std::io::Error>(buf[..n].to_vec())
        };
        let e = tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .unwrap_or_else(|_| panic!("connection {k}: no reset within 2 s"))
            .expect_err("expected an RST");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "connection {k}: {e}");
        let line = plumb.wait_log(k + 1).await[k].clone();
        assert_eq!(
            line["cause"], "upstream_connect_refused",
            "connection {k}: {line}"
        );
        assert_eq!(line["attempts"], 2, "connection {k}: {line}");
        if k == 0 {
            // After the first, both are ejected.
            for a in [r1, r2] {
                let v = view(&api, a).await;
                assert_eq!(v["state"], "unhealthy", "{v}");
                ejection_left(&v);
            }
        }
    }
}

/// A backend whose health checks fail but which serves traffic: checks get a 503,
/// anything else is echoed. With it the only backend, marked down, connections still
/// reach it (panic mode): a false alarm does not become an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_marked_down_still_serves() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if buf[..n].starts_with(b"GET ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                    let _ = s.read(&mut buf).await;
                    return;
                }
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"http\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 1\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;
    let (v, _) = api
        .expect_backend("app", addr, Duration::from_secs(2), "unhealthy", |b| {
            b.is_some_and(|b| b["state"] == "unhealthy")
        })
        .await;
    assert_eq!(v.unwrap()["last_check"]["reason"], "status 503");

    let line = request(&plumb, 0).await;
    assert_eq!(line["backend"], addr.to_string(), "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["cause"], Value::Null, "{line}");
    assert_eq!(view(&api, addr).await["state"], "unhealthy");
    task.abort();
}
