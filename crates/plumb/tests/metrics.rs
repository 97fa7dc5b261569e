//! `GET /metrics` as Prometheus sees it: `promtool check metrics` accepts it, a real
//! Prometheus server scrapes it and answers a PromQL query, and the kernel's listen
//! overflow counter rises when an accept queue overflows. `scripts/test` installs the
//! Debian package `prometheus` (promtool and the server); without it these tests
//! print why they skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving other processes: wall-clock deadlines; a panic is the report"
)]

mod support;
use support::{free_port, have, Proc};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 origin that answers 200 "ok" and closes.
fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `plumb serve` with an HTTP listener in front of one origin; returns the process,
/// the listener and the admin address.
fn serve(dir: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let backend = origin();
    for _ in 0..5 {
        let (web, admin) = (free_port(), free_port());
        let config = dir.join("metrics.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\naccess_log = \"off\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:{web}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["serve", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(admin_addr).is_ok() {
                return (
                    Proc(child),
                    SocketAddr::from(([127, 0, 0, 1], web)),
                    admin_addr,
                );
            }
            if child.try_wait().unwrap().is_some() {
                break; // A port was taken meanwhile: try others.
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("plumb serve did not start");
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn promtool_accepts_the_exposition_and_requests_are_counted() {
    if !have("promtool", "the Debian package prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_plumb, web, admin) = serve(dir.path());
    for _ in 0..3 {
        assert!(http_get(web, "/").starts_with("HTTP/1.1 200"));
    }
    let resp = http_get(admin, "/metrics");
    assert!(
        resp.contains("content-type: text/plain; version=0.0.4"),
        "{resp}"
    );
    let text = body(&resp).to_string();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "plumb_requests_total{listener=\"web\",pool=\"app\",code=\"200\",cause=\"none\"} 3"
        ),
        "{text}"
    );
    for family in [
        "plumb_connections_accepted_total",
        "plumb_connections_active",
        "plumb_request_duration_seconds_bucket",
        "plumb_time_to_first_byte_seconds_bucket",
        "plumb_upstream_connect_seconds_bucket",
        "plumb_backend_up",
        "plumb_kernel_listen_overflows_total",
        "plumb_kernel_retrans_segs_total",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
}

#[test]
fn a_listen_overflow_shows_in_the_kernel_counter() {
    let dir = tempfile::tempdir().unwrap();
    let (_plumb, _web, admin) = serve(dir.path());
    let before = sample(
        body(&http_get(admin, "/metrics")),
        "plumb_kernel_listen_overflows_total",
    )
    .unwrap();
    // A listener with the smallest backlog that never accepts: further SYNs
    // overflow its queue and are dropped by the kernel.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let target = s.local_addr().unwrap().as_socket().unwrap();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                TcpStream::connect_timeout(&target, Duration::from_millis(300))
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let after = sample(
        body(&http_get(admin, "/metrics")),
        "plumb_kernel_listen_overflows_total",
    )
    .unwrap();
    assert!(
        after > before,
        "ListenOverflows did not rise: {before} -> {after}"
    );
    drop(s);
}

#[test]
fn a_real_prometheus_scrapes_plumb() {
    if !have("prometheus", "the Debian package prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_plumb, web, admin) = serve(dir.path());
    for _ in 0..5 {
        assert!(http_get(web, "/").starts_with("HTTP/1.1 200"));
    }
    let prom_port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: plumb\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new("prometheus")
            .args([
                &format!("--config.file={}", prom_config.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = SocketAddr::from(([127, 0, 0, 1], prom_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&prom, Duration::from_millis(500)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(
                s,
                "GET /api/v1/query?query=sum(plumb_requests_total%7Bcode%3D%22200%22%7D) HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains("\"result\":[{") && out.contains("\"5\"") {
                return;
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("Prometheus never answered sum(plumb_requests_total) = 5; last answer:\n{last}");
}
