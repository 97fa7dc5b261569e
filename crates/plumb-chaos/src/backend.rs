//! The backends the matrix runs behind plumb: one process each (so a fault can
//! SIGKILL it), an HTTP/1.1 server with keep-alive and a TCP echo server, whose
//! behaviour a mode file switches: `ok`, `reset` (RST on each request or echo),
//! `hang` (HTTP: read the request, never answer; the echo goes on). Every POST's `x-chaos-id` is appended to a
//! file, one per line, so duplicates are found across restarts.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;

/// The backend's current mode, read from its file at each request.
fn mode(file: &Path) -> String {
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "ok".into())
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}

/// Serves until killed.
pub fn serve(
    http: SocketAddr,
    echo: SocketAddr,
    mode_file: PathBuf,
    posts: PathBuf,
) -> anyhow::Result<()> {
    let h = TcpListener::bind(http)?;
    let e = TcpListener::bind(echo)?;
    {
        let mode_file = mode_file.clone();
        thread::spawn(move || {
            for conn in e.incoming() {
                let Ok(s) = conn else { continue };
                let mode_file = mode_file.clone();
                thread::spawn(move || echo_conn(s, &mode_file));
            }
        });
    }
    for conn in h.incoming() {
        let Ok(s) = conn else { continue };
        let (mode_file, posts) = (mode_file.clone(), posts.clone());
        thread::spawn(move || http_conn(s, &mode_file, &posts));
    }
    Ok(())
}

fn echo_conn(mut s: TcpStream, mode_file: &Path) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // `hang` is for HTTP only: an echo that swallows bytes is a protocol that
        // stopped answering on a live connection, which no L4 proxy can tell from
        // a slow one (the client's own pings keep the tunnel from going idle).
        match mode(mode_file).as_str() {
            "reset" => return reset(s),
            _ => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads one request head and body; `None` when the peer closed or sent garbage.
fn read_request(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> Option<(String, String, Option<String>, Vec<u8>)> {
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if pending.len() > 64 * 1024 {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let mut length = 0usize;
    let mut id = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse().ok()?;
            } else if k == "x-chaos-id" {
                id = Some(v.to_string());
            }
        }
    }
    pending.drain(..head_end);
    while pending.len() < length {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    let body: Vec<u8> = pending.drain(..length).collect();
    Some((method, path, id, body))
}

fn http_conn(mut s: TcpStream, mode_file: &Path, posts: &Path) {
    let mut pending = Vec::new();
    loop {
        let Some((method, path, id, body)) = read_request(&mut s, &mut pending) else {
            return;
        };
        match mode(mode_file).as_str() {
            "reset" => return reset(s),
            "hang" => {
                // Hold the connection, answer nothing, until the peer goes.
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                return;
            }
            _ => {}
        }
        if method == "POST" {
            if let Some(id) = &id {
                if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(posts) {
                    let _ = f.write_all(format!("{id}\n").as_bytes());
                }
            }
        }
        let answer: Vec<u8> = if path.starts_with("/big") {
            vec![b'x'; 256 * 1024]
        } else {
            format!("ok {} bytes\n", body.len()).into_bytes()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
            answer.len()
        );
        if s.write_all(head.as_bytes()).is_err() || s.write_all(&answer).is_err() {
            return;
        }
    }
}
