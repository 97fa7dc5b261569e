//! TLS termination as a user meets it: `plumb serve` with a certificate, curl with
//! the test CA over HTTP/2 and HTTP/1.1 (ALPN), and the certificate replaced on disk
//! while plumb runs. curl is installed by `scripts/test`; without it the test says so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    reason = "a test driving other processes: wall-clock deadlines; a panic is the report"
)]

mod support;
use support::Proc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 origin: answers every request with "tls-origin" and closes.
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
                let proto = String::from_utf8_lossy(&head)
                    .lines()
                    .find_map(|l| l.strip_prefix("x-forwarded-proto: ").map(str::to_string))
                    .unwrap_or_default();
                let body = format!("tls-origin via {proto}\n");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

fn self_signed(dir: &Path, tag: &str) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.join(format!("cert-{tag}.pem"));
    let key = dir.join(format!("key-{tag}.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

fn curl(port: u16, ca: &str, version: &str) -> (bool, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            version,
            "--cacert",
            ca,
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            "-w",
            "\\n%{http_version}",
            &format!("https://localhost:{port}/"),
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn https_with_alpn_and_certificates_replaced_on_disk() {
    if !Command::new("sh")
        .args(["-c", "command -v curl"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: curl is not installed (scripts/test installs it as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1) = self_signed(dir.path(), "1");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(&cert1, &cert).unwrap();
    std::fs::copy(&key1, &key).unwrap();
    let backend = origin();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"tls\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:{port}\"\npool = \"app\"\ntls = {{ cert = {:?}, key = {:?} }}\n[listener.timeouts]\nheader_read = \"500ms\"\n[[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let _plumb = Proc(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["serve", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "plumb serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    // HTTP/2 and HTTP/1.1 by ALPN; the backend hears X-Forwarded-Proto: https.
    let (ok, out) = curl(port, &cert1, "--http2");
    assert!(
        ok && out.contains("tls-origin via https") && out.ends_with("\n2"),
        "{out}"
    );
    let (ok, out) = curl(port, &cert1, "--http1.1");
    assert!(
        ok && out.contains("tls-origin via https") && out.ends_with("\n1.1"),
        "{out}"
    );

    // A new certificate written over the files is served within a few seconds; the
    // old trust anchor no longer verifies.
    let (cert2, key2) = self_signed(dir.path(), "2");
    std::fs::copy(&key2, &key).unwrap();
    std::fs::copy(&cert2, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = curl(port, &cert2, "--http2");
        if ok {
            assert!(out.contains("tls-origin via https"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = curl(port, &cert1, "--http2");
    assert!(!ok, "the replaced certificate still verifies: {out}");

    // A slow request head inside TLS is cut at header_read (500 ms), not left to
    // hyper's backstop (a minute here, since keepalive_idle is 60 s).
    let script = format!(
        "import socket,ssl,time\nctx=ssl.create_default_context(cafile={cert2:?})\ns=ctx.wrap_socket(socket.create_connection(('127.0.0.1',{port})),server_hostname='localhost')\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: localhost\\r\\n')\nt=time.time()\ns.settimeout(10)\ntry:\n  d=s.recv(100)\nexcept Exception as e:\n  d=b''\nprint(round(time.time()-t,2))\n"
    );
    if let Ok(out) = Command::new("python3").args(["-c", &script]).output() {
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(99.0);
        assert!(
            (0.3..3.0).contains(&secs),
            "a slow head over TLS was closed after {secs}s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Shutdown ends a TLS handshake still waiting for the client at once, long before
/// `header_read` and the shutdown grace: nothing was asked yet.
#[test]
fn shutdown_ends_a_waiting_tls_handshake_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "1");
    let backend = origin();
    let port = support::free_port();
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"tls\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:{port}\"\npool = \"app\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n[listener.timeouts]\nheader_read = \"10s\"\n[[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
        ),
    )
    .unwrap();
    let mut plumb = support::Plumb::spawn(&["serve", "-c", config.to_str().unwrap()]);
    assert!(
        plumb.wait_stderr("listening", Duration::from_secs(10)),
        "plumb serve did not listen: {}",
        plumb.stderr()
    );
    // A client that connects and never sends its ClientHello.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    plumb.signal("TERM");
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    let closed = t0.elapsed();
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the waiting handshake was not closed: {read:?} after {closed:?}"
    );
    assert!(
        closed < Duration::from_secs(2),
        "the waiting handshake lasted {closed:?} into shutdown (grace 5 s)"
    );
    assert!(
        plumb.wait_exit(Duration::from_secs(3)).is_some(),
        "plumb still running 3 s after SIGTERM: {}",
        plumb.stderr()
    );
}
