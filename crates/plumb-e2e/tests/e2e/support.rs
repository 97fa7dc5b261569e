//! Starting plumb and its peers for a test, and waiting for things without sleeps.
#![allow(dead_code, reason = "each test module uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a failure should panic the test"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plumb_core::Server;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// plumb running in this process.
pub struct Plumb {
    /// Every bound listener address, in config order (first listener first).
    pub addrs: Vec<SocketAddr>,
    pub server: Arc<Server>,
    access_log: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Plumb {
    /// Starts plumb from a TOML config. Listen on port 0 to get free ports; the access
    /// log is redirected to a temporary file unless the config sets one.
    pub async fn start(toml: &str) -> Plumb {
        let dir = tempfile::tempdir().unwrap();
        let access_log = dir.path().join("access.log");
        let toml = if toml.contains("access_log") {
            toml.to_string()
        } else if toml.contains("[runtime]") {
            toml.replacen(
                "[runtime]",
                &format!(
                    "[runtime]\naccess_log = {:?}",
                    access_log.display().to_string()
                ),
                1,
            )
        } else {
            format!(
                "[runtime]\naccess_log = {:?}\n{toml}",
                access_log.display().to_string()
            )
        };
        let config = plumb_config::parse(&toml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{toml}"));
        let bound = plumb_core::bind_all(&config).unwrap();
        let addrs = bound.iter().flat_map(|b| b.local_addrs()).collect();
        let log = Server::open_access_log(&config).unwrap();
        let server = Arc::new(Server::new(&config, log));
        let (stop, stopped) = oneshot::channel::<()>();
        let s = Arc::clone(&server);
        let task = tokio::spawn(async move {
            s.run(bound, async move {
                let _ = stopped.await;
            })
            .await
        });
        Plumb {
            addrs,
            server,
            access_log,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The first listener's first address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The access log's lines so far, parsed.
    pub fn log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        // The writer thread may be mid-line: only whole lines count.
        let whole = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }

    /// Waits (bounded) until the access log has at least `n` lines, and returns them.
    pub async fn wait_log(&self, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            let lines = self.log();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "access log has {} lines, expected {n}: {:?}",
            self.log().len(),
            self.log()
        );
    }

    /// Triggers shutdown and waits for `run` to return (bounded).
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    /// Stops plumb and returns the whole access log.
    pub async fn stop_and_keep_log(mut self) -> Vec<Value> {
        self.stop_now().await;
        self.server.flush_access_log(Duration::from_secs(2)).await;
        self.log()
    }

    async fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), t)
                .await
                .expect("plumb did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Plumb {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A TCP echo server: returns every byte it reads, half-closes when the client does.
/// The task ends when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo() -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    echo_on(l)
}

pub fn echo_on(l: TcpListener) -> Echo {
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Echo { addr, task }
}

/// A backend that writes its own name to each connection and then echoes.
pub async fn named(name: &'static str) -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Echo { addr, task }
}

/// An address on loopback where nothing listens: connects are refused.
pub fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A listener that never accepts and whose accept queue is full, so the kernel drops
/// further SYNs: a connect to it times out (loopback's stand-in for a black hole).
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

pub fn blackhole() -> Blackhole {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Backlog 0 admits one connection to the accept queue; one more fills it.
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(c);
        }
    }
    Blackhole {
        addr,
        _listener: s,
        _fillers: fillers,
    }
}

/// Reads until EOF or error; returns the bytes and the error, if any.
pub async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Retries `f` every 10 ms until it returns true, for at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal pool+listener config around `backends` (TOML array items).
pub fn config(backends: &[String], extra_pool: &str, extra_listener: &str) -> String {
    format!(
        "[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{extra_listener}\n\n[[pool]]\nname = \"app\"\nbackends = [{}]\n{extra_pool}\n",
        backends.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", ")
    )
}
