//! The dashboard in a real browser: `plumb demo` with traffic, the page opened in
//! headless Chromium through chromedriver (the WebDriver protocol, spoken directly),
//! backends and a chart must render, and the drain button must change the backend's
//! state. A screenshot is saved as `target/dashboard.png`. `scripts/test` installs the
//! Debian packages chromium and chromium-driver; without them the test says so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving other processes: wall-clock deadlines; a panic is the report"
)]

mod support;
use support::{have, Proc};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One HTTP/1.1 exchange; returns status and body. The body is read by its
/// Content-Length (chromedriver keeps connections open whatever the client asks).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        out.resize(n, 0);
        reader.read_exact(&mut out).unwrap();
    } else {
        reader.read_to_end(&mut out).unwrap();
    }
    (status, String::from_utf8_lossy(&out).to_string())
}

struct Driver {
    addr: SocketAddr,
    session: String,
}

impl Driver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status == 200, "webdriver {method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
    }

    fn wait_for(&self, what: &str, js: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.script(js) == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the dashboard never showed {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn dashboard_renders_and_its_drain_button_drains() {
    if !have("chromium", "chromium and chromium-driver")
        || !have("chromedriver", "chromium and chromium-driver")
    {
        return;
    }
    // plumb demo on free ports; read the proxy and admin addresses it prints.
    let mut demo = Proc(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
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
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let (mut proxy, mut admin) = (None, None);
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = |w: &str| -> Option<SocketAddr> {
            w.trim_start_matches("http://")
                .split('/')
                .next()?
                .parse()
                .ok()
        };
        match words.as_slice() {
            ["proxy", url] => proxy = addr(url),
            ["admin", url] => admin = addr(url),
            _ => {}
        }
        if proxy.is_some() && admin.is_some() {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let (proxy, admin) = (proxy.expect("proxy line"), admin.expect("admin line"));

    // Traffic for the charts while the page is open, including some errors.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 3000 {
                let _ = http(proxy, "GET", "/", None);
                if n % 10 == 0 {
                    if let Ok(mut s) = TcpStream::connect(proxy) {
                        let _ = s.write_all(b"NOT HTTP\r\n\r\n");
                        let _ = s.read(&mut [0u8; 256]);
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver_proc = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(driver_addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", format!("--user-data-dir={}", profile.path().display())]
    }}}});
    let (status, text) = http(driver_addr, "POST", "/session", Some(&caps));
    assert_eq!(status, 200, "new session: {text}");
    let session = serde_json::from_str::<Value>(&text).unwrap()["value"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let d = Driver {
        addr: driver_addr,
        session,
    };

    d.call(
        "POST",
        "/url",
        Some(json!({ "url": format!("http://{admin}/") })),
    );
    d.wait_for(
        "four backends (three origins and the broken pool)",
        "return document.querySelectorAll('#pools tbody tr').length === 4;",
        Duration::from_secs(20),
    );
    d.wait_for(
        "a request-rate chart with points",
        "return Number(document.getElementById('rate-chart').dataset.points) > 2;",
        Duration::from_secs(20),
    );
    d.wait_for(
        "an error with its cause",
        "return [...document.querySelectorAll('#errors tbody td')].some(td => td.textContent === 'bad_request');",
        Duration::from_secs(20),
    );

    // The drain button of the first backend drains it: the page and the API agree.
    let backend = d
        .script("const b = document.querySelector('#pools tbody tr button[data-action=drain]'); b.click(); return b.dataset.backend;")
        .as_str()
        .unwrap()
        .to_string();
    d.wait_for(
        "the drained backend as draining",
        &format!("const r = document.querySelector('#pools tr[data-backend=\"{backend}\"] .state'); return !!r && r.textContent === 'draining';"),
        Duration::from_secs(10),
    );
    let (_, pools) = http(admin, "GET", "/api/v1/pools", None);
    let pools: Value = serde_json::from_str(&pools).unwrap();
    let state = pools[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == backend.as_str())
        .map(|b| b["state"].clone());
    assert_eq!(state, Some(json!("draining")), "{pools}");

    // Keep the picture for a person to look at.
    let png = d.call("GET", "/screenshot", None);
    let bytes = base64_decode(png.as_str().unwrap());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    std::fs::write(&out, bytes).unwrap();
    eprintln!("screenshot: {}", out.display());
    let _ = http(
        driver_addr,
        "DELETE",
        &format!("/session/{}", d.session),
        None,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => 0,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().take_while(|c| **c != b'=').count();
        let v = chunk
            .iter()
            .take(n)
            .fold(0u32, |acc, c| (acc << 6) | u32::from(val(*c)))
            << (6 * (4 - n));
        for i in 0..n.saturating_sub(1) {
            out.push((v >> (16 - 8 * i)) as u8);
        }
    }
    out
}
