//! The incident lab: each incident of `../shared/incidents/` rebuilt for real in
//! network namespaces (`plumb-netlab`: hosts, veth links with their MTU, routers,
//! nftables), then `plumb doctor` must diagnose it and `plumb serve` in that
//! topology must keep its promise. Root only; each test prints `SKIPPED: ...` and
//! returns when it cannot build its lab. Addresses are 10.x inside the lab's own
//! namespaces; nothing leaves them. docs/testing.md explains how to add one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "tests driving other processes: wall-clock deadlines; a panic is the report"
)]

use plumb_netlab::{peers, Host, Lab, Pid, Ran};
use serde_json::Value;
use std::time::{Duration, Instant};

const PLUMB: &str = env!("CARGO_BIN_EXE_plumb");
const SECOND: Duration = Duration::from_secs(1);

/// Starts `plumb serve` on `host` with this config and waits for its admin API
/// and `listen` port.
fn serve(lab: &Lab, host: &Host<'_>, label: &str, toml: &str, listen: u16, admin: u16) -> Pid {
    let cfg = lab.file(&format!("{label}.toml"), toml);
    let pid = host.spawn(label, &[PLUMB, "serve", "-c", &cfg]);
    host.wait_listening(admin, 10 * SECOND);
    host.wait_listening(listen, 10 * SECOND);
    pid
}

/// `plumb doctor ARGS --format json` on `host`: the exit code and the findings.
fn doctor(host: &Host<'_>, args: &[&str], within: Duration) -> (Ran, Vec<Value>) {
    let mut all = vec![PLUMB, "doctor"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let ran = host.run(&all, within);
    assert!(!ran.timed_out, "doctor ran past {within:?}: {ran}");
    let findings = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{ran}")))
        .collect();
    (ran, findings)
}

/// `plumb doctor ARGS` on `host` must exit 1 with a `problem` finding from
/// `check`: that finding.
fn problem(host: &Host<'_>, args: &[&str], check: &str, within: Duration) -> Value {
    let (ran, findings) = doctor(host, args, within);
    let f = finding(&findings, check).clone();
    assert_eq!(ran.code, Some(1), "{ran}");
    assert_eq!(f["verdict"], "problem", "{f:#}");
    f
}

/// [`peers::HTTP_SERVER`] (threaded) on `host` at `addr:port`, listening.
fn http_server(host: &Host<'_>, addr: &str, port: u16) {
    host.python("http", peers::HTTP_SERVER, &[addr, &port.to_string()]);
    host.wait_listening(port, 5 * SECOND);
}

fn finding<'f>(findings: &'f [Value], check: &str) -> &'f Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {findings:#?}"))
}

/// `curl` on `host`: `-sS -o /dev/null -w '%{http_code}'` plus `args`, bounded by
/// `max` (curl's own `--max-time`; the run is killed a little after).
fn curl(host: &Host<'_>, args: &[&str], max: Duration) -> Ran {
    let max_s = format!("{:.1}", max.as_secs_f64());
    let mut all = vec![
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        &max_s,
    ];
    all.extend_from_slice(args);
    host.run(&all, max + 5 * SECOND)
}

/// The admin API of the plumb on `host` (listening on 127.0.0.1:`admin`).
fn admin(host: &Host<'_>, admin: u16, method: &str, path: &str) -> String {
    let ran = host.run(
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-X",
            method,
            &format!("http://127.0.0.1:{admin}{path}"),
        ],
        10 * SECOND,
    );
    assert!(ran.ok(), "{method} {path}: {ran}");
    ran.stdout
}

/// Waits until `pid`'s log has a line containing `text`; the elapsed time.
fn wait_log(lab: &Lab, pid: Pid, text: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if lab.log(pid).contains(text) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "no {text:?} after {within:?}; log:\n{}",
            lab.log(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Incident 000. client ─9001─ r1 ─1500─ r2 ─9001─ server, and both routers
/// drop the "fragmentation needed" ICMP they would send: every host believes in
/// 9001-byte packets, the middle hop carries 1500, nobody is told.
#[test]
fn incident_000_mtu_black_hole() {
    let Some(lab) = Lab::new("incident_000_mtu_black_hole") else {
        return;
    };
    let client = lab.host("client");
    let r1 = lab.router("r1");
    let r2 = lab.router("r2");
    let server = lab.host("server");
    lab.link(&client, "10.0.1.1/24", &r1, "10.0.1.2/24", 9001);
    lab.link(&r1, "10.0.12.1/24", &r2, "10.0.12.2/24", 1500);
    lab.link(&r2, "10.0.2.1/24", &server, "10.0.2.2/24", 9001);
    client.route("default", "10.0.1.2");
    server.route("default", "10.0.2.1");
    r1.route("10.0.2.0/24", "10.0.12.2");
    r2.route("10.0.1.0/24", "10.0.12.1");
    let no_frag_needed = "table inet bh {
  chain out {
    type filter hook output priority 0;
    icmp type destination-unreachable icmp code frag-needed drop;
  }
}";
    r1.nft(no_frag_needed);
    r2.nft(no_frag_needed);
    server.python("http", peers::HTTP_SERVER, &["10.0.2.2", "8080"]);
    // The backend of the plumb case sits on the client's side of the hop, so both
    // of plumb's legs cross it.
    client.python("origin", peers::HTTP_SERVER, &["10.0.1.1", "8090"]);
    server.wait_listening(8080, 5 * SECOND);
    client.wait_listening(8090, 5 * SECOND);

    // Small exchanges work; anything needing a full-size segment hangs, both ways.
    let small = curl(&client, &["http://10.0.2.2:8080/"], 5 * SECOND);
    assert_eq!(small.stdout, "200", "{small}");
    let body = lab.file("body", &"b".repeat(20_000));
    let post = format!("@{body}");
    let big_up = curl(
        &client,
        &["--data-binary", &post, "http://10.0.2.2:8080/"],
        3 * SECOND,
    );
    assert_eq!(big_up.code, Some(28), "a 20 kB request must hang: {big_up}");
    let big_down = curl(&client, &["http://10.0.2.2:8080/bytes/100000"], 3 * SECOND);
    assert_eq!(
        big_down.code,
        Some(28),
        "a 100 kB answer must hang: {big_down}"
    );

    // plumb doctor names it, with the working size and the fix.
    let f = problem(
        &client,
        &["http://10.0.2.2:8080/", "--check", "mtu"],
        "mtu",
        90 * SECOND,
    );
    assert!(
        f["summary"].as_str().unwrap().contains("MTU black hole"),
        "{f:#}"
    );
    let mtu = f["evidence"]["path_mtu_estimate"].as_i64().unwrap();
    assert!((1500 - 64..=1500 + 64).contains(&mtu), "{f:#}");
    assert_eq!(f["evidence"]["with_mss_clamped"]["result"], "acknowledged");
    assert!(
        f["suggestion"].as_str().unwrap().contains("MSS"),
        "the fix is named: {f:#}"
    );

    // plumb in the path, on the server: clients cross the hop to reach it, and it
    // crosses the hop back to its backend. With tcp.mss clamped on the listener
    // (the client is told to send small segments) and the pool (the backend is),
    // large requests and answers pass; the same plumb without the clamp hangs.
    let toml = r#"
[runtime]
access_log = "off"
[[listener]]
name = "clamped"
listen = "10.0.2.2:8081"
protocol = "http"
pool = "clamped"
tcp = { mss = 1400 }
[[listener]]
name = "plain"
listen = "10.0.2.2:8082"
protocol = "http"
pool = "plain"
[[listener]]
name = "raw"
listen = "10.0.2.2:8083"
pool = "local"
[[pool]]
name = "clamped"
backends = ["10.0.1.1:8090"]
tcp = { mss = 1400 }
[[pool]]
name = "plain"
backends = ["10.0.1.1:8090"]
[[pool]]
name = "local"
backends = ["10.0.2.2:8080"]
"#;
    serve(&lab, &server, "plumb", toml, 8082, 9901);
    server.wait_listening(8081, 5 * SECOND);
    let up = client.run(
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--data-binary",
            &post,
            "http://10.0.2.2:8081/",
        ],
        15 * SECOND,
    );
    assert!(up.ok() && up.stdout == "got 20000\n", "{up}");
    let down = curl(
        &client,
        &["http://10.0.2.2:8081/bytes/1000000"],
        10 * SECOND,
    );
    assert_eq!(down.stdout, "200", "{down}");
    let plain = curl(
        &client,
        &["--data-binary", &post, "http://10.0.2.2:8082/"],
        3 * SECOND,
    );
    assert_eq!(
        plain.code,
        Some(28),
        "without the clamp the same request must hang: {plain}"
    );

    // And plumb sees it: a client across the hop asks (through the unclamped TCP
    // listener) for 64 KiB that plumb then cannot deliver. From TCP_INFO alone
    // (data outstanding, retransmitted, nothing acknowledged) the connection
    // table flags the client leg; the backend leg, on the same host, is healthy.
    client.python(
        "stuck",
        "import socket, time\n\
         c = socket.create_connection(('10.0.2.2', 8083))\n\
         c.sendall(b'GET /bytes/65536 HTTP/1.0\\r\\n\\r\\n')\n\
         time.sleep(60)\n",
        &[],
    );
    let deadline = Instant::now() + 15 * SECOND;
    let flagged = loop {
        let table: Value =
            serde_json::from_str(&admin(&server, 9901, "GET", "/api/v1/connections")).unwrap();
        let hit = table.as_array().unwrap().iter().find(|c| {
            c["listener"] == "raw"
                && c["suspected_blackhole"] == true
                && c["client_tcp"]["suspected_blackhole"] == true
        });
        if let Some(c) = hit {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "never flagged: {table:#}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        flagged["client_tcp"]["unacked"].as_u64().unwrap() > 0,
        "{flagged:#}"
    );
    assert!(
        flagged["client_tcp"]["retransmits"].as_u64().unwrap() >= 2,
        "{flagged:#}"
    );
    assert_eq!(
        flagged["upstream_tcp"]["suspected_blackhole"], false,
        "{flagged:#}"
    );
}

/// The backends of `pool` as the admin API lists them, by address.
fn backends(host: &Host<'_>, admin_port: u16, pool: &str) -> serde_json::Map<String, Value> {
    let pools: Value =
        serde_json::from_str(&admin(host, admin_port, "GET", "/api/v1/pools")).unwrap();
    let pool = pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
        .unwrap_or_else(|| panic!("no pool {pool} in {pools:#}"));
    pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

/// The JSON lines of an access log written into the lab's directory, once it
/// has at least `n` (plumb writes them from a queue, a moment after the close).
fn access_log(path: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Incident 001. One service, three addresses; behind the third, a connection
/// table that is full (nft `ct count`: beyond 8 concurrent connections, new ones
/// are dropped without a word). Other clients already hold those 8.
#[test]
fn incident_001_connection_tracking_limit_on_one_of_three_addresses() {
    let Some(lab) = Lab::new("incident_001_conntrack_limit") else {
        return;
    };
    let net = lab.router("net");
    let client = lab.host("client");
    let server = lab.host("server");
    let lb = lab.host("lb");
    lab.link(&client, "10.0.1.1/24", &net, "10.0.1.254/24", 1500);
    lab.link(&server, "10.0.2.11/24", &net, "10.0.2.254/24", 1500);
    lab.link(&lb, "10.0.3.1/24", &net, "10.0.3.254/24", 1500);
    server.ip(&["addr", "add", "10.0.2.12/24", "dev", "to-net"]);
    server.ip(&["addr", "add", "10.0.2.13/24", "dev", "to-net"]);
    for (h, gw) in [
        (&client, "10.0.1.254"),
        (&server, "10.0.2.254"),
        (&lb, "10.0.3.254"),
    ] {
        h.route("default", gw);
    }
    let names = "10.0.2.11 svc.lab\n10.0.2.12 svc.lab\n10.0.2.13 svc.lab\n";
    client.hosts_file(names);
    lb.hosts_file(names);
    server.nft(
        "table inet ctlimit {
  chain in {
    type filter hook input priority 0;
    ip daddr 10.0.2.13 tcp dport 8080 ct state new ct count over 8 drop;
  }
}",
    );
    http_server(&server, "0.0.0.0", 8080);
    let filler = client.python("filler", peers::HOLD, &["10.0.2.13", "8080", "8"]);
    wait_log(&lab, filler, "held 8", 10 * SECOND);

    // plumb doctor and plumb probe name the third address, and how it fails.
    let f = problem(
        &client,
        &[
            "http://svc.lab:8080/",
            "--check",
            "addresses",
            "--rounds",
            "3",
            "--timeout",
            "1s",
        ],
        "addresses",
        30 * SECOND,
    );
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("1 of 3 addresses failed: 10.0.2.13:8080 (3 of 3:"),
        "{f:#}"
    );
    let ev = &f["evidence"]["addresses"];
    assert_eq!(
        ev["10.0.2.13:8080"]["causes"]["connect_timeout"], 3,
        "{f:#}"
    );
    for good in ["10.0.2.11:8080", "10.0.2.12:8080"] {
        assert_eq!(ev[good]["failed"], 0, "{f:#}");
    }
    let probe = client.run(
        &[
            PLUMB,
            "probe",
            "http://svc.lab:8080/",
            "--timeout",
            "1s",
            "--format",
            "json",
        ],
        20 * SECOND,
    );
    assert_eq!(probe.code, Some(1), "{probe}");
    let results: Vec<Value> = probe
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{probe}");
    for r in &results {
        let bad = r["address"] == "10.0.2.13:8080";
        assert_eq!(r["status"] == "fail", bad, "{r}");
        if bad {
            assert_eq!(r["cause"], "connect_timeout", "{r}");
        }
    }

    // plumb over the three: health checks on fresh connections find the full
    // table, and the requests that meet it first are retried on a sibling.
    let log = lab.dir().join("access.log").to_string_lossy().into_owned();
    let toml = format!(
        r#"
[runtime]
access_log = "{log}"
[[listener]]
name = "front"
listen = "10.0.3.1:80"
protocol = "http"
pool = "svc"
[[pool]]
name = "svc"
backends = ["10.0.2.11:8080", "10.0.2.12:8080", "10.0.2.13:8080"]
timeouts = {{ connect = "300ms" }}
health = {{ kind = "tcp", interval = "500ms", timeout = "300ms", fall = 2, rise = 2 }}
"#
    );
    serve(&lab, &lb, "plumb", &toml, 80, 9901);
    // Three requests on fresh client connections: round robin sends one of them
    // to the third address before any health check has failed it.
    for _ in 0..3 {
        let r = curl(&client, &["http://10.0.3.1/"], 5 * SECOND);
        assert_eq!(r.stdout, "200", "{r}");
    }
    let deadline = Instant::now() + 10 * SECOND;
    let bad = loop {
        let b = backends(&lb, 9901, "svc");
        if b["10.0.2.13:8080"]["state"] == "unhealthy" {
            break b["10.0.2.13:8080"].clone();
        }
        assert!(Instant::now() < deadline, "never marked down: {b:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        bad["reason"].as_str().unwrap().contains("connect timeout"),
        "{bad:#}"
    );
    let before = access_log(&log, 3).len();
    let urls: Vec<String> = (0..30).map(|i| format!("http://10.0.3.1/{i}")).collect();
    let mut args: Vec<&str> = vec!["-w", "%{http_code}\n"];
    for u in &urls {
        args.extend_from_slice(&["-o", "/dev/null", u]);
    }
    let many = client.run(
        &[&["curl", "-sS", "--max-time", "20"], &args[..]].concat(),
        30 * SECOND,
    );
    assert!(many.ok(), "{many}");
    assert_eq!(
        many.stdout.lines().filter(|l| *l == "200").count(),
        30,
        "{many}"
    );

    // Every request got its answer; none needed more than one retry, each retry
    // was away from the full address, and once it was down nothing went there.
    let lines = access_log(&log, before + 30);
    assert_eq!(lines.len(), before + 30, "{lines:#?}");
    let mut retried = 0;
    for l in &lines {
        assert_eq!(l["status"], 200, "{l}");
        assert!(l["attempts"].as_u64().unwrap() <= 2, "{l}");
        assert_ne!(l["backend"], "10.0.2.13:8080", "{l}");
        for a in l["failed_attempts"].as_array().unwrap() {
            retried += 1;
            assert_eq!(a["backend"], "10.0.2.13:8080", "{l}");
            assert_eq!(a["cause"], "upstream_connect_timeout", "{l}");
        }
    }
    // One of the first three requests goes there unless a health check was
    // quicker (possible on a loaded machine): at most one retry either way.
    assert!(retried <= 1, "{lines:#?}");
    for l in &lines[before..] {
        assert_eq!(l["attempts"], 1, "after the ejection: {l}");
    }
}

/// client ─ lb ─ backend, with plumb on lb proxying TCP to an echo server.
fn echo_behind_plumb<'l>(lab: &'l Lab, pool_extra: &str) -> (Host<'l>, Host<'l>, Host<'l>) {
    let client = lab.host("client");
    let lb = lab.host("lb");
    let backend = lab.host("backend");
    lab.link(&client, "10.0.1.1/24", &lb, "10.0.1.2/24", 1500);
    lab.link(&lb, "10.0.2.1/24", &backend, "10.0.2.2/24", 1500);
    backend.python("echo", peers::ECHO_SERVER, &["10.0.2.2", "7000"]);
    backend.wait_listening(7000, 5 * SECOND);
    let toml = format!(
        r#"
[runtime]
access_log = "{}"
[[listener]]
name = "front"
listen = "10.0.1.2:7000"
pool = "app"
[[pool]]
name = "app"
backends = ["10.0.2.2:7000"]
{pool_extra}
"#,
        lab.dir().join("access.log").display()
    );
    serve(lab, &lb, "plumb", &toml, 7000, 9901);
    (client, lb, backend)
}

/// The number in a peer's `<how> after N echoes` line.
fn echoes(log: &str) -> u64 {
    log.split(" after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no outcome line in {log:?}"))
}

/// Incident 002, the load balancer's half: a long-lived connection whose backend
/// is deregistered. It echoes until the drain deadline, then its next write is
/// answered with RST — it is never left talking to nobody.
#[test]
fn incident_002_deregistered_backend_resets_its_clients_at_the_deadline() {
    let Some(lab) = Lab::new("incident_002_deregistration") else {
        return;
    };
    let (client, lb, _backend) = echo_behind_plumb(
        &lab,
        r#"drain = { timeout = "2s", close_spread = "100ms" }"#,
    );
    let c = client.python(
        "client",
        peers::ECHO_CLIENT,
        &["10.0.1.2", "7000", "20", "talk"],
    );
    wait_log(&lab, c, "echoed", 5 * SECOND);
    // The drain starts somewhere between sending the request and its answer.
    let sent = Instant::now();
    admin(
        &lb,
        9901,
        "DELETE",
        "/api/v1/pools/app/backends/10.0.2.2:7000",
    );
    let answered = Instant::now();
    wait_log(&lab, c, " after ", 10 * SECOND);
    let log = lab.log(c);
    assert!(log.contains("reset after"), "{log}");
    // It echoed through the drain (about 20 pings in 2 s), and the reset came
    // between the deadline and deadline + spread + one ping + margin.
    assert!(echoes(&log) >= 10, "{log}");
    let (earliest, latest) = (answered.elapsed(), sent.elapsed());
    assert!(
        latest >= Duration::from_millis(1900) && earliest <= Duration::from_millis(3000),
        "reset {earliest:?}..{latest:?} after the deregistration (drain 2 s)"
    );
    let deadline = Instant::now() + 3 * SECOND;
    while !backends(&lb, 9901, "app").is_empty() {
        assert!(Instant::now() < deadline, "not removed once drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = access_log(&lab.dir().join("access.log").to_string_lossy(), 1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["cause"], "backend_drained", "{log:#?}");
}

/// Incident 002, the vanished host: the backend's host drops every packet, so
/// no RST or FIN will ever come. plumb's keepalive and TCP_USER_TIMEOUT on the
/// backend leg find it, and plumb resets both the client that keeps talking and
/// the one that only listens, within the configured bound.
#[test]
fn incident_002_vanished_backend_host_is_found_by_keepalive_and_user_timeout() {
    let Some(lab) = Lab::new("incident_002_vanished_host") else {
        return;
    };
    let (client, _lb, backend) = echo_behind_plumb(
        &lab,
        r#"tcp = { keepalive_idle = "1s", keepalive_interval = "1s", keepalive_count = 2, user_timeout = "3s" }"#,
    );
    let talk = client.python(
        "talk",
        peers::ECHO_CLIENT,
        &["10.0.1.2", "7000", "30", "talk"],
    );
    let quiet = client.python(
        "quiet",
        peers::ECHO_CLIENT,
        &["10.0.1.2", "7000", "30", "quiet"],
    );
    wait_log(&lab, talk, "echoed", 5 * SECOND);
    wait_log(&lab, quiet, "echoed", 5 * SECOND);
    std::thread::sleep(SECOND); // the quiet connection goes idle; talk keeps going
                                // The bound counts from when the rules are in (nft's own start-up under load
                                // is not plumb's time).
    backend.nft(
        "table inet gone {
  chain in { type filter hook input priority -300; policy drop; }
  chain out { type filter hook output priority -300; policy drop; }
}",
    );
    let t0 = Instant::now();
    // user_timeout 3 s bounds both: unacknowledged pings for talk, unanswered
    // keepalive probes (1 s idle, 2 probes 1 s apart) for quiet.
    for (pid, what) in [(talk, "talking"), (quiet, "quiet")] {
        wait_log(&lab, pid, " after ", 10 * SECOND);
        let took = t0.elapsed();
        let log = lab.log(pid);
        assert!(log.contains("reset after"), "{what}: {log}");
        assert!(
            took <= Duration::from_millis(5000),
            "{what} client reset {took:?} after the host vanished (bound 3 s + margin)"
        );
    }
    let log = access_log(&lab.dir().join("access.log").to_string_lossy(), 2);
    assert_eq!(log.len(), 2, "{log:#?}");
    for l in &log {
        assert_eq!(l["cause"], "upstream_tcp_timeout", "{l}");
        assert!(
            l["error"].as_str().unwrap_or("").contains("timed out"),
            "{l}"
        );
    }
}

/// Runs [`peers::TIMED_GETS`] on `host`: each request's (ok, seconds, error).
fn timed_gets(host: &Host<'_>, addr: &str, port: u16, n: u32, timeout_s: f64) -> Vec<Value> {
    let ran = host.run(
        &[
            "python3",
            "-c",
            peers::TIMED_GETS,
            addr,
            &port.to_string(),
            &n.to_string(),
            &timeout_s.to_string(),
        ],
        Duration::from_secs_f64(f64::from(n) * timeout_s + 10.0),
    );
    assert!(ran.ok(), "{ran}");
    serde_json::from_str::<Vec<Value>>(ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {ran}"))
}

/// Incident 003. 30% of the SYNs to one backend address are dropped (nft
/// `numgen random`): each drop costs a client the kernel's SYN retransmission
/// delay (about 1 s, whatever the schedule). doctor counts them; plumb in front,
/// with a short connect timeout and a retry on the sibling, hides them.
#[test]
fn incident_003_dropped_syns_are_counted_and_routed_around() {
    let Some(lab) = Lab::new("incident_003_syn_drops") else {
        return;
    };
    let client = lab.host("client");
    let lb = lab.router("lb");
    let server = lab.host("server");
    lab.link(&client, "10.0.1.1/24", &lb, "10.0.1.2/24", 1500);
    lab.link(&lb, "10.0.2.1/24", &server, "10.0.2.2/24", 1500);
    server.ip(&["addr", "add", "10.0.2.3/24", "dev", "to-lb"]);
    client.route("default", "10.0.1.2");
    server.route("default", "10.0.2.1");
    server.nft(
        "table inet syn {
  chain in {
    type filter hook input priority 0;
    ip daddr 10.0.2.2 tcp dport 8080 tcp flags & (syn | ack) == syn numgen random mod 100 < 30 drop;
  }
}",
    );
    http_server(&server, "0.0.0.0", 8080);

    let f = problem(
        &client,
        &[
            "http://10.0.2.2:8080/",
            "--check",
            "syn",
            "--connects",
            "20",
        ],
        "syn",
        40 * SECOND,
    );
    let ev = &f["evidence"]["addresses"]["10.0.2.2:8080"];
    let needed = ev["needed_syn_retransmit"].as_u64().unwrap();
    // 20 connects at 30% loss: 6 expected; 1..=16 holds but for 1 run in 1,000.
    assert!((1..=16).contains(&needed), "{f:#}");
    assert!(ev["syn_retransmits"].as_u64().unwrap() >= needed, "{f:#}");
    assert!(
        f["summary"].as_str().unwrap().contains(&format!(
            "10.0.2.2:8080: {needed} of {} connects needed a SYN retransmission",
            ev["connects"]
        )),
        "{f:#}"
    );

    // Direct, some clients wait out a retransmission; through plumb none does.
    // Four drops in a row (0.3^4: about one run in thirty over 40 requests) make a
    // direct request outlast its 10 s: that is the incident too, not a failure of
    // the test, so a direct request may time out but not fail otherwise.
    let direct = timed_gets(&client, "10.0.2.2", 8080, 40, 10.0);
    assert!(
        direct
            .iter()
            .all(|r| r["ok"] == true || r["error"] == "TimeoutError"),
        "{direct:?}"
    );
    let slow = direct
        .iter()
        .filter(|r| r["ok"] == false || r["s"].as_f64().unwrap() >= 0.9)
        .count();
    assert!(
        slow >= 1,
        "no request waited for a SYN retransmission: {direct:?}"
    );
    let log = lab.dir().join("access.log").to_string_lossy().into_owned();
    let toml = format!(
        r#"
[runtime]
access_log = "{log}"
[[listener]]
name = "front"
listen = "10.0.1.2:80"
pool = "app"
[[pool]]
name = "app"
backends = ["10.0.2.2:8080", "10.0.2.3:8080"]
timeouts = {{ connect = "250ms" }}
"#
    );
    serve(&lab, &lb, "plumb", &toml, 80, 9901);
    let proxied = timed_gets(&client, "10.0.1.2", 80, 40, 10.0);
    assert!(proxied.iter().all(|r| r["ok"] == true), "{proxied:?}");
    let worst = proxied
        .iter()
        .map(|r| r["s"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        worst < 0.8,
        "through plumb the slowest took {worst:.3} s (connect timeout 250 ms + retry)"
    );
    let lines = access_log(&log, 40);
    let retried: Vec<&Value> = lines
        .iter()
        .filter(|l| l["attempts"].as_u64().unwrap() > 1)
        .collect();
    assert!(!retried.is_empty(), "no connect was retried: {lines:#?}");
    for l in &retried {
        assert_eq!(l["failed_attempts"][0]["backend"], "10.0.2.2:8080", "{l}");
        assert_eq!(
            l["failed_attempts"][0]["cause"], "upstream_connect_timeout",
            "{l}"
        );
    }
}

/// The counter of `name` in a Prometheus text scrape (summed over its series).
fn counter(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Incident 003, the other cause of unanswered SYNs: a backend whose accept
/// queue is full (it listens with a backlog of 1 and never accepts). The kernel
/// drops the SYNs and counts them; plumb's /metrics shows those counters beside
/// its own connect timeouts, and doctor's syn check points at the queue.
#[test]
fn incident_003_listen_queue_overflow_shows_in_metrics() {
    let Some(lab) = Lab::new("incident_003_listen_overflow") else {
        return;
    };
    let client = lab.host("client");
    let lb = lab.host("lb");
    lab.link(&client, "10.0.1.1/24", &lb, "10.0.1.2/24", 1500);
    // The backend shares plumb's host (a sidecar), so its kernel counters are
    // the ones plumb reads.
    lb.python("wedged", peers::NEVER_ACCEPTS, &["127.0.0.1", "9000"]);
    lb.wait_listening(9000, 5 * SECOND);
    let toml = r#"
[runtime]
access_log = "off"
[[listener]]
name = "front"
listen = "10.0.1.2:80"
pool = "app"
[[pool]]
name = "app"
backends = ["127.0.0.1:9000"]
timeouts = { connect = "300ms" }
connect_attempts = 1
passive = { consecutive_failures = 0 }
"#;
    serve(&lab, &lb, "plumb", toml, 80, 9901);
    let scrape = || admin(&lb, 9901, "GET", "/metrics");
    let before = scrape();
    let gets = timed_gets(&client, "10.0.1.2", 80, 6, 1.5);
    assert!(gets.iter().all(|r| r["ok"] == false), "{gets:?}");
    let after = scrape();
    let overflows = counter(&after, "plumb_kernel_listen_overflows_total")
        - counter(&before, "plumb_kernel_listen_overflows_total");
    let timeouts = counter(
        &after,
        "plumb_upstream_failures_total{pool=\"app\",backend=\"127.0.0.1:9000\",cause=\"upstream_connect_timeout\"}",
    );
    // Two connections fit the queue (backlog + 1) and wait there; the other four
    // SYNs (and their retransmissions) overflow it.
    assert!(overflows >= 4.0, "listen overflows +{overflows}\n{after}");
    assert!(timeouts >= 4.0, "connect timeouts {timeouts}\n{after}");

    let f = problem(
        &lb,
        &["tcp://127.0.0.1:9000", "--check", "syn", "--connects", "3"],
        "syn",
        30 * SECOND,
    );
    assert!(
        f["evidence"]["kernel_delta"]["ListenOverflows"]
            .as_u64()
            .unwrap()
            > 0,
        "{f:#}"
    );
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("the kernel counted listen-queue overflows"),
        "{f:#}"
    );
}

/// Incident 004. A backend that serves one connection at a time (it blocks
/// reading whichever connection it accepted). doctor's idle-hold check names it;
/// plumb with its defaults opens a backend connection only for a client, so the
/// backend keeps serving everyone. `upstream.preconnect = 1` — which
/// docs/config.md warns against for exactly such backends — holds an idle
/// connection that the backend sits on: every other client of the backend (a
/// second load balancer here) stalls until plumb's idle timeout lets go.
#[test]
fn incident_004_idle_preconnect_starves_a_single_threaded_backend() {
    let Some(lab) = Lab::new("incident_004_idle_preconnect") else {
        return;
    };
    let client = lab.host("client");
    let lb = lab.host("lb");
    let backend = lab.host("backend");
    lab.link(&client, "10.0.1.1/24", &lb, "10.0.1.2/24", 1500);
    lab.link(&lb, "10.0.2.1/24", &backend, "10.0.2.2/24", 1500);
    backend.python(
        "single",
        peers::HTTP_SERVER,
        &["10.0.2.2", "8080", "single"],
    );
    backend.wait_listening(8080, 5 * SECOND);

    let f = problem(
        &lb,
        &["http://10.0.2.2:8080/", "--check", "idle-hold"],
        "idle-hold",
        20 * SECOND,
    );
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("it handles one connection at a time"),
        "{f:#}"
    );

    let config = |name: &str, port: u16, admin: u16, upstream: &str| {
        format!(
            r#"
[runtime]
access_log = "off"
[admin]
listen = "127.0.0.1:{admin}"
[[listener]]
name = "{name}"
listen = "10.0.1.2:{port}"
pool = "app"
[[pool]]
name = "app"
backends = ["10.0.2.2:8080"]
{upstream}
"#
        )
    };
    // Defaults: every request through plumb is answered at once, and plumb holds
    // no connection to the backend between clients, so the backend's other
    // clients (a monitor on lb here) are served at once too.
    let to_backend = || {
        lb.run(
            &["ss", "-Htn", "state", "established", "dst", "10.0.2.2:8080"],
            5 * SECOND,
        )
        .stdout
    };
    serve(&lab, &lb, "plumb-a", &config("a", 80, 9901, ""), 80, 9901);
    let gets = timed_gets(&client, "10.0.1.2", 80, 10, 3.0);
    assert!(
        gets.iter()
            .all(|r| r["ok"] == true && r["s"].as_f64().unwrap() < 1.0),
        "{gets:?}"
    );
    assert_eq!(
        to_backend().trim(),
        "",
        "plumb-a holds a backend connection"
    );
    let monitor = timed_gets(&lb, "10.0.2.2", 8080, 3, 3.0);
    assert!(
        monitor
            .iter()
            .all(|r| r["ok"] == true && r["s"].as_f64().unwrap() < 1.0),
        "{monitor:?}"
    );

    // A second plumb with preconnect = 1 (idle timeout 4 s). Once its idle
    // connection is open, its own client is served (it takes that connection),
    // but a request through the first plumb waits until the idle one times out.
    serve(
        &lab,
        &lb,
        "plumb-b",
        &config(
            "b",
            81,
            9902,
            r#"upstream = { preconnect = 1, idle_timeout = "4s" }"#,
        ),
        81,
        9902,
    );
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        if !to_backend().trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plumb-b opened no idle connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled = timed_gets(&client, "10.0.1.2", 80, 1, 10.0);
    let waited = stalled[0]["s"].as_f64().unwrap();
    assert!(
        stalled[0]["ok"] == true && (2.0..6.0).contains(&waited),
        "the request behind plumb-b's idle connection waited {waited:.2} s (idle timeout 4 s): {stalled:?}"
    );
    let quick = timed_gets(&client, "10.0.1.2", 81, 1, 3.0);
    assert!(quick[0]["ok"] == true, "{quick:?}");
}

/// A stateful middlebox that forgets idle flows (incident 002's path): a router
/// whose connection tracking expires established TCP flows after 6 s idle, with
/// loose pickup off and invalid packets dropped, so a flow idle longer is cut
/// without a word. doctor's idle-timeout check must find 6 s within 20%.
#[test]
fn idle_timeout_middlebox_is_measured_by_doctor() {
    let Some(lab) = Lab::new("idle_timeout_middlebox") else {
        return;
    };
    let client = lab.host("client");
    let mbox = lab.router("mbox");
    let server = lab.host("server");
    lab.link(&client, "10.0.1.1/24", &mbox, "10.0.1.2/24", 1500);
    lab.link(&mbox, "10.0.2.1/24", &server, "10.0.2.2/24", 1500);
    client.route("default", "10.0.1.2");
    server.route("default", "10.0.2.1");
    mbox.nft(
        "table inet fw {
  chain through {
    type filter hook forward priority 0;
    ct state invalid drop;
  }
}",
    );
    // Per-namespace conntrack settings, present once the rule loaded conntrack.
    mbox.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", "6");
    mbox.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
    http_server(&server, "10.0.2.2", 8080);

    let f = problem(
        &client,
        &[
            "http://10.0.2.2:8080/",
            "--checks",
            "idle-timeout",
            "--max-idle",
            "10s",
        ],
        "idle-timeout",
        60 * SECOND,
    );
    let ev = &f["evidence"];
    assert_eq!(ev["failure"], "silence", "{f:#}");
    let fails = ev["fails_from_s"].as_f64().unwrap();
    let works = ev["works_up_to_s"].as_f64().unwrap();
    assert!(
        (4.8..=7.2).contains(&fails) && (4.8..=7.2).contains(&works),
        "6 s within 20%: works up to {works} s, fails from {fails} s\n{f:#}"
    );
}
