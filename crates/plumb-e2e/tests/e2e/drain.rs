//! Draining and deregistering a backend through the admin API: new connections stop
//! at once, open ones go on until the drain deadline and are then closed (RST, or FIN
//! with `on_timeout = "close"`) spread over `close_spread`, with cause
//! `backend_drained`; a deregistered backend leaves the pool once drained, unless a
//! PUT takes it back first.

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
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::{connect_named, echo_round_trip, start_admin, AdminApi};
use crate::support::{named, Echo, Plumb};

/// Slack for "not before the deadline": plumb computes its deadline after the test
/// notes the time, so only scheduling jitter can make a close look early.
const EARLY: Duration = Duration::from_millis(50);
/// Slack after the last scheduled close.
const LATE: Duration = Duration::from_millis(200);

/// Two named backends "A_" and "B_" (two bytes each), round robin.
async fn two_backends(pool_extra: &str) -> (Echo, Echo, Plumb, AdminApi) {
    let a = named("A_").await;
    let b = named("B_").await;
    let toml = format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbalance = \"round_robin\"\nbackends = [\"{}\", \"{}\"]\n{pool_extra}\n",
        a.addr, b.addr
    );
    let plumb = Plumb::start(&toml).await;
    let api = start_admin(&plumb, None).await;
    (a, b, plumb, api)
}

fn backend_path(addr: SocketAddr) -> String {
    format!("/api/v1/pools/app/backends/{addr}")
}

/// Opens `n` connections and sorts them by the backend that answered.
async fn open(plumb: &Plumb, n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (name, s) = connect_named(plumb.addr()).await;
        match name.as_str() {
            "A_" => to_a.push(s),
            "B_" => to_b.push(s),
            other => panic!("unexpected backend {other:?}"),
        }
    }
    (to_a, to_b)
}

/// `n` new connections must all reach B.
async fn all_to_b(plumb: &Plumb, n: usize, when: &str) {
    for k in 0..n {
        let (name, _s) = connect_named(plumb.addr()).await;
        assert_eq!(name, "B_", "{when}: new connection {k} reached A");
    }
}

/// A client that keeps sending through its connection (a round trip every 20 ms)
/// until it fails; returns when and how.
fn keep_sending(mut s: TcpStream, k: usize) -> JoinHandle<(Instant, std::io::Error)> {
    tokio::spawn(async move {
        for i in 0u64.. {
            let msg = format!("conn {k} msg {i:06}\n");
            if let Err(e) = s.write_all(msg.as_bytes()).await {
                return (Instant::now(), e);
            }
            let mut got = vec![0u8; msg.len()];
            match s.read_exact(&mut got).await {
                Ok(_) => assert_eq!(got, msg.as_bytes(), "echo differs"),
                Err(e) => return (Instant::now(), e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unreachable!()
    })
}

fn lines_for(log: &[Value], backend: SocketAddr) -> Vec<&Value> {
    log.iter()
        .filter(|l| l["backend"] == backend.to_string())
        .collect()
}

/// Drain A with the pool's timeout (1 s) and spread (500 ms): new connections go to
/// B at once; A's open connections keep working until the deadline, then each is
/// reset between the deadline and deadline + spread, logged as `backend_drained`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_stops_new_connections_and_resets_open_ones_at_the_deadline() {
    let (a, _b, plumb, api) =
        two_backends("[pool.drain]\ntimeout = \"1s\"\nclose_spread = \"500ms\"\n").await;
    let (mut to_a, mut to_b) = open(&plumb, 6).await;
    assert_eq!((to_a.len(), to_b.len()), (3, 3), "round robin alternates");
    for s in to_a.iter_mut().chain(to_b.iter_mut()) {
        echo_round_trip(s, b"before").await;
    }

    let t0 = Instant::now();
    let r = api
        .call("POST", &format!("{}/drain", backend_path(a.addr)), None)
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let v = r.json();
    assert_eq!(v["result"], "draining", "{v}");
    assert_eq!(v["drain_timeout_ms"], 1000, "{v}");

    let view = api.backend("app", a.addr).await.unwrap();
    assert_eq!(view["state"], "draining", "{view}");
    assert_eq!(view["drain"]["deregister"], false, "{view}");
    let remaining = view["drain"]["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 500 && remaining <= 1000, "{view}");
    assert_eq!(view["active_connections"], 3, "{view}");
    assert!(
        view["reason"].as_str().is_some_and(|r| r.contains("drain")),
        "{view}"
    );

    // From now on, nothing new reaches A.
    all_to_b(&plumb, 6, "while draining").await;

    // A's connections still work before the deadline.
    for s in to_a.iter_mut() {
        echo_round_trip(s, b"during the drain").await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(1000) - EARLY,
        "the test was too slow to check A's connections before the deadline"
    );

    // Clients that keep sending through A are reset after the deadline, spread out.
    let senders: Vec<_> = to_a
        .into_iter()
        .enumerate()
        .map(|(k, s)| keep_sending(s, k))
        .collect();
    let mut ends = Vec::new();
    for h in senders {
        let (at, e) = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("a client of the drained backend was never closed")
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "expected an RST: {e}");
        let after = at - t0;
        assert!(
            after >= Duration::from_millis(1000) - EARLY,
            "reset {after:?} after the drain, before its 1 s deadline"
        );
        assert!(
            after <= Duration::from_millis(1000 + 500) + LATE,
            "reset {after:?} after the drain, later than deadline + spread"
        );
        ends.push(after);
    }
    ends.sort();
    // Three closes spread over 500 ms: at +0, +167 and +333 ms.
    let spread = ends[2] - ends[0];
    assert!(
        spread >= Duration::from_millis(250),
        "closes not spread over close_spread: {ends:?}"
    );

    // B's connections were not touched.
    for s in to_b.iter_mut() {
        echo_round_trip(s, b"after").await;
    }
    // The drain is over but A stays out of rotation (drained, not restored).
    all_to_b(&plumb, 4, "after the drain").await;
    let view = api.backend("app", a.addr).await.unwrap();
    assert_eq!(view["state"], "draining", "{view}");
    assert_eq!(view["drain"], Value::Null, "{view}");
    assert_eq!(view["active_connections"], 0, "{view}");

    // 3 to A, reset; 6 + 4 short ones and 3 to B still open.
    let log = plumb.wait_log(3 + 10).await;
    let a_lines = lines_for(&log, a.addr);
    assert_eq!(a_lines.len(), 3, "{log:?}");
    for l in a_lines {
        assert_eq!(l["cause"], "backend_drained", "{l}");
        assert_eq!(l["end"], "backend_drained", "{l}");
    }

    // A PUT takes the drained backend back into rotation.
    let r = api.call("PUT", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "restored", "{r:?}");
    assert_eq!(
        api.backend("app", a.addr).await.unwrap()["state"],
        "healthy"
    );
    let (to_a, _to_b) = open(&plumb, 4).await;
    assert_eq!(to_a.len(), 2, "a restored backend takes its share again");
}

/// With `on_timeout = "close"` the client of a drained backend gets an orderly EOF,
/// not an RST; a timeout in the request body overrides the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_with_on_timeout_close_sends_fin() {
    let (a, _b, plumb, api) = two_backends(
        "[pool.drain]\ntimeout = \"30s\"\nclose_spread = \"100ms\"\non_timeout = \"close\"\n",
    )
    .await;
    let (mut to_a, _to_b) = open(&plumb, 2).await;
    assert_eq!(to_a.len(), 1);
    let mut s = to_a.pop().unwrap();
    echo_round_trip(&mut s, b"before").await;

    let t0 = Instant::now();
    let r = api
        .call(
            "POST",
            &format!("{}/drain", backend_path(a.addr)),
            Some(r#"{"timeout": "500ms"}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["drain_timeout_ms"], 500);
    echo_round_trip(&mut s, b"during").await;

    // The client waits; at the deadline it reads EOF.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("no close within 3 s of a 500 ms drain")
        .expect("expected an orderly EOF (FIN), got an error");
    let after = t0.elapsed();
    assert_eq!(n, 0, "expected EOF, read {:?}", &buf[..n]);
    assert!(
        after >= Duration::from_millis(500) - EARLY && after <= Duration::from_millis(600) + LATE,
        "EOF {after:?} after a 500 ms drain with a 100 ms spread"
    );
    // Only A's connection has ended (B's is still open).
    let log = plumb.wait_log(1).await;
    let l = lines_for(&log, a.addr);
    assert_eq!(l.len(), 1, "{log:?}");
    assert_eq!(l[0]["cause"], "backend_drained", "{}", l[0]);
}

/// DELETE drains with the pool's timeout, then removes the backend from the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deregister_removes_the_backend_once_drained() {
    let (a, b, plumb, api) =
        two_backends("[pool.drain]\ntimeout = \"500ms\"\nclose_spread = \"100ms\"\n").await;
    let (mut to_a, _to_b) = open(&plumb, 2).await;
    let mut s = to_a.pop().unwrap();

    let t0 = Instant::now();
    let r = api.call("DELETE", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 202, "{r:?}");
    let v = r.json();
    assert_eq!(v["result"], "deregistering", "{v}");
    assert_eq!(v["drain_timeout_ms"], 500, "{v}");
    let view = api
        .backend("app", a.addr)
        .await
        .expect("listed while draining");
    assert_eq!(view["state"], "draining", "{view}");
    assert_eq!(view["drain"]["deregister"], true, "{view}");

    all_to_b(&plumb, 4, "while deregistering").await;
    echo_round_trip(&mut s, b"still served").await;

    // Removed after the deadline (and not before it: a connection is still open).
    let (_, removed_at) = api
        .expect_backend("app", a.addr, Duration::from_secs(3), "removed", |v| {
            v.is_none()
        })
        .await;
    let after = removed_at - t0;
    assert!(
        after >= Duration::from_millis(500) - EARLY
            && after <= Duration::from_millis(600) + LATE + LATE,
        "removed {after:?} after DELETE with a 500 ms drain"
    );
    // Its client was reset at the deadline.
    let mut buf = [0u8; 8];
    let e = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .expect("the client of a removed backend still hangs")
        .expect_err("expected an RST");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");

    let pools = api.pools().await;
    let addrs: Vec<&Value> = pools[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["address"])
        .collect();
    assert_eq!(addrs, [&Value::from(b.addr.to_string())], "{pools}");
    all_to_b(&plumb, 4, "after removal").await;

    // Deregistering what is gone: 404.
    let r = api.call("DELETE", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "unknown_backend");

    // With no open connection a DELETE removes at once.
    let r = api.call("PUT", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    let t1 = Instant::now();
    let r = api.call("DELETE", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 202, "{r:?}");
    api.expect_backend(
        "app",
        a.addr,
        Duration::from_millis(400),
        "removed at once",
        |v| v.is_none(),
    )
    .await;
    assert!(t1.elapsed() < Duration::from_millis(400));
}

/// A PUT during a deregistration takes the backend back: it is healthy again at once,
/// its open connections are not closed at the old deadline, and it gets new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_during_deregistration_restores_the_backend() {
    let (a, _b, plumb, api) =
        two_backends("[pool.drain]\ntimeout = \"600ms\"\nclose_spread = \"100ms\"\n").await;
    let (mut to_a, _to_b) = open(&plumb, 2).await;
    let mut s = to_a.pop().unwrap();

    let r = api.call("DELETE", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        api.backend("app", a.addr).await.unwrap()["state"],
        "draining"
    );
    all_to_b(&plumb, 2, "while deregistering").await;

    let r = api.call("PUT", &backend_path(a.addr), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "restored", "{r:?}");
    let view = api.backend("app", a.addr).await.unwrap();
    assert_eq!(view["state"], "healthy", "{view}");
    assert_eq!(view["drain"], Value::Null, "{view}");

    // Let the old deadline and its spread pass.
    tokio::time::sleep(Duration::from_millis(600 + 100 + 300)).await;
    let view = api
        .backend("app", a.addr)
        .await
        .expect("restored backend was removed");
    assert_eq!(view["state"], "healthy", "{view}");
    echo_round_trip(&mut s, b"not closed by a cancelled drain").await;

    // And A takes new connections again.
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, _c) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "A_"),
        "A gets no new connections: {names:?}"
    );
    let log = plumb.wait_log(2 + 4).await;
    assert!(
        lines_for(&log, a.addr).iter().all(|l| l["cause"].is_null()),
        "{log:?}"
    );
}
