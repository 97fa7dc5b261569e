//! How a proxied connection ends: a FIN from either side is passed on as a FIN and
//! the other direction keeps flowing (half-close); an RST from either side reaches the
//! other side as an RST at once, also after a half-close. The access log's `end`
//! names who ended it and how.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{config, Plumb};

/// How fast an RST must cross plumb. On loopback it takes well under a millisecond;
/// 100 ms leaves room for a loaded machine but not for "noticed at the next write" or
/// any timer.
const RST_BOUND: Duration = Duration::from_millis(100);

/// A backend that hands each accepted connection to the test.
struct Handoff {
    addr: SocketAddr,
    conns: mpsc::Receiver<TcpStream>,
    task: JoinHandle<()>,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Handoff {
    async fn start() -> Handoff {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, conns) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
        });
        Handoff { addr, conns, task }
    }

    /// The next connection plumb opened to this backend.
    async fn next(&mut self) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(5), self.conns.recv())
            .await
            .expect("plumb did not connect to the backend within 5 s")
            .expect("backend task ended")
    }
}

/// plumb in front of a hand-off backend, a client connected through it, the backend's
/// side of that connection, and bytes exchanged both ways so that the tunnel is up.
async fn setup() -> (Plumb, Handoff, TcpStream, TcpStream) {
    let mut backend = Handoff::start().await;
    let plumb = Plumb::start(&config(&[backend.addr.to_string()], "", "")).await;
    let mut client = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(plumb.addr()))
        .await
        .expect("connect timed out")
        .unwrap();
    let mut up = backend.next().await;
    client.write_all(b"hello").await.unwrap();
    expect_bytes(&mut up, b"hello").await;
    up.write_all(b"hi").await.unwrap();
    expect_bytes(&mut client, b"hi").await;
    (plumb, backend, client, up)
}

async fn expect_bytes(s: &mut TcpStream, want: &[u8]) {
    let mut buf = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("bytes did not arrive within 5 s")
        .expect("read failed");
    assert_eq!(buf, want);
}

async fn expect_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no EOF within 5 s")
        .expect("expected EOF, got an error");
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
}

/// Reads until an error; returns it and how long after `since` it came. Panics on
/// data or EOF.
async fn read_error(s: &mut TcpStream, since: Instant) -> (std::io::Error, Duration) {
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no error within 5 s");
    let at = since.elapsed();
    match r {
        Err(e) => (e, at),
        Ok(n) => panic!("expected a reset, read returned Ok({n}): {:?}", &buf[..n]),
    }
}

/// Waits for the socket to report an error (an RST arrived), without reading or
/// writing; returns it and how long after `since` it came. Used on a socket that has
/// read EOF already, where a read would only return EOF again.
async fn socket_error(s: &TcpStream, since: Instant) -> (std::io::Error, Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for _ in 0..1000 {
        let ready = tokio::time::timeout_at(deadline, s.ready(Interest::ERROR))
            .await
            .expect("no socket error within 5 s")
            .unwrap();
        if ready.is_error() {
            let at = since.elapsed();
            let e = s
                .take_error()
                .unwrap()
                .expect("error readiness without an error");
            return (e, at);
        }
        tokio::task::yield_now().await;
    }
    panic!("socket readiness kept coming back without an error");
}

/// Closes with an RST: SO_LINGER 0, then close.
fn reset(s: TcpStream) {
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// How Linux reports an RST: ECONNRESET, or EPIPE on a socket that had received
/// FIN (CLOSE_WAIT) when the RST came.
fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

/// Backend FIN: the client reads EOF, can still send, and the backend receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_fin_is_a_half_close() {
    let (plumb, _backend, mut client, mut up) = setup().await;

    up.write_all(b"bye").await.unwrap();
    up.shutdown().await.unwrap();
    expect_bytes(&mut client, b"bye").await;
    expect_eof(&mut client).await;

    // The other direction still flows.
    client.write_all(b"after eof").await.unwrap();
    expect_bytes(&mut up, b"after eof").await;
    client.write_all(b" and more").await.unwrap();
    expect_bytes(&mut up, b" and more").await;

    client.shutdown().await.unwrap();
    expect_eof(&mut up).await;

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "upstream_closed", "{line}");
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["bytes_from_client"], 5 + 9 + 9, "{line}");
    assert_eq!(line["bytes_to_client"], 2 + 3, "{line}");
}

/// Client FIN: the backend reads EOF, can still send, and the client receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fin_is_a_half_close() {
    let (plumb, _backend, mut client, mut up) = setup().await;

    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    expect_bytes(&mut up, b"last words").await;
    expect_eof(&mut up).await;

    up.write_all(b"reply after eof").await.unwrap();
    expect_bytes(&mut client, b"reply after eof").await;
    up.write_all(b", twice").await.unwrap();
    expect_bytes(&mut client, b", twice").await;

    up.shutdown().await.unwrap();
    expect_eof(&mut client).await;

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "client_closed", "{line}");
    assert!(line["cause"].is_null(), "{line}");
    assert_eq!(line["bytes_from_client"], 5 + 10, "{line}");
    assert_eq!(line["bytes_to_client"], 2 + 15 + 7, "{line}");
}

/// Backend RST: the client's read fails with ConnectionReset within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_client() {
    let (plumb, _backend, mut client, up) = setup().await;

    let t0 = Instant::now();
    reset(up);
    let (e, at) = read_error(&mut client, t0).await;
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(at < RST_BOUND, "the reset reached the client after {at:?}");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "upstream_reset", "{line}");
    assert_eq!(line["cause"], "upstream_reset", "{line}");
}

/// Client RST: the backend's read fails with ConnectionReset within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_reaches_the_backend() {
    let (plumb, _backend, client, mut up) = setup().await;

    let t0 = Instant::now();
    reset(client);
    let (e, at) = read_error(&mut up, t0).await;
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(at < RST_BOUND, "the reset reached the backend after {at:?}");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "client_reset", "{line}");
    assert_eq!(line["cause"], "client_reset", "{line}");
}

/// The client half-closes (the backend reads EOF), then resets: plumb no longer reads
/// from the client, yet the RST still reaches the backend within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_after_half_close_reaches_the_backend() {
    let (plumb, _backend, mut client, mut up) = setup().await;

    client.shutdown().await.unwrap();
    expect_eof(&mut up).await;
    // The backend can still talk: the connection is half-open, not gone.
    up.write_all(b"still here").await.unwrap();
    expect_bytes(&mut client, b"still here").await;

    let t0 = Instant::now();
    reset(client);
    let (e, at) = socket_error(&up, t0).await;
    assert!(is_reset(&e), "expected a reset, got {e}");
    assert!(at < RST_BOUND, "the reset reached the backend after {at:?}");
    // And the backend's next write fails rather than going nowhere.
    let w = up.write_all(b"anyone?").await;
    assert!(w.is_err(), "write after the reset succeeded");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "client_reset", "{line}");
}

/// Mirror image: the backend half-closes, then resets; the client learns within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_after_half_close_reaches_the_client() {
    let (plumb, _backend, mut client, mut up) = setup().await;

    up.shutdown().await.unwrap();
    expect_eof(&mut client).await;
    client.write_all(b"still here").await.unwrap();
    expect_bytes(&mut up, b"still here").await;

    let t0 = Instant::now();
    reset(up);
    let (e, at) = socket_error(&client, t0).await;
    assert!(is_reset(&e), "expected a reset, got {e}");
    assert!(at < RST_BOUND, "the reset reached the client after {at:?}");
    let w = client.write_all(b"anyone?").await;
    assert!(w.is_err(), "write after the reset succeeded");

    let log = plumb.wait_log(1).await;
    let line = &log[0];
    assert_eq!(line["end"], "upstream_reset", "{line}");
}
