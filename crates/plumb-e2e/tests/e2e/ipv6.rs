//! IPv6: listeners and backends on `[::1]`, and either family on either leg.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{echo_on, read_to_end, Plumb};

const STEP: Duration = Duration::from_secs(5);

/// Whether `[::1]` works here: a listener binds and a connection reaches it. When it
/// does not, the test says so and returns (skipped, visibly).
async fn ipv6_loopback(test: &str) -> bool {
    let why = match TcpListener::bind("[::1]:0").await {
        Err(e) => format!("cannot bind [::1]:0: {e}"),
        Ok(l) => {
            match tokio::time::timeout(STEP, TcpStream::connect(l.local_addr().unwrap())).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => format!("cannot connect to {}: {e}", l.local_addr().unwrap()),
                Err(_) => "connect to [::1] timed out".to_string(),
            }
        }
    };
    eprintln!("SKIPPED {test}: IPv6 loopback unavailable on this machine ({why})");
    false
}

fn toml(listen: &str, backend: SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nlisten = {listen}\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n"
    )
}

/// Sends a payload through `addr`, half-closes, and checks the echo; returns the
/// client's own address.
async fn round_trip(addr: SocketAddr) -> SocketAddr {
    let mut client = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let (got, err) = tokio::time::timeout(STEP, read_to_end(&mut client))
        .await
        .unwrap();
    assert!(err.is_none(), "via {addr}: {err:?}");
    assert!(
        got == payload,
        "via {addr}: echo differs ({} of {} bytes)",
        got.len(),
        payload.len()
    );
    client.local_addr().unwrap()
}

/// Runs one listener-family / backend-family combination and checks the log.
async fn combination(listen: &str, backend_bind: &str) {
    let echo = echo_on(TcpListener::bind(backend_bind).await.unwrap());
    let plumb = Plumb::start(&toml(&format!("\"{listen}\""), echo.addr)).await;
    assert_eq!(
        plumb.addr().is_ipv6(),
        listen.starts_with('['),
        "bound {}",
        plumb.addr()
    );
    let client = round_trip(plumb.addr()).await;
    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["client"], client.to_string(), "{log:?}");
    assert_eq!(log[0]["backend"], echo.addr.to_string(), "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 70_000);
    assert_eq!(log[0]["bytes_to_client"], 70_000);
    assert_eq!(log[0]["cause"], serde_json::Value::Null, "{log:?}");
    let c = log[0]["client"].as_str().unwrap();
    let b = log[0]["backend"].as_str().unwrap();
    assert_eq!(
        c.starts_with("[::1]:"),
        listen.starts_with('['),
        "client {c}"
    );
    assert_eq!(
        b.starts_with("[::1]:"),
        backend_bind.starts_with('['),
        "backend {b}"
    );
}

#[tokio::test]
async fn v6_listener_to_v6_backend() {
    if !ipv6_loopback("v6_listener_to_v6_backend").await {
        return;
    }
    combination("[::1]:0", "[::1]:0").await;
}

#[tokio::test]
async fn v4_listener_to_v6_backend() {
    if !ipv6_loopback("v4_listener_to_v6_backend").await {
        return;
    }
    combination("127.0.0.1:0", "[::1]:0").await;
}

#[tokio::test]
async fn v6_listener_to_v4_backend() {
    if !ipv6_loopback("v6_listener_to_v4_backend").await {
        return;
    }
    combination("[::1]:0", "127.0.0.1:0").await;
}

/// One listener on both families: each address accepts, and a `[::1]` client is
/// logged as such.
#[tokio::test]
async fn one_listener_on_both_families() {
    if !ipv6_loopback("one_listener_on_both_families").await {
        return;
    }
    let echo = echo_on(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let plumb = Plumb::start(&toml("[\"127.0.0.1:0\", \"[::1]:0\"]", echo.addr)).await;
    assert_eq!(plumb.addrs.len(), 2, "{:?}", plumb.addrs);
    assert!(
        plumb.addrs[0].is_ipv4() && plumb.addrs[1].is_ipv6(),
        "{:?}",
        plumb.addrs
    );
    let c4 = round_trip(plumb.addrs[0]).await;
    plumb.wait_log(1).await;
    let c6 = round_trip(plumb.addrs[1]).await;
    let log = plumb.wait_log(2).await;
    assert_eq!(log[0]["client"], c4.to_string());
    assert_eq!(log[1]["client"], c6.to_string());
    assert!(
        log[1]["client"].as_str().unwrap().starts_with("[::1]:"),
        "{log:?}"
    );
}

/// A v6 client reaching a v4 backend with `send_proxy`: the header carries the v6
/// client and the v6 listener address.
#[tokio::test]
async fn v6_client_in_proxy_header_to_v4_backend() {
    if !ipv6_loopback("v6_client_in_proxy_header_to_v4_backend").await {
        return;
    }
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = toml("\"[::1]:0\"", backend.local_addr().unwrap()) + "send_proxy = \"v1\"\n";
    let plumb = Plumb::start(&cfg).await;
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let (mut b, _) = tokio::time::timeout(STEP, backend.accept())
        .await
        .unwrap()
        .unwrap();
    let want = format!(
        "PROXY TCP6 ::1 ::1 {} {}\r\nx",
        client.local_addr().unwrap().port(),
        plumb.addr().port()
    );
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(STEP, tokio::io::AsyncReadExt::read_exact(&mut b, &mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
}
