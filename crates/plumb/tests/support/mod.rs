//! What the binary-level tests share: child processes killed and reaped when their
//! guard drops (by PID, also when a test fails) — any child ([`Proc`]) or a plumb
//! whose output is collected ([`Plumb`]) —, signals, a loopback echo server, and
//! the check for a tool a test needs, which prints why the test skips.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of this module"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

// std's Instant is banned workspace-wide in favour of tokio's (same clock here: no
// runtime, no paused time).
use tokio::time::Instant;

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `tool` is on PATH; when not, prints a SKIPPED line naming `installs`,
/// what provides it.
pub fn have(tool: &str, installs: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (scripts/test installs {installs} as root)");
    }
    found
}

/// Sends `sig` (`"TERM"`, `"HUP"`, `"INT"`...) to `pid`, with the shell's builtin
/// kill (no procps needed).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("sh")
        .args(["-c", "kill -\"$0\" \"$1\"", sig, &pid.to_string()])
        .status()
        .expect("run sh");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A running plumb (`plumb ARGS`), its stdout lines and stderr collected: killed
/// (SIGKILL, by PID) and reaped on drop unless it exited.
pub struct Plumb {
    child: Child,
    /// Lines plumb printed on stdout.
    pub stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; joined once the process has exited, so that
    /// `stderr()` then holds everything the process wrote.
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Plumb {
    pub fn spawn(args: &[&str]) -> Plumb {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plumb");
        let out = child.stdout.take().unwrap();
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Plumb {
            child,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal (`"TERM"`, `"HUP"`...).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Whether the process has exited; if so, its stderr has been read to the end.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        // The pipe's write end closed with the process (plumb starts no children),
        // so the reader reaches EOF.
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        Some(status)
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until stderr contains `needle` (true), or the process exits or `limit`
    /// passes (false).
    pub fn wait_stderr(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if self.exited().is_some() || Instant::now() >= deadline {
                return self.stderr().contains(needle);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Plumb {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port free a moment ago (another process may take it before the
/// caller binds it; tests that cannot retry accept that small risk).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A blocking echo server on loopback, one thread per connection. Threads end with
/// the test process.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}
