//! Backend connection limits and incident 004: at
//! `upstream.max_connections_per_backend` a backend takes no more, and a client no
//! backend can take is reset at once (`backend_connection_limit`), never queued; and
//! plumb opens backend connections only for clients, so a single-threaded backend is
//! never frozen by a connection nobody uses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::admin::{connect_named, start_admin};
use crate::support::{named, read_to_end, Plumb};

fn pool_toml(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// One connection per backend: the first two clients get one backend each, the third
/// is reset at once with `backend_connection_limit`; when one closes, a new client
/// gets its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_connection_is_reset_at_the_limit() {
    let b0 = named("b0").await;
    let b1 = named("b1").await;
    let plumb = Plumb::start(&pool_toml(
        &[b0.addr, b1.addr],
        "[pool.upstream]\nmax_connections_per_backend = 1\n",
    ))
    .await;
    let api = start_admin(&plumb, None).await;

    let (n1, c1) = connect_named(plumb.addr()).await;
    let (n2, mut c2) = connect_named(plumb.addr()).await;
    assert_ne!(n1, n2, "the second connection goes to the other backend");
    for a in [b0.addr, b1.addr] {
        let v = api.backend("app", a).await.unwrap();
        assert_eq!(v["active_connections"], 1, "{v}");
    }

    // The third: reset, fast.
    let t0 = Instant::now();
    let attempt = async {
        let mut s = TcpStream::connect(plumb.addr()).await?;
        let _ = s.write_all(b"anyone?").await;
        let mut buf = [0u8; 8];
        match s.read(&mut buf).await {
            Ok(n) => panic!("expected a reset, read returned Ok({n}): {:?}", &buf[..n]),
            Err(e) => Err::<(), _>(e),
        }
    };
    let e = tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .expect("the third connection hung instead of being reset")
        .expect_err("unreachable");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["cause"], "backend_connection_limit", "{}", log[0]);
    assert_eq!(log[0]["attempts"], 0, "no backend was tried: {}", log[0]);
    assert_eq!(log[0]["backend"], serde_json::Value::Null, "{}", log[0]);

    // The held ones are untouched.
    c2.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c2.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");

    // One closes: its backend has room again.
    drop(c1);
    plumb.wait_log(2).await;
    let (n4, _c4) = connect_named(plumb.addr()).await;
    assert_eq!(n4, n1, "the freed backend takes the new connection");
}

/// What a single-threaded backend saw on one connection.
#[derive(Debug, Clone)]
struct Served {
    accepted: Instant,
    closed: Option<Instant>,
    /// The request line, if the connection carried one (a client's); health checks
    /// send nothing.
    line: Option<String>,
}

/// A backend that serves one connection at a time: accept, read a line (or EOF),
/// answer, close, and only then accept the next. A connection that stays open and
/// silent freezes it, as in incident 004.
async fn single_threaded_backend() -> (
    SocketAddr,
    Arc<Mutex<Vec<Served>>>,
    tokio::task::JoinHandle<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let book: Arc<Mutex<Vec<Served>>> = Arc::default();
    let b = Arc::clone(&book);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let i = {
                let mut book = b.lock().unwrap();
                book.push(Served {
                    accepted: Instant::now(),
                    closed: None,
                    line: None,
                });
                book.len() - 1
            };
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let got = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            if let Ok(Ok(n)) = got {
                if n > 0 {
                    let answer = format!("served {}", line.trim_end());
                    let _ = r.get_mut().write_all(answer.as_bytes()).await;
                    b.lock().unwrap()[i].line = Some(line.trim_end().to_string());
                }
            }
            drop(r);
            b.lock().unwrap()[i].closed = Some(Instant::now());
        }
    });
    (addr, book, task)
}

/// Incident 004: a single-threaded backend behind plumb with health checks every
/// 100 ms answers 20 sequential requests, and plumb never holds a connection to it
/// open without a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_threaded_backend_is_never_held() {
    let (addr, book, task) = single_threaded_backend().await;
    let plumb = Plumb::start(&pool_toml(
        &[addr],
        "[pool.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n",
    ))
    .await;

    for k in 0..20 {
        let exchange = async {
            let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
            s.write_all(format!("request {k}\n").as_bytes())
                .await
                .unwrap();
            read_to_end(&mut s).await
        };
        let (got, err) = tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .unwrap_or_else(|_| panic!("request {k}: no answer within 2 s: the backend is held"));
        assert!(err.is_none(), "request {k}: {err:?}");
        assert_eq!(String::from_utf8_lossy(&got), format!("served request {k}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // No client now: a few more health checks, and nothing else.
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let book = book.lock().unwrap().clone();
    let now = Instant::now();
    let clients: Vec<&Served> = book.iter().filter(|s| s.line.is_some()).collect();
    let others: Vec<&Served> = book.iter().filter(|s| s.line.is_none()).collect();
    assert_eq!(
        clients.len(),
        20,
        "one backend connection per client request"
    );
    let checks_while_idle = others.iter().filter(|s| s.accepted >= idle_from).count();
    assert!(
        checks_while_idle >= 3,
        "too few health checks while idle to judge: {book:?}"
    );
    // Every connection without a request (a health check) was short.
    for s in &others {
        let held = s.closed.unwrap_or(now) - s.accepted;
        assert!(
            held < Duration::from_millis(250),
            "plumb held a connection without a client for {held:?}: {s:?}"
        );
    }
    drop(plumb);
    task.abort();
}
