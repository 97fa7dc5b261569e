//! The server: pools, listeners and connection tasks of one config, run until a
//! shutdown future resolves, then drained within the grace period.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use plumb_config::model::{self, Config};

use crate::accesslog::AccessLog;
use crate::cause::Cause;
use crate::conntable::{CloseHow, CloseOrder, ConnTable};
use crate::listener::{accept_loop, BoundListener, ListenerCtx, ListenerStats};
use crate::pool::Pool;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) started: tokio::time::Instant,
    pub(crate) conns: Arc<ConnTable>,
    pub(crate) access_log: AccessLog,
    pub(crate) tasks: TaskTracker,
}

/// A configured load balancer, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    pools: HashMap<String, Arc<Pool>>,
    stats: HashMap<String, Arc<ListenerStats>>,
    started: tokio::time::Instant,
}

/// How long connections still open after the grace period get to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Server {
    /// Builds pools and opens the access log. Binds nothing.
    pub fn new(config: &Config, access_log: AccessLog) -> Server {
        let conns = Arc::new(ConnTable::default());
        let pools = config
            .pools
            .iter()
            .map(|p| (p.name.clone(), Pool::new(p, Arc::clone(&conns))))
            .collect();
        let stats = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), Arc::new(ListenerStats::default())))
            .collect();
        Server {
            config: config.clone(),
            shared: Arc::new(Shared {
                started: tokio::time::Instant::now(),
                conns,
                access_log,
                tasks: TaskTracker::new(),
            }),
            pools,
            stats,
            started: tokio::time::Instant::now(),
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
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool, in config order.
    pub fn pools(&self) -> Vec<&Arc<Pool>> {
        self.config
            .pools
            .iter()
            .filter_map(|p| self.pools.get(&p.name))
            .collect()
    }

    /// The config the server was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How long ago the server was built.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits (up to `limit`) until every access-log line queued so far is written.
    pub async fn flush_access_log(&self, limit: Duration) {
        self.shared.access_log.flush(limit).await;
    }

    /// A listener's counters by name.
    pub fn listener_stats(&self, name: &str) -> Option<&Arc<ListenerStats>> {
        self.stats.get(name)
    }

    /// Accepts on `bound` until `shutdown` resolves; then stops accepting, lets open
    /// connections finish for `runtime.shutdown_grace`, closes the rest with FIN
    /// (cause `shutdown`), and returns.
    pub async fn run(
        &self,
        bound: Vec<BoundListener>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let stop = CancellationToken::new();
        for pool in self.pools.values() {
            pool.start();
        }
        for b in bound {
            let Some(settings) = self.config.listeners.iter().find(|l| l.name == b.name) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no listener named {:?} in the config", b.name),
                ));
            };
            let Some(pool) = self.pools.get(&settings.pool) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no pool named {:?} in the config", settings.pool),
                ));
            };
            let ctx = Arc::new(ListenerCtx {
                name: Arc::from(settings.name.as_str()),
                settings: settings.clone(),
                pool: Arc::clone(pool),
                shared: Arc::clone(&self.shared),
                stats: Arc::clone(&self.stats[&settings.name]),
                limit: settings
                    .max_connections
                    .map(|n| Arc::new(Semaphore::new(n))),
            });
            for socket in b.sockets {
                let listener = TcpListener::from_std(socket)?;
                tracing::info!(listener = %ctx.name, addr = %listener.local_addr()?, pool = %ctx.pool.name(), "listening");
                self.shared
                    .tasks
                    .spawn(accept_loop(Arc::clone(&ctx), listener, stop.clone()));
            }
        }
        shutdown.await;
        let grace = self.config.runtime.shutdown_grace;
        tracing::info!(
            open = self.shared.conns.len(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: accepting no new connections"
        );
        stop.cancel();
        for pool in self.pools.values() {
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
}
