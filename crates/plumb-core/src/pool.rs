//! A pool: a named set of backends, how to choose among them, and how to reach them.
//!
//! The backend set lives behind a lock holding an `Arc` of the current list, so a pick
//! copies nothing and a later change (register, drain, discovery) swaps the list
//! without disturbing connections already made.

mod backend;
mod balance;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use plumb_config::model;

pub use backend::{ActiveGuard, Backend, BackendState};
pub use balance::Balancer;

/// A pool at run time.
#[derive(Debug)]
pub struct Pool {
    name: Arc<str>,
    settings: model::Pool,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balancer: Balancer,
}

impl Pool {
    /// Builds a pool from its validated config.
    pub fn new(cfg: &model::Pool) -> Pool {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.addr, b.weight)))
            .collect();
        Pool {
            name: Arc::from(cfg.name.as_str()),
            settings: cfg.clone(),
            backends: RwLock::new(Arc::new(backends)),
            balancer: Balancer::new(cfg.balance),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The pool's settings (timeouts, socket options...).
    pub fn settings(&self) -> &model::Pool {
        &self.settings
    }

    /// The current backends.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        match self.backends.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Chooses a backend that is up and not in `tried`, and counts the caller as one of
    /// its active connections until the guard is dropped. `None`: nothing left to try.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<ActiveGuard> {
        let backends = self.backends();
        let chosen = self.balancer.pick(&backends, tried)?;
        Some(ActiveGuard::new(chosen))
    }
}
