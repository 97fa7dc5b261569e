//! One backend and the live counters balancing reads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new connections.
    Healthy,
    /// Takes none; open connections run until the drain deadline.
    Draining,
    /// Failing its checks; takes none.
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

    fn from_u8(v: u8) -> BackendState {
        match v {
            1 => BackendState::Draining,
            2 => BackendState::Unhealthy,
            _ => BackendState::Healthy,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            BackendState::Healthy => 0,
            BackendState::Draining => 1,
            BackendState::Unhealthy => 2,
        }
    }
}

/// A backend of a pool.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    weight: AtomicU32,
    state: AtomicU8,
    /// Connections open or being opened to this backend.
    active: AtomicUsize,
    /// Connections handed to this backend over its life.
    picked: AtomicU64,
    /// Smooth weighted round robin's running weight; only touched under the
    /// balancer's lock.
    pub(super) current: AtomicI64,
}

impl Backend {
    /// A healthy backend with no connections.
    pub fn new(addr: SocketAddr, weight: u32) -> Backend {
        Backend {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            state: AtomicU8::new(BackendState::Healthy.to_u8()),
            active: AtomicUsize::new(0),
            picked: AtomicU64::new(0),
            current: AtomicI64::new(0),
        }
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relative share of new connections.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Connections open or being opened now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections handed to this backend so far.
    pub fn picked(&self) -> u64 {
        self.picked.load(Ordering::Relaxed)
    }

    /// Current state.
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Changes the state.
    pub fn set_state(&self, s: BackendState) {
        self.state.store(s.to_u8(), Ordering::Relaxed);
    }

    /// Whether balancing may choose this backend.
    pub fn is_available(&self) -> bool {
        self.state() == BackendState::Healthy
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
