//! Load smoke tests with real clients: wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2
//! prior knowledge) against `plumb demo`'s HTTP listener. Not a benchmark: they check
//! that under concurrent load every response is a 2xx from an origin. `scripts/test`
//! installs wrk and h2load; without them these tests print why they skip.
#![allow(
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test driving other processes: wall-clock deadlines; a failed expect is a failed test"
)]

mod support;
use support::have;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    proxy: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Kill by PID, also when a test fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo() -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("plumb demo starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut proxy = None;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("proxy") {
            let hostport = rest
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches('/');
            proxy = hostport.parse().ok();
            break;
        }
    }
    let mut demo = Demo {
        child,
        proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    // The guard exists before any panic, so the demo is killed either way.
    demo.proxy = proxy.expect("plumb demo printed no proxy line");
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    demo
}

#[test]
fn wrk_keep_alive_load_gets_only_2xx() {
    if !have("wrk", "it") {
        return;
    }
    let d = demo();
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c16",
            "-d2s",
            "--timeout",
            "2s",
            &format!("http://{}/", d.proxy),
        ])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("Non-2xx"),
        "non-2xx responses under load:\n{text}"
    );
    assert!(
        !text.contains("Socket errors"),
        "socket errors under load:\n{text}"
    );
    let requests: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    assert!(requests >= 500, "only {requests} requests in 2 s:\n{text}");
}

#[test]
fn h2load_prior_knowledge_load_gets_only_2xx() {
    if !have("h2load", "it") {
        return;
    }
    let d = demo();
    let out = Command::new("h2load")
        .args([
            "-n",
            "2000",
            "-c",
            "8",
            "-m",
            "4",
            &format!("http://{}/", d.proxy),
        ])
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "h2load saw failures:\n{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}
