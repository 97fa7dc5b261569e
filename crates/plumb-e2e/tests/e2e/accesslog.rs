//! The access log: one JSON line per connection, written at its end, with exact byte
//! counts and a `cause` that is null exactly when the connection closed cleanly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{config, echo, eventually, read_to_end, refusing_addr, Plumb};

const STEP: Duration = Duration::from_secs(5);

/// The fields every line has, and nothing renamed.
const FIELDS: [&str; 16] = [
    "ts",
    "kind",
    "listener",
    "pool",
    "client",
    "backend",
    "attempts",
    "failed_attempts",
    "bytes_from_client",
    "bytes_to_client",
    "duration_ms",
    "end",
    "cause",
    "error",
    "client_tcp",
    "upstream_tcp",
];

fn check_shape(line: &Value) {
    let obj = line
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    for f in FIELDS {
        assert!(obj.contains_key(f), "field {f} missing from {line}");
    }
    assert_eq!(obj.len(), FIELDS.len(), "unexpected fields in {line}");
    assert_eq!(line["kind"], "tcp");
    // TCP_INFO of each leg at close, when the leg was connected.
    for leg in ["client_tcp", "upstream_tcp"] {
        if let Some(t) = line[leg].as_object() {
            assert!(
                t["rtt_ms"].is_number() && t["total_retrans"].is_number(),
                "{leg} in {line}"
            );
            assert_eq!(t["suspected_blackhole"], false, "{line}");
        }
    }
    assert!(
        line["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "ts {}",
        line["ts"]
    );
}

/// A backend that reads everything the client sends (until its FIN), then answers
/// with `reply` bytes and closes.
async fn read_then_answer(reply: usize) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let out: Vec<u8> = (0..reply).map(|i| (i % 256) as u8).collect();
        s.write_all(&out).await.unwrap();
        s.shutdown().await.unwrap();
        got.len()
    });
    (addr, task)
}

#[tokio::test]
async fn clean_close_by_client_logs_every_field_with_exact_counts() {
    let (backend, task) = read_then_answer(5_000).await;
    let plumb = Plumb::start(&config(&[backend.to_string()], "", "")).await;
    let t0 = Instant::now();
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    let me = client.local_addr().unwrap();
    let sent: Vec<u8> = (0..3_000u32).map(|i| (i % 13) as u8).collect();
    client.write_all(&sent).await.unwrap();
    // Hold the connection open a while so that duration_ms means something.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.shutdown().await.unwrap();
    let (got, err) = tokio::time::timeout(STEP, read_to_end(&mut client))
        .await
        .unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 5_000);
    assert_eq!(task.await.unwrap(), 3_000);
    drop(client);

    let log = plumb.wait_log(1).await;
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(log.len(), 1, "{log:?}");
    let l = &log[0];
    check_shape(l);
    assert_eq!(l["listener"], "front");
    assert_eq!(l["pool"], "app");
    assert_eq!(l["client"], me.to_string());
    assert_eq!(l["backend"], backend.to_string());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["failed_attempts"], serde_json::json!([]));
    assert_eq!(l["bytes_from_client"], 3_000);
    assert_eq!(l["bytes_to_client"], 5_000);
    let ms = l["duration_ms"].as_f64().unwrap();
    assert!(
        ms >= 200.0 && ms <= elapsed_ms,
        "duration_ms {ms}, test saw {elapsed_ms}"
    );
    assert_eq!(l["end"], "client_closed");
    assert_eq!(l["cause"], Value::Null);
    assert_eq!(l["error"], Value::Null);
}

#[tokio::test]
async fn clean_close_by_backend_is_upstream_closed_without_cause() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let plumb = Plumb::start(&config(&[backend.to_string()], "", "")).await;
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    client.write_all(b"12345678").await.unwrap();
    let (mut b, _) = tokio::time::timeout(STEP, l.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 8];
    b.read_exact(&mut buf).await.unwrap();
    b.write_all(b"bye").await.unwrap();
    b.shutdown().await.unwrap();
    let (got, _) = tokio::time::timeout(STEP, read_to_end(&mut client))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    // The client still may send after the backend's FIN: half-close is a tunnel state.
    client.write_all(b"late").await.unwrap();
    let mut late = [0u8; 4];
    tokio::time::timeout(STEP, b.read_exact(&mut late))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&late, b"late");
    drop(client);
    let (rest, _) = tokio::time::timeout(STEP, read_to_end(&mut b))
        .await
        .unwrap();
    assert!(rest.is_empty());

    let log = plumb.wait_log(1).await;
    check_shape(&log[0]);
    assert_eq!(log[0]["end"], "upstream_closed", "{log:?}");
    assert_eq!(log[0]["cause"], Value::Null, "{log:?}");
    assert_eq!(log[0]["bytes_from_client"], 12);
    assert_eq!(log[0]["bytes_to_client"], 3);
}

#[tokio::test]
async fn one_line_per_connection() {
    let e = echo().await;
    let plumb = Plumb::start(&config(&[e.addr.to_string()], "", "")).await;
    let mut want = BTreeSet::new();
    for i in 1..=5usize {
        let mut c = TcpStream::connect(plumb.addr()).await.unwrap();
        want.insert((c.local_addr().unwrap().to_string(), i * 100));
        c.write_all(&vec![b'a'; i * 100]).await.unwrap();
        c.shutdown().await.unwrap();
        let (got, err) = tokio::time::timeout(STEP, read_to_end(&mut c))
            .await
            .unwrap();
        assert!(err.is_none());
        assert_eq!(got.len(), i * 100);
    }
    // A connection's line is queued before it leaves the table: once the table is
    // empty and the queue flushed, every line that will ever be written is there.
    let conns = plumb.server.conns();
    assert!(
        eventually(STEP, || conns.is_empty()).await,
        "connections still open: {}",
        conns.len()
    );
    plumb.server.flush_access_log(STEP).await;
    let log = plumb.log();
    assert_eq!(log.len(), 5, "{log:?}");
    let got: BTreeSet<(String, usize)> = log
        .iter()
        .map(|l| {
            check_shape(l);
            assert_eq!(l["bytes_from_client"], l["bytes_to_client"]);
            assert_eq!(l["cause"], Value::Null);
            (
                l["client"].as_str().unwrap().to_string(),
                l["bytes_from_client"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn failed_connection_logs_cause_and_failed_attempts() {
    let dead = refusing_addr();
    let plumb = Plumb::start(&config(&[dead.to_string()], "", "")).await;
    let mut client = TcpStream::connect(plumb.addr()).await.unwrap();
    let (_, err) = tokio::time::timeout(STEP, read_to_end(&mut client))
        .await
        .unwrap();
    let err = err.expect("client should be reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let log = plumb.wait_log(1).await;
    let l = &log[0];
    check_shape(l);
    assert_eq!(l["backend"], Value::Null, "{l}");
    assert_eq!(l["attempts"], 1, "{l}");
    let failed = l["failed_attempts"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{l}");
    assert_eq!(failed[0]["backend"], dead.to_string());
    assert_eq!(failed[0]["cause"], "upstream_connect_refused");
    assert!(failed[0]["ms"].as_f64().is_some_and(|m| m >= 0.0), "{l}");
    assert_eq!(l["end"], "upstream_connect_refused");
    assert_eq!(l["cause"], "upstream_connect_refused");
    assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");
    assert_eq!(l["bytes_from_client"], 0);
    assert_eq!(l["bytes_to_client"], 0);
}
