//! Binary upgrades without refusing a connection.
//!
//! A plumb with `runtime.upgrade_socket` listens on that Unix socket. A new plumb
//! started with `plumb serve --take-over` connects to it and asks for the
//! listening sockets; the old one sends a duplicate of each (with `SCM_RIGHTS`),
//! and its admin API socket. The new process accepts on those very sockets — the
//! same accept queues, so a connection attempt that arrives during the handover
//! waits in the queue instead of being refused, as it would be between one
//! process closing a socket and the next binding it — then says it is ready. The
//! old one then stops accepting and shuts down as on SIGTERM: its open
//! connections get `runtime.shutdown_grace` to finish. If the new process fails
//! before it is ready, the old one goes on serving.
//!
//! The exchange, one line or message each way:
//! `take-over <pid>\n` → `{"pid": P, "sockets": ["ADDR", ...]}` with the
//! descriptors in the same order → `ready\n` → `bye\n`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use plumb_core::Server;
use tokio_util::sync::CancellationToken;

/// How long either side waits for the other's next step.
const STEP: Duration = Duration::from_secs(30);

/// Sockets taken over from a running plumb, and the line back to it.
#[derive(Debug)]
pub(super) struct Inherited {
    /// The listening sockets by address (the admin API's among them).
    pub sockets: HashMap<SocketAddr, Vec<TcpListener>>,
    /// The process they came from.
    pub from_pid: u32,
    stream: UnixStream,
}

/// Asks the plumb serving upgrades at `path` for its listening sockets.
pub(super) fn take_over(path: &Path) -> anyhow::Result<Inherited> {
    let stream = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the running plumb at {}", path.display()))?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    (&stream).write_all(format!("take-over {}\n", std::process::id()).as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = plumb_sys::recv_with_fds(&stream, &mut buf)
        .context("no sockets came back from the running plumb")?;
    let offer: serde_json::Value = serde_json::from_slice(&buf[..n])
        .context("the running plumb's answer is not the expected JSON")?;
    let addrs: Vec<SocketAddr> = offer["sockets"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if addrs.len() != fds.len() {
        bail!(
            "the running plumb named {} sockets but sent {}",
            addrs.len(),
            fds.len()
        );
    }
    let mut sockets = HashMap::new();
    for (addr, fd) in addrs.into_iter().zip(fds) {
        let socket = TcpListener::from(fd);
        let actual = socket.local_addr()?;
        if actual != addr {
            bail!("a socket said to listen on {addr} listens on {actual}");
        }
        // An address has one socket per worker of the running plumb.
        sockets.entry(addr).or_insert_with(Vec::new).push(socket);
    }
    Ok(Inherited {
        sockets,
        from_pid: offer["pid"].as_u64().unwrap_or(0) as u32,
        stream,
    })
}

impl Inherited {
    /// Tells the old process that this one accepts now: it stops accepting and
    /// drains. Waits for its acknowledgement.
    pub(super) fn ready(self) -> anyhow::Result<()> {
        (&self.stream).write_all(b"ready\n")?;
        let mut line = String::new();
        BufReader::new(&self.stream).read_line(&mut line)?;
        if line.trim() != "bye" {
            bail!("the old plumb did not acknowledge the handover ({line:?})");
        }
        Ok(())
    }
}

/// Serves successors on `path` from a thread of its own: the first one that
/// takes the sockets and reports ready ends this process's accepting, through
/// `handed_over`. With `replace`, a socket file already at `path` is removed
/// first (this process took over from the one that made it); otherwise one that
/// a live process still answers on is an error.
pub(super) fn serve_successors(
    path: &Path,
    replace: bool,
    server: Arc<Server>,
    admin: TcpListener,
    handed_over: CancellationToken,
) -> anyhow::Result<()> {
    if path.exists() {
        if !replace && UnixStream::connect(path).is_ok() {
            bail!(
                "runtime.upgrade_socket {}: another process answers there (is a plumb already running?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "runtime.upgrade_socket: cannot listen on {}",
            path.display()
        )
    })?;
    // Only this user may take the sockets over: the file is made 0600, and each
    // peer's uid is checked against the file's owner (this process), which also
    // covers the moment between bind and chmod.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path)?);
    let path: PathBuf = path.to_path_buf();
    tracing::info!(path = %path.display(), "serving binary upgrades (plumb serve --take-over)");
    std::thread::Builder::new()
        .name("plumb-upgrade".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if handed_over.is_cancelled() {
                    return;
                }
                let Ok(conn) = conn else { continue };
                match plumb_sys::peer_uid(&conn) {
                    Ok(uid) if uid == owner || uid == 0 => {}
                    other => {
                        tracing::warn!(peer.uid = ?other.ok(), "refused a take-over from another user");
                        continue;
                    }
                }
                match hand_over(&conn, &server, &admin) {
                    Ok(pid) => {
                        tracing::info!(
                            successor.pid = pid,
                            "handed the listening sockets to a new plumb: accepting no more, draining"
                        );
                        handed_over.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "a successor did not take over; still serving"
                    ),
                }
            }
        })?;
    Ok(())
}

/// One handover: the request, the sockets, the successor's ready, our bye.
fn hand_over(conn: &UnixStream, server: &Server, admin: &TcpListener) -> anyhow::Result<u32> {
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let pid: u32 = line
        .strip_prefix("take-over ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("not a take-over request: {line:?}"))?;
    let mut sockets = server.listening_sockets()?;
    sockets.push(admin.try_clone()?);
    let addrs: Vec<String> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?;
    let offer = serde_json::json!({ "pid": std::process::id(), "sockets": addrs });
    let fds: Vec<_> = sockets.iter().map(AsFd::as_fd).collect();
    plumb_sys::send_with_fds(conn, offer.to_string().as_bytes(), &fds)?;
    tracing::info!(
        successor.pid = pid,
        sockets = fds.len(),
        "listening sockets sent to a new plumb; waiting for it"
    );
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the new plumb (pid {pid}) stopped before it was ready ({line:?})");
    }
    (&*conn).write_all(b"bye\n")?;
    Ok(pid)
}
