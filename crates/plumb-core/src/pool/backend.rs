//! One backend: its address and weight, whether it may take new connections (drain,
//! health checks, passive ejection), and the live counters balancing reads.
//!
//! Hot-path state (availability, load) is in atomics; times are milliseconds on the
//! pool's tokio clock (see [`super::Pool::now_ms`]). Rarely-changing details (the last
//! check, errors by cause) sit behind a mutex.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::cause::Cause;

/// How a backend is reported (admin API, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new connections.
    Healthy,
    /// Takes none; open connections run until the drain deadline.
    Draining,
    /// Failing its health checks, or ejected by passive checks; takes none.
    Unhealthy,
}

impl BackendState {
    /// The name used in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Healthy => "healthy",
            BackendState::Draining => "draining",
            BackendState::Unhealthy => "unhealthy",
        }
    }
}

/// The outcome of the last health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Whether it passed.
    pub ok: bool,
    /// `ok`, `connect refused`, `status 503`, `response timeout after 1000ms`...
    pub reason: String,
    /// When it finished, in pool milliseconds.
    pub at_ms: u64,
}

/// What an HTTP request to a backend watches while in flight: the token an abort
/// cancels (and then replaces), to wait on, and the count of aborts when the
/// request began, to check with an atomic load ([`Backend::aborted_since`]; the
/// token's own check takes its lock, shared by every request to the backend).
#[derive(Debug, Clone)]
pub(crate) struct AbortTicket {
    pub(crate) token: CancellationToken,
    pub(crate) count: u64,
}

/// A backend of a pool.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: AtomicU32,
    draining: AtomicBool,
    /// The active health checks' verdict (true until checks say otherwise).
    healthy: AtomicBool,
    /// Passive ejection holds until this pool millisecond (0: not ejected).
    ejected_until: AtomicU64,
    /// Ejections in a row, for the growing back-off.
    ejections: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Pool millisecond of the last failure (connect failure, reset, failed check).
    last_failure: AtomicU64,
    /// Pool millisecond + 1 at which a slow-start ramp began (0: none).
    ramp_start: AtomicU64,
    /// Connections open or being opened to this backend.
    active: AtomicUsize,
    /// Connections handed to this backend over its life.
    picked: AtomicU64,
    /// Smooth weighted round robin's running weight; only touched under the
    /// balancer's lock.
    pub(super) current: AtomicI64,
    details: Mutex<Details>,
    /// Listed in the config file (as opposed to registered through the admin API).
    from_config: bool,
    /// Found by the pool's discovery (DNS), or handed to it when the pool switched
    /// to discovery: discovery adds and drains it.
    discovered: AtomicBool,
    /// The admin API changed it (registered, reweighted, drained): a reload leaves it
    /// alone.
    api_managed: AtomicBool,
    /// HTTP requests in flight to this backend watch this token; drain deadlines and
    /// mark-downs cancel it (and put a fresh one in its place).
    /// One token per worker shard: a request takes its ticket from its own
    /// worker's, under a lock the other workers do not take.
    http_abort: crate::workers::Sharded<Mutex<CancellationToken>>,
    /// Counts the aborts: a response body compares it with the count when its
    /// request began, an atomic load where the token's own check takes its lock.
    aborts: std::sync::atomic::AtomicU64,
    /// Why the last abort happened.
    abort_cause: Mutex<Option<Cause>>,
    /// Pre-opened idle connections (`upstream.preconnect`), newest last.
    idle: Mutex<Vec<super::preconnect::Idle>>,
    /// Cancelled when the backend leaves its pool: stops its health checker.
    pub(crate) gone: CancellationToken,
}

#[derive(Debug, Default)]
struct Details {
    last_check: Option<CheckReport>,
    errors: BTreeMap<Cause, u64>,
    drain: Option<DrainTicket>,
}

/// A drain in progress.
#[derive(Debug, Clone)]
pub(crate) struct DrainTicket {
    pub(crate) deadline_ms: u64,
    pub(crate) remove: bool,
    pub(crate) cancel: CancellationToken,
}

impl Backend {
    /// A healthy backend with no connections.
    pub fn new(addr: SocketAddr, weight: u32) -> Backend {
        Backend {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            draining: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            ramp_start: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            picked: AtomicU64::new(0),
            current: AtomicI64::new(0),
            details: Mutex::new(Details::default()),
            from_config: false,
            discovered: AtomicBool::new(false),
            api_managed: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            http_abort: crate::workers::Sharded::default(),
            aborts: std::sync::atomic::AtomicU64::new(0),
            abort_cause: Mutex::new(None),
            gone: CancellationToken::new(),
        }
    }

    /// Marks a backend as listed in the config file.
    pub(crate) fn listed_in_config(mut self) -> Backend {
        self.from_config = true;
        self
    }

    /// Whether the config file lists it.
    pub fn is_from_config(&self) -> bool {
        self.from_config
    }

    /// Marks a backend as found by the pool's discovery.
    pub(crate) fn found_by_discovery(self) -> Backend {
        self.set_discovered(true);
        self
    }

    pub(crate) fn set_discovered(&self, yes: bool) {
        self.discovered.store(yes, Ordering::Relaxed);
    }

    /// Whether the pool's discovery found it (and may drain it when it goes).
    pub fn is_discovered(&self) -> bool {
        self.discovered.load(Ordering::Relaxed)
    }

    /// Whether the admin API changed it, so that a reload leaves it alone.
    pub fn is_api_managed(&self) -> bool {
        self.api_managed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_api_managed(&self) {
        self.api_managed.store(true, Ordering::Relaxed);
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Configured relative share of new connections.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight.
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Ordering::Relaxed);
    }

    /// Connections open or being opened now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections handed to this backend so far.
    pub fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    /// Whether it is draining (or being deregistered).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The active health checks' verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive ejection holds at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Pool millisecond until which it is ejected (0: not ejected).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Whether balancing may choose it at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        !self.is_draining() && self.is_healthy() && !self.is_ejected(now_ms)
    }

    /// The state to report.
    pub fn state(&self, now_ms: u64) -> BackendState {
        if self.is_draining() {
            BackendState::Draining
        } else if !self.is_healthy() || self.is_ejected(now_ms) {
            BackendState::Unhealthy
        } else {
            BackendState::Healthy
        }
    }

    /// Pool millisecond of the last failure (0: none).
    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    /// Consecutive failures seen by traffic.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The last health check, if any ran.
    pub fn last_check(&self) -> Option<CheckReport> {
        self.lock().last_check.clone()
    }

    /// Failures seen by traffic, by cause.
    pub fn errors(&self) -> BTreeMap<Cause, u64> {
        self.lock().errors.clone()
    }

    /// The drain deadline (pool milliseconds) and whether the backend will be
    /// removed, while a drain is in progress.
    pub fn drain_deadline(&self) -> Option<(u64, bool)> {
        self.lock()
            .drain
            .as_ref()
            .map(|d| (d.deadline_ms, d.remove))
    }

    /// The weight balancing uses at `now_ms`, in hundredths: the configured weight,
    /// ramped from a tenth to full over `slow_start_ms` after the backend came (back)
    /// up.
    pub fn effective_weight(&self, now_ms: u64, slow_start_ms: u64) -> u64 {
        let full = u64::from(self.weight()) * 100;
        let start = self.ramp_start.load(Ordering::Relaxed);
        if start == 0 || slow_start_ms == 0 {
            return full;
        }
        let elapsed = now_ms.saturating_sub(start - 1);
        if elapsed >= slow_start_ms {
            self.ramp_start.store(0, Ordering::Relaxed);
            return full;
        }
        let share = 10 + 90 * elapsed / slow_start_ms;
        (full * share / 100).max(1)
    }

    pub(crate) fn begin_ramp(&self, now_ms: u64) {
        self.ramp_start.store(now_ms + 1, Ordering::Relaxed);
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub(crate) fn set_check(&self, report: CheckReport) {
        self.lock().last_check = Some(report);
    }

    pub(crate) fn replace_drain(&self, ticket: Option<DrainTicket>) -> Option<DrainTicket> {
        std::mem::replace(&mut self.lock().drain, ticket)
    }

    /// Counts a failure seen by traffic. Returns the new consecutive count.
    pub(crate) fn record_failure(&self, cause: Cause, now_ms: u64) -> u32 {
        *self.lock().errors.entry(cause).or_default() += 1;
        self.last_failure.store(now_ms.max(1), Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a success seen by traffic.
    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Ejects until `until_ms`; returns how many ejections in a row this makes.
    pub(crate) fn eject(&self, until_ms: u64) -> u32 {
        self.ejected_until.store(until_ms, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejections in a row so far.
    pub(crate) fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ends an ejection (a health check passed, or it expired and traffic succeeded).
    pub(crate) fn clear_ejection(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
    }

    /// What an HTTP request to this backend watches while in flight.
    pub(crate) fn abort_ticket(&self) -> AbortTicket {
        let shard = self.http_abort.get(self.http_abort.mine());
        let token = shard.lock().unwrap_or_else(|p| p.into_inner());
        AbortTicket {
            token: token.clone(),
            count: self.aborts.load(Ordering::Acquire),
        }
    }

    /// Whether requests were aborted since the count `before` was taken.
    pub(crate) fn aborted_since(&self, before: u64) -> bool {
        self.aborts.load(Ordering::Acquire) != before
    }

    /// Ends every HTTP request in flight to this backend, for `cause`: cancels their
    /// tokens and counts the abort. Every shard's token is replaced under its lock,
    /// all held while the count moves, so a ticket pairs the old token with the old
    /// count or the new token with the new count.
    pub(crate) fn abort_http(&self, cause: Cause) {
        *self.abort_cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
        let old: Vec<CancellationToken> = {
            let mut tokens: Vec<_> = self
                .http_abort
                .iter()
                .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()))
                .collect();
            self.aborts.fetch_add(1, Ordering::AcqRel);
            tokens
                .iter_mut()
                .map(|t| std::mem::replace(&mut **t, CancellationToken::new()))
                .collect()
        };
        for t in old {
            t.cancel();
        }
    }

    /// Why HTTP requests to this backend were last aborted.
    pub(crate) fn abort_cause(&self) -> Cause {
        self.abort_cause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(Cause::BackendDrained)
    }

    /// Takes the newest pre-opened connection that is still alive.
    pub(crate) fn take_idle(&self) -> Option<tokio::net::TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if super::preconnect::is_alive(&i.stream) {
                return Some(i.stream);
            }
            super::preconnect::close(i);
        }
        None
    }

    /// Pre-opened connections waiting now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn put_idle(&self, i: super::preconnect::Idle) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(i);
    }

    pub(crate) fn oldest_idle(&self) -> Option<tokio::time::Instant> {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|i| i.since)
    }

    pub(crate) fn take_idle_where(
        &self,
        f: impl Fn(&super::preconnect::Idle) -> bool,
    ) -> Vec<super::preconnect::Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let (out, keep): (Vec<_>, Vec<_>) = idle.drain(..).partition(|i| f(i));
        *idle = keep;
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Details> {
        self.details.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts one connection as active on a backend for as long as it lives.
#[derive(Debug)]
pub struct ActiveGuard {
    backend: Arc<Backend>,
}

impl ActiveGuard {
    pub(crate) fn new(backend: Arc<Backend>) -> ActiveGuard {
        backend.active.fetch_add(1, Ordering::Relaxed);
        backend.picked.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { backend }
    }

    /// The backend this connection counts against.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}
