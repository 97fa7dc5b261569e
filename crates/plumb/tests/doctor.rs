//! `plumb doctor` against fault servers built for the test on loopback: each check
//! must give the right verdict, and a healthy server must pass every check.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving the binary: wall-clock deadlines; a panic is the report"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn doctor(args: &[&str]) -> (i32, Vec<Value>, String) {
    let mut all = vec!["doctor", "--format", "json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(&all)
        .output()
        .unwrap();
    let findings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        findings,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verdicts(findings: &[Value]) -> Vec<(String, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Reads requests and answers each with 200 until the client closes.
fn serve_conn(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.drain(..end + 4);
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    }
}

/// A healthy server: a thread per connection, accepting as fast as it can.
fn healthy_on(l: TcpListener) -> SocketAddr {
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve_conn(s));
        }
    });
    addr
}

/// Incident 004's backend: one connection at a time, to its end.
fn single_threaded() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            serve_conn(s);
        }
    });
    addr
}

#[test]
fn a_healthy_server_passes_every_check() {
    let addr = healthy_on(TcpListener::bind("127.0.0.1:0").unwrap());
    let (code, f, err) = doctor(&[&format!("http://{addr}/")]);
    assert_eq!(
        verdicts(&f),
        [
            ("addresses".into(), "pass".into()),
            ("syn".into(), "pass".into()),
            ("idle-hold".into(), "pass".into()),
            ("mtu".into(), "pass".into()),
            ("http".into(), "pass".into()),
        ],
        "{f:#?} {err}"
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        f[1]["evidence"]["addresses"][addr.to_string()]["connects"],
        20
    );
    assert_eq!(f[2]["evidence"]["idle_connections_held"], 8);
}

#[test]
fn the_bad_address_of_two_is_named_with_how_it_fails() {
    let good = healthy_on(TcpListener::bind("127.0.0.1:0").unwrap());
    let port = good.port();
    // The sibling on 127.0.0.2 accepts and resets (SO_LINGER 0, close).
    let bad = TcpListener::bind(("127.0.0.2", port)).unwrap();
    thread::spawn(move || {
        for s in bad.incoming().flatten() {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            thread::sleep(Duration::from_millis(20));
            drop(s);
        }
    });
    let (code, f, err) = doctor(&[
        &format!("http://svc.test:{port}/"),
        "--resolve",
        &format!("svc.test:{port}:127.0.0.1,127.0.0.2"),
        "--check",
        "addresses",
    ]);
    assert_eq!(code, 1, "{f:?} {err}");
    assert_eq!(f[0]["verdict"], "problem", "{f:?}");
    let summary = f[0]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "1 of 2 addresses failed: 127.0.0.2:{port} (5 of 5: reset"
        )),
        "{summary}"
    );
    assert!(!summary.contains("127.0.0.1"), "{summary}");
    assert_eq!(
        f[0]["evidence"]["addresses"][format!("127.0.0.2:{port}")]["causes"]["reset"],
        5,
        "{f:?}"
    );
}

#[test]
fn a_listener_that_never_accepts_is_a_syn_problem() {
    // Backlog 0 and two fillers: the accept queue is full, later SYNs are dropped.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let _fillers: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    let started = Instant::now();
    let (code, f, err) = doctor(&[
        &format!("tcp://{addr}"),
        "--check",
        "syn",
        "--connects",
        "3",
    ]);
    assert_eq!(code, 1, "{f:?} {err}");
    assert_eq!(f[0]["verdict"], "problem", "{f:?}");
    let ev = &f[0]["evidence"]["addresses"][addr.to_string()];
    let hurt = ev["needed_syn_retransmit"].as_u64().unwrap() + ev["timed_out"].as_u64().unwrap();
    assert!(hurt >= 1, "{ev}");
    assert!(
        f[0]["summary"]
            .as_str()
            .unwrap()
            .contains("SYNs go unanswered"),
        "{f:?}"
    );
    // Three connects of at most 3 s each.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(s);
}

#[test]
fn a_single_threaded_server_starved_by_idle_connections_is_named() {
    let addr = single_threaded();
    let (code, f, err) = doctor(&[&format!("http://{addr}/"), "--check", "idle-hold,http"]);
    assert_eq!(
        verdicts(&f),
        [
            ("idle-hold".into(), "problem".into()),
            ("http".into(), "pass".into()),
        ],
        "{f:#?} {err}"
    );
    assert_eq!(code, 1);
    assert_eq!(
        f[0]["evidence"]["with_idle"]["cause"], "response_timeout",
        "{f:?}"
    );
    assert_eq!(f[0]["evidence"]["without_idle"]["status"], "ok", "{f:?}");
    assert!(
        f[0]["summary"]
            .as_str()
            .unwrap()
            .contains("one connection at a time"),
        "{f:?}"
    );
}

#[test]
fn checks_that_do_not_apply_say_inconclusive_and_bad_flags_are_usage_errors() {
    let addr = healthy_on(TcpListener::bind("127.0.0.1:0").unwrap());
    let (code, f, err) = doctor(&[&format!("tcp://{addr}"), "--check", "idle-hold,http"]);
    assert_eq!(
        verdicts(&f),
        [
            ("idle-hold".into(), "inconclusive".into()),
            ("http".into(), "inconclusive".into()),
        ],
        "{err}"
    );
    assert_eq!(code, 0);
    // Every connect refused: SYNs are answered (with RST), so syn cannot judge.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_, f, _) = doctor(&[&format!("tcp://{refused}"), "--check", "syn"]);
    assert_eq!(
        verdicts(&f),
        [("syn".into(), "inconclusive".into())],
        "{f:?}"
    );
    for (args, needle) in [
        (
            vec!["http://127.0.0.1:1/", "--check", "nope"],
            "\"nope\" is not a check",
        ),
        (vec!["ftp://x.test/"], "ftp"),
        (vec!["http://127.0.0.1:1/", "--rounds", "0"], "--rounds"),
    ] {
        let (code, _, err) = doctor(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn mtu_passes_on_loopback_and_is_inconclusive_when_the_mss_leaves_no_room() {
    let addr = healthy_on(TcpListener::bind("127.0.0.1:0").unwrap());
    let (code, f, err) = doctor(&[&format!("http://{addr}/"), "--check", "mtu"]);
    assert_eq!(verdicts(&f), [("mtu".into(), "pass".into())], "{f:?} {err}");
    assert_eq!(code, 0);
    let trials = f[0]["evidence"]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "{f:?}");
    assert!(trials[1]["size"].as_u64().unwrap() > 16_000, "{f:?}");
    assert_eq!(trials[1]["result"], "acknowledged");

    // A server advertising MSS 500: no segment can be larger than the smallest
    // request, so the test cannot trigger; it must not claim a pass.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_tcp_mss(500).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(16).unwrap();
    let addr = healthy_on(s.into());
    let (code, f, err) = doctor(&[&format!("http://{addr}/"), "--check", "mtu"]);
    assert_eq!(
        verdicts(&f),
        [("mtu".into(), "inconclusive".into())],
        "{f:?} {err}"
    );
    assert_eq!(code, 0);
    assert!(
        f[0]["summary"]
            .as_str()
            .unwrap()
            .contains("no larger than the smallest request"),
        "{f:?}"
    );
}

/// What an idle-limited server does to a connection idle for longer than its limit.
#[derive(Clone, Copy)]
enum OnIdle {
    Fin,
    Rst,
    GoSilent,
}

/// Answers requests; a connection idle for `limit` gets `on_idle`.
fn idle_limited(limit: Duration, on_idle: OnIdle) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(limit)).unwrap();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        }
                        Err(_) => break,
                    }
                }
                match on_idle {
                    OnIdle::Fin => drop(s),
                    OnIdle::Rst => {
                        socket2::SockRef::from(&s)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(s);
                    }
                    // Never reads or answers again; the kernel still acknowledges.
                    OnIdle::GoSilent => thread::sleep(Duration::from_secs(30)),
                }
            });
        }
    });
    addr
}

fn idle_timeout(addr: SocketAddr) -> Value {
    let (code, f, err) = doctor(&[
        &format!("http://{addr}/"),
        "--check",
        "idle-timeout",
        "--max-idle",
        "4s",
    ]);
    assert_eq!(f.len(), 1, "{err}");
    assert_eq!(code, i32::from(f[0]["verdict"] == "problem"), "{f:?}");
    f[0].clone()
}

fn outcomes(f: &Value) -> Vec<(u64, String)> {
    f["evidence"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["idle_s"].as_f64().unwrap() as u64,
                h["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn idle_timeout_names_the_idle_time_and_how_the_connection_dies() {
    let limit = Duration::from_millis(2500);
    let fin = idle_limited(limit, OnIdle::Fin);
    let rst = idle_limited(limit, OnIdle::Rst);
    let silent = idle_limited(limit, OnIdle::GoSilent);
    let healthy = healthy_on(TcpListener::bind("127.0.0.1:0").unwrap());
    // The four run at once: each takes the idle times plus the answer wait.
    let runs: Vec<_> = [fin, rst, silent, healthy]
        .into_iter()
        .map(|a| thread::spawn(move || idle_timeout(a)))
        .collect();
    let [fin, rst, silent, healthy]: [Value; 4] = runs
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    // Idle 1 s, 2 s, 4 s, then 3 s between the last good and the first bad.
    let expect = |how: &str| {
        vec![
            (1, "answered".to_string()),
            (2, "answered".to_string()),
            (3, how.to_string()),
            (4, how.to_string()),
        ]
    };
    assert_eq!(outcomes(&fin), expect("fin"), "{fin:#}");
    assert_eq!(outcomes(&rst), expect("rst"), "{rst:#}");
    assert_eq!(
        outcomes(&silent),
        expect("acknowledged_no_answer"),
        "{silent:#}"
    );
    for f in [&fin, &rst, &silent] {
        assert_eq!(f["verdict"], "problem");
        assert!(
            f["summary"]
                .as_str()
                .unwrap()
                .starts_with("connections idle for 2 s worked, after 3 s"),
            "{f:#}"
        );
    }
    assert!(silent["summary"]
        .as_str()
        .unwrap()
        .contains("never answered"));
    assert_eq!(healthy["verdict"], "pass", "{healthy:#}");
    assert_eq!(
        outcomes(&healthy),
        [
            (1, "answered".to_string()),
            (2, "answered".to_string()),
            (4, "answered".to_string())
        ]
    );
}

#[test]
fn a_page_near_the_monitor_timeout_is_a_problem_naming_the_slow_phase() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                thread::sleep(Duration::from_millis(2700));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            });
        }
    });
    let (code, f, err) = doctor(&[&format!("http://{addr}/"), "--check", "http"]);
    assert_eq!(verdicts(&f), [("http".into(), "problem".into())], "{err}");
    assert_eq!(code, 1);
    let summary = f[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("most of it ttfb (server think time)") && summary.contains("5 s"),
        "{summary}"
    );
    assert!(
        f[0]["evidence"]["ttfb"].as_f64().unwrap() >= 2700.0,
        "{f:?}"
    );
}
