//! `pool.timeouts.tunnel_idle`: a tunnel with no byte either way for that long is
//! closed on both legs with FIN, and the log says who owed the next byte. Traffic in
//! either direction keeps it open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{config, Plumb};

const IDLE: Duration = Duration::from_millis(300);
/// The idle timer may not fire early; a truncated millisecond is all the slack.
const NOT_BEFORE: Duration = Duration::from_millis(295);
/// "About a second": the timer plus scheduling on a loaded machine.
const NOT_AFTER: Duration = Duration::from_millis(1250);
const STEP: Duration = Duration::from_secs(5);

async fn start() -> (Plumb, TcpListener) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "timeouts = { tunnel_idle = \"300ms\" }",
        "",
    );
    (Plumb::start(&toml).await, backend)
}

async fn connect(plumb: &Plumb, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(plumb.addr()).await.unwrap();
    let (b, _) = tokio::time::timeout(STEP, backend.accept())
        .await
        .expect("plumb never connected to the backend")
        .unwrap();
    (client, b)
}

/// Waits (bounded) for a clean EOF on `s` and returns when it came. Any byte or error
/// instead fails the test.
async fn eof_at(s: &mut TcpStream, who: &str) -> Instant {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP, s.read(&mut buf)).await {
        Err(_) => panic!("{who}: no EOF within {STEP:?}"),
        Ok(Ok(0)) => Instant::now(),
        Ok(Ok(n)) => panic!("{who}: unexpected bytes {:?}", &buf[..n]),
        Ok(Err(e)) => panic!("{who}: expected a FIN, got {e}"),
    }
}

fn assert_window(what: &str, from: Instant, at: Instant) {
    let d = at.duration_since(from);
    assert!(
        d >= NOT_BEFORE,
        "{what} after {d:?}: earlier than the idle timeout {IDLE:?}"
    );
    assert!(
        d <= NOT_AFTER,
        "{what} after {d:?}: later than {NOT_AFTER:?}"
    );
}

#[tokio::test]
async fn silent_tunnel_is_closed_on_both_legs_as_client_idle() {
    let (plumb, backend) = start().await;
    let t0 = Instant::now();
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let (c_eof, b_eof) = tokio::join!(eof_at(&mut client, "client"), eof_at(&mut b, "backend"));
    assert_window("client EOF", t0, c_eof);
    assert_window("backend EOF", t0, b_eof);

    let log = plumb.wait_log(1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["end"], "client_idle_timeout", "{log:?}");
    assert_eq!(log[0]["cause"], "client_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 0);
    assert_eq!(log[0]["bytes_to_client"], 0);
    let ms = log[0]["duration_ms"].as_f64().unwrap();
    assert!((295.0..1250.0).contains(&ms), "duration_ms {ms}");
}

#[tokio::test]
async fn backend_spoke_last_means_client_idle() {
    let (plumb, backend) = start().await;
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let t0 = Instant::now();
    b.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(STEP, client.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello");
    let (c_eof, b_eof) = tokio::join!(eof_at(&mut client, "client"), eof_at(&mut b, "backend"));
    assert_window("client EOF", t0, c_eof);
    assert_window("backend EOF", t0, b_eof);

    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["cause"], "client_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_to_client"], 5);
    assert_eq!(log[0]["bytes_from_client"], 0);
}

#[tokio::test]
async fn client_spoke_last_means_upstream_idle() {
    let (plumb, backend) = start().await;
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let t0 = Instant::now();
    client.write_all(b"?").await.unwrap();
    let mut got = [0u8; 1];
    tokio::time::timeout(STEP, b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"?");
    // The backend never answers.
    let (c_eof, b_eof) = tokio::join!(eof_at(&mut client, "client"), eof_at(&mut b, "backend"));
    assert_window("client EOF", t0, c_eof);
    assert_window("backend EOF", t0, b_eof);

    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["end"], "upstream_idle_timeout", "{log:?}");
    assert_eq!(log[0]["cause"], "upstream_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 1);
    assert_eq!(log[0]["bytes_to_client"], 0);
}

/// The client sends one byte every 100 ms for a second; the backend only reads. Each
/// byte arriving proves the tunnel is still open well past the idle timeout.
#[tokio::test]
async fn client_traffic_keeps_the_tunnel_open() {
    let (plumb, backend) = start().await;
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = t0;
    for i in 0..10u8 {
        tick.tick().await;
        client.write_all(&[i]).await.unwrap();
        let mut got = [0u8; 1];
        let r = tokio::time::timeout(STEP, b.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r, 1,
            "byte {i}: the backend read EOF: the tunnel was closed"
        );
        assert_eq!(got[0], i);
        last = Instant::now();
    }
    assert!(last.duration_since(t0) >= Duration::from_millis(850));
    // Then silence: it closes, the backend owing the next byte.
    let (c_eof, b_eof) = tokio::join!(eof_at(&mut client, "client"), eof_at(&mut b, "backend"));
    assert!(c_eof.duration_since(last) <= NOT_AFTER);
    assert!(b_eof.duration_since(last) <= NOT_AFTER);

    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["cause"], "upstream_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 10);
    let ms = log[0]["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 900.0 + 295.0,
        "duration_ms {ms}: closed before the traffic stopped"
    );
}

/// The same from the other side: the backend sends, the client only reads.
#[tokio::test]
async fn backend_traffic_keeps_the_tunnel_open() {
    let (plumb, backend) = start().await;
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last = t0;
    for i in 0..10u8 {
        tick.tick().await;
        b.write_all(&[i]).await.unwrap();
        let mut got = [0u8; 1];
        let r = tokio::time::timeout(STEP, client.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, 1, "byte {i}: the client read EOF: the tunnel was closed");
        assert_eq!(got[0], i);
        last = Instant::now();
    }
    assert!(last.duration_since(t0) >= Duration::from_millis(850));
    let (c_eof, b_eof) = tokio::join!(eof_at(&mut client, "client"), eof_at(&mut b, "backend"));
    assert!(c_eof.duration_since(last) <= NOT_AFTER);
    assert!(b_eof.duration_since(last) <= NOT_AFTER);

    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["cause"], "client_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_to_client"], 10);
    let ms = log[0]["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 900.0 + 295.0,
        "duration_ms {ms}: closed before the traffic stopped"
    );
}

/// Traffic both ways, echoed, for a second: open throughout.
#[tokio::test]
async fn echoed_traffic_keeps_the_tunnel_open() {
    let (plumb, backend) = start().await;
    let (mut client, mut b) = connect(&plumb, &backend).await;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            match b.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if b.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..10u8 {
        tick.tick().await;
        client.write_all(&[i]).await.unwrap();
        let mut got = [0u8; 1];
        let r = tokio::time::timeout(STEP, client.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r, 1, "byte {i}: EOF: the tunnel was closed");
        assert_eq!(got[0], i);
    }
    assert!(t0.elapsed() >= Duration::from_millis(900));
    eof_at(&mut client, "client").await;
    tokio::time::timeout(STEP, echo).await.unwrap().unwrap();
    let log = plumb.wait_log(1).await;
    // The echo spoke last.
    assert_eq!(log[0]["cause"], "client_idle_timeout", "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 10);
    assert_eq!(log[0]["bytes_to_client"], 10);
}
