//! Pre-opened backend connections (`upstream.preconnect`), off by default.
//!
//! Incident 004: a load balancer that keeps idle connections open to a backend that
//! serves one connection at a time freezes it for everyone. So plumb opens a backend
//! connection only when a client needs one, unless the operator asks for pre-opened
//! connections; then it keeps at most `preconnect` idle ones per backend, only while
//! the backend is available, and closes each after `upstream.idle_timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Backend, Pool};
use crate::{sockopt, upstream};

/// How often the keeper looks again when there is nothing to expire sooner.
const TICK: Duration = Duration::from_millis(250);
/// Pause after a failed pre-connect.
const RETRY: Duration = Duration::from_secs(1);

/// An idle pre-opened connection.
#[derive(Debug)]
pub(crate) struct Idle {
    pub(crate) stream: TcpStream,
    pub(crate) since: Instant,
}

/// Whether an idle connection is still usable: not closed or reset by the backend.
/// Data the backend sent first (a banner) stays unread for the client.
pub(crate) fn is_alive(s: &TcpStream) -> bool {
    match plumb_sys::peek_now(s) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Closes an idle connection with FIN after reading whatever the backend sent (unread
/// data would turn the close into an RST).
pub(crate) fn close(idle: Idle) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = idle.stream.try_read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    sockopt::send_fin(&idle.stream);
}

/// Keeps `want` idle connections to `b` while it is available.
pub(crate) async fn keep(
    pool: Arc<Pool>,
    b: Arc<Backend>,
    want: usize,
    idle_timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let settings = pool.settings();
    loop {
        let now = Instant::now();
        // Expire old and dead connections; drop all if the backend may not be used.
        let available = b.is_available(pool.now_ms());
        for idle in b.take_idle_where(|i| {
            !available || now >= i.since + idle_timeout || !is_alive(&i.stream)
        }) {
            close(idle);
        }
        let mut pause = TICK;
        if available && b.idle_count() < want {
            match upstream::connect(b.addr(), &settings.tcp, settings.timeouts.connect).await {
                Ok(stream) => {
                    b.put_idle(Idle {
                        stream,
                        since: Instant::now(),
                    });
                    pause = Duration::ZERO;
                }
                Err(e) => {
                    tracing::debug!(pool = %pool.name(), backend.addr = %b.addr(), cause = %e.cause, "pre-connect failed");
                    pause = RETRY;
                }
            }
        }
        if let Some(oldest) = b.oldest_idle() {
            pause = pause.min((oldest + idle_timeout).saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            () = b.gone.cancelled() => break,
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    for idle in b.take_idle_where(|_| true) {
        close(idle);
    }
}
