//! `plumb probe` against local servers on loopback, as a user runs it: each address
//! probed on its own, phases timed, causes named, SYN retransmissions read from
//! TCP_INFO, the bad address of several named, exit codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving the binary: wall-clock deadlines; a panic is the report"
)]

mod support;
use support::Proc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// A server that answers each connection per `behave`, forever (threads end with the
/// test process).
fn server(behave: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || behave(s));
        }
    });
    addr
}

fn read_head(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

fn ok(mut s: TcpStream) {
    read_head(&mut s);
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
}

fn slow(mut s: TcpStream) {
    read_head(&mut s);
    thread::sleep(Duration::from_millis(500));
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
}

fn error500(mut s: TcpStream) {
    read_head(&mut s);
    let _ = s.write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
}

fn silent(mut s: TcpStream) {
    read_head(&mut s);
    thread::sleep(Duration::from_secs(20));
}

fn refusing() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A listener whose accept queue is full and that never accepts: SYNs are dropped.
fn full_queue() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let fillers = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (s, fillers, addr)
}

fn probe(args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["probe", "--format", "json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(&all)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn statuses_and_causes_per_target() {
    let (good, late, bad, quiet, closed) = (
        server(ok),
        server(slow),
        server(error500),
        server(silent),
        refusing(),
    );
    let (_q, _fillers, blocked) = full_queue();
    let urls = [
        format!("http://{good}/"),
        format!("http://{late}/"),
        format!("http://{bad}/"),
        format!("http://{quiet}/"),
        format!("tcp://{closed}"),
        format!("tcp://{blocked}"),
    ];
    let mut args: Vec<&str> = urls.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--warn", "300ms", "--timeout", "1500ms"]);
    let (code, r) = probe(&args);
    assert_eq!(code, 1, "{r:?}");
    assert_eq!(r.len(), 6, "{r:?}");
    let by = |i: usize, k: &str| r[i][k].clone();
    assert_eq!(
        (by(0, "status"), by(0, "http_status")),
        ("ok".into(), 200.into())
    );
    assert!(
        by(0, "connect").as_f64().unwrap() < 100.0
            && by(0, "ttfb").is_number()
            && by(0, "syn_retransmits") == 0
    );
    assert_eq!(by(0, "tcp_info")["pmtu"], 65535);
    assert_eq!(by(1, "status"), "warn", "{:?}", r[1]);
    assert!(by(1, "ttfb").as_f64().unwrap() >= 450.0);
    assert_eq!(
        (by(2, "status"), by(2, "cause"), by(2, "http_status")),
        ("fail".into(), "http_status".into(), 500.into())
    );
    assert_eq!(
        (by(3, "status"), by(3, "cause")),
        ("fail".into(), "response_timeout".into())
    );
    let t = by(3, "total").as_f64().unwrap();
    assert!(
        (1400.0..3000.0).contains(&t),
        "the budget bounds the probe: {t}"
    );
    assert_eq!(by(4, "cause"), "connect_refused");
    assert_eq!(by(5, "cause"), "connect_timeout");
    assert!(
        by(5, "syn_retransmits").as_u64().unwrap() >= 1,
        "{:?}",
        r[5]
    );
}

#[test]
fn every_address_is_probed_and_the_bad_one_is_named() {
    let good = server(ok);
    let spec = format!("api.test:{}:127.0.0.1,127.0.0.9", good.port());
    let url = format!("http://api.test:{}/health", good.port());
    let (code, r) = probe(&[&url, "--resolve", &spec]);
    assert_eq!(code, 1);
    assert_eq!(r.len(), 2, "{r:?}");
    let good_line = r
        .iter()
        .find(|l| l["address"] == format!("127.0.0.1:{}", good.port()))
        .unwrap();
    let bad_line = r
        .iter()
        .find(|l| l["address"] == format!("127.0.0.9:{}", good.port()))
        .unwrap();
    assert_eq!(good_line["status"], "ok");
    assert_eq!(good_line["host"], "api.test");
    assert_eq!(
        (bad_line["status"].clone(), bad_line["cause"].clone()),
        ("fail".into(), "connect_refused".into())
    );
    // -4 with only an IPv6 override: nothing to probe is a dns_error, exit 1.
    let (code, r) = probe(&[
        &url,
        "--resolve",
        &format!("api.test:{}:::1", good.port()),
        "-4",
    ]);
    assert_eq!((code, r[0]["cause"].clone()), (1, "dns_error".into()));
}

#[test]
fn a_connect_that_needed_a_syn_retransmission_is_a_warning() {
    // The queue is full for about 1.5 s, then the listener accepts: the first SYN is
    // dropped, a retransmitted one gets through.
    let (q, fillers, addr) = full_queue();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(1500));
        drop(fillers);
        let l: TcpListener = q.into();
        for s in l.incoming().flatten() {
            thread::spawn(move || ok(s));
        }
    });
    let (code, r) = probe(&[
        &format!("http://{addr}/"),
        "--warn",
        "10s",
        "--timeout",
        "6s",
    ]);
    assert_eq!(code, 0, "warn is not a failure: {r:?}");
    assert_eq!(r[0]["status"], "warn", "{:?}", r[0]);
    assert!(r[0]["syn_retransmits"].as_u64().unwrap() >= 1, "{:?}", r[0]);
}

#[test]
fn rounds_end_with_a_summary_and_bad_flags_are_usage_errors() {
    let good = server(ok);
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "probe",
            &format!("http://{good}/"),
            "--count",
            "3",
            "--every",
            "100ms",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        3,
        "{text}"
    );
    assert!(text.contains("3 probes, 100.0% succeeded"), "{text}");
    for bad in [
        vec!["probe", "ftp://example.test/"],
        vec![
            "probe",
            "https://example.test/",
            "--cacert",
            "/nonexistent.pem",
        ],
        vec!["probe", "tcp://example.test"],
        vec!["probe", "http://127.0.0.1:1/", "--timeout", "5x"],
        vec!["probe", "http://127.0.0.1:1/", "--expect-status", "700"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn https_times_the_handshake_and_checks_the_certificate() {
    let origin = server(ok);
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("tls.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\naccess_log = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"tls\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:{port}\"\npool = \"app\"\ntls = {{ cert = {:?}, key = {:?} }}\n[[pool]]\nname = \"app\"\nbackends = [\"{origin}\"]\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let _plumb = Proc(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["serve", "-c", cfg.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "plumb serve did not listen"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://localhost:{port}/");
    let pin = format!("localhost:{port}:127.0.0.1");
    let (code, r) = probe(&[&url, "--resolve", &pin, "--cacert", cert.to_str().unwrap()]);
    assert_eq!(code, 0, "{r:?}");
    assert_eq!(
        (r[0]["status"].clone(), r[0]["http_status"].clone()),
        ("ok".into(), 200.into())
    );
    assert!(r[0]["tls"].as_f64().is_some_and(|t| t > 0.0), "{:?}", r[0]);
    // An untrusted certificate is a tls_error; --insecure accepts it.
    let (code, r) = probe(&[&url, "--resolve", &pin]);
    assert_eq!(
        (code, r[0]["cause"].clone()),
        (1, "tls_error".into()),
        "{r:?}"
    );
    let (code, r) = probe(&[&url, "--resolve", &pin, "--insecure"]);
    assert_eq!((code, r[0]["status"].clone()), (0, "ok".into()), "{r:?}");
}

#[test]
fn on_fail_runs_only_for_failures_with_the_result_in_its_environment() {
    let dir = std::env::temp_dir().join(format!("plumb-on-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("hook.log");
    let hook = format!(
        "printf '%s|%s|%s\\n' \"$PLUMB_CAUSE\" \"$PLUMB_ADDRESS\" \"$PLUMB_STATUS\" >> {}",
        log.display()
    );
    let good = server(ok);
    let bad = refusing();
    let (code, r) = probe(&[
        &format!("http://{good}/"),
        &format!("tcp://{bad}"),
        "--on-fail",
        &hook,
    ]);
    assert_eq!(code, 1, "{r:?}");
    let written = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // One line: the refused target, with its cause and address; the good one ran nothing.
    assert_eq!(
        written,
        format!("connect_refused|{bad}|fail\n"),
        "hook log: {written:?}"
    );
}

/// Sends one GET and returns the body (the test's own tiny HTTP/1.0 client).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_listen_exports_each_address_on_its_own() {
    use std::io::BufRead;
    let good = server(ok);
    let bad = refusing();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args([
            "probe",
            &format!("http://{good}/"),
            &format!("tcp://{bad}"),
            "--every",
            "100ms",
            "--count",
            "300",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let _guard = Proc(child);
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("plumb probe: metrics at http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string();
    // Wait (bounded) until at least three rounds are in.
    let good_ok = format!(
        "plumb_probe_results_total{{url=\"http://{good}/\",address=\"{good}\",status=\"ok\",cause=\"none\"}}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (head, body) = get(&addr, "/metrics");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        let rounds = body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{good_ok} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if rounds >= 3.0 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        thread::sleep(Duration::from_millis(100));
    };
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(&format!(
            "plumb_probe_success{{url=\"http://{good}/\",address=\"{good}\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "plumb_probe_success{{url=\"tcp://{bad}\",address=\"{bad}\"}}"
        )),
        0.0
    );
    assert!(
        value(&format!(
            "plumb_probe_results_total{{url=\"tcp://{bad}\",address=\"{bad}\",status=\"fail\",cause=\"connect_refused\"}}"
        )) >= 3.0
    );
    assert_eq!(
        value(&format!(
            "plumb_probe_http_status_code{{url=\"http://{good}/\",address=\"{good}\"}}"
        )),
        200.0
    );
    // The ttfb histogram counts one observation per good round, each far below 1 s.
    let ttfb = format!("url=\"http://{good}/\",address=\"{good}\",phase=\"ttfb\"");
    let count = value(&format!(
        "plumb_probe_phase_duration_seconds_count{{{ttfb}}}"
    ));
    assert!(count >= 3.0, "{body}");
    assert_eq!(
        value(&format!(
            "plumb_probe_phase_duration_seconds_bucket{{le=\"0.8192\",{ttfb}}}"
        )),
        count,
        "{body}"
    );
    assert!(
        body.contains("# TYPE plumb_probe_syn_retransmits_total counter"),
        "{body}"
    );
    let (head, _) = get(&addr, "/nope");
    assert!(head.contains(" 404 "), "{head}");
}

#[test]
fn ctrl_c_ends_a_continuous_run_with_the_summary() {
    let bad = refusing();
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["probe", &format!("tcp://{bad}"), "--every", "100ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(700));
    // SIGINT to this child's PID, as a terminal's Ctrl-C would.
    support::signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("summary (per address"), "{text}");
    assert!(text.contains("0.0% succeeded"), "{text}");
    assert!(text.contains("causes: connect_refused x"), "{text}");
}
