//! A listener's `max_connections`: over the limit, a connection is accepted and reset
//! at once (never left hanging in the kernel's queue), and counted; below it again,
//! connections are served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::{config, echo, eventually, Plumb};

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Writes `msg` and reads the echo back.
async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("no echo within 5 s")
        .expect("echo read failed");
    assert_eq!(buf, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_reset_at_once() {
    let backend = echo().await;
    let plumb = Plumb::start(&config(
        &[backend.addr.to_string()],
        "",
        "max_connections = 2",
    ))
    .await;
    let stats = plumb.server.listener_stats("front").unwrap();

    let mut held1 = connect(plumb.addr()).await;
    echo_once(&mut held1, b"one").await;
    let mut held2 = connect(plumb.addr()).await;
    echo_once(&mut held2, b"two").await;
    assert_eq!(plumb.server.conns().len(), 2);

    // The third: the kernel completes the handshake, then plumb resets it. The RST can
    // come so fast that `connect` already reports it; otherwise the first read must.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let third_addr = socket.local_addr().unwrap();
    let t0 = Instant::now();
    let attempt = async {
        let mut third = socket.connect(plumb.addr()).await?;
        let mut buf = [0u8; 16];
        let n = third.read(&mut buf).await?;
        panic!("expected a reset, read returned Ok({n})");
    };
    let r: std::io::Result<()> = tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .expect("the connection over the limit hung instead of being reset");
    let at = t0.elapsed();
    let e = r.expect_err("the attempt only returns errors");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(at < Duration::from_secs(1), "reset after {at:?}");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "listener_connection_limit", "{line}");
    assert_eq!(line["cause"], "listener_connection_limit", "{line}");
    assert_eq!(line["attempts"], 0, "{line}");
    assert!(line["backend"].is_null(), "{line}");
    assert_eq!(line["client"], third_addr.to_string(), "{line}");
    assert_eq!(stats.refused(), 1);
    assert_eq!(stats.accepted(), 3);
    assert_eq!(stats.ends().get("listener_connection_limit"), Some(&1));

    // The held connections are untouched.
    echo_once(&mut held1, b"one again").await;
    echo_once(&mut held2, b"two again").await;

    // One closes; once plumb has let it go, a new connection is served.
    drop(held1);
    let server = std::sync::Arc::clone(&plumb.server);
    assert!(
        eventually(Duration::from_secs(5), || server.conns().len() == 1).await,
        "plumb still holds {} connections",
        server.conns().len()
    );
    let mut fresh = connect(plumb.addr()).await;
    echo_once(&mut fresh, b"room again").await;
    assert_eq!(
        stats.refused(),
        1,
        "the connection after the close was refused"
    );
    assert_eq!(plumb.server.conns().len(), 2);

    let log = plumb.wait_log(2).await;
    assert_eq!(log[1]["end"], "client_closed", "{}", log[1]);
    drop((held2, fresh));
}
