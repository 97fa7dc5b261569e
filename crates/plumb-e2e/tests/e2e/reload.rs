//! Reloading the config in place: backends added and deregistered, listeners added
//! and removed, the admin API's changes kept, open connections never cut.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{echo, eventually, Plumb};

fn cfg(backends: &[SocketAddr], extra: &str) -> plumb_config::Config {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{extra}\n[[pool]]\nname = \"app\"\nbackends = [{}]\n[pool.drain]\ntimeout = \"600ms\"\nclose_spread = \"0s\"\n",
        list.join(", ")
    );
    plumb_config::parse(&text).unwrap()
}

fn toml(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [{}]\n[pool.drain]\ntimeout = \"600ms\"\nclose_spread = \"0s\"\n",
        list.join(", ")
    )
}

async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

fn addrs(plumb: &Plumb) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = plumb
        .server
        .pool("app")
        .unwrap()
        .backends()
        .iter()
        .map(|b| b.addr())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_follow_the_file_and_dropped_ones_are_drained_not_cut() {
    let (a, b, c) = (echo().await, echo().await, echo().await);
    let plumb = Plumb::start(&toml(&[a.addr, b.addr])).await;
    // One connection on each backend.
    let mut c1 = TcpStream::connect(plumb.addr()).await.unwrap();
    let mut c2 = TcpStream::connect(plumb.addr()).await.unwrap();
    round_trip(&mut c1).await.unwrap();
    round_trip(&mut c2).await.unwrap();

    let summary = plumb.server.reload(&cfg(&[b.addr, c.addr], "")).unwrap();
    assert!(
        summary
            .changes
            .iter()
            .any(|s| s.contains(&format!("added backend {}", c.addr))),
        "{summary:?}"
    );
    assert!(
        summary
            .changes
            .iter()
            .any(|s| s.contains(&format!("deregistering backend {}", a.addr))),
        "{summary:?}"
    );
    // Open connections still work right after the reload, on both backends.
    round_trip(&mut c1).await.unwrap();
    round_trip(&mut c2).await.unwrap();
    // New connections never go to the dropped backend.
    for _ in 0..6 {
        let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();
    }
    let log = plumb.wait_log(6).await;
    for line in &log {
        assert_ne!(line["backend"], a.addr.to_string(), "{line}");
    }
    // The dropped backend leaves once its drain deadline passed.
    let pool_addrs_ok = eventually(Duration::from_secs(3), || {
        addrs(&plumb) == {
            let mut v = vec![b.addr, c.addr];
            v.sort();
            v
        }
    })
    .await;
    assert!(pool_addrs_ok, "{:?}", addrs(&plumb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_apis_changes_survive_a_reload() {
    let (a, b, c) = (echo().await, echo().await, echo().await);
    let plumb = Plumb::start(&toml(&[a.addr, b.addr])).await;
    let pool = plumb.server.pool("app").unwrap();
    // The API drains a (for a long time) and registers c.
    pool.drain(a.addr, Some(Duration::from_secs(60)), false)
        .unwrap();
    pool.register(c.addr, Some(3));
    // A reload of the same file: a stays draining, c stays registered with weight 3.
    plumb.server.reload(&cfg(&[a.addr, b.addr], "")).unwrap();
    let now = pool.now_ms();
    assert_eq!(
        pool.backend(a.addr).unwrap().state(now).as_str(),
        "draining"
    );
    assert_eq!(pool.backend(c.addr).unwrap().weight(), 3);
    // Even a file that changes a's weight leaves the API's drain in place.
    let mut changed = cfg(&[a.addr, b.addr], "");
    changed.pools[0].backends[0].weight = 7;
    plumb.server.reload(&changed).unwrap();
    assert_eq!(
        pool.backend(a.addr).unwrap().state(pool.now_ms()).as_str(),
        "draining"
    );
    assert_eq!(pool.backend(a.addr).unwrap().weight(), 1);
    // While b (from the file, untouched by the API) takes the file's weight.
    changed.pools[0].backends[1].weight = 4;
    plumb.server.reload(&changed).unwrap();
    assert_eq!(pool.backend(b.addr).unwrap().weight(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_without_cutting_connections() {
    let a = echo().await;
    let plumb = Plumb::start(&toml(&[a.addr])).await;
    let mut held = TcpStream::connect(plumb.addr()).await.unwrap();
    round_trip(&mut held).await.unwrap();

    // Add a second listener on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let second: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let extra =
        format!("\n[[listener]]\nname = \"second\"\nlisten = \"{second}\"\npool = \"app\"\n");
    let text = format!("{}{extra}", toml(&[a.addr]));
    let both = plumb_config::parse(&text).unwrap();
    let summary = plumb.server.reload(&both).unwrap();
    assert!(
        summary
            .changes
            .iter()
            .any(|s| s.contains("listener second: listening")),
        "{summary:?}"
    );
    let mut s = TcpStream::connect(second).await.unwrap();
    round_trip(&mut s).await.unwrap();

    // Remove the first listener: it stops accepting, its open connection goes on.
    let only_second = plumb_config::parse(&text.replacen(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n",
        "",
        1,
    ))
    .unwrap();
    plumb.server.reload(&only_second).unwrap();
    round_trip(&mut held).await.unwrap();
    let first = plumb.addr();
    let refused = eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect(first).is_err()
    })
    .await;
    assert!(refused, "the removed listener still accepts");
    round_trip(&mut held).await.unwrap();
    round_trip(&mut s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let a = echo().await;
    let b = echo().await;
    let plumb = Plumb::start(&toml(&[a.addr])).await;
    // A listener on an address another process holds (our echo backend, which does
    // not set SO_REUSEPORT), plus a new backend: neither may take effect.
    let extra = format!(
        "\n[[listener]]\nname = \"taken\"\nlisten = \"{}\"\npool = \"app\"\n",
        b.addr
    );
    let text = format!("{}{extra}", toml(&[a.addr, b.addr]));
    let err = plumb
        .server
        .reload(&plumb_config::parse(&text).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    assert_eq!(addrs(&plumb), vec![a.addr]);
    assert!(plumb.server.listener_stats("taken").is_none());
}
