//! Socket options from the config land on plumb's own sockets, on both legs.
//!
//! plumb runs in this process, so its sockets are file descriptors of this process:
//! the tests find them in `/proc/self/fd` by their exact (local, peer) address pair and
//! read the options back from them. A peer's socket is never taken for plumb's: the
//! client leg is the socket whose local address is plumb's listener and whose peer is
//! the test client; the backend leg is the socket whose peer is the test backend and
//! whose local address is what the backend saw as its peer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{config, Plumb};

const STEP: Duration = Duration::from_secs(5);

/// Duplicates one of this process's file descriptors, found by number in
/// `/proc/self/fd`.
#[allow(
    unsafe_code,
    reason = "reading plumb's in-process sockets by fd number"
)]
fn dup_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the borrow lives only for the `fcntl(F_DUPFD_CLOEXEC)` inside
    // `try_clone_to_owned`, and nothing is read or written through it. If another
    // thread closed `fd` meanwhile the dup fails with EBADF; if the number was reused,
    // we get a duplicate of some other open file, which the caller rejects because its
    // addresses do not match. No memory is accessed through the descriptor.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// The TCP socket of this process with exactly these local and peer addresses, as a
/// duplicated descriptor (same open socket, so options read back are the socket's).
fn socket_with(local: SocketAddr, peer: SocketAddr) -> Option<OwnedFd> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd");
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(owned) = dup_fd(fd) else { continue };
        let s = SockRef::from(&owned);
        let l = s.local_addr().ok().and_then(|a| a.as_socket());
        let p = s.peer_addr().ok().and_then(|a| a.as_socket());
        if l == Some(local) && p == Some(peer) {
            return Some(owned);
        }
    }
    None
}

/// A connection through plumb with both legs established and their options applied.
struct Legs {
    client: TcpStream,
    backend: TcpStream,
    /// plumb's accepted socket (client leg).
    plumb_client_leg: OwnedFd,
    /// plumb's connected socket (backend leg).
    plumb_upstream_leg: OwnedFd,
}

/// Connects through plumb to a backend this test accepts itself, moves one byte each
/// way (so both legs are established and plumb has applied every option), then finds
/// plumb's two sockets.
async fn legs(plumb: &Plumb, backend_listener: &TcpListener) -> Legs {
    let mut client = tokio::time::timeout(STEP, TcpStream::connect(plumb.addr()))
        .await
        .expect("connect to plumb timed out")
        .expect("connect to plumb");
    client.write_all(b"p").await.unwrap();
    let (mut backend, seen_by_backend) = tokio::time::timeout(STEP, backend_listener.accept())
        .await
        .expect("plumb never connected to the backend")
        .unwrap();
    let mut b = [0u8; 1];
    tokio::time::timeout(STEP, backend.read_exact(&mut b))
        .await
        .expect("backend got no byte")
        .unwrap();
    assert_eq!(&b, b"p");
    backend.write_all(b"q").await.unwrap();
    tokio::time::timeout(STEP, client.read_exact(&mut b))
        .await
        .expect("client got no byte")
        .unwrap();
    assert_eq!(&b, b"q");

    let client_addr = client.local_addr().unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    let plumb_client_leg = socket_with(plumb.addr(), client_addr).unwrap_or_else(|| {
        panic!(
            "no socket {} <- {client_addr} in /proc/self/fd",
            plumb.addr()
        )
    });
    let plumb_upstream_leg = socket_with(seen_by_backend, backend_addr).unwrap_or_else(|| {
        panic!("no socket {seen_by_backend} -> {backend_addr} in /proc/self/fd")
    });
    Legs {
        client,
        backend,
        plumb_client_leg,
        plumb_upstream_leg,
    }
}

fn keepalive(idle: u64, interval: u64, count: u32) -> Option<plumb_sys::Keepalive> {
    Some(plumb_sys::Keepalive {
        idle: Duration::from_secs(idle),
        interval: Duration::from_secs(interval),
        count,
    })
}

#[tokio::test]
async fn keepalive_and_user_timeout_are_set_per_leg_from_config() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "tcp = { keepalive_idle = \"23s\", keepalive_interval = \"5s\", keepalive_count = 7, user_timeout = \"11s\" }",
        "tcp = { keepalive_idle = \"17s\", keepalive_interval = \"3s\", keepalive_count = 4, user_timeout = \"7s\" }",
    );
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;

    let c = &legs.plumb_client_leg;
    assert_eq!(
        plumb_sys::keepalive(c).unwrap(),
        keepalive(17, 3, 4),
        "client leg keepalive"
    );
    assert_eq!(
        plumb_sys::user_timeout(c).unwrap(),
        Some(Duration::from_secs(7)),
        "client leg TCP_USER_TIMEOUT"
    );
    let u = &legs.plumb_upstream_leg;
    assert_eq!(
        plumb_sys::keepalive(u).unwrap(),
        keepalive(23, 5, 7),
        "backend leg keepalive"
    );
    assert_eq!(
        plumb_sys::user_timeout(u).unwrap(),
        Some(Duration::from_secs(11)),
        "backend leg TCP_USER_TIMEOUT"
    );
    // TCP_NODELAY on both legs as well.
    assert!(
        SockRef::from(c).tcp_nodelay().unwrap(),
        "client leg TCP_NODELAY"
    );
    assert!(
        SockRef::from(u).tcp_nodelay().unwrap(),
        "backend leg TCP_NODELAY"
    );

    // The peers' own sockets are untouched: what was read above is plumb's.
    assert_eq!(plumb_sys::keepalive(&legs.client).unwrap(), None);
    assert_eq!(plumb_sys::keepalive(&legs.backend).unwrap(), None);
}

/// The documented defaults (docs/config.md): keepalive after 30 s, every 10 s, 3
/// probes; `TCP_USER_TIMEOUT` 60 s.
fn default_keepalive() -> Option<plumb_sys::Keepalive> {
    keepalive(30, 10, 3)
}
const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn without_a_tcp_table_both_legs_get_the_defaults() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(&[backend.local_addr().unwrap().to_string()], "", "");
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;

    for (leg, fd) in [
        ("client", &legs.plumb_client_leg),
        ("backend", &legs.plumb_upstream_leg),
    ] {
        let ka = plumb_sys::keepalive(fd).unwrap();
        assert_eq!(ka, default_keepalive(), "{leg} leg keepalive");
        let ut = plumb_sys::user_timeout(fd).unwrap();
        assert_eq!(ut, Some(DEFAULT_USER_TIMEOUT), "{leg} leg TCP_USER_TIMEOUT");
        // As documented, the user timeout covers the whole keepalive budget, so that
        // keepalive_count still matters.
        let ka = ka.unwrap();
        assert!(
            ut.unwrap() >= ka.idle + ka.interval * ka.count,
            "{leg} leg: user timeout {ut:?} shorter than the keepalive budget {ka:?}"
        );
    }
    // No MSS clamp by default: loopback's MSS is far above the clamps tested below,
    // which is what makes those tests meaningful.
    let client_mss = plumb_sys::tcp_info(&legs.client).unwrap().snd_mss;
    let backend_mss = plumb_sys::tcp_info(&legs.backend).unwrap().snd_mss;
    assert!(client_mss > 1000, "unclamped client snd_mss {client_mss}");
    assert!(
        backend_mss > 1000,
        "unclamped backend snd_mss {backend_mss}"
    );
}

/// A tcp table that sets one option leaves the others at their defaults.
#[tokio::test]
async fn a_partial_tcp_table_keeps_the_other_defaults() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "tcp = { user_timeout = \"9s\" }",
        "tcp = { keepalive_count = 5 }",
    );
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;
    let c = &legs.plumb_client_leg;
    assert_eq!(plumb_sys::keepalive(c).unwrap(), keepalive(30, 10, 5));
    assert_eq!(
        plumb_sys::user_timeout(c).unwrap(),
        Some(DEFAULT_USER_TIMEOUT)
    );
    let u = &legs.plumb_upstream_leg;
    assert_eq!(plumb_sys::keepalive(u).unwrap(), default_keepalive());
    assert_eq!(
        plumb_sys::user_timeout(u).unwrap(),
        Some(Duration::from_secs(9))
    );
}

#[tokio::test]
async fn zero_turns_keepalive_and_user_timeout_off() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "tcp = { keepalive_idle = \"0s\", user_timeout = \"0s\" }",
        "tcp = { keepalive_idle = \"0s\", user_timeout = \"0s\" }",
    );
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;
    for (leg, fd) in [
        ("client", &legs.plumb_client_leg),
        ("backend", &legs.plumb_upstream_leg),
    ] {
        assert_eq!(
            plumb_sys::keepalive(fd).unwrap(),
            None,
            "{leg} leg keepalive"
        );
        assert_eq!(
            plumb_sys::user_timeout(fd).unwrap(),
            None,
            "{leg} leg TCP_USER_TIMEOUT"
        );
    }
}

#[tokio::test]
async fn listener_mss_clamps_what_the_client_may_send() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "",
        "tcp = { mss = 1000 }",
    );
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;

    assert_eq!(
        plumb_sys::keepalive(&legs.plumb_client_leg).unwrap(),
        default_keepalive()
    );
    let client_mss = plumb_sys::tcp_info(&legs.client).unwrap().snd_mss;
    assert!(
        client_mss <= 1000,
        "client snd_mss {client_mss} despite listener mss = 1000"
    );
    assert!(
        client_mss >= 500,
        "client snd_mss {client_mss} is implausibly small"
    );
    // The backend leg is not clamped by the listener's setting.
    let backend_mss = plumb_sys::tcp_info(&legs.backend).unwrap().snd_mss;
    assert!(
        backend_mss > 1000,
        "backend snd_mss {backend_mss} clamped by the listener's mss"
    );

    // Large writes still arrive whole through the small segments.
    let mut client = legs.client;
    let mut backend_stream = legs.backend;
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(STEP, backend_stream.read_exact(&mut got))
        .await
        .expect("payload did not arrive")
        .unwrap();
    assert_eq!(got, payload);
}

#[tokio::test]
async fn pool_mss_clamps_what_the_backend_may_send() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let toml = config(
        &[backend.local_addr().unwrap().to_string()],
        "tcp = { mss = 900 }",
        "",
    );
    let plumb = Plumb::start(&toml).await;
    let legs = legs(&plumb, &backend).await;

    let backend_mss = plumb_sys::tcp_info(&legs.backend).unwrap().snd_mss;
    assert!(
        backend_mss <= 900,
        "backend snd_mss {backend_mss} despite pool mss = 900"
    );
    assert!(
        backend_mss >= 450,
        "backend snd_mss {backend_mss} is implausibly small"
    );
    let client_mss = plumb_sys::tcp_info(&legs.client).unwrap().snd_mss;
    assert!(
        client_mss > 1000,
        "client snd_mss {client_mss} clamped by the pool's mss"
    );

    let mut client = legs.client;
    let mut backend_stream = legs.backend;
    let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    backend_stream.write_all(&payload).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(STEP, client.read_exact(&mut got))
        .await
        .expect("payload did not arrive")
        .unwrap();
    assert_eq!(got, payload);
}
