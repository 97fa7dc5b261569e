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

pub(crate) use backend::AbortTicket;
pub use backend::{ActiveGuard, Backend, BackendState, CheckReport};
pub use balance::Balancer;

/// A pool at run time.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    /// Settings and balancer; swapped whole by a config reload.
    generation: RwLock<Arc<Generation>>,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// Cancelled when the settings that background tasks (health checks, pre-opened
    /// connections) depend on change; they are then started again.
    tasks: std::sync::Mutex<CancellationToken>,
    /// Time zero of the pool's millisecond clock (backend timestamps count from it).
    epoch: Instant,
    conns: Arc<ConnTable>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Cancelled when the server stops: ends health checks and drains.
    stop: CancellationToken,
    /// HTTP: kept-alive upstream connections.
    pub(crate) http_idle: crate::l7::client::KeepAlive,
    /// HTTP: retry tokens; each request adds `retry_budget_percent / 100`, each
    /// retry spends one.
    retry_tokens: std::sync::Mutex<f64>,
    /// What discovery last did (empty without discovery).
    discovery: std::sync::Mutex<Option<crate::discovery::DiscoveryStatus>>,
}

/// How often idle kept-alive connections are checked for expiry.
const SWEEP: Duration = Duration::from_millis(500);
/// Retries allowed before any request has added to the budget.
const RETRY_TOKENS_START: f64 = 10.0;
/// The most retry tokens that can pile up.
const RETRY_TOKENS_MAX: f64 = 100.0;

/// What a reload can swap.
#[derive(Debug)]
struct Generation {
    settings: Arc<model::Pool>,
    balancer: Balancer,
}

/// What a reload changed in a pool.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolChanges {
    /// Whether settings other than the backend list changed.
    pub settings: bool,
    /// Backends added from the config.
    pub added: Vec<SocketAddr>,
    /// Backends the config no longer lists: deregistered (drained, then removed).
    pub removed: Vec<SocketAddr>,
    /// Backends whose weight the config changed.
    pub reweighted: Vec<SocketAddr>,
    /// Backends the config lists or dropped but the admin API changed: left alone.
    pub kept_api_state: Vec<SocketAddr>,
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
    pub fn new(
        cfg: &model::Pool,
        conns: Arc<ConnTable>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Pool> {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.addr, b.weight).listed_in_config()))
            .collect();
        let stop = CancellationToken::new();
        Arc::new(Pool {
            name: Arc::from(cfg.name.as_str()),
            generation: RwLock::new(Arc::new(Generation {
                settings: Arc::new(cfg.clone()),
                balancer: Balancer::new(cfg.balance),
            })),
            backends: RwLock::new(Arc::new(backends)),
            tasks: std::sync::Mutex::new(stop.child_token()),
            epoch: Instant::now(),
            conns,
            metrics,
            stop,
            http_idle: crate::l7::client::KeepAlive::default(),
            retry_tokens: std::sync::Mutex::new(RETRY_TOKENS_START),
            discovery: std::sync::Mutex::new(None),
        })
    }

    /// HTTP: counts a request towards the retry budget.
    pub(crate) fn note_request(&self, settings: &model::Pool) {
        let share = f64::from(settings.retry_budget_percent) / 100.0;
        let mut t = self.retry_tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + share).min(RETRY_TOKENS_MAX);
    }

    /// HTTP: whether a retry fits in the budget (and spends it if so).
    pub(crate) fn allow_retry(&self) -> bool {
        let mut t = self.retry_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }

    /// HTTP: kept-alive idle connections now.
    pub fn idle_connections(&self) -> usize {
        self.http_idle.len()
    }

    /// Starts health checks, discovery and the sweeper of idle kept-alive
    /// connections (needs a tokio runtime). With discovery, the receiver completes
    /// when its first resolution has been applied (or has failed).
    pub fn start(self: &Arc<Self>) -> Option<tokio::sync::oneshot::Receiver<()>> {
        for b in self.backends().iter() {
            self.start_checks(b);
        }
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let first = crate::discovery::start(self, tasks);
        let pool = Arc::downgrade(self);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SWEEP) => {}
                }
                let Some(pool) = pool.upgrade() else { return };
                let idle_timeout = pool.settings().upstream.idle_timeout;
                let now = pool.now_ms();
                let backends = pool.backends();
                pool.http_idle.sweep(idle_timeout, |addr| {
                    backends
                        .iter()
                        .any(|b| b.addr() == addr && b.is_available(now))
                });
            }
        });
        first
    }

    /// Applies a reloaded config: new settings, and the difference between the
    /// config's backend list and the current one. Backends the admin API registered,
    /// drained or reweighted keep that state: the API's word stands until the API
    /// changes it again.
    pub fn reconfigure(self: &Arc<Self>, cfg: &model::Pool) -> PoolChanges {
        let mut changes = PoolChanges::default();
        let old = self.settings();
        let mut old_rest = (*old).clone();
        let mut new_rest = cfg.clone();
        old_rest.backends.clear();
        new_rest.backends.clear();
        changes.settings = old_rest != new_rest;
        if changes.settings || old.backends != cfg.backends {
            *self.generation.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Generation {
                settings: Arc::new(cfg.clone()),
                balancer: Balancer::new(cfg.balance),
            });
        }
        if old.health != cfg.health
            || old.upstream != cfg.upstream
            || old.discovery != cfg.discovery
        {
            // Restart background tasks under the new settings.
            let fresh = self.stop.child_token();
            let stale = std::mem::replace(
                &mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()),
                fresh.clone(),
            );
            stale.cancel();
            for b in self.backends().iter() {
                self.start_checks(b);
            }
            if cfg.discovery.is_none() {
                *self.discovery.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let _ = crate::discovery::start(self, fresh);
        }
        let current = self.backends();
        for spec in &cfg.backends {
            match current.iter().find(|b| b.addr() == spec.addr) {
                Some(b) if b.is_api_managed() => changes.kept_api_state.push(spec.addr),
                Some(b) => {
                    if b.weight() != spec.weight {
                        b.set_weight(spec.weight);
                        changes.reweighted.push(spec.addr);
                    }
                }
                None => {
                    self.add(Arc::new(
                        Backend::new(spec.addr, spec.weight).listed_in_config(),
                    ));
                    changes.added.push(spec.addr);
                }
            }
        }
        for b in current.iter() {
            if cfg.backends.iter().any(|s| s.addr == b.addr()) {
                continue;
            }
            let discovery_ended = b.is_discovered() && cfg.discovery.is_none();
            if cfg.discovery.is_some() && b.is_from_config() && !b.is_api_managed() {
                // The pool switched to discovery: the file's backends are now
                // discovery's to keep or drain, by the next answer.
                b.set_discovered(true);
                continue;
            }
            if b.is_api_managed() || (!b.is_from_config() && !discovery_ended) {
                changes.kept_api_state.push(b.addr());
            } else if !b.is_draining() {
                self.start_drain(Arc::clone(b), None, true);
                changes.removed.push(b.addr());
            }
        }
        changes
    }

    /// Applies a discovery answer: addresses new to the pool are added (ramping up
    /// when `ramp`, that is after the first answer), discovered backends missing
    /// from it are drained and removed, a draining discovered backend that is back
    /// is restored, one marked `draining` is drained (and kept). Backends from the
    /// config file or the admin API are not touched.
    pub fn apply_discovered(
        self: &Arc<Self>,
        source: &str,
        found: &[crate::discovery::Found],
        ttl: Option<Duration>,
        ramp: bool,
    ) {
        let current = self.backends();
        for f in found {
            let addr = f.addr;
            match current.iter().find(|b| b.addr() == addr) {
                Some(b) if !b.is_discovered() || b.is_api_managed() => {}
                Some(b) if f.draining => {
                    if !b.is_draining() {
                        tracing::info!(pool = %self.name, backend.addr = %addr, %source, "marked draining in discovery");
                        self.start_drain(Arc::clone(b), None, false);
                    }
                }
                Some(b) if b.is_draining() => {
                    // Under the list's lock, which a drain's removal also takes: the
                    // backend is either still listed (restore it) or gone (add anew).
                    let list = self.write();
                    let listed = list.iter().find(|x| x.addr() == addr).cloned();
                    match listed {
                        Some(b) if b.is_draining() && !b.is_api_managed() => {
                            if let Some(t) = b.replace_drain(None) {
                                t.cancel.cancel();
                            }
                            b.set_draining(false);
                            b.set_weight(f.weight);
                            b.begin_ramp(self.now_ms());
                            drop(list);
                            tracing::info!(pool = %self.name, backend.addr = %addr, %source, "discovered again: drain cancelled");
                        }
                        Some(_) => {}
                        None => {
                            drop(list);
                            let b = Arc::new(Backend::new(addr, f.weight).found_by_discovery());
                            self.add_ramping(b, ramp);
                        }
                    }
                }
                Some(b) => {
                    if b.weight() != f.weight {
                        b.set_weight(f.weight);
                    }
                }
                // Not in the pool and not to take traffic: nothing to add.
                None if f.draining => {}
                None => {
                    let b = Arc::new(Backend::new(addr, f.weight).found_by_discovery());
                    if self.add_ramping(b, ramp) {
                        tracing::info!(pool = %self.name, backend.addr = %addr, %source, "backend discovered");
                    }
                }
            }
        }
        for b in current.iter() {
            if b.is_discovered()
                && !b.is_api_managed()
                && !b.gone.is_cancelled()
                && !found.iter().any(|f| f.addr == b.addr())
                && !b.drain_deadline().is_some_and(|(_, remove)| remove)
            {
                // Already draining (marked so in discovery): keep its deadline.
                let left = b.drain_deadline().map(|(deadline, _)| {
                    Duration::from_millis(deadline.saturating_sub(self.now_ms()))
                });
                tracing::info!(pool = %self.name, backend.addr = %b.addr(), %source, "backend no longer discovered: draining");
                self.start_drain(Arc::clone(b), left, true);
            }
        }
        let mut status = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let s = status.get_or_insert_with(Default::default);
        s.source = source.to_string();
        s.up = true;
        s.addresses = found.iter().map(|f| f.addr.to_string()).collect();
        s.last_ok_ms = Some(self.now_ms());
        s.last_error = None;
        // A hosts-file answer or etcd has no TTL.
        s.ttl_s = ttl.filter(|t| *t != Duration::MAX).map(|t| t.as_secs());
        s.resolutions += 1;
        self.count_resolution(true);
    }

    /// Records a failed or empty resolution: nothing changes in the pool.
    pub fn discovery_failed(&self, source: &str, error: String) {
        tracing::warn!(pool = %self.name, %source, %error, "discovery failed");
        let mut status = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let s = status.get_or_insert_with(Default::default);
        s.source = source.to_string();
        s.up = false;
        s.last_error = Some(error);
        s.resolutions += 1;
        self.count_resolution(false);
    }

    fn count_resolution(&self, ok: bool) {
        let pool = self.name.to_string();
        self.metrics
            .discovery_resolutions
            .get_or_create(&crate::metrics::PoolResultLabels {
                pool: pool.clone(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
        self.metrics
            .discovery_up
            .get_or_create(&crate::metrics::PoolLabels { pool })
            .set(i64::from(ok));
    }

    /// What discovery last did, if the pool has discovery.
    pub fn discovery_status(&self) -> Option<crate::discovery::DiscoveryStatus> {
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds a backend unless one with its address is already there.
    fn add(self: &Arc<Self>, b: Arc<Backend>) -> bool {
        self.add_ramping(b, true)
    }

    /// Adds a backend unless one with its address is already there; it ramps up
    /// over `slow_start` if `ramp`.
    fn add_ramping(self: &Arc<Self>, b: Arc<Backend>, ramp: bool) -> bool {
        if ramp && self.settings().slow_start.is_some() {
            b.begin_ramp(self.now_ms());
        }
        {
            let mut list = self.write();
            if list.iter().any(|x| x.addr() == b.addr()) {
                return false;
            }
            let mut next: Vec<Arc<Backend>> = list.as_ref().clone();
            next.push(Arc::clone(&b));
            *list = Arc::new(next);
        }
        self.start_checks(&b);
        true
    }

    /// Stops health checks and drains.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The pool's current settings (timeouts, socket options...).
    pub fn settings(&self) -> Arc<model::Pool> {
        Arc::clone(&self.generation().settings)
    }

    fn generation(&self) -> Arc<Generation> {
        Arc::clone(&self.generation.read().unwrap_or_else(|p| p.into_inner()))
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
        let generation = self.generation();
        let settings = &generation.settings;
        let limit = settings.upstream.max_connections_per_backend;
        let under_limit = |b: &Backend| limit.is_none_or(|m| b.active() < m);
        let untried = |b: &Backend| !tried.contains(&b.addr());
        let candidates: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|b| b.is_available(now) && untried(b) && under_limit(b))
            .collect();
        let slow_start = settings.slow_start.map_or(0, |d| d.as_millis() as u64);
        if let Some(b) = generation
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
        let list = self.write();
        if let Some(b) = list.iter().find(|b| b.addr() == addr) {
            b.set_api_managed();
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
        drop(list);
        let b = Arc::new(Backend::new(addr, weight.unwrap_or(1)));
        b.set_api_managed();
        if !self.add(b) {
            // Registered by someone else between the look and the add.
            return Registered::Updated;
        }
        tracing::info!(pool = %self.name, backend.addr = %addr, "backend registered");
        Registered::Created
    }

    /// Stops new connections to a backend at once. Its open connections go on until
    /// `timeout` (default: the pool's `drain.timeout`); then they are closed, spread
    /// over `drain.close_spread`, with RST or FIN per `drain.on_timeout`, cause
    /// `backend_drained`. With `remove`, the backend leaves the pool once drained.
    /// Returns the deadline. The backend is then the admin API's to manage: a reload
    /// does not undo the drain.
    pub fn drain(
        self: &Arc<Self>,
        addr: SocketAddr,
        timeout: Option<Duration>,
        remove: bool,
    ) -> Result<Duration, UnknownBackend> {
        let b = self.backend(addr).ok_or(UnknownBackend(addr))?;
        b.set_api_managed();
        Ok(self.start_drain(b, timeout, remove))
    }

    fn start_drain(
        self: &Arc<Self>,
        b: Arc<Backend>,
        timeout: Option<Duration>,
        remove: bool,
    ) -> Duration {
        self.metrics
            .drains_started
            .get_or_create(&crate::metrics::PoolLabels {
                pool: self.name.to_string(),
            })
            .inc();
        let addr = b.addr();
        let timeout = timeout.unwrap_or(self.settings().drain.timeout);
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
        timeout
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
        self.metrics.forget_backend(&self.name, addr);
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
        match self.settings().drain.on_timeout {
            DrainClose::Reset => CloseHow::Reset,
            DrainClose::Close => CloseHow::Fin,
        }
    }

    /// Traffic saw a connect failure or a reset from `b`. Enough in a row eject it for
    /// a back-off that doubles while it keeps failing.
    pub(crate) fn report_failure(&self, b: &Backend, cause: Cause) {
        self.metrics.upstream_failure(&self.name, b.addr(), cause);
        let now = self.now_ms();
        let n = b.record_failure(cause, now);
        let settings = self.settings();
        let p = settings.passive;
        if p.consecutive_failures == 0 || n < p.consecutive_failures || b.is_ejected(now) {
            return;
        }
        let k = b.ejections().min(16);
        let length = p.ejection.saturating_mul(1 << k).min(p.max_ejection);
        let count = b.eject(now + length.as_millis() as u64);
        if settings.health.is_some() {
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
        if self.settings().on_marked_down == OnMarkedDown::Reset {
            b.abort_http(Cause::BackendMarkedDown);
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
        let settings = self.settings();
        let stop = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hc) = &settings.health {
            tokio::spawn(crate::health::run(
                Arc::clone(self),
                Arc::clone(b),
                hc.clone(),
                stop.clone(),
            ));
        }
        let up = settings.upstream;
        if up.preconnect > 0 {
            tokio::spawn(preconnect::keep(
                Arc::clone(self),
                Arc::clone(b),
                up.preconnect,
                up.idle_timeout,
                stop,
            ));
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Vec<Arc<Backend>>>> {
        self.backends.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
