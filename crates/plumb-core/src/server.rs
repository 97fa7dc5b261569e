//! The server: pools, listeners and connection tasks of one config, run until a
//! shutdown future resolves, then drained within the grace period. A reload applies a
//! new config in place: open connections are never cut by it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use plumb_config::model::{self, Config};

use crate::accesslog::AccessLog;
use crate::cause::Cause;
use crate::conntable::{CloseHow, CloseOrder, ConnTable};
use crate::listener::{self, accept_loop, BoundListener, ListenerCtx, ListenerSlot, ListenerStats};
use crate::lock;
use crate::pool::Pool;
use crate::workers::Workers;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) started: tokio::time::Instant,
    pub(crate) conns: Arc<ConnTable>,
    pub(crate) access_log: AccessLog,
    pub(crate) tasks: TaskTracker,
    /// Cancelled when shutdown begins: HTTP connections finish what is in flight and
    /// close (GOAWAY, `Connection: close`).
    pub(crate) draining: CancellationToken,
    /// Set with `draining`, before the table's nudge: what a connection's task looks
    /// at on every wake-up (the token's own check takes its lock, shared by every
    /// connection).
    pub(crate) drain_started: std::sync::atomic::AtomicBool,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) recent: crate::recent::RecentErrors,
}

impl Shared {
    /// Whether shutdown has begun (see `drain_started`).
    pub(crate) fn drain_started(&self) -> bool {
        self.drain_started
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A configured load balancer, ready to run.
#[derive(Debug)]
pub struct Server {
    config: RwLock<Arc<Config>>,
    shared: Arc<Shared>,
    pools: RwLock<HashMap<String, Arc<Pool>>>,
    stats: RwLock<HashMap<String, Arc<ListenerStats>>>,
    /// Listeners accepting now (filled by `run`, changed by `reload`).
    running: Mutex<HashMap<String, Running>>,
    /// Cancelled at shutdown: every accept loop stops.
    stop: CancellationToken,
    /// Serialises reloads.
    reloading: Mutex<()>,
    /// TLS of the listeners that terminate it, by listener name.
    tls: RwLock<HashMap<String, Arc<crate::tls::Tls>>>,
    /// The worker threads beside the runtime `run` is called on (set while it runs).
    workers: Mutex<Option<Arc<Workers>>>,
}

#[derive(Debug)]
struct Running {
    settings: model::Listener,
    slot: Arc<ListenerSlot>,
    stop: CancellationToken,
    /// A duplicate of each listening socket (the accept loops own the originals),
    /// to hand to a successor process.
    handover: Vec<std::net::TcpListener>,
}

/// What a reload did, in words, for the log and the admin API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Each change applied.
    pub changes: Vec<String>,
    /// Changes in the file that only a restart applies.
    pub needs_restart: Vec<String>,
}

/// A reload that changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A new or moved listener address could not be bound.
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    /// A TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The server is not running.
    #[error("the server is not running")]
    NotRunning,
}

/// How long connections still open after the grace period get to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Server {
    /// Builds pools and opens the access log. Binds nothing.
    pub fn new(config: &Config, access_log: AccessLog) -> Server {
        let conns = Arc::new(ConnTable::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let pools = config
            .pools
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Pool::new(p, Arc::clone(&conns), Arc::clone(&metrics)),
                )
            })
            .collect();
        let stats = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), Arc::new(ListenerStats::default())))
            .collect();
        Server {
            config: RwLock::new(Arc::new(config.clone())),
            shared: Arc::new(Shared {
                started: tokio::time::Instant::now(),
                conns,
                access_log,
                tasks: TaskTracker::new(),
                draining: CancellationToken::new(),
                drain_started: std::sync::atomic::AtomicBool::new(false),
                metrics,
                recent: crate::recent::RecentErrors::default(),
            }),
            pools: RwLock::new(pools),
            stats: RwLock::new(stats),
            running: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            reloading: Mutex::new(()),
            tls: RwLock::new(HashMap::new()),
            workers: Mutex::new(None),
        }
    }

    /// Opens the access log a config asks for.
    pub fn open_access_log(config: &Config) -> io::Result<AccessLog> {
        match &config.runtime.access_log {
            model::AccessLog::Off => Ok(AccessLog::off()),
            model::AccessLog::Stderr => Ok(AccessLog::stderr()),
            model::AccessLog::File(path) => AccessLog::file(path),
        }
    }

    /// The connection table.
    pub fn conns(&self) -> &Arc<ConnTable> {
        &self.shared.conns
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        read(&self.pools).get(name).cloned()
    }

    /// Every pool, in config order.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = read(&self.pools);
        self.config()
            .pools
            .iter()
            .filter_map(|p| pools.get(&p.name).cloned())
            .collect()
    }

    /// The config in force (the last one loaded).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&read(&self.config))
    }

    /// How long ago the server was built.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Waits (up to `limit`) until every access-log line queued so far is written.
    pub async fn flush_access_log(&self, limit: Duration) {
        self.shared.access_log.flush(limit).await;
    }

    /// The metrics in Prometheus text form, with state gauges brought up to date.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::{BackendLabels, BackendStateLabels, ListenerLabels, PoolLabels};
        let m = &self.shared.metrics;
        let config = self.config();
        let conns = self.shared.conns.snapshot();
        for l in &config.listeners {
            let open = conns.iter().filter(|c| c.listener() == l.name).count();
            m.connections_active
                .get_or_create(&ListenerLabels {
                    listener: l.name.clone(),
                })
                .set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        m.backend_up.clear();
        m.backend_state.clear();
        for pool in self.pools() {
            let now = pool.now_ms();
            for b in pool.backends().iter() {
                let state = b.state(now);
                let labels = BackendLabels {
                    pool: pool.name().to_string(),
                    backend: b.addr().to_string(),
                };
                m.backend_up
                    .get_or_create(&labels)
                    .set(i64::from(b.is_available(now)));
                for s in [
                    crate::pool::BackendState::Healthy,
                    crate::pool::BackendState::Unhealthy,
                    crate::pool::BackendState::Draining,
                ] {
                    m.backend_state
                        .get_or_create(&BackendStateLabels {
                            pool: labels.pool.clone(),
                            backend: labels.backend.clone(),
                            state: s.as_str().to_string(),
                        })
                        .set(i64::from(s == state));
                }
            }
            m.idle_connections
                .get_or_create(&PoolLabels {
                    pool: pool.name().to_string(),
                })
                .set(i64::try_from(pool.idle_connections()).unwrap_or(i64::MAX));
        }
        let dropped = self.shared.access_log.dropped();
        m.access_log_dropped
            .inc_by(dropped.saturating_sub(m.access_log_dropped.get()));
        m.encode()
    }

    /// The last failures, newest first.
    pub fn recent_errors(&self) -> Vec<crate::recent::RecentError> {
        self.shared.recent.snapshot()
    }

    /// A listener's counters by name.
    pub fn listener_stats(&self, name: &str) -> Option<Arc<ListenerStats>> {
        read(&self.stats).get(name).cloned()
    }

    /// A duplicate of every socket the running listeners accept on, for a
    /// successor process to accept on the same sockets (`plumb serve --take-over`).
    pub fn listening_sockets(&self) -> io::Result<Vec<std::net::TcpListener>> {
        let running = lock(&self.running);
        let mut out = Vec::new();
        for r in running.values() {
            for s in &r.handover {
                out.push(s.try_clone()?);
            }
        }
        Ok(out)
    }

    /// Accepts on `bound` until `shutdown` resolves; then stops accepting, lets open
    /// connections finish for `runtime.shutdown_grace`, closes the rest with FIN
    /// (cause `shutdown`; RST where plumb holds unwritten bytes), and returns.
    pub async fn run(
        &self,
        bound: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.run_notifying(bound, shutdown, || {}).await
    }

    /// [`Server::run`], calling `started` once every listener accepts (after TLS
    /// files loaded and discovery's first answer, or its bounded wait): the moment
    /// a successor process tells its predecessor to stop accepting.
    pub async fn run_notifying(
        &self,
        bound: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
        started: impl FnOnce(),
    ) -> io::Result<()> {
        let config = self.config();
        for l in &config.listeners {
            if let Some(files) = &l.tls {
                let tls = crate::tls::Tls::load(&l.name, files)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                tls.watch(self.stop.clone());
                write(&self.tls).insert(l.name.clone(), tls);
            }
        }
        // After a burst of connections closes, give its freed buffers back to the
        // kernel: once 500 or more have closed since the last trim and the open
        // count has fallen to half its peak, and again once connections stop
        // opening and closing (sampled every second; a trim during a burst's
        // close misses what closes after it). A steady load that reuses its
        // memory is left alone.
        {
            let conns = Arc::clone(&self.shared.conns);
            let stop = self.stop.clone();
            tokio::spawn(async move {
                let (mut peak, mut closed_at_trim, mut opened_before) = (0usize, 0u64, 0u64);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    let open = conns.len();
                    let opened = conns.opened_total();
                    let closed = opened.saturating_sub(open as u64);
                    let quiet = opened == opened_before && closed > closed_at_trim;
                    opened_before = opened;
                    peak = peak.max(open);
                    let burst_over =
                        closed >= closed_at_trim + TRIM_AFTER_CLOSED && open * 2 <= peak;
                    if burst_over || quiet {
                        let _ = tokio::task::spawn_blocking(plumb_sys::release_free_memory).await;
                        peak = open;
                        closed_at_trim = closed;
                    }
                }
            });
        }
        // The other workers run until this returns, however it returns.
        struct Stop<'a>(&'a Mutex<Option<Arc<Workers>>>);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                let workers = lock(self.0).take();
                drop(workers);
            }
        }
        *lock(&self.workers) = Some(Arc::new(Workers::start(crate::workers::count(&config))?));
        let _stop_workers = Stop(&self.workers);
        let mut first_answers = Vec::new();
        for pool in read(&self.pools).values() {
            first_answers.extend(pool.start());
        }
        // Pools fed by discovery get their first answer before clients come, within
        // a bound: a resolver that does not answer must not keep plumb from starting.
        let _ = tokio::time::timeout(FIRST_DISCOVERY_WAIT, async {
            for rx in first_answers {
                let _ = rx.await;
            }
        })
        .await;
        for b in bound {
            let Some(settings) = config.listeners.iter().find(|l| l.name == b.name) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no listener named {:?} in the config", b.name),
                ));
            };
            self.start_listener(settings, b.sockets)?;
        }
        started();
        shutdown.await;
        // The duplicates kept for a successor go now: with the accept loops' own
        // sockets closing below, a listener no process holds refuses at once.
        for r in lock(&self.running).values_mut() {
            r.handover.clear();
        }
        let grace = self.config().runtime.shutdown_grace;
        tracing::info!(
            open = self.shared.conns.len(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: accepting no new connections"
        );
        self.stop.cancel();
        self.shared.draining.cancel();
        self.shared
            .drain_started
            .store(true, std::sync::atomic::Ordering::Release);
        // Connections wait on no token (still waiting for a first byte, or served):
        // wake them to see it.
        self.shared.conns.nudge_all();
        for pool in read(&self.pools).values() {
            pool.stop();
        }
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            let n = self.shared.conns.close_all(CloseOrder {
                cause: Cause::Shutdown,
                how: CloseHow::Fin,
            });
            tracing::info!(closing = n, "grace period over: closing open connections");
            if tokio::time::timeout(CLOSE_WAIT, self.shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = self.shared.conns.len(),
                    "connections still open after closing; exiting anyway"
                );
            }
        }
        self.shared.access_log.flush(Duration::from_secs(2)).await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Applies a new config in place. New and moved listener addresses are bound
    /// first; if one cannot be, nothing changes. Then pools take their new settings and
    /// backend lists (backends the config dropped are drained and removed; backends
    /// the admin API changed keep that state), listeners start, stop accepting, or
    /// take new settings. Open connections are never cut by a reload: they finish on
    /// the settings they started with.
    pub fn reload(&self, new: &Config) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop.is_cancelled() {
            return Err(ReloadError::NotRunning);
        }
        let old = self.config();
        let mut summary = ReloadSummary::default();

        // 1. Bind what needs binding; any failure leaves everything as it was.
        let mut fresh_sockets: HashMap<String, Vec<std::net::TcpListener>> = HashMap::new();
        {
            let running = lock(&self.running);
            for l in &new.listeners {
                let rebind = match running.get(&l.name) {
                    None => true,
                    Some(r) => needs_rebind(&r.settings, l),
                };
                if rebind {
                    let per_addr = lock(&self.workers).as_ref().map_or(1, |w| w.len());
                    fresh_sockets.insert(l.name.clone(), listener::bind(l, per_addr)?.sockets);
                }
            }
        }

        // 1b. TLS: certificates of existing listeners are read again (a file that does
        // not load fails the reload before anything else changes); new ones loaded.
        let mut new_tls: HashMap<String, Arc<crate::tls::Tls>> = HashMap::new();
        let mut renewed = Vec::new();
        for l in &new.listeners {
            if let Some(files) = &l.tls {
                let existing = read(&self.tls).get(&l.name).cloned();
                match existing {
                    Some(tls) => {
                        let prepared = tls.prepare(files)?;
                        renewed.push((tls, prepared));
                    }
                    None => {
                        new_tls.insert(l.name.clone(), crate::tls::Tls::load(&l.name, files)?);
                    }
                }
            }
        }
        // Every certificate loaded: only now does any listener switch.
        for (tls, prepared) in renewed {
            tls.apply(prepared);
        }
        for (name, tls) in new_tls {
            tls.watch(self.stop.clone());
            write(&self.tls).insert(name.clone(), tls);
            summary
                .changes
                .push(format!("listener {name}: TLS certificate loaded"));
        }

        // 2. Pools.
        {
            let mut pools = write(&self.pools);
            for p in &new.pools {
                match pools.get(&p.name) {
                    Some(pool) => {
                        let c = pool.reconfigure(p);
                        if c.settings {
                            summary
                                .changes
                                .push(format!("pool {}: new settings", p.name));
                        }
                        for a in c.added {
                            summary
                                .changes
                                .push(format!("pool {}: added backend {a}", p.name));
                        }
                        for a in c.removed {
                            summary.changes.push(format!(
                                "pool {}: deregistering backend {a} (drain, then remove)",
                                p.name
                            ));
                        }
                        for a in c.reweighted {
                            summary
                                .changes
                                .push(format!("pool {}: new weight for backend {a}", p.name));
                        }
                        for a in c.kept_api_state {
                            summary.changes.push(format!(
                                "pool {}: backend {a} keeps the state the admin API gave it",
                                p.name
                            ));
                        }
                    }
                    None => {
                        let pool = Pool::new(
                            p,
                            Arc::clone(&self.shared.conns),
                            Arc::clone(&self.shared.metrics),
                        );
                        pool.start();
                        pools.insert(p.name.clone(), pool);
                        summary.changes.push(format!("pool {}: added", p.name));
                    }
                }
            }
            let gone: Vec<String> = pools
                .keys()
                .filter(|k| new.pool(k).is_none())
                .cloned()
                .collect();
            for name in gone {
                if let Some(pool) = pools.remove(&name) {
                    // Open connections keep their own handle on the pool.
                    pool.stop();
                    summary
                        .changes
                        .push(format!("pool {name}: removed (open connections finish)"));
                }
            }
        }

        // 3. Listeners.
        {
            let mut stats = write(&self.stats);
            for l in &new.listeners {
                stats.entry(l.name.clone()).or_default();
            }
        }
        let mut running = lock(&self.running);
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !new.listeners.iter().any(|l| &l.name == *k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                r.stop.cancel();
                summary.changes.push(format!(
                    "listener {name}: stopped accepting (open connections finish)"
                ));
            }
        }
        for l in &new.listeners {
            if let Some(sockets) = fresh_sockets.remove(&l.name) {
                if let Some(r) = running.remove(&l.name) {
                    r.stop.cancel();
                }
                drop(running);
                let started = self.start_listener(l, sockets);
                running = lock(&self.running);
                match started {
                    Ok(()) => summary.changes.push(format!(
                        "listener {}: listening on {}",
                        l.name,
                        join(&l.listen)
                    )),
                    Err(e) => summary
                        .changes
                        .push(format!("listener {}: cannot start: {e}", l.name)),
                }
            } else if let Some(r) = running.get_mut(&l.name) {
                if r.settings != *l {
                    let old_ctx = r.slot.current();
                    let limit = if r.settings.max_connections == l.max_connections {
                        old_ctx.limit.clone()
                    } else {
                        l.max_connections.map(|n| Arc::new(Semaphore::new(n)))
                    };
                    if let Some(ctx) = self.listener_ctx(l, limit) {
                        r.slot.replace(ctx);
                        r.settings = l.clone();
                        summary
                            .changes
                            .push(format!("listener {}: new settings", l.name));
                    }
                }
            }
        }
        drop(running);

        if old.runtime.workers != new.runtime.workers {
            summary.needs_restart.push("runtime.workers".to_string());
        }
        if old.runtime.access_log != new.runtime.access_log {
            summary.needs_restart.push("runtime.access_log".to_string());
        }
        if old.admin != new.admin {
            summary.needs_restart.push("admin".to_string());
        }
        if old.runtime.upgrade_socket != new.runtime.upgrade_socket {
            summary
                .needs_restart
                .push("runtime.upgrade_socket".to_string());
        }
        let mut kept = new.clone();
        // What only a restart applies stays as it is, so that `config()` tells the truth.
        kept.runtime.workers = old.runtime.workers;
        kept.runtime.access_log = old.runtime.access_log.clone();
        kept.admin = old.admin.clone();
        kept.runtime.upgrade_socket = old.runtime.upgrade_socket.clone();
        *write(&self.config) = Arc::new(kept);
        for c in &summary.changes {
            tracing::info!(change = %c, "reload");
        }
        for r in &summary.needs_restart {
            tracing::warn!(setting = %r, "reload: this change needs a restart");
        }
        Ok(summary)
    }

    fn listener_ctx(
        &self,
        settings: &model::Listener,
        limit: Option<Arc<Semaphore>>,
    ) -> Option<Arc<ListenerCtx>> {
        let pool = match &settings.pool {
            Some(name) => Some(self.pool(name)?),
            None => None,
        };
        let mut routes = Vec::new();
        for r in &settings.routes {
            routes.push((r.clone(), self.pool(&r.pool)?));
        }
        let stats = self.listener_stats(&settings.name)?;
        let tls = match &settings.tls {
            Some(_) => Some(read(&self.tls).get(&settings.name).cloned()?),
            None => None,
        };
        Some(Arc::new(ListenerCtx {
            name: Arc::from(settings.name.as_str()),
            settings: settings.clone(),
            pool,
            tls,
            routes,
            shared: Arc::clone(&self.shared),
            stats,
            limit,
            metrics: crate::metrics::ListenerMetrics::new(
                &self.shared.metrics,
                &settings.name,
                settings.protocol == plumb_config::model::Protocol::Http,
            ),
            rid_header: request_id_header(&settings.request_id_header),
        }))
    }

    fn start_listener(
        &self,
        settings: &model::Listener,
        sockets: Vec<std::net::TcpListener>,
    ) -> io::Result<()> {
        let limit = settings
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n)));
        let ctx = self.listener_ctx(settings, limit).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no pool named {:?} in the config", settings.pool),
            )
        })?;
        let workers = lock(&self.workers)
            .clone()
            .ok_or_else(|| io::Error::other("the server is not running"))?;
        let slot = ListenerSlot::new(ctx);
        let stop = self.stop.child_token();
        let mut handover = Vec::with_capacity(sockets.len());
        // The sockets come grouped by address, one per worker: each worker accepts
        // on one socket of every address, registered with that worker's I/O driver.
        // All are registered before any accepts, so a failure leaves no socket
        // in the address's group that nobody accepts on.
        let mut listeners = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            handover.push(socket.try_clone()?);
            // A reload's new sockets listen only now (see `listener::bind`).
            listener::listen(&socket, settings.backlog)?;
            let addr = socket.local_addr()?;
            listeners.push((addr, workers.within(i, || TcpListener::from_std(socket))?));
        }
        for (i, (addr, listener)) in listeners.into_iter().enumerate() {
            if i % workers.len() == 0 {
                tracing::info!(listener = %settings.name, addr = %addr, protocol = settings.protocol.as_str(), workers = workers.len(), "listening");
            }
            let accept = accept_loop(Arc::clone(&slot), listener, stop.clone());
            workers.spawn(&self.shared.tasks, i, accept);
        }
        lock(&self.running).insert(
            settings.name.clone(),
            Running {
                settings: settings.clone(),
                slot,
                stop,
                handover,
            },
        );
        Ok(())
    }
}

/// The request-id field's name. The default is a static name: copies of it (two
/// per request) count no shared reference, which every worker would write.
fn request_id_header(name: &str) -> hyper::header::HeaderName {
    const DEFAULT: &str = "plumb-request-id";
    if name.eq_ignore_ascii_case(DEFAULT) {
        return hyper::header::HeaderName::from_static(DEFAULT);
    }
    hyper::header::HeaderName::from_bytes(name.as_bytes())
        .unwrap_or(hyper::header::HeaderName::from_static(DEFAULT))
}

/// Whether a listener's sockets must be bound again: addresses, backlog or socket
/// options changed (accepted connections inherit their options from the listening
/// socket). The new sockets bind beside the old ones (`SO_REUSEPORT`) before the old
/// ones close. Port 0 means "any free port" and is not rebound for that alone.
fn needs_rebind(old: &model::Listener, new: &model::Listener) -> bool {
    old.listen != new.listen || old.backlog != new.backlog || old.tcp != new.tcp
}

/// Connections closed since the last trim that make freed memory worth handing back.
const TRIM_AFTER_CLOSED: u64 = 500;

/// How long [`Server::run`] waits for discovery's first answers before accepting.
const FIRST_DISCOVERY_WAIT: Duration = Duration::from_secs(5);

fn join(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
