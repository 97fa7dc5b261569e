//! The `plumb` binary, run as a user runs it: exit codes, what `check` prints, and how
//! `serve` and `demo` behave on signals. Every child process is killed by its PID when
//! a test ends, pass or fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

// std's Instant is banned workspace-wide in favour of tokio's (same clock here: no
// runtime, no paused time).
use tokio::time::Instant;

const PLUMB: &str = env!("CARGO_BIN_EXE_plumb");

mod support;
use support::{echo_server, Plumb};

fn plumb(args: &[&str]) -> Output {
    Command::new(PLUMB)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run plumb")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

// ---------------------------------------------------------------------------------
// plumb check

const VALID: &str = r#"
[runtime]
shutdown_grace = "5s"

[[listener]]
name = "front"
listen = "127.0.0.1:18080"
pool = "app"

[[pool]]
name = "app"
backends = ["127.0.0.1:19001", { address = "127.0.0.1:19002", weight = 3 }]
[pool.timeouts]
connect = "2s"
"#;

/// Seven mistakes; each must be reported with its path.
const INVALID: &str = r#"
[runtime]
shutdown_grace = "soon"

[[listener]]
name = "front"
listen = "127.0.0.1:18080"
pool = "nowhere"
colour = "blue"

[[listener]]
name = "front"
listen = "127.0.0.1:18081"
pool = "app"

[[pool]]
name = "app"
backends = ["127.0.0.1:19001", "not-an-address"]
[pool.timeouts]
connect = "3x"
[pool.tcp]
keepalive = "1s"
"#;

const DURATION_HINT: &str = r#"is not a duration (such as "250ms", "5s", "2m", "1h")"#;

fn expected_errors() -> Vec<(String, String)> {
    vec![
        ("listener[0].colour".into(), "unknown key".into()),
        ("pool[0].tcp.keepalive".into(), "unknown key".into()),
        ("runtime.shutdown_grace".into(), format!("\"soon\" {DURATION_HINT}")),
        (
            "pool[0].backends[1]".into(),
            r#""not-an-address" is not an address (expected IP:port, such as "127.0.0.1:8080" or "[::1]:8080")"#.into(),
        ),
        ("pool[0].timeouts.connect".into(), format!("\"3x\" {DURATION_HINT}")),
        ("listener[1].name".into(), r#"duplicate listener name "front""#.into()),
        ("listener[0].pool".into(), r#"pool "nowhere" does not exist"#.into()),
    ]
}

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "ok.toml", VALID);
    let out = plumb(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "{}: ok (1 listener(s), 1 pool(s), 2 backend(s))",
            file.display()
        )
    );

    let out = plumb(&["check", "-c", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["file"], file.display().to_string());
}

#[test]
fn check_accepts_the_shipped_example() {
    for name in ["tcp.toml", "http.toml"] {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        let out = plumb(&["check", "-c", example.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// A valid config with a setting known to hurt: exit 0, and the warning names
/// the field and the incident (docs/config.md says the same).
#[test]
fn check_warns_about_preconnect_and_still_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "pre.toml",
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:2\"]\nupstream = { preconnect = 2 }\n",
    );
    let out = plumb(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[1].starts_with("warning: pool[0].upstream.preconnect: 2 idle connection(s)")
            && lines[1].contains("incident 004"),
        "{stdout}"
    );
    let out = plumb(&["check", "-c", file.to_str().unwrap(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["warnings"][0]["path"], "pool[0].upstream.preconnect",
        "{v}"
    );
}

#[test]
fn check_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "bad.toml", INVALID);
    let out = plumb(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stderr {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let want: Vec<String> = expected_errors()
        .into_iter()
        .map(|(path, msg)| format!("{path}: {msg}"))
        .collect();
    for w in &want {
        assert!(lines.contains(&w.as_str()), "missing {w:?} in:\n{stdout}");
    }
    assert_eq!(
        lines.len(),
        want.len(),
        "exactly one line per error:\n{stdout}"
    );
    assert!(
        text(&out.stderr).contains(&format!("{}: 7 error(s)", file.display())),
        "stderr {}",
        text(&out.stderr)
    );
}

#[test]
fn check_json_prints_one_object_per_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "bad.toml", INVALID);
    let out = plumb(&["check", "-c", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let mut got: Vec<(String, String)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
            assert_eq!(v["file"], file.display().to_string(), "{l}");
            (
                v["path"].as_str().unwrap().to_string(),
                v["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = expected_errors();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{stdout}");
}

#[test]
fn check_reports_a_toml_syntax_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "syntax.toml",
        "[[listener]]\nname = \"front\nlisten = 1\n",
    );
    let out = plumb(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("line 2, column "), "{stdout}");
    assert!(stdout.contains("invalid TOML"), "{stdout}");
}

#[test]
fn a_missing_config_file_exits_1_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    for cmd in ["check", "serve"] {
        let out = plumb(&[cmd, "-c", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("cannot read config file"), "{cmd}: {all}");
        assert!(all.contains(&file.display().to_string()), "{cmd}: {all}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "--bogus"][..],
        &["check"],
        &["serve"],
        &["frobnicate"],
        &["check", "-c", "x.toml", "--format", "yaml"],
        &["demo", "--listen", "not-an-address"],
    ] {
        let out = plumb(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: stderr {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).starts_with("error:"),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "bad.toml", INVALID);
    let out = plumb(&["serve", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pool[0].timeouts.connect: \"3x\""),
        "{stderr}"
    );
    assert!(stderr.contains("7 error(s); not starting"), "{stderr}");
}

#[test]
fn serve_exits_1_when_a_listener_cannot_bind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "serve.toml",
        &serve_config(addr, backend.local_addr().unwrap(), dir.path()),
    );
    let mut p = Plumb::spawn(&["serve", "-c", file.to_str().unwrap()]);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("plumb did not exit");
    assert_eq!(status.code(), Some(1));
    let stderr = p.stderr();
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

fn serve_config(listen: SocketAddr, backend: SocketAddr, dir: &Path) -> String {
    format!(
        "[runtime]\nshutdown_grace = \"1s\"\naccess_log = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"front\"\nlisten = \"{listen}\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
        dir.join("access.log").display().to_string()
    )
}

/// Starts `plumb serve` on a free loopback port. A port found free can be taken
/// before plumb binds it; then plumb exits 1 and another port is tried.
fn start_serve(backend: SocketAddr, dir: &Path) -> (Plumb, SocketAddr) {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let file = write_file(dir, "serve.toml", &serve_config(addr, backend, dir));
        let mut p = Plumb::spawn(&["serve", "-c", file.to_str().unwrap()]);
        if p.wait_stderr("listening", Duration::from_secs(10)) {
            return (p, addr);
        }
        let stderr = p.stderr();
        assert!(
            stderr.contains("cannot listen"),
            "plumb serve did not start:\n{stderr}"
        );
    }
    panic!("no free port for plumb serve in 5 tries");
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

// ---------------------------------------------------------------------------------
// plumb serve and signals

#[test]
fn sigterm_stops_accepting_drains_within_grace_and_exits_0() {
    let backend = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = start_serve(backend, dir.path());
    let mut open = connect(addr);
    let open_addr = open.local_addr().unwrap();
    echo_round_trip(&mut open, b"one");

    // SIGHUP is logged, not fatal: still serving.
    p.signal("HUP");
    assert!(
        p.wait_stderr("SIGHUP", Duration::from_secs(5)),
        "{}",
        p.stderr()
    );
    echo_round_trip(&mut open, b"hup");
    echo_round_trip(&mut connect(addr), b"new");

    let t0 = Instant::now();
    p.signal("TERM");

    // The listener closes: new connections are refused, soon. A connect that
    // lands in the accept queue as the socket closes is reset by the kernel
    // instead: not accepted either, and not silent.
    let refused_after = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ) =>
            {
                break t0.elapsed()
            }
            Err(e) => panic!("connect after SIGTERM: {e}"),
            Ok(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "still accepting 1s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(10));
    };

    // The open connection keeps working through the grace period (every 100 ms until
    // 0.7 s after the signal)...
    let mut echoed = 6;
    let mut worked_at = t0.elapsed();
    while worked_at < Duration::from_millis(700) {
        echo_round_trip(&mut open, b"still here");
        echoed += 10;
        worked_at = t0.elapsed();
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worked_at < Duration::from_secs(1),
        "last echo at {worked_at:?}: the test was too slow to prove anything"
    );

    // ...and is closed with a FIN when it ends.
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = open.read(&mut buf).expect("expected a FIN, not an error");
    let closed_at = t0.elapsed();
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    assert!(
        closed_at >= Duration::from_millis(950),
        "closed at {closed_at:?}, before the 1s grace"
    );
    assert!(
        closed_at <= Duration::from_millis(2500),
        "closed at {closed_at:?}, long after the 1s grace"
    );

    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("plumb did not exit after the grace period");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.stderr());
    let exited_at = t0.elapsed();
    assert!(
        exited_at <= Duration::from_secs(4),
        "exited at {exited_at:?}"
    );
    eprintln!("refused after {refused_after:?}, closed at {closed_at:?}, exited at {exited_at:?}");

    // The access log names the cause.
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    let line: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["client"] == open_addr.to_string())
        .unwrap_or_else(|| panic!("no line for {open_addr} in:\n{log}"));
    assert_eq!(line["cause"], "shutdown", "{line}");
    assert_eq!(line["bytes_from_client"], echoed, "{line}");
    assert_eq!(line["bytes_to_client"], echoed, "{line}");
}

#[test]
fn sigterm_with_no_open_connection_exits_at_once() {
    let backend = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = start_serve(backend, dir.path());
    echo_round_trip(&mut connect(addr), b"x");
    let t0 = Instant::now();
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("plumb did not exit");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.stderr());
    // Nothing to wait for: well under the 1s grace.
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "exit took {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// plumb demo

/// `GET /` over a fresh connection; returns the whole response.
fn http_get(addr: SocketAddr) -> String {
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    text(&out)
}

/// Reads the demo's banner up to its `proxy` line and returns the proxy's address.
fn demo_proxy(p: &mut Plumb) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = p.stdout.recv_timeout(left) else {
            let status = p.wait_exit(Duration::from_secs(2));
            panic!(
                "no proxy line; exit {status:?}, stdout {seen:?}, stderr:\n{}",
                p.stderr()
            );
        };
        if let Some(rest) = line.trim().strip_prefix("proxy") {
            let hostport = rest
                .trim()
                .strip_prefix("http://")
                .and_then(|u| u.strip_suffix('/'))
                .unwrap_or_else(|| panic!("proxy line {line:?}"));
            let addr: SocketAddr = hostport.parse().unwrap();
            assert!(addr.ip().is_loopback() && addr.port() != 0, "{line:?}");
            return addr;
        }
        seen.push(line);
    }
}

/// Which origin answered a response.
fn origin_of(resp: &str) -> &'static str {
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    ["origin-a", "origin-b", "origin-c"]
        .into_iter()
        .find(|n| resp.contains(&format!("{n} answered GET /")))
        .unwrap_or_else(|| panic!("no origin named in {resp}"))
}

fn stop_demo(mut p: Plumb) {
    p.signal("INT");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("demo did not stop on SIGINT");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", p.stderr());
}

#[test]
fn demo_balances_three_origins_and_stops_on_sigint() {
    // The admin API on another loopback address, port 0: never a fixed port in tests
    // (see demo_runs_as_its_help_suggests for why not 127.0.0.1:0).
    let mut p = Plumb::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.2:0"]);
    let proxy = demo_proxy(&mut p);
    let mut names: Vec<&str> = (0..3).map(|_| origin_of(&http_get(proxy))).collect();
    let answered = names.clone();
    names.sort_unstable();
    assert_eq!(
        names,
        ["origin-a", "origin-b", "origin-c"],
        "answered by {answered:?}"
    );
    stop_demo(p);
}

/// `plumb demo --help` suggests `--listen 127.0.0.1:0 --admin 127.0.0.1:0`; port 0 is
/// "any free port", so the two cannot clash.
#[test]
fn demo_runs_as_its_help_suggests() {
    let mut p = Plumb::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let proxy = demo_proxy(&mut p);
    origin_of(&http_get(proxy));
    stop_demo(p);
}

#[test]
fn sighup_reloads_the_file_without_cutting_connections() {
    let backend = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = start_serve(backend, dir.path());
    let mut open = connect(addr);
    echo_round_trip(&mut open, b"before");

    // An invalid file: refused with its error, nothing changes.
    let file = dir.path().join("serve.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}\n[pool.drain]\nbogus = 1\n")).unwrap();
    p.signal("HUP");
    assert!(
        p.wait_stderr("reload refused", Duration::from_secs(5)),
        "{}",
        p.stderr()
    );
    assert!(
        p.stderr().contains("pool[0].drain.bogus: unknown key"),
        "{}",
        p.stderr()
    );
    echo_round_trip(&mut open, b"still");

    // A second listener added to the file starts on SIGHUP; the open connection on
    // the first goes on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let second = SocketAddr::from(([127, 0, 0, 1], port));
    std::fs::write(
        &file,
        format!("{good}\n[[listener]]\nname = \"second\"\nlisten = \"{second}\"\npool = \"app\"\n"),
    )
    .unwrap();
    p.signal("HUP");
    assert!(
        p.wait_stderr("listener second: listening", Duration::from_secs(5)),
        "{}",
        p.stderr()
    );
    echo_round_trip(&mut connect(second), b"second");
    echo_round_trip(&mut open, b"after");
    p.signal("TERM");
    assert!(p
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn serve_refuses_a_non_loopback_admin_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "open-admin.toml",
        "[admin]\nlisten = \"0.0.0.0:0\"\n\n[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n",
    );
    let out = plumb(&["serve", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("admin.listen: 0.0.0.0:0 is not a loopback address")
            && err.contains("admin.token_file"),
        "{err}"
    );
    assert!(err.contains("not starting"), "{err}");
}

/// Out of file descriptors (EMFILE): accept fails, plumb logs it, backs off and
/// keeps going; once descriptors are free again it serves again.
#[test]
fn accept_errors_back_off_and_are_not_fatal() {
    let has_prlimit = Command::new("sh")
        .args(["-c", "command -v prlimit"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_prlimit {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let backend = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = write_file(
        dir.path(),
        "emfile.toml",
        &serve_config(addr, backend, dir.path()),
    );
    let log = dir.path().join("stderr.log");
    // Guarded from the start: killed by PID however the test ends.
    let mut child = support::Proc(
        Command::new("prlimit")
            .args([
                "--nofile=48:48",
                PLUMB,
                "serve",
                "-c",
                cfg.to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "plumb serve did not listen");
        thread::sleep(Duration::from_millis(50));
    }
    // Each proxied connection costs plumb two descriptors: 40 of them run it out.
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(b"x");
            held.push(s);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("accept failed; backing off") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backing-off accept error logged:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "plumb exited on EMFILE"
    );
    // Free the descriptors: plumb serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 4];
            if s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "plumb did not serve again after descriptors were freed"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(child.0.try_wait().unwrap().is_none());
}
