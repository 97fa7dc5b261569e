//! `upstream.preconnect`: none by default (incident 004); when asked for, at most N
//! idle connections per backend, each closed after `idle_timeout`, handed to clients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{config, eventually, Plumb};

/// A backend that numbers its connections, greets each with its number, echoes, and
/// counts how many are open.
struct Counting {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn counting() -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, o, c) = (
        Arc::clone(&accepted),
        Arc::clone(&open),
        Arc::clone(&closed),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            o.fetch_add(1, Ordering::SeqCst);
            let (o, c) = (Arc::clone(&o), Arc::clone(&c));
            tokio::spawn(async move {
                let _ = s.write_all(format!("conn {n:03}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if s.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        addr,
        accepted,
        open,
        closed,
        _task: task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_connection_without_a_client_by_default() {
    let b = counting().await;
    let _plumb = Plumb::start(&config(&[b.addr.to_string()], "", "")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        0,
        "plumb opened a connection nobody asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconnect_keeps_n_idle_expires_them_and_hands_them_to_clients() {
    let b = counting().await;
    let plumb = Plumb::start(&config(
        &[b.addr.to_string()],
        "[pool.upstream]\npreconnect = 2\nidle_timeout = \"600ms\"\n",
        "",
    ))
    .await;
    // Two idle connections appear, and never more.
    assert!(
        eventually(Duration::from_secs(2), || b.open.load(Ordering::SeqCst)
            == 2)
        .await
    );
    let t0 = tokio::time::Instant::now();
    for _ in 0..20 {
        assert!(b.open.load(Ordering::SeqCst) <= 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After idle_timeout they are closed (the backend reads EOF) and replaced.
    assert!(
        eventually(Duration::from_secs(2), || b.closed.load(Ordering::SeqCst)
            >= 2)
        .await
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "closed before idle_timeout"
    );
    assert!(
        eventually(Duration::from_secs(2), || b.open.load(Ordering::SeqCst)
            == 2)
        .await
    );

    // A client gets one of the pre-opened connections: its greeting carries a number
    // the backend handed out before the client connected.
    let before = b.accepted.load(Ordering::SeqCst);
    let mut c = TcpStream::connect(plumb.addr()).await.unwrap();
    let mut greeting = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    let n: usize = std::str::from_utf8(&greeting[5..8])
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        n <= before,
        "got connection {n}, but {before} were open before the client came"
    );
    c.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    c.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}
