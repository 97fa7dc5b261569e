//! Active health checks: a backend that stops answering is marked down after `fall`
//! failed checks (with the failing check's reason in the admin API) and traffic avoids
//! it; it comes back after `rise` passes. Checks close with FIN (the backend reads an
//! orderly EOF, never a reset) unless `close = "rst"`. HTTP checks judge the status and
//! time out a silent backend. `on_marked_down` resets or keeps the open connections
//! of a backend marked down.

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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::{connect_named, echo_round_trip, start_admin, AdminApi};
use crate::support::{blackhole, named, Plumb};

const TCP_CHECKS: &str =
    "[pool.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";

fn pool_toml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbalance = \"round_robin\"\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// A backend on `l` that writes `name` to each connection and then echoes. Dropping
/// the handle closes the listener (new connects are refused) but leaves accepted
/// connections running.
fn named_on(l: TcpListener, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

/// Binds `addr` again (SO_REUSEADDR, as a restarted server would).
fn rebind(addr: SocketAddr) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(128).unwrap();
    s.set_nonblocking(true).unwrap();
    TcpListener::from_std(s.into()).unwrap()
}

fn state_is(state: &'static str) -> impl Fn(Option<&Value>) -> bool {
    move |b| b.is_some_and(|b| b["state"] == state)
}

/// Waits until both backends have passed a check, so the test starts from "up".
async fn wait_checked_ok(api: &AdminApi, addrs: &[SocketAddr]) {
    for a in addrs {
        api.expect_backend("app", *a, Duration::from_secs(2), "checked ok", |b| {
            b.is_some_and(|b| b["state"] == "healthy" && b["last_check"]["ok"] == true)
        })
        .await;
    }
}

/// A backend that stops listening is marked down after two refused checks, with the
/// reason; connections avoid it; listening again on the same port brings it back
/// after two passing checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_backend_is_marked_down_and_comes_back() {
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = la.local_addr().unwrap();
    let a = named_on(la, "A_");
    let b = named("B_").await;
    let plumb = Plumb::start(&pool_toml(&[a_addr, b.addr], TCP_CHECKS)).await;
    let api = start_admin(&plumb, None).await;
    let pools = api.pools().await;
    assert_eq!(pools[0]["health_checks"], "tcp", "{pools}");
    wait_checked_ok(&api, &[a_addr, b.addr]).await;

    // A stops listening.
    a.abort();
    let _ = a.await;
    let t_down = Instant::now();
    let (view, seen) = api
        .expect_backend(
            "app",
            a_addr,
            Duration::from_secs(2),
            "unhealthy",
            state_is("unhealthy"),
        )
        .await;
    let view = view.unwrap();
    let took = seen - t_down;
    // Two failed checks 180-220 ms apart, the first within an interval: 180-440 ms.
    assert!(
        took >= Duration::from_millis(150) && took <= Duration::from_millis(440 + 300),
        "marked down {took:?} after it stopped listening (fall = 2, interval = 200ms)"
    );
    assert_eq!(view["last_check"]["ok"], false, "{view}");
    assert_eq!(view["last_check"]["reason"], "connect refused", "{view}");
    assert_eq!(
        view["reason"], "health check failed: connect refused",
        "{view}"
    );

    // Connections avoid it: every one lands on B, at the first attempt.
    for k in 0..6 {
        let (name, _s) = connect_named(plumb.addr()).await;
        assert_eq!(name, "B_", "connection {k} while A is down");
    }
    let log = plumb.wait_log(6).await;
    assert!(log.iter().all(|l| l["attempts"] == 1), "{log:?}");

    // A listens again on the same port: up after two passing checks.
    let a2 = named_on(rebind(a_addr), "A_");
    let t_up = Instant::now();
    let (view, seen) = api
        .expect_backend(
            "app",
            a_addr,
            Duration::from_secs(2),
            "healthy again",
            state_is("healthy"),
        )
        .await;
    let took = seen - t_up;
    assert!(
        took >= Duration::from_millis(150) && took <= Duration::from_millis(440 + 300),
        "back up {took:?} after it listened again (rise = 2, interval = 200ms)"
    );
    let view = view.unwrap();
    assert_eq!(view["last_check"]["ok"], true, "{view}");
    assert_eq!(view["last_check"]["reason"], "ok", "{view}");
    assert_eq!(view["reason"], Value::Null, "{view}");
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, _s) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    assert_eq!(names.iter().filter(|n| *n == "A_").count(), 2, "{names:?}");
    a2.abort();
}

/// What a raw backend saw on each connection it accepted: an orderly EOF, a reset, or
/// something else.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Eof,
    Reset,
    Other(String),
}

/// A backend that accepts, reads until EOF or error (sending nothing), and reports
/// what it saw.
async fn recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>, JoinHandle<()>) {
    recording_backend_with_banner(b"").await
}

/// As [`recording_backend`], writing `banner` first on each connection (as SMTP or
/// SSH servers do).
async fn recording_backend_with_banner(
    banner: &'static [u8],
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if !banner.is_empty() && s.write_all(banner).await.is_err() {
                    let _ = tx.send(Seen::Other("banner write failed".into()));
                    return;
                }
                let mut buf = [0u8; 256];
                let seen = loop {
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                        Err(_) => break Seen::Other("no close within 3 s".into()),
                        Ok(Ok(0)) => break Seen::Eof,
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => break Seen::Reset,
                        Ok(Err(e)) => break Seen::Other(e.to_string()),
                    }
                };
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx, task)
}

async fn collect(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<Seen> {
    let mut v = Vec::new();
    for _ in 0..n {
        let s = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} checks within 3 s: {v:?}", v.len()))
            .unwrap();
        v.push(s);
    }
    v
}

/// Default checks close with FIN: the backend reads EOF on every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_close_with_fin() {
    let (addr, mut rx, task) = recording_backend().await;
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    ))
    .await;
    let seen = collect(&mut rx, 5).await;
    assert!(seen.iter().all(|s| *s == Seen::Eof), "{seen:?}");
    drop(plumb);
    task.abort();
}

/// A backend that speaks first (a banner the check never asks for) still sees an
/// orderly close: the check reads what was sent before it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_close_with_fin_after_a_banner() {
    let (addr, mut rx, task) =
        recording_backend_with_banner(b"220 mail.example ESMTP ready\r\n").await;
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    ))
    .await;
    let seen = collect(&mut rx, 5).await;
    assert!(seen.iter().all(|s| *s == Seen::Eof), "{seen:?}");
    drop(plumb);
    task.abort();
}

/// A backend that never answers the SYN is marked down with reason "connect timeout
/// after 300ms".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_syn_is_a_connect_timeout() {
    let hole = blackhole();
    let b = named("B_").await;
    let plumb = Plumb::start(&pool_toml(&[hole.addr, b.addr], TCP_CHECKS)).await;
    let api = start_admin(&plumb, None).await;
    let (view, _) = api
        .expect_backend(
            "app",
            hole.addr,
            Duration::from_secs(3),
            "unhealthy",
            state_is("unhealthy"),
        )
        .await;
    let view = view.unwrap();
    assert_eq!(
        view["last_check"]["reason"], "connect timeout after 300ms",
        "{view}"
    );
    assert_eq!(
        view["reason"], "health check failed: connect timeout after 300ms",
        "{view}"
    );
    assert_eq!(
        api.backend("app", b.addr).await.unwrap()["state"],
        "healthy"
    );
}

/// `close = "rst"`: the backend sees each check end with a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_close_with_rst_when_configured() {
    let (addr, mut rx, task) = recording_backend().await;
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nclose = \"rst\"\n",
    ))
    .await;
    let seen = collect(&mut rx, 5).await;
    assert!(seen.iter().all(|s| *s == Seen::Reset), "{seen:?}");
    drop(plumb);
    task.abort();
}

/// An HTTP backend: reads a request head, reports its first line and Host header,
/// answers `response` (or nothing at all when `None`, holding the connection).
async fn http_backend(
    response: Option<&'static str>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, String)>,
    JoinHandle<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let first = text.lines().next().unwrap_or("").to_string();
                let host = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Host: "))
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send((first, host));
                match response {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                        let _ = s.shutdown().await;
                        // Read to the checker's FIN so our close is orderly too.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                    }
                    None => {
                        // Never answer; hold until the checker gives up.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                    }
                }
            });
        }
    });
    (addr, rx, task)
}

const HTTP_CHECKS: &str = "[pool.health]\nkind = \"http\"\npath = \"/ready\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";

/// HTTP checks: a 503 marks the backend down with reason "status 503"; a 200 keeps
/// the other one up; the request is a GET of the configured path with a Host header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_503_marks_down() {
    let (bad, mut bad_rx, bad_task) = http_backend(Some(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ))
    .await;
    let (good, mut good_rx, good_task) = http_backend(Some(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ))
    .await;
    let plumb = Plumb::start(&pool_toml(&[bad, good], HTTP_CHECKS)).await;
    let api = start_admin(&plumb, None).await;

    let (view, _) = api
        .expect_backend(
            "app",
            bad,
            Duration::from_secs(2),
            "unhealthy",
            state_is("unhealthy"),
        )
        .await;
    let view = view.unwrap();
    assert_eq!(view["last_check"]["reason"], "status 503", "{view}");
    assert_eq!(view["reason"], "health check failed: status 503", "{view}");

    let (req, host) = bad_rx.recv().await.unwrap();
    assert_eq!(req, "GET /ready HTTP/1.1");
    assert_eq!(host, bad.to_string());
    let (req, _) = good_rx.recv().await.unwrap();
    assert_eq!(req, "GET /ready HTTP/1.1");
    let view = api.backend("app", good).await.unwrap();
    assert_eq!(view["state"], "healthy", "{view}");
    assert!(
        view["last_check"].is_null() || view["last_check"]["reason"] == "ok",
        "{view}"
    );
    // It stays down while it keeps answering 503.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.backend("app", bad).await.unwrap()["state"], "unhealthy");
    assert_eq!(
        api.backend("app", good).await.unwrap()["last_check"]["reason"],
        "ok"
    );
    bad_task.abort();
    good_task.abort();
}

/// An HTTP backend that accepts and never answers is marked down with reason
/// "response timeout after 300ms".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_silent_backend_times_out() {
    let (silent, mut rx, task) = http_backend(None).await;
    let plumb = Plumb::start(&pool_toml(&[silent], HTTP_CHECKS)).await;
    let api = start_admin(&plumb, None).await;
    let t0 = Instant::now();
    let (view, seen) = api
        .expect_backend(
            "app",
            silent,
            Duration::from_secs(3),
            "unhealthy",
            state_is("unhealthy"),
        )
        .await;
    let view = view.unwrap();
    assert_eq!(
        view["last_check"]["reason"], "response timeout after 300ms",
        "{view}"
    );
    assert_eq!(
        view["reason"], "health check failed: response timeout after 300ms",
        "{view}"
    );
    // Two checks of 300 ms each, 180-220 ms apart, the first within an interval.
    let took = seen - t0;
    assert!(
        took >= Duration::from_millis(600)
            && took <= Duration::from_millis(220 + 300 + 220 + 300 + 300),
        "marked down {took:?} after start"
    );
    assert!(rx.recv().await.is_some(), "the backend got a request");
    task.abort();
}

/// Starts plumb with A (stoppable) and B, health checks, and `extra`; opens a client
/// connection to A; stops A's listener. Returns what the test needs.
async fn connection_to_a_then_stop_a(
    extra: &str,
) -> (
    Plumb,
    AdminApi,
    SocketAddr,
    TcpStream,
    Instant,
    JoinHandle<()>,
) {
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = la.local_addr().unwrap();
    let a = named_on(la, "A_");
    let b = named("B_").await;
    let plumb = Plumb::start(&pool_toml(
        &[a_addr, b.addr],
        &format!("{extra}{TCP_CHECKS}"),
    ))
    .await;
    let api = start_admin(&plumb, None).await;
    wait_checked_ok(&api, &[a_addr, b.addr]).await;
    let (name, mut s) = connect_named(plumb.addr()).await;
    assert_eq!(name, "A_", "round robin starts with the first backend");
    echo_round_trip(&mut s, b"hello").await;
    a.abort();
    let _ = a.await;
    let stopped = Instant::now();
    // B is kept alive by the caller's runtime: leak its handle into a task.
    let keep_b = tokio::spawn(async move {
        let _b = b;
        std::future::pending::<()>().await;
    });
    (plumb, api, a_addr, s, stopped, keep_b)
}

/// Default `on_marked_down = "reset"`: the open connection to a backend marked down
/// is reset at once, logged as `backend_marked_down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marked_down_resets_open_connections() {
    let (plumb, api, a_addr, mut s, stopped, keep_b) = connection_to_a_then_stop_a("").await;

    // The client waits on a read; the admin API is polled meanwhile.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        (Instant::now(), r.map(|r| r.map(|n| buf[..n].to_vec())))
    });
    let (_, down_seen) = api
        .expect_backend(
            "app",
            a_addr,
            Duration::from_secs(2),
            "unhealthy",
            state_is("unhealthy"),
        )
        .await;
    let (reset_at, r) = reader.await.unwrap();
    let r = r.expect("the client of a backend marked down still hangs after 3 s");
    let e = r.expect_err("expected an RST");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    // The reset follows the mark-down, not anything earlier: A's listener closing
    // does not touch an accepted connection.
    assert!(
        reset_at - stopped >= Duration::from_millis(150),
        "reset {:?} after A stopped: before two checks could fail",
        reset_at - stopped
    );
    let gap = if reset_at > down_seen {
        reset_at - down_seen
    } else {
        down_seen - reset_at
    };
    assert!(
        gap <= Duration::from_millis(200),
        "reset {gap:?} away from the mark-down"
    );

    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["backend"], a_addr.to_string(), "{}", log[0]);
    assert_eq!(log[0]["cause"], "backend_marked_down", "{}", log[0]);
    keep_b.abort();
}

/// `on_marked_down = "keep"`: the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marked_down_keeps_open_connections_when_configured() {
    let (plumb, api, a_addr, mut s, _stopped, keep_b) =
        connection_to_a_then_stop_a("on_marked_down = \"keep\"\n").await;
    api.expect_backend(
        "app",
        a_addr,
        Duration::from_secs(2),
        "unhealthy",
        state_is("unhealthy"),
    )
    .await;
    echo_round_trip(&mut s, b"after the mark-down").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    echo_round_trip(&mut s, b"still").await;
    assert!(
        plumb.log().is_empty(),
        "the connection ended: {:?}",
        plumb.log()
    );
    // New connections avoid A meanwhile.
    let (name, _c) = connect_named(plumb.addr()).await;
    assert_eq!(name, "B_");
    s.shutdown().await.unwrap();
    drop(s);
    keep_b.abort();
}

/// A backend registered through the API is health-checked like the others; once
/// deregistered and removed, its checks stop (no checker outlives its backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_backends_are_checked_until_removed() {
    let b = named("B_").await;
    let (addr, mut rx, task) = recording_backend().await;
    let plumb = Plumb::start(&pool_toml(
        &[b.addr],
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;
    let path = format!("/api/v1/pools/app/backends/{addr}");
    let r = api.call("PUT", &path, None).await;
    assert_eq!(r.status, 201, "{r:?}");

    // Checked: connections arrive, each closed with FIN, and the API shows the result.
    let seen = collect(&mut rx, 3).await;
    assert!(seen.iter().all(|s| *s == Seen::Eof), "{seen:?}");
    api.expect_backend("app", addr, Duration::from_secs(1), "checked", |v| {
        v.is_some_and(|v| v["last_check"]["reason"] == "ok")
    })
    .await;

    // Deregistered with nothing open: removed at once, and checks stop.
    let r = api.call("DELETE", &path, None).await;
    assert_eq!(r.status, 202, "{r:?}");
    api.expect_backend("app", addr, Duration::from_secs(1), "removed", |v| {
        v.is_none()
    })
    .await;
    // A check already under way may still finish; after that, nothing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    while rx.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = 0;
    while rx.try_recv().is_ok() {
        late += 1;
    }
    assert_eq!(
        late, 0,
        "{late} health checks reached a removed backend in 500 ms"
    );
    task.abort();
}

/// HTTP checks close with FIN too, even when the backend sends a large body and keeps
/// the connection open after it (ignoring `Connection: close`): the check reads what
/// was sent, so the backend reads an orderly EOF, never a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_close_with_fin_after_a_large_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = vec![b'x'; 64 * 1024];
                let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                resp.extend_from_slice(&body);
                if s.write_all(&resp).await.is_err() {
                    let _ = tx.send(Seen::Other("write failed".into()));
                    return;
                }
                // Keep the connection open; report how the checker ends it.
                let seen =
                    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
                        Err(_) => Seen::Other("no close within 3 s".into()),
                        Ok(Ok(0)) => Seen::Eof,
                        Ok(Ok(n)) => Seen::Other(format!("{n} unexpected bytes")),
                        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => Seen::Reset,
                        Ok(Err(e)) => Seen::Other(e.to_string()),
                    };
                let _ = tx.send(seen);
            });
        }
    });
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"http\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;
    let seen = collect(&mut rx, 4).await;
    assert!(seen.iter().all(|s| *s == Seen::Eof), "{seen:?}");
    let v = api.backend("app", addr).await.unwrap();
    assert_eq!(v["state"], "healthy", "{v}");
    assert_eq!(v["last_check"]["reason"], "ok", "{v}");
    task.abort();
}
