//! A drain in progress: wait for the deadline (or for the backend's connections to
//! end on their own), then close what is left, spread over `close_spread`, and remove
//! the backend if it was deregistered.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Backend, Pool};
use crate::cause::Cause;
use crate::conntable::CloseOrder;

/// How often a drain looks whether its backend's connections have all ended.
const POLL: Duration = Duration::from_millis(50);
/// After closing, how long a deregistered backend may take to let go of its
/// connections before it is removed anyway.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn run(
    pool: Arc<Pool>,
    b: Arc<Backend>,
    deadline: Instant,
    cancel: CancellationToken,
    remove: bool,
) {
    let addr = b.addr();
    // 1. Until the deadline, open connections go on; stop early if none are left.
    while b.active() > 0 && Instant::now() < deadline {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline.min(Instant::now() + POLL)) => {}
        }
    }
    // 2. HTTP requests still in flight to it end now, with the drain's cause.
    if !cancel.is_cancelled() {
        b.abort_http(Cause::BackendDrained);
    }
    // TCP connections: close the rest, spread so that clients don't reconnect in
    // one storm.
    let victims = pool.connections_to(addr);
    let spread = pool.settings().drain.close_spread;
    let order = CloseOrder {
        cause: Cause::BackendDrained,
        how: pool.drain_close(),
    };
    let start = Instant::now();
    let n = victims.len() as u32;
    for (i, c) in victims.iter().enumerate() {
        let at = start + spread * i as u32 / n.max(1);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(at) => {}
        }
        c.close(order);
    }
    let labels = crate::metrics::PoolLabels {
        pool: pool.name().to_string(),
    };
    pool.metrics
        .drain_closed
        .get_or_create(&labels)
        .inc_by(u64::from(n));
    pool.metrics.drains_completed.get_or_create(&labels).inc();
    if n > 0 {
        tracing::info!(pool = %pool.name(), backend.addr = %addr, closed = n, spread_ms = spread.as_millis() as u64, "drain deadline: closed open connections");
    }
    // 3. A deregistered backend leaves the pool once its connections are gone.
    if remove {
        let give_up = Instant::now() + REMOVE_WAIT;
        while b.active() > 0 && Instant::now() < give_up {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
        pool.remove(addr, &cancel);
    }
    if !cancel.is_cancelled() {
        b.replace_drain(None);
    }
}
