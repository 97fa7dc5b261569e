//! The matrix run: set-up, load, faults, verdict.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// `plumb-chaos run`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The plumb binary.
    #[arg(long)]
    plumb: PathBuf,
    /// A directory for configs, logs and the report (created).
    #[arg(long)]
    dir: PathBuf,
    /// How long each fault lasts (the combined round lasts twice that).
    #[arg(long, default_value = "6s", value_parser = crate::duration)]
    per_fault: Duration,
    /// Instead of the matrix: faults at random, one every few seconds, for this
    /// long (the soak).
    #[arg(long, value_parser = crate::duration)]
    soak: Option<Duration>,
    /// Concurrent HTTP clients and long-lived TCP clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Slowloris connections (half-sent request heads) in that fault.
    #[arg(long, default_value_t = 5000)]
    slowloris: usize,
    /// Idle client connections in that fault.
    #[arg(long, default_value_t = 10000)]
    idle: usize,
    /// Network faults (black hole, SYN loss) with nftables: only inside a
    /// network namespace of its own (they change the namespace's firewall).
    #[arg(long)]
    nft: bool,
    /// First port of the ten consecutive loopback ports the run uses.
    #[arg(long, default_value_t = 21000)]
    base_port: u16,
}

/// The client's bound on one request or ping: longer than every timer plumb
/// runs for it (response head 3 s, connects 3 x 500 ms, user timeout 3 s), so
/// reaching it means plumb left the client without an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Outcome {
    fault: String,
    kind: &'static str,
    result: &'static str,
    cause: String,
    id: Option<String>,
    status: Option<u16>,
}

struct Shared {
    stop: AtomicBool,
    fault: Mutex<String>,
    outcomes: Mutex<Vec<Outcome>>,
    seq: AtomicU64,
}

impl Shared {
    fn record(
        &self,
        kind: &'static str,
        result: &'static str,
        cause: &str,
        id: Option<String>,
        status: Option<u16>,
    ) {
        let fault = self.fault.lock().unwrap().clone();
        self.outcomes.lock().unwrap().push(Outcome {
            fault,
            kind,
            result,
            cause: cause.to_string(),
            id,
            status,
        });
    }
}

struct Backend {
    http: SocketAddr,
    echo: SocketAddr,
    mode: PathBuf,
    posts: PathBuf,
    child: Option<Child>,
}

impl Backend {
    fn start(&mut self) -> anyhow::Result<()> {
        let me = std::env::current_exe()?;
        let child = Command::new(me)
            .args([
                "backend",
                "--http",
                &self.http.to_string(),
                "--echo",
                &self.echo.to_string(),
            ])
            .arg("--mode-file")
            .arg(&self.mode)
            .arg("--posts-file")
            .arg(&self.posts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        wait_listening(self.http, Duration::from_secs(5))?;
        wait_listening(self.echo, Duration::from_secs(5))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn set_mode(&self, mode: &str) {
        let _ = std::fs::write(&self.mode, mode);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where plumb listens and logs.
struct At {
    admin: SocketAddr,
    web: SocketAddr,
    tcp: SocketAddr,
    log: PathBuf,
}

struct Plumb {
    child: Child,
    config: PathBuf,
    at: At,
}

impl Drop for Plumb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if t0.elapsed() > within {
            bail!("nothing listens on {addr} after {within:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn config(b: &[Backend], p: &At, connect_ms: u32) -> String {
    let list = |f: &dyn Fn(&Backend) -> SocketAddr| {
        b.iter()
            .map(|x| format!("\"{}\"", f(x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[runtime]
access_log = "{log}"
shutdown_grace = "2s"
[admin]
listen = "{admin}"
[[listener]]
name = "web"
listen = "{web}"
protocol = "http"
pool = "web"
timeouts = {{ header_read = "3s", keepalive_idle = "30s" }}
[[listener]]
name = "tcp"
listen = "{tcp}"
pool = "echo"
[[pool]]
name = "web"
backends = [{webs}]
timeouts = {{ connect = "{connect_ms}ms", response_header = "3s", idle = "3s" }}
health = {{ kind = "http", path = "/health", interval = "1s", timeout = "500ms", rise = 1, fall = 2 }}
drain = {{ timeout = "1s", close_spread = "200ms" }}
passive = {{ consecutive_failures = 3, ejection = "2s" }}
retry_budget_percent = 100
tcp = {{ keepalive_idle = "1s", keepalive_interval = "1s", keepalive_count = 2, user_timeout = "3s" }}
[[pool]]
name = "echo"
backends = [{echos}]
timeouts = {{ connect = "{connect_ms}ms" }}
health = {{ kind = "tcp", interval = "1s", timeout = "500ms", rise = 1, fall = 2 }}
drain = {{ timeout = "1s", close_spread = "200ms" }}
tcp = {{ keepalive_idle = "1s", keepalive_interval = "1s", keepalive_count = 2, user_timeout = "3s" }}
"#,
        log = p.log.display(),
        admin = p.admin,
        web = p.web,
        tcp = p.tcp,
        webs = list(&|x| x.http),
        echos = list(&|x| x.echo),
    )
}

/// One admin API call: the status.
/// Puts each backend (its HTTP and echo address) back in the `web` and `echo`
/// pools, as it was before a fault drained or deregistered it.
fn register_again(admin_addr: SocketAddr, backends: &[(SocketAddr, SocketAddr)]) {
    for (h, e) in backends {
        for (pool, a) in [("web", h), ("echo", e)] {
            admin(
                admin_addr,
                "PUT",
                &format!("/api/v1/pools/{pool}/backends/{a}"),
                "",
            );
        }
    }
}

fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn proc_stat(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

// ---------------------------------------------------------------------------
// Clients

/// Reads one HTTP/1.1 response: status, headers (lower-case), body.
fn read_response(
    s: &mut TcpStream,
    deadline: Instant,
    got_any: &mut bool,
) -> std::io::Result<(u16, HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        *got_any = true;
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, &mut buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not HTTP"))?;
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body: Vec<u8> = buf[head_end..].to_vec();
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        while body.len() < len {
            fill(s, &mut body)?;
        }
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            fill(s, &mut body)?;
        }
    }
    Ok((status, headers, body))
}

fn classify_io(e: &std::io::Error, got_any: bool) -> (&'static str, &'static str) {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => (
            "silent",
            if got_any {
                "stalled_mid_response"
            } else {
                "no_answer"
            },
        ),
        ConnectionReset | ConnectionAborted | BrokenPipe => ("error", "reset"),
        UnexpectedEof => (
            "error",
            if got_any {
                "closed_mid_response"
            } else {
                "closed"
            },
        ),
        ConnectionRefused => ("error", "refused"),
        _ => ("error", "io_error"),
    }
}

/// A fresh connection for a client, or its failure recorded (then a short pause
/// so a refusing listener is not hammered).
fn connect(
    sh: &Shared,
    kind: &'static str,
    addr: SocketAddr,
    id: Option<&str>,
) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => Some(s),
        Err(e) => {
            let (r, c) = classify_io(&e, false);
            sh.record(kind, r, c, id.map(str::to_string), None);
            thread::sleep(Duration::from_millis(50));
            None
        }
    }
}

fn http_client(sh: Arc<Shared>, web: SocketAddr, worker: usize) {
    let mut conn: Option<TcpStream> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        let n = sh.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("chaos-{worker}-{n}");
        let post = n % 3 == 0;
        let path = if n % 10 == 1 { "/big" } else { "/" };
        let body = if post { vec![b'p'; 1024] } else { Vec::new() };
        let head = format!(
            "{} {path} HTTP/1.1\r\nHost: chaos\r\nplumb-request-id: {id}\r\nx-chaos-id: {id}\r\nContent-Length: {}\r\n\r\n",
            if post { "POST" } else { "GET" },
            body.len()
        );
        let fresh = conn.is_none();
        let Some(mut s) = conn.take().or_else(|| connect(&sh, "http", web, Some(&id))) else {
            continue;
        };
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut got_any = false;
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(&body));
        let result = sent.and_then(|()| read_response(&mut s, deadline, &mut got_any));
        match result {
            Ok((status, headers, _)) => {
                if let Some(cause) = headers.get("plumb-error") {
                    sh.record("http", "error", cause, Some(id), Some(status));
                } else if (200..300).contains(&status) {
                    sh.record("http", "ok", "", Some(id), Some(status));
                } else {
                    sh.record(
                        "http",
                        "error",
                        &format!("status_{status}"),
                        Some(id),
                        Some(status),
                    );
                }
                if !headers
                    .get("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    conn = Some(s);
                }
            }
            Err(e) => {
                let (r, mut c) = classify_io(&e, got_any);
                // A kept-alive connection closed by plumb just as the request went
                // out (its idle timer, a drain): the ordinary keep-alive race,
                // which clients answer by retrying on a fresh connection.
                if !fresh && !got_any && c == "closed" {
                    c = "closed_before_read";
                }
                sh.record("http", r, c, Some(id), None);
            }
        }
    }
}

fn tcp_client(sh: Arc<Shared>, tcp: SocketAddr) {
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(mut s) = conn.take().or_else(|| connect(&sh, "tcp", tcp, None)) else {
            continue;
        };
        n += 1;
        let msg = format!("ping {n:08}\n");
        let mut got = vec![0u8; msg.len()];
        let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
        match s
            .write_all(msg.as_bytes())
            .and_then(|()| s.read_exact(&mut got))
        {
            Ok(()) if got == msg.as_bytes() => {
                sh.record("tcp", "ok", "", None, None);
                conn = Some(s);
                thread::sleep(Duration::from_millis(100));
            }
            Ok(()) => sh.record("tcp", "error", "wrong_echo", None, None),
            Err(e) => {
                let (r, c) = classify_io(&e, false);
                sh.record("tcp", r, c, None, None);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Faults

struct World {
    backends: Mutex<Vec<Backend>>,
    plumb: Plumb,
    nft: bool,
    notes: Mutex<Vec<String>>,
    admin_violations: AtomicU64,
    abusers: Mutex<Vec<thread::JoinHandle<()>>>,
}

const FAULTS: &[&str] = &[
    "backend_killed",
    "backend_resets",
    "backend_hangs",
    "backend_blackholed",
    "syn_loss",
    "deregister",
    "drain_all",
    "reloads",
    "admin_abuse",
    "slowloris",
    "idle_clients",
    "client_resets",
];

fn nft(rules: &str) -> bool {
    let Ok(mut c) = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut i) = c.stdin.take() {
        let _ = i.write_all(rules.as_bytes());
        let _ = i.write_all(b"\n");
    }
    c.wait().is_ok_and(|s| s.success())
}

fn nft_clear() {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", "chaos"])
        .stderr(Stdio::null())
        .status();
}

/// Loads `rules` (`{P}`: the backend's two ports) into the namespace's input
/// hook for the fault; undone by deleting the table.
fn nft_fault(w: &World, fault: &str, backend: usize, rules: &str) -> Box<dyn FnOnce() + Send> {
    let ports = {
        let b = &w.backends.lock().unwrap()[backend];
        format!("{{ {}, {} }}", b.http.port(), b.echo.port())
    };
    let rules = rules.replace("{P}", &ports);
    if !nft(&format!(
        "table inet chaos {{\n chain in {{ type filter hook input priority -10; {rules} }}\n}}"
    )) {
        w.notes
            .lock()
            .unwrap()
            .push(format!("{fault}: nft refused the rules"));
    }
    Box::new(nft_clear)
}

/// Starts a fault; returns what undoes it (run at the fault's end).
fn start_fault(
    w: &Arc<World>,
    sh: &Arc<Shared>,
    fault: &str,
    args: &Args,
    dur: Duration,
) -> Box<dyn FnOnce() + Send> {
    let noop: Box<dyn FnOnce() + Send> = Box::new(|| {});
    match fault {
        "backend_killed" => {
            w.backends.lock().unwrap()[0].kill();
            let w = Arc::clone(w);
            Box::new(move || {
                let _ = w.backends.lock().unwrap()[0].start();
            })
        }
        "backend_resets" => {
            w.backends.lock().unwrap()[1].set_mode("reset");
            let w = Arc::clone(w);
            Box::new(move || w.backends.lock().unwrap()[1].set_mode("ok"))
        }
        "backend_hangs" => {
            w.backends.lock().unwrap()[2].set_mode("hang");
            let w = Arc::clone(w);
            Box::new(move || w.backends.lock().unwrap()[2].set_mode("ok"))
        }
        "backend_blackholed" | "syn_loss" if !w.nft => {
            w.notes.lock().unwrap().push(format!(
                "{fault}: skipped (needs --nft, inside a network namespace)"
            ));
            noop
        }
        // No packet to or from backend 2 (no RST, no FIN ever); 30% of the SYNs
        // to backend 0 dropped.
        "backend_blackholed" => nft_fault(w, fault, 2, "tcp dport {P} drop; tcp sport {P} drop;"),
        "syn_loss" => nft_fault(
            w,
            fault,
            0,
            "tcp dport {P} tcp flags & (syn | ack) == syn numgen random mod 10 < 3 drop;",
        ),
        "deregister" => {
            let (h, e) = {
                let b = &w.backends.lock().unwrap()[1];
                (b.http, b.echo)
            };
            let admin_addr = w.plumb.at.admin;
            for (pool, a) in [("web", h), ("echo", e)] {
                admin(
                    admin_addr,
                    "DELETE",
                    &format!("/api/v1/pools/{pool}/backends/{a}"),
                    "",
                );
            }
            Box::new(move || register_again(admin_addr, &[(h, e)]))
        }
        "drain_all" => {
            let addrs: Vec<(SocketAddr, SocketAddr)> = w
                .backends
                .lock()
                .unwrap()
                .iter()
                .map(|b| (b.http, b.echo))
                .collect();
            let admin_addr = w.plumb.at.admin;
            for (h, e) in &addrs {
                for (pool, a) in [("web", h), ("echo", e)] {
                    admin(
                        admin_addr,
                        "POST",
                        &format!("/api/v1/pools/{pool}/backends/{a}/drain"),
                        r#"{"timeout": "1s"}"#,
                    );
                }
            }
            Box::new(move || register_again(admin_addr, &addrs))
        }
        "reloads" => {
            let w2 = Arc::clone(w);
            let sh2 = Arc::clone(sh);
            let handle = thread::spawn(move || {
                let pid = w2.plumb.child.id();
                let gap = dur / 100;
                for i in 0..100u32 {
                    if sh2.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let text = config(
                        &w2.backends.lock().unwrap(),
                        &w2.plumb.at,
                        500 + i % 2 * 100,
                    );
                    let _ = std::fs::write(&w2.plumb.config, text);
                    let _ = Command::new("sh")
                        .args(["-c", "kill -HUP \"$0\"", &pid.to_string()])
                        .status();
                    thread::sleep(gap);
                }
            });
            w.abusers.lock().unwrap().push(handle);
            noop
        }
        "admin_abuse" => {
            let w2 = Arc::clone(w);
            let end = Instant::now() + dur;
            let handle = thread::spawn(move || {
                let a = w2.plumb.at.admin;
                let bad: [(&str, &str, &str); 8] = [
                    ("PUT", "/api/v1/pools/nope/backends/127.0.0.1:1", ""),
                    ("PUT", "/api/v1/pools/web/backends/not-an-address", ""),
                    ("PUT", "/api/v1/pools/web/backends/127.0.0.1:1", "{not json"),
                    (
                        "PUT",
                        "/api/v1/pools/web/backends/127.0.0.1:1",
                        r#"{"weight": 0}"#,
                    ),
                    ("POST", "/api/v1/pools/web/backends/127.0.0.1:9/drain", ""),
                    ("DELETE", "/api/v1/pools/web/backends/127.0.0.1:9", ""),
                    ("GET", "/api/v1/nothing", ""),
                    ("PATCH", "/api/v1/pools", ""),
                ];
                let mut i = 0;
                while Instant::now() < end {
                    let (m, p, b) = bad[i % bad.len()];
                    let status = admin(a, m, p, b);
                    if !(400..500).contains(&status) {
                        w2.admin_violations.fetch_add(1, Ordering::Relaxed);
                        w2.notes.lock().unwrap().push(format!(
                            "admin_abuse: {m} {p} {b:?} answered {status}, not 4xx"
                        ));
                    }
                    i += 1;
                }
            });
            w.abusers.lock().unwrap().push(handle);
            noop
        }
        "slowloris" | "idle_clients" => {
            let count = if fault == "slowloris" {
                args.slowloris
            } else {
                args.idle
            };
            let web = w.plumb.at.web;
            let slow = fault == "slowloris";
            let sh2 = Arc::clone(sh);
            let w2 = Arc::clone(w);
            let handle = thread::spawn(move || {
                let mut held = Vec::with_capacity(count);
                for _ in 0..count {
                    let Ok(mut s) = TcpStream::connect_timeout(&web, Duration::from_secs(2)) else {
                        break;
                    };
                    if slow {
                        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: chaos\r\nX-Slow: ");
                    }
                    held.push(s);
                }
                let opened = held.len();
                // plumb's header_read timeout (3 s) must close every one of them:
                // wait for it plus margin, then count the ones still open.
                thread::sleep(Duration::from_secs(5));
                let mut still_open = 0;
                for s in &mut held {
                    let _ = s.set_nonblocking(true);
                    let mut b = [0u8; 512];
                    loop {
                        match s.read(&mut b) {
                            Ok(0) => break,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                still_open += 1;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                let result = if still_open == 0 { "ok" } else { "silent" };
                sh2.record(
                    "abuser",
                    result,
                    &format!("{opened} opened, {still_open} still open 5 s later"),
                    None,
                    None,
                );
                w2.notes.lock().unwrap().push(format!(
                    "{}: {opened} connections opened, {} closed by plumb within 5 s",
                    if slow { "slowloris" } else { "idle_clients" },
                    opened - still_open
                ));
            });
            w.abusers.lock().unwrap().push(handle);
            noop
        }
        "client_resets" => {
            let web = w.plumb.at.web;
            let end = Instant::now() + dur;
            let handle = thread::spawn(move || {
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let Ok(mut s) = TcpStream::connect_timeout(&web, Duration::from_secs(2)) else {
                        continue;
                    };
                    if i % 2 == 0 {
                        // Mid-request: a head announcing 10 kB, 100 bytes of body, RST.
                        let _ = s.write_all(
                            b"POST / HTTP/1.1\r\nHost: chaos\r\nContent-Length: 10000\r\n\r\n",
                        );
                        let _ = s.write_all(&[b'r'; 100]);
                    } else {
                        // Mid-response: ask for 256 kB, read a little, RST.
                        let _ = s.write_all(b"GET /big HTTP/1.1\r\nHost: chaos\r\n\r\n");
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut b = [0u8; 1024];
                        let _ = s.read(&mut b);
                    }
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                    thread::sleep(Duration::from_millis(5));
                }
            });
            w.abusers.lock().unwrap().push(handle);
            noop
        }
        _ => noop,
    }
}

// ---------------------------------------------------------------------------
// The run

/// This process's soft limit on open files.
fn nofile_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.dir)?;
    // The abusive clients must fit this process's descriptor limit (plumb's is
    // checked the same way by what it does when it runs out: see the notes).
    let mut args_scaled = Args { ..args.clone() };
    let limit = nofile_limit();
    let want = args.slowloris + args.idle + 1000;
    let mut scale_note = None;
    if want > limit {
        let room = limit.saturating_sub(1000) as f64 / (args.slowloris + args.idle).max(1) as f64;
        args_scaled.slowloris = (args.slowloris as f64 * room) as usize;
        args_scaled.idle = (args.idle as f64 * room) as usize;
        scale_note = Some(format!(
            "open-files limit {limit}: slowloris {} and idle {} instead of {} and {}",
            args_scaled.slowloris, args_scaled.idle, args.slowloris, args.idle
        ));
    }
    let args = &args_scaled;
    let dir = args.dir.canonicalize()?;
    let port = |i: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + i));
    for i in 0..10 {
        if TcpListener::bind(port(i)).is_err() {
            bail!("port {} is taken (choose --base-port)", port(i));
        }
    }
    let mut backends = Vec::new();
    for i in 0..3u16 {
        let mut b = Backend {
            http: port(i),
            echo: port(3 + i),
            mode: dir.join(format!("backend{i}.mode")),
            posts: dir.join(format!("backend{i}.posts")),
            child: None,
        };
        let _ = std::fs::remove_file(&b.posts);
        b.set_mode("ok");
        b.start().with_context(|| format!("backend {i}"))?;
        backends.push(b);
    }
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let cfg_path = dir.join("plumb.toml");
    let stderr = std::fs::File::create(dir.join("plumb.stderr"))?;
    let at = At {
        admin: port(6),
        web: port(7),
        tcp: port(8),
        log,
    };
    std::fs::write(&cfg_path, config(&backends, &at, 500))?;
    let child = Command::new(&args.plumb)
        .args(["serve", "-c"])
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot start plumb")?;
    let plumb = Plumb {
        child,
        config: cfg_path.clone(),
        at,
    };
    wait_listening(plumb.at.web, Duration::from_secs(10))?;
    wait_listening(plumb.at.tcp, Duration::from_secs(10))?;
    let pid = plumb.child.id();

    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        fault: Mutex::new("warmup".into()),
        outcomes: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
    });
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (s, web, tcp) = (Arc::clone(&sh), plumb.at.web, plumb.at.tcp);
        clients.push(thread::spawn(move || http_client(s, web, i)));
        let s = Arc::clone(&sh);
        clients.push(thread::spawn(move || tcp_client(s, tcp)));
    }
    thread::sleep(Duration::from_secs(2));
    let baseline = proc_stat(pid);
    let started = Instant::now();

    let world = Arc::new(World {
        backends: Mutex::new(backends),
        plumb,
        nft: args.nft,
        notes: Mutex::new(scale_note.into_iter().collect()),
        admin_violations: AtomicU64::new(0),
        abusers: Mutex::new(Vec::new()),
    });
    let mut schedule: Vec<(String, Vec<&str>, Duration)> = Vec::new();
    if let Some(total) = args.soak {
        let mut t = Duration::ZERO;
        let mut k = 0;
        while t < total {
            let f = FAULTS[fastrand::usize(..FAULTS.len())];
            let d = Duration::from_secs(fastrand::u64(3..=8));
            schedule.push((format!("soak{k}:{f}"), vec![f], d));
            t += d + Duration::from_secs(1);
            k += 1;
        }
    } else {
        for f in FAULTS {
            schedule.push(((*f).to_string(), vec![*f], args.per_fault));
        }
        schedule.push(("combined".into(), FAULTS.to_vec(), args.per_fault * 2));
    }
    for (name, faults, dur) in &schedule {
        eprintln!("plumb-chaos: {name} for {dur:?}");
        *sh.fault.lock().unwrap() = name.clone();
        let undo: Vec<_> = faults
            .iter()
            .map(|f| start_fault(&world, &sh, f, args, *dur))
            .collect();
        thread::sleep(*dur);
        for u in undo {
            u();
        }
        // Let the abusers of this round finish before the next one starts.
        let abusers: Vec<_> = world.abusers.lock().unwrap().drain(..).collect();
        for a in abusers {
            let _ = a.join();
        }
        *sh.fault.lock().unwrap() = format!("after {name}");
        thread::sleep(Duration::from_secs(1));
    }
    sh.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let ran_for = started.elapsed();

    // Memory and descriptors back to their baseline once the load stops.
    let settle = Instant::now();
    let mut after = proc_stat(pid);
    let settled = |a: (u64, usize)| {
        a.1 <= baseline.1 + 16 && (a.0 as f64) <= baseline.0 as f64 * 1.5 + 16.0 * 1024.0
    };
    while !settled(after) && settle.elapsed() < Duration::from_secs(15) {
        thread::sleep(Duration::from_millis(250));
        after = proc_stat(pid);
    }
    let alive = world.plumb.child.id() == pid && std::fs::metadata(format!("/proc/{pid}")).is_ok();

    // The verdict.
    let outcomes = sh.outcomes.lock().unwrap().clone();
    let mut by_fault: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut ok, mut errors, mut silent) = (0u64, 0u64, Vec::new());
    for o in &outcomes {
        let key = match o.result {
            "ok" => {
                ok += 1;
                format!("{} ok", o.kind)
            }
            "silent" => {
                silent.push(o.clone());
                format!("{} SILENT {}", o.kind, o.cause)
            }
            _ => {
                errors += 1;
                format!("{} error {}", o.kind, o.cause)
            }
        };
        *by_fault
            .entry(o.fault.clone())
            .or_default()
            .entry(key)
            .or_default() += 1;
    }
    // POSTs at most once per id, across backend restarts.
    let mut posts: HashMap<String, u32> = HashMap::new();
    for b in world.backends.lock().unwrap().iter() {
        for id in std::fs::read_to_string(&b.posts)
            .unwrap_or_default()
            .lines()
        {
            *posts.entry(id.to_string()).or_default() += 1;
        }
    }
    let duplicates: Vec<&String> = posts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    // Every plumb-made error a client saw is in the access log with its cause.
    thread::sleep(Duration::from_millis(500));
    let log: HashMap<String, Value> = std::fs::read_to_string(&world.plumb.at.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["request_id"].as_str()?.to_string(), v)))
        .collect();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for o in outcomes
        .iter()
        .filter(|o| o.kind == "http" && o.status.is_some() && o.result == "error")
    {
        let Some(id) = &o.id else { continue };
        checked += 1;
        match log.get(id) {
            None => mismatches.push(format!(
                "{id}: {} {} not in the access log",
                o.status.unwrap_or(0),
                o.cause
            )),
            Some(l) => {
                if l["cause"].as_str() != Some(o.cause.as_str())
                    || l["status"].as_u64() != o.status.map(u64::from)
                {
                    mismatches.push(format!(
                        "{id}: client saw {} {}, log says {} {}",
                        o.status.unwrap_or(0),
                        o.cause,
                        l["status"],
                        l["cause"]
                    ));
                }
            }
        }
    }
    // And in the metrics: per cause, at least as many as the clients saw.
    let scrape = {
        let mut s = TcpStream::connect_timeout(&world.plumb.at.admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
        let mut t = String::new();
        let _ = s.read_to_string(&mut t);
        t
    };
    let mut client_causes: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes
        .iter()
        .filter(|o| o.kind == "http" && o.status.is_some() && o.result == "error")
    {
        *client_causes.entry(o.cause.clone()).or_default() += 1;
    }
    let mut metric_gaps = Vec::new();
    for (cause, n) in &client_causes {
        let counted: f64 = scrape
            .lines()
            .filter(|l| {
                l.starts_with("plumb_requests_total{") && l.contains(&format!("cause=\"{cause}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted < *n as f64 {
            metric_gaps.push(format!(
                "{cause}: clients saw {n}, plumb_requests_total has {counted}"
            ));
        }
    }
    // TCP connections carry no request id: count instead. Every connection a
    // client saw reset or closed has an access-log line that says plumb or the
    // backend ended it (a cause, or the backend's own close passed on).
    let all_lines: Vec<Value> = std::fs::read_to_string(&world.plumb.at.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let tcp_logged = all_lines
        .iter()
        .filter(|l| {
            l["kind"] == "tcp"
                && l["listener"] == "tcp"
                && (!l["cause"].is_null() || l["end"] == "upstream_closed")
        })
        .count();
    let tcp_seen = outcomes
        .iter()
        .filter(|o| {
            o.kind == "tcp" && o.result == "error" && (o.cause == "reset" || o.cause == "closed")
        })
        .count();
    if tcp_logged < tcp_seen {
        metric_gaps.push(format!(
            "tcp: clients saw {tcp_seen} connections reset or closed, the access log has {tcp_logged} with a cause"
        ));
    }
    let rss_growth = after.0 as f64 / baseline.0.max(1) as f64;
    // Memory the allocator keeps for reuse is not a leak; growth beyond half
    // again plus 16 MiB is.
    let rss_ok = (after.0 as f64) <= baseline.0 as f64 * 1.5 + 16.0 * 1024.0;
    let fd_ok = after.1 <= baseline.1 + 16;
    let pass = silent.is_empty()
        && duplicates.is_empty()
        && mismatches.is_empty()
        && metric_gaps.is_empty()
        && fd_ok
        && rss_ok
        && alive
        && world.admin_violations.load(Ordering::Relaxed) == 0;
    let report = json!({
        "pass": pass,
        "ran_s": ran_for.as_secs_f64(),
        "outcomes": { "ok": ok, "explicit_errors": errors, "silent": silent.len() },
        "by_fault": by_fault,
        "silent": silent.iter().take(20).map(|o| format!("{} {} {} {:?}", o.fault, o.kind, o.cause, o.id)).collect::<Vec<_>>(),
        "posts": { "ids": posts.len(), "duplicated": duplicates.len() },
        "access_log_cross_check": { "errors_checked": checked, "tcp_errors_seen": tcp_seen, "tcp_lines_with_cause": tcp_logged, "mismatches": mismatches.iter().take(20).collect::<Vec<_>>(), "mismatch_count": mismatches.len() },
        "metrics_cross_check": metric_gaps,
        "plumb": {
            "alive": alive,
            "rss_kib_baseline": baseline.0, "rss_kib_after": after.0, "rss_ratio": rss_growth, "rss_ok": rss_ok,
            "fds_baseline": baseline.1, "fds_after": after.1, "fds_ok": fd_ok,
        },
        "admin_abuse_violations": world.admin_violations.load(Ordering::Relaxed),
        "notes": *world.notes.lock().unwrap(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(dir.join("report.json"), &text)?;
    println!("{text}");
    nft_clear();
    Ok(pass)
}
