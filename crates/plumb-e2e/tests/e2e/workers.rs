//! Worker threads (`runtime.workers`): every listening address has one socket per
//! worker and every one of them is accepted on (a socket nobody accepts on would
//! leave its share of new connections unanswered), and the upstream keep-alive pool
//! keeps its per-backend bound and its connections across workers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::http_basics::{http_config, ok, origin, Client, Step};
use crate::support::{eventually, Plumb};

const WORKERS: usize = 4;

/// Listening sockets on `addr`'s port in this network namespace (`/proc/net/tcp`,
/// state `0A`), whoever holds them.
fn listening_sockets_on(addr: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
        .count()
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// One request on a new client connection; its status, or why there was none.
async fn one_request(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut c = Client::connect(addr).await;
    c.send(format!("GET {path} HTTP/1.1\r\nHost: w.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    match timeout(Duration::from_secs(5), c.try_response(false)).await {
        Ok(Ok(r)) => Ok(r.status),
        Ok(Err(e)) => Err(format!("{path}: {e}")),
        Err(_) => Err(format!("{path}: no answer within 5 s")),
    }
}

/// Four workers: four sockets share the listener's address, a thread runs each
/// extra worker, and 96 connections, spread by the kernel over the four sockets,
/// are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_every_worker_is_accepted_on() {
    let o = origin(|_| vec![Step::Write(ok("hi"))]).await;
    let toml = format!(
        "[runtime]\nworkers = {WORKERS}\n{}",
        http_config(&[o.addr], "", "")
    );
    let plumb = Plumb::start(&toml).await;
    assert_eq!(listening_sockets_on(plumb.addr()), WORKERS);
    let names = thread_names();
    for i in 1..WORKERS {
        let name = format!("plumb-worker-{i}");
        assert!(names.contains(&name), "no thread {name} in {names:?}");
    }

    let mut set = JoinSet::new();
    for i in 0..96 {
        let addr = plumb.addr();
        set.spawn(async move { one_request(addr, &format!("/{i}")).await });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(200) => {}
            Ok(s) => failures.push(format!("status {s}")),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 96 failed: {failures:?}",
        failures.len()
    );
    plumb.stop().await;
}

/// `max_idle_per_backend` bounds the connections kept to a backend over all
/// workers together, and a worker with none of its own reuses another's before
/// it connects: after a burst that opened many upstream connections, two are kept,
/// and 24 more requests on new client connections (landing on all four workers)
/// open none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_bound_and_reuse_hold_across_workers() {
    let o = origin(|r| {
        let mut steps = Vec::new();
        if r.path.starts_with("/burst") {
            // Long enough that the burst's requests overlap.
            steps.push(Step::Sleep(Duration::from_millis(300)));
        }
        steps.push(Step::Write(ok("hi")));
        steps
    })
    .await;
    let toml = format!(
        "[runtime]\nworkers = {WORKERS}\n{}",
        http_config(&[o.addr], "[pool.upstream]\nmax_idle_per_backend = 2\n", "")
    );
    let plumb = Plumb::start(&toml).await;
    let pool = plumb.server.pool("app").unwrap();

    let mut set = JoinSet::new();
    for i in 0..32 {
        let addr = plumb.addr();
        set.spawn(async move { one_request(addr, &format!("/burst/{i}")).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), Ok(200));
    }
    let opened = o.accepted();
    assert!(
        opened > 2,
        "the burst's requests did not overlap: {opened} upstream connections"
    );
    assert!(
        eventually(Duration::from_secs(2), || pool.idle_connections() == 2).await,
        "kept {} idle connections, bound 2",
        pool.idle_connections()
    );

    for i in 0..24 {
        assert_eq!(
            one_request(plumb.addr(), &format!("/after/{i}")).await,
            Ok(200)
        );
        assert!(
            pool.idle_connections() <= 2,
            "kept {} idle connections, bound 2",
            pool.idle_connections()
        );
    }
    assert_eq!(
        o.accepted(),
        opened,
        "requests after the burst opened upstream connections while two were kept"
    );
    plumb.stop().await;
}

/// A listening socket with `SO_REUSEPORT`, as a running plumb would hand over.
fn handed_over_socket() -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(128).unwrap();
    s.into()
}

/// A binary upgrade to more workers than the running plumb had: beside the one
/// socket handed over (which the running plumb goes on accepting on), the new
/// process binds three more, which listen only when it starts accepting; a
/// reload's new sockets too. A socket that listened before would take a share
/// of new connections that wait, or are reset if the new process fails first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sockets_listen_only_when_their_accept_loops_start() {
    let o = origin(|_| vec![Step::Write(ok("hi"))]).await;
    let handed = handed_over_socket();
    let addr = handed.local_addr().unwrap();
    let toml = format!(
        "[runtime]\nworkers = {WORKERS}\naccess_log = \"off\"\n{}",
        http_config(&[o.addr], "", "").replace("127.0.0.1:0", &addr.to_string())
    );
    let config = plumb_config::parse(&toml).unwrap();
    let mut inherited = std::collections::HashMap::from([(addr, vec![handed])]);
    let bound = plumb_core::bind_all_with(&config, &mut inherited).unwrap();
    assert_eq!(bound[0].sockets.len(), WORKERS);
    assert_eq!(
        listening_sockets_on(addr),
        1,
        "sockets bound beside the handed-over one listen before plumb accepts"
    );
    // A reload's sockets: bound, not listening.
    let reload = plumb_core::bind(&config.listeners[0], WORKERS).unwrap();
    assert_eq!(reload.sockets.len(), WORKERS);
    assert_eq!(listening_sockets_on(addr), 1);
    drop(reload);

    let server = std::sync::Arc::new(plumb_core::Server::new(
        &config,
        plumb_core::Server::open_access_log(&config).unwrap(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = std::sync::Arc::clone(&server);
    let run = tokio::spawn(async move {
        s.run(bound, async move {
            let _ = stopped.await;
        })
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || listening_sockets_on(addr)
            == WORKERS)
        .await,
        "{} sockets listen once plumb accepts, expected {WORKERS}",
        listening_sockets_on(addr)
    );
    for i in 0..32 {
        assert_eq!(one_request(addr, &format!("/{i}")).await, Ok(200));
    }
    let _ = stop.send(());
    timeout(Duration::from_secs(40), run)
        .await
        .expect("plumb did not stop")
        .unwrap()
        .unwrap();
}
