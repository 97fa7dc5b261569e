//! `pool.discovery.dns`: every address of a name is a backend of its own; the
//! name is resolved again by its TTL (within bounds); addresses that go are
//! drained, not cut; new ones ramp up; a DNS server that stops answering
//! changes nothing. A small DNS server on loopback gives the answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType};
use hickory_resolver::proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::support::{echo_on, eventually, Echo, Plumb};

/// A DNS server for one name: answers its A queries with `answers` and `ttl`,
/// anything else with no record; counts the A queries; `silent` drops them all.
struct Dns {
    addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    ttl: Arc<Mutex<u32>>,
    queries: Arc<AtomicUsize>,
    silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn dns(answers: &[Ipv4Addr], ttl: u32) -> Dns {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let answers = Arc::new(Mutex::new(answers.to_vec()));
    let ttl = Arc::new(Mutex::new(ttl));
    let queries = Arc::new(AtomicUsize::new(0));
    let silent = Arc::new(AtomicBool::new(false));
    let (a, t, q, s) = (
        Arc::clone(&answers),
        Arc::clone(&ttl),
        Arc::clone(&queries),
        Arc::clone(&silent),
    );
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if s.load(Ordering::Relaxed) {
                continue;
            }
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.message_type = MessageType::Response;
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            for query in &req.queries {
                resp.add_query(query.clone());
                if query.query_type() == RecordType::A
                    && query.name().to_ascii().eq_ignore_ascii_case("app.test.")
                {
                    q.fetch_add(1, Ordering::Relaxed);
                    let ttl = *t.lock().unwrap();
                    for ip in a.lock().unwrap().iter() {
                        resp.add_answer(Record::from_rdata(
                            query.name().clone(),
                            ttl,
                            RData::A(A(*ip)),
                        ));
                    }
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), from).await;
        }
    });
    Dns {
        addr,
        answers,
        ttl,
        queries,
        silent,
        task,
    }
}

/// Echo servers on 127.0.0.2, .3 and .4, all on one port (DNS gives addresses;
/// the port comes from the config).
async fn three_echoes() -> (u16, Vec<Echo>) {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(b), Ok(c)) = (
            TcpListener::bind(("127.0.0.3", port)).await,
            TcpListener::bind(("127.0.0.4", port)).await,
        ) else {
            continue;
        };
        return (port, vec![echo_on(first), echo_on(b), echo_on(c)]);
    }
    panic!("no port free on 127.0.0.2-4");
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn toml(port: u16, dns: SocketAddr, refresh: &str) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\ndiscovery = {{ dns = \"app.test:{port}\", nameserver = \"{dns}\", refresh = \"{refresh}\" }}\nslow_start = \"5s\"\nhealth = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"200ms\" }}\n[pool.drain]\ntimeout = \"3s\"\nclose_spread = \"0s\"\n"
    )
}

fn backends(plumb: &Plumb) -> Vec<SocketAddr> {
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

fn at(port: u16, last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip(last)), port)
}

async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_is_a_backend_and_changes_drain_not_cut() {
    let (port, _echoes) = three_echoes().await;
    let dns = dns(&[ip(2), ip(3)], 1).await;
    let plumb = Plumb::start(&toml(port, dns.addr, "30s")).await;
    assert!(
        eventually(Duration::from_secs(5), || backends(&plumb)
            == vec![at(port, 2), at(port, 3)])
        .await,
        "{:?}",
        backends(&plumb)
    );
    let pool = plumb.server.pool("app").unwrap();
    // Each address is its own backend with its own checks and counters.
    for b in pool.backends().iter() {
        assert!(b.is_discovered());
    }
    let status = pool.discovery_status().unwrap();
    assert!(status.up, "{status:?}");
    assert_eq!(status.source, format!("dns app.test:{port}"));
    // A connection on each address.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();
        held.push(s);
    }
    let on_two = pool.backend(at(port, 2)).unwrap();
    assert_eq!(on_two.active(), 1);

    // .2 leaves DNS, .4 joins: within the 1 s TTL (+ margin) .4 is added and
    // ramping, .2 drains (its connection still works) and is removed after 3 s.
    *dns.answers.lock().unwrap() = vec![ip(3), ip(4)];
    assert!(
        eventually(Duration::from_secs(4), || pool
            .backend(at(port, 2))
            .is_some_and(|b| b.is_draining()))
        .await
    );
    let now = pool.now_ms();
    let four = pool.backend(at(port, 4)).unwrap();
    // Full weight 1 counts as 100 here; slow start begins at a tenth.
    assert!(
        four.effective_weight(now, 5_000) < 100,
        "a new address starts with slow start"
    );
    for s in &mut held {
        round_trip(s).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(6), || backends(&plumb)
            == vec![at(port, 3), at(port, 4)])
        .await,
        "{:?}",
        backends(&plumb)
    );

    // The DNS server stops answering: the pool keeps what it has, and says so.
    dns.silent.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(15), || !pool
            .discovery_status()
            .unwrap()
            .up)
        .await
    );
    let status = pool.discovery_status().unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .ends_with("keeping the last known set"),
        "{status:?}"
    );
    assert_eq!(backends(&plumb), vec![at(port, 3), at(port, 4)]);
    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
    // Back: a fresh answer is applied.
    *dns.answers.lock().unwrap() = vec![ip(2), ip(3), ip(4)];
    dns.silent.store(false, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || backends(&plumb).len() == 3).await,
        "{:?}",
        backends(&plumb)
    );
    assert!(pool.discovery_status().unwrap().up);
}

/// The TTL sets the pace, between 1 s and `refresh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_follows_the_ttl_within_bounds() {
    let (port, _echoes) = three_echoes().await;
    // TTL 0: no more than one resolution a second.
    let dns = dns(&[ip(2)], 0).await;
    let _plumb = Plumb::start(&toml(port, dns.addr, "30s")).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let n = dns.queries.load(Ordering::Relaxed);
    assert!((3..=5).contains(&n), "{n} resolutions in 3.5 s at TTL 0");
    drop(_plumb);

    // TTL 1 h, refresh 1s: refresh bounds it.
    let dns = dns_with_ttl(3600).await;
    let _plumb = Plumb::start(&toml(port, dns.addr, "1s")).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let n = dns.queries.load(Ordering::Relaxed);
    assert!(
        (3..=5).contains(&n),
        "{n} resolutions in 3.5 s at refresh 1s"
    );
    drop(_plumb);

    // TTL 2 s, refresh 30 s: every 2 s.
    let dns = dns_with_ttl(2).await;
    let _plumb = Plumb::start(&toml(port, dns.addr, "30s")).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let n = dns.queries.load(Ordering::Relaxed);
    assert!((2..=4).contains(&n), "{n} resolutions in 4.5 s at TTL 2");
    let _ = &dns.ttl;
}

async fn dns_with_ttl(ttl: u32) -> Dns {
    dns(&[ip(2)], ttl).await
}

/// A reload that switches a pool from listed backends to discovery hands them to
/// discovery: those in the answer stay (not drained), the others drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_discovery_keeps_the_backends_dns_still_names() {
    let (port, _echoes) = three_echoes().await;
    let dns = dns(&[ip(2), ip(3)], 1).await;
    let listed = format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbackends = [\"{}\", \"{}\", \"{}\"]\n[pool.drain]\ntimeout = \"3s\"\nclose_spread = \"0s\"\n",
        at(port, 2),
        at(port, 3),
        at(port, 4)
    );
    let plumb = Plumb::start(&listed).await;
    let mut held = TcpStream::connect(plumb.addr()).await.unwrap();
    round_trip(&mut held).await.unwrap();
    let pool = plumb.server.pool("app").unwrap();
    let text = toml(port, dns.addr, "30s");
    plumb
        .server
        .reload(&plumb_config::parse(&text).unwrap())
        .unwrap();
    assert!(
        eventually(Duration::from_secs(4), || pool
            .backend(at(port, 4))
            .is_none_or(|b| b.is_draining()))
        .await,
        "the address DNS does not name drains"
    );
    for last in [2, 3] {
        let b = pool.backend(at(port, last)).unwrap();
        assert!(!b.is_draining(), "{last} was drained though DNS names it");
    }
    round_trip(&mut held).await.unwrap();
    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    round_trip(&mut s).await.unwrap();
}
