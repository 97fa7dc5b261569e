//! Upgraded connections (WebSocket-style): after the backend's 101 both sides are
//! proxied as a tunnel, listed in the connection table under their backend, bounded by
//! the pool's `tunnel_idle` (not by the listener's `keepalive_idle`), and logged with
//! `upgraded: true` when they end.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

use crate::http_basics::{http_config, log_line, pattern, response, Client, Origin, Step, T};
use crate::support::{eventually, Plumb};

const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An origin that switches protocols on an Upgrade request and then echoes; anything
/// else gets a plain 200.
async fn ws_origin() -> Origin {
    crate::http_basics::origin(|r| {
        if r.header("upgrade").is_some() {
            vec![
                Step::Write(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                        .to_vec(),
                ),
                Step::Echo,
            ]
        } else {
            vec![Step::Write(response(200, &[], b"plain"))]
        }
    })
    .await
}

/// Upgrades `c` and returns the request id of the 101.
async fn upgrade(c: &mut Client) -> String {
    c.send(UPGRADE_REQUEST).await;
    let r = timeout(T, c.head()).await.expect("no 101").unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("upgrade"), Some("websocket"), "{r:?}");
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{r:?}"
    );
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    r.rid().to_string()
}

async fn echo_round(c: &mut Client, msg: &[u8]) {
    c.send(msg).await;
    let back = timeout(T, c.exact(msg.len()))
        .await
        .expect("no echo through the tunnel")
        .expect("the tunnel broke");
    assert!(back == msg, "the tunnel changed the bytes");
}

fn tunnels_to(plumb: &Plumb, backend: SocketAddr) -> usize {
    plumb
        .server
        .conns()
        .snapshot()
        .iter()
        .filter(|c| c.backend() == Some(backend))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_bytes_both_ways() {
    let o = ws_origin().await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    let rid = upgrade(&mut c).await;

    let s = &o.seen()[0];
    assert_eq!(s.header("upgrade"), Some("websocket"), "{s:?}");
    assert!(
        s.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{s:?}"
    );
    assert_eq!(
        s.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(s.header("plumb-request-id"), Some(&*rid));

    echo_round(&mut c, b"hello").await;
    let big = pattern(100_000, 5);
    echo_round(&mut c, &big).await;
    assert!(
        eventually(Duration::from_secs(2), || tunnels_to(&plumb, o.addr) == 1).await,
        "the tunnel is not in the connection table under its backend"
    );

    // The client half-closes; the origin's echo half-closes back; the tunnel ends.
    c.stream.shutdown().await.unwrap();
    let (rest, err) = c
        .until_eof(Duration::from_secs(3))
        .await
        .expect("no EOF after both sides closed");
    assert!(rest.is_empty() && err.is_none(), "{rest:?} {err:?}");

    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["upgraded"], true, "{l}");
    assert_eq!(l["status"], 101, "{l}");
    assert_eq!(l["cause"], Value::Null, "{l}");
    assert_eq!(l["backend"], o.addr.to_string(), "{l}");
    assert_eq!(l["bytes_from_client"], 100_005, "{l}");
    assert_eq!(l["bytes_to_client"], 100_005, "{l}");
    assert!(
        eventually(Duration::from_secs(2), || tunnels_to(&plumb, o.addr) == 0).await,
        "the ended tunnel stayed in the connection table"
    );
}

/// `tunnel_idle = "300ms"`: a quiet tunnel is closed; the backend spoke last, so the
/// client owed the next byte: `client_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed() {
    let o = ws_origin().await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.timeouts]\ntunnel_idle = \"300ms\"\n",
        "",
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    let rid = upgrade(&mut c).await;
    echo_round(&mut c, b"ping").await;
    let t0 = Instant::now();
    let (rest, _) = c
        .until_eof(Duration::from_secs(3))
        .await
        .expect("the idle tunnel was not closed within 3 s");
    let took = t0.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "closed after {took:?}, expected about 300 ms"
    );
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["upgraded"], true, "{l}");
    assert_eq!(l["cause"], "client_idle_timeout", "{l}");
    assert_eq!(l["bytes_from_client"], 4, "{l}");
    assert!(eventually(Duration::from_secs(2), || tunnels_to(&plumb, o.addr) == 0).await);
}

/// The listener's `keepalive_idle` bounds idle HTTP connections, not tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_idle_does_not_cut_a_tunnel() {
    let o = ws_origin().await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "",
        "[listener.timeouts]\nkeepalive_idle = \"300ms\"\n",
    ))
    .await;
    let mut c = Client::connect(plumb.addr()).await;
    upgrade(&mut c).await;
    echo_round(&mut c, b"first").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    echo_round(&mut c, b"still here").await;
}

/// A backend that declines the upgrade (answers 200): the client gets that answer and
/// the connection goes on as plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrade_is_a_plain_response() {
    let o =
        crate::http_basics::origin(|_| vec![Step::Write(response(200, &[], b"no thanks"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(UPGRADE_REQUEST).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "no thanks");
    c.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(c.response().await.text(), "no thanks");
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["upgraded"], false, "{l}");
    assert_eq!(l["cause"], Value::Null, "{l}");
}
