//! Network faults made with nftables in namespaces these tests create and delete.
//!
//! Incident 000 in miniature: a path that silently drops every segment larger than
//! 1200 bytes from plumb to its client (handshake and ACKs pass), made with nftables
//! inside a network namespace this test creates and deletes. plumb's connection table
//! must flag the client leg `suspected_blackhole`, from TCP_INFO alone.
//!
//! Needs root, `ip` and `nft` (`scripts/test` installs iproute2 and nftables as root);
//! otherwise it prints why it skips. All traffic stays on the namespace's loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving other processes: wall-clock deadlines; a panic is the report"
)]

mod support;
use support::{have, Proc};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn can_run() -> bool {
    // Root check: the effective uid from /proc (no unsafe geteuid call).
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("SKIPPED: needs root to create a network namespace");
        return false;
    }
    for tool in ["ip", "nft", "python3", "curl"] {
        if !have(tool, "iproute2, nftables and curl") {
            return false;
        }
    }
    true
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// A new network namespace with its loopback up and these nftables rules loaded;
/// deleted when dropped.
fn lab(prefix: &str, rules: &str) -> Netns {
    let ns = Netns(format!("{prefix}-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    assert!(in_ns(&ns.0, &["ip", "link", "set", "lo", "up"])
        .status()
        .unwrap()
        .success());
    let mut nft = in_ns(&ns.0, &["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(
        nft.wait().unwrap().success(),
        "nft refused the rules:\n{rules}"
    );
    ns
}

/// Python's threaded HTTP server on 127.0.0.1:`port` inside `ns`, given time to
/// start; killed when dropped.
fn python_http(ns: &Netns, port: u16) -> Proc {
    let p = Proc(
        in_ns(
            &ns.0,
            &[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    p
}

#[test]
fn a_path_mtu_black_hole_is_flagged_from_tcp_info() {
    if !can_run() {
        return;
    }
    let (listen, backend, admin) = (18080, 18090, 18901);
    // Segments from plumb's listener port longer than 1200 bytes vanish on the way
    // in to the client (dropped at input, so plumb's kernel believes them sent, as
    // with a real path); nothing says so (no ICMP): a black hole for full-size
    // packets only. Dropping them at output instead would hand plumb's TCP a local
    // error, which it treats differently from loss on the path.
    let rules = format!(
        "table inet bh {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp sport {listen} meta length > 1200 drop\n  }}\n}}\n"
    );
    let ns = lab("plumb-bh", &rules);

    // A backend that sends 64 KiB to every connection and keeps it open.
    let _backend = Proc(
        in_ns(&ns.0, &["python3", "-c", &format!(
            "import socket,threading\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',{backend}));s.listen(8)\nkeep=[]\nwhile True:\n  c,_=s.accept();keep.append(c);c.sendall(b'x'*65536)\n"
        )])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bh.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\naccess_log = \"off\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:{listen}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:{backend}\"]\n"
        ),
    )
    .unwrap();
    let _plumb = Proc(
        in_ns(
            &ns.0,
            &[
                env!("CARGO_BIN_EXE_plumb"),
                "serve",
                "-c",
                cfg.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    // A client that connects (the handshake passes) and waits for data that cannot
    // arrive: plumb's segments to it are full-size.
    let _client = Proc(
        in_ns(&ns.0, &["python3", "-c", &format!(
            "import socket,time\nc=socket.create_connection(('127.0.0.1',{listen}))\ntime.sleep(30)\n"
        )])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last;
    loop {
        let out = in_ns(
            &ns.0,
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{admin}/api/v1/connections"),
            ],
        )
        .output()
        .unwrap();
        last = String::from_utf8_lossy(&out.stdout).to_string();
        let table: serde_json::Value =
            serde_json::from_str(&last).unwrap_or(serde_json::Value::Null);
        let flagged = table.as_array().is_some_and(|conns| {
            conns.iter().any(|c| {
                c["suspected_blackhole"] == true
                    && c["client_tcp"]["suspected_blackhole"] == true
                    && c["client_tcp"]["unacked"].as_u64().unwrap_or(0) > 0
                    && c["client_tcp"]["retransmits"].as_u64().unwrap_or(0) >= 2
            })
        });
        if flagged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection flagged suspected_blackhole; last table:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The backend leg is healthy: its data was acknowledged.
    let table: serde_json::Value = serde_json::from_str(&last).unwrap();
    let c = &table.as_array().unwrap()[0];
    assert_eq!(c["upstream_tcp"]["suspected_blackhole"], false, "{c}");
}

#[test]
fn doctor_finds_the_black_hole_and_its_size() {
    if !can_run() {
        return;
    }
    let port = 18081;
    // Packets to the server longer than 1200 bytes vanish, with no ICMP.
    let rules = format!(
        "table inet bh {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} meta length > 1200 drop\n  }}\n}}\n"
    );
    let ns = lab("plumb-bhd", &rules);
    let _server = python_http(&ns, port);
    let started = Instant::now();
    let out = in_ns(
        &ns.0,
        &[
            env!("CARGO_BIN_EXE_plumb"),
            "doctor",
            &format!("http://127.0.0.1:{port}/"),
            "--check",
            "mtu",
            "--format",
            "json",
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{f:#}");
    assert_eq!(f["verdict"], "problem", "{f:#}");
    let ev = &f["evidence"];
    // 1200-byte packets carry 1148 bytes of payload with timestamps (52 bytes of
    // headers); the bisection stops within 8 bytes.
    let lo = ev["largest_acknowledged"].as_u64().unwrap();
    assert!((1140..=1148).contains(&lo), "{f:#}");
    let mtu = ev["path_mtu_estimate"].as_u64().unwrap();
    assert!((1192..=1200).contains(&mtu), "{f:#}");
    assert_eq!(ev["with_mss_clamped"]["result"], "acknowledged", "{f:#}");
    let stalled = ev["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["result"] == "stalled")
        .unwrap();
    assert!(
        stalled["tcp_info"]["unacked"].as_u64().unwrap() > 0
            && stalled["tcp_info"]["total_retrans"].as_u64().unwrap() > 0,
        "{stalled}"
    );
    assert!(
        f["summary"].as_str().unwrap().contains("MTU black hole"),
        "{f:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

/// Incident 002 in miniature: a stateful middlebox that forgets idle connections
/// (conntrack's established timeout cut to 3 s, loose pickup off) and drops their
/// next packets as invalid, without a word.
#[test]
fn doctor_finds_the_idle_timeout_of_a_forgetful_middlebox() {
    if !can_run() {
        return;
    }
    let port = 18085;
    let rules = format!(
        "table inet idle {{\n  chain in {{\n    type filter hook input priority 0;\n    tcp dport {port} ct state invalid drop\n  }}\n}}\n"
    );
    let ns = lab("plumb-idle", &rules);
    // The conntrack sysctls exist once the rules have loaded conntrack; they are
    // per network namespace.
    assert!(in_ns(
        &ns.0,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_tcp_timeout_established=3",
            "net.netfilter.nf_conntrack_tcp_loose=0",
        ],
    )
    .status()
    .unwrap()
    .success());
    let _server = python_http(&ns, port);
    let out = in_ns(
        &ns.0,
        &[
            env!("CARGO_BIN_EXE_plumb"),
            "doctor",
            &format!("http://127.0.0.1:{port}/"),
            "--check",
            "idle-timeout",
            "--max-idle",
            "8s",
            "--format",
            "json",
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{f:#}");
    let held: Vec<(u64, String)> = f["evidence"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["idle_s"].as_f64().unwrap() as u64,
                h["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Idle 1 s and 2 s answered; from 3 s (the conntrack timeout) the request is
    // never acknowledged: silence, not a FIN or an RST.
    assert_eq!(
        &held[..2],
        &[(1, "answered".into()), (2, "answered".into())],
        "{f:#}"
    );
    assert!(held[2..].iter().all(|(_, o)| o == "silence"), "{f:#}");
    assert!(
        f["summary"].as_str().unwrap().starts_with(
            "connections idle for 2 s worked, after 3 s the request went unacknowledged"
        ),
        "{f:#}"
    );
}
