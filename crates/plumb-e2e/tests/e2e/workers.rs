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
