//! A pool: a named set of backends, how to choose among them, and their lifecycle:
//! registration, drain and deregistration, health checks, passive ejection.
//!
//! The backend set lives behind a lock holding an `Arc` of the current list, so a pick
//! copies nothing and a change (register, deregister) swaps the list without
//! disturbing connections already made.

mod backend;
mod balance;
mod drain;
mod preconnect;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use plumb_config::model::{self, DrainClose, OnMarkedDown};

use crate::cause::Cause;
use crate::conntable::{CloseHow, CloseOrder, ConnTable};

pub use backend::{ActiveGuard, Backend, BackendState, CheckReport};
pub use balance::Balancer;

/// A pool at run time.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    settings: model::Pool,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balancer: Balancer,
    /// Time zero of the pool's millisecond clock (backend timestamps count from it).
    epoch: Instant,
    conns: Arc<ConnTable>,
    /// Cancelled when the server stops: ends health checks and drains.
    stop: CancellationToken,
}

/// Why no backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// Nothing healthy and untried is left.
    #[error("no healthy backend")]
    NoHealthyBackend,
    /// Healthy backends remain, but every one is at its connection limit.
    #[error("every backend is at its connection limit")]
    BackendConnectionLimit,
}

impl PickError {
    /// The cause to report.
    pub fn cause(self) -> Cause {
        match self {
            PickError::NoHealthyBackend => Cause::NoHealthyBackend,
            PickError::BackendConnectionLimit => Cause::BackendConnectionLimit,
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new backend joined the pool.
    Created,
    /// An existing backend's weight was updated.
    Updated,
    /// A draining backend was taken back (its drain cancelled).
    Restored,
}

/// No backend with this address in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no backend {0} in this pool")]
pub struct UnknownBackend(pub SocketAddr);

impl Pool {
    /// Builds a pool from its validated config. Nothing runs until [`Pool::start`].
    pub fn new(cfg: &model::Pool, conns: Arc<ConnTable>) -> Arc<Pool> {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.addr, b.weight)))
            .collect();
        Arc::new(Pool {
            name: Arc::from(cfg.name.as_str()),
            settings: cfg.clone(),
            backends: RwLock::new(Arc::new(backends)),
            balancer: Balancer::new(cfg.balance),
            epoch: Instant::now(),
            conns,
            stop: CancellationToken::new(),
        })
    }

    /// Starts health checks (needs a tokio runtime).
    pub fn start(self: &Arc<Self>) {
        for b in self.backends().iter() {
            self.start_checks(b);
        }
    }

    /// Stops health checks and drains.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The pool's settings (timeouts, socket options...).
    pub fn settings(&self) -> &model::Pool {
        &self.settings
    }

    /// Milliseconds on the pool's clock (tokio time since the pool was built).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The tokio instant of a pool millisecond.
    pub fn instant_of(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// The current backends.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        match self.backends.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The backend with this address.
    pub fn backend(&self, addr: SocketAddr) -> Option<Arc<Backend>> {
        self.backends().iter().find(|b| b.addr() == addr).cloned()
    }

    /// Chooses a backend that may take a new connection and is not in `tried`, and
    /// counts the caller as one of its active connections until the guard is dropped.
    ///
    /// When no backend is available at all (every one failing its checks or ejected),
    /// the least recently failed one is tried anyway, as Envoy's panic threshold does:
    /// refusing everything would turn a false alarm into an outage.
    pub fn pick(&self, tried: &[SocketAddr]) -> Result<ActiveGuard, PickError> {
        let now = self.now_ms();
        let backends = self.backends();
        let limit = self.settings.upstream.max_connections_per_backend;
        let under_limit = |b: &Backend| limit.is_none_or(|m| b.active() < m);
        let untried = |b: &Backend| !tried.contains(&b.addr());
        let candidates: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| b.is_available(now) && untried(b) && under_limit(b))
            .collect();
        let slow_start = self.settings.slow_start.map_or(0, |d| d.as_millis() as u64);
        if let Some(b) = self
            .balancer
            .pick(&candidates, |b| b.effective_weight(now, slow_start))
        {
            return Ok(ActiveGuard::new(b));
        }
        if backends.iter().any(|b| b.is_available(now) && untried(b)) {
            return Err(PickError::BackendConnectionLimit);
        }
        if !backends.iter().any(|b| b.is_available(now)) {
            let fallback = backends
                .iter()
                .filter(|b| !b.is_draining() && untried(b) && under_limit(b))
                .min_by_key(|b| b.last_failure());
            if let Some(b) = fallback {
                tracing::warn!(
                    pool = %self.name,
                    backend.addr = %b.addr(),
                    "every backend is down; trying the least recently failed one"
                );
                return Ok(ActiveGuard::new(Arc::clone(b)));
            }
        }
        Err(PickError::NoHealthyBackend)
    }

    /// Adds a backend, updates its weight, or takes back a draining one.
    pub fn register(self: &Arc<Self>, addr: SocketAddr, weight: Option<u32>) -> Registered {
        let mut list = self.write();
        if let Some(b) = list.iter().find(|b| b.addr() == addr) {
            if let Some(w) = weight {
                b.set_weight(w);
            }
            if b.is_draining() {
                if let Some(t) = b.replace_drain(None) {
                    t.cancel.cancel();
                }
                b.set_draining(false);
                b.begin_ramp(self.now_ms());
                tracing::info!(pool = %self.name, backend.addr = %addr, "backend restored: drain cancelled");
                return Registered::Restored;
            }
            return Registered::Updated;
        }
        let b = Arc::new(Backend::new(addr, weight.unwrap_or(1)));
        if self.settings.slow_start.is_some() {
            b.begin_ramp(self.now_ms());
        }
        let mut next: Vec<Arc<Backend>> = list.as_ref().clone();
        next.push(Arc::clone(&b));
        *list = Arc::new(next);
        drop(list);
        tracing::info!(pool = %self.name, backend.addr = %addr, "backend registered");
        self.start_checks(&b);
        Registered::Created
    }

    /// Stops new connections to a backend at once. Its open connections go on until
    /// `timeout` (default: the pool's `drain.timeout`); then they are closed, spread
    /// over `drain.close_spread`, with RST or FIN per `drain.on_timeout`, cause
    /// `backend_drained`. With `remove`, the backend leaves the pool once drained.
    /// Returns the deadline.
    pub fn drain(
        self: &Arc<Self>,
        addr: SocketAddr,
        timeout: Option<Duration>,
        remove: bool,
    ) -> Result<Duration, UnknownBackend> {
        let b = self.backend(addr).ok_or(UnknownBackend(addr))?;
        let timeout = timeout.unwrap_or(self.settings.drain.timeout);
        b.set_draining(true);
        let cancel = self.stop.child_token();
        let ticket = backend::DrainTicket {
            deadline_ms: self.now_ms() + timeout.as_millis() as u64,
            remove: remove || b.drain_deadline().is_some_and(|(_, r)| r),
            cancel: cancel.clone(),
        };
        let remove = ticket.remove;
        let deadline = self.instant_of(ticket.deadline_ms);
        if let Some(old) = b.replace_drain(Some(ticket)) {
            old.cancel.cancel();
        }
        tracing::info!(
            pool = %self.name,
            backend.addr = %addr,
            timeout_ms = timeout.as_millis() as u64,
            remove,
            open = b.active(),
            "backend draining"
        );
        tokio::spawn(drain::run(Arc::clone(self), b, deadline, cancel, remove));
        Ok(timeout)
    }

    /// Takes a backend out of the pool's list, unless its drain was cancelled (checked
    /// under the list's lock, which registration also holds when it cancels a drain).
    pub(crate) fn remove(&self, addr: SocketAddr, drain: &CancellationToken) {
        let mut list = self.write();
        if drain.is_cancelled() {
            return;
        }
        let next: Vec<Arc<Backend>> = list.iter().filter(|b| b.addr() != addr).cloned().collect();
        for b in list.iter().filter(|b| b.addr() == addr) {
            b.gone.cancel();
        }
        *list = Arc::new(next);
        tracing::info!(pool = %self.name, backend.addr = %addr, "backend removed");
    }

    /// Closes every open connection to `addr` now.
    pub(crate) fn close_connections(&self, addr: SocketAddr, order: CloseOrder) -> usize {
        let mut n = 0;
        for c in self.conns.snapshot() {
            if c.pool() == &*self.name && c.backend() == Some(addr) {
                c.close(order);
                n += 1;
            }
        }
        n
    }

    /// The open connections to `addr`, oldest first.
    pub(crate) fn connections_to(&self, addr: SocketAddr) -> Vec<Arc<crate::conntable::Conn>> {
        self.conns
            .snapshot()
            .into_iter()
            .filter(|c| c.pool() == &*self.name && c.backend() == Some(addr))
            .collect()
    }

    /// How a drain closes connections at its deadline.
    pub(crate) fn drain_close(&self) -> CloseHow {
        match self.settings.drain.on_timeout {
            DrainClose::Reset => CloseHow::Reset,
            DrainClose::Close => CloseHow::Fin,
        }
    }

    /// Traffic saw a connect failure or a reset from `b`. Enough in a row eject it for
    /// a back-off that doubles while it keeps failing.
    pub(crate) fn report_failure(&self, b: &Backend, cause: Cause) {
        let now = self.now_ms();
        let n = b.record_failure(cause, now);
        let p = self.settings.passive;
        if p.consecutive_failures == 0 || n < p.consecutive_failures || b.is_ejected(now) {
            return;
        }
        let k = b.ejections().min(16);
        let length = p.ejection.saturating_mul(1 << k).min(p.max_ejection);
        let count = b.eject(now + length.as_millis() as u64);
        if self.settings.health.is_some() {
            // Health checks must also pass before it returns.
            b.set_healthy(false);
        }
        tracing::warn!(
            pool = %self.name,
            backend.addr = %b.addr(),
            cause = %cause,
            failures = n,
            ejection_ms = length.as_millis() as u64,
            ejections = count,
            "backend ejected after consecutive failures"
        );
    }

    /// Traffic reached `b`.
    pub(crate) fn report_success(&self, b: &Backend) {
        b.record_success();
        if b.ejections() > 0 && !b.is_ejected(self.now_ms()) {
            b.clear_ejection();
        }
    }

    /// Health checks marked `b` down: apply `on_marked_down`.
    pub(crate) fn marked_down(&self, b: &Backend) {
        if self.settings.on_marked_down == OnMarkedDown::Reset {
            let order = CloseOrder {
                cause: Cause::BackendMarkedDown,
                how: CloseHow::Reset,
            };
            let n = self.close_connections(b.addr(), order);
            if n > 0 {
                tracing::info!(pool = %self.name, backend.addr = %b.addr(), closed = n, "reset connections of a backend marked down");
            }
        }
    }

    /// Starts a backend's background tasks: health checks, pre-opened connections.
    fn start_checks(self: &Arc<Self>, b: &Arc<Backend>) {
        if let Some(hc) = &self.settings.health {
            tokio::spawn(crate::health::run(
                Arc::clone(self),
                Arc::clone(b),
                hc.clone(),
            ));
        }
        let up = self.settings.upstream;
        if up.preconnect > 0 {
            tokio::spawn(preconnect::keep(
                Arc::clone(self),
                Arc::clone(b),
                up.preconnect,
                up.idle_timeout,
            ));
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Vec<Arc<Backend>>>> {
        self.backends.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stop
    }
}

#[cfg(test)]
mod tests;
