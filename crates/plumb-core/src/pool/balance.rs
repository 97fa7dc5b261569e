//! Choosing a backend: smooth weighted round robin, weighted least connections, and
//! weighted power of two random choices. Pure logic over the backend list; no I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use plumb_config::model::Balance;

use super::Backend;

/// A pool's balancing algorithm and its state.
#[derive(Debug)]
pub struct Balancer {
    kind: Balance,
    /// Serialises smooth round robin's read-modify-write of the running weights.
    rr: Mutex<()>,
    /// Where least_conn starts scanning, so that ties rotate instead of always
    /// landing on the first backend.
    cursor: AtomicUsize,
}

impl Balancer {
    /// A balancer of the given kind.
    pub fn new(kind: Balance) -> Balancer {
        Balancer {
            kind,
            rr: Mutex::new(()),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Chooses among the available backends not in `tried`.
    pub fn pick(&self, backends: &[Arc<Backend>], tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let eligible = |b: &&Arc<Backend>| b.is_available() && !tried.contains(&b.addr());
        match self.kind {
            Balance::RoundRobin => self.round_robin(backends, eligible),
            Balance::LeastConn => self.least_conn(backends, eligible),
            Balance::RandomTwo => random_two(backends, eligible),
        }
    }

    /// Smooth weighted round robin (as in nginx): each pick adds every candidate's
    /// weight to its running total, takes the largest, and subtracts the sum of
    /// weights from the winner. Weights 5,1,1 give a a b a c a a, not a a a a a b c.
    fn round_robin(
        &self,
        backends: &[Arc<Backend>],
        eligible: impl Fn(&&Arc<Backend>) -> bool,
    ) -> Option<Arc<Backend>> {
        let _lock = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: i64 = 0;
        let mut best: Option<&Arc<Backend>> = None;
        for b in backends.iter().filter(&eligible) {
            let w = i64::from(b.weight());
            total += w;
            let cur = b.current.fetch_add(w, Ordering::Relaxed) + w;
            if best.is_none_or(|x| cur > x.current.load(Ordering::Relaxed)) {
                best = Some(b);
            }
        }
        let best = best?;
        best.current.fetch_sub(total, Ordering::Relaxed);
        Some(Arc::clone(best))
    }

    /// Fewest active connections per unit of weight; ties go to the next backend after
    /// the previous winner.
    fn least_conn(
        &self,
        backends: &[Arc<Backend>],
        eligible: impl Fn(&&Arc<Backend>) -> bool,
    ) -> Option<Arc<Backend>> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = &backends[(start + i) % n];
            if !eligible(&b) {
                continue;
            }
            if best.is_none_or(|x| less_loaded(b, x)) {
                best = Some(b);
            }
        }
        best.cloned()
    }
}

/// Whether `a` carries less load per unit of weight than `b`, counting the connection
/// about to be placed: (active_a + 1) / w_a < (active_b + 1) / w_b.
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let la = (a.active() as u64 + 1) * u64::from(b.weight());
    let lb = (b.active() as u64 + 1) * u64::from(a.weight());
    la < lb
}

/// Power of two choices: draw two distinct backends with probability proportional to
/// weight, keep the less loaded. Nearly as even as least_conn, with no shared cursor
/// and no herd onto one "least loaded" backend when many pickers look at once.
fn random_two(
    backends: &[Arc<Backend>],
    eligible: impl Fn(&&Arc<Backend>) -> bool,
) -> Option<Arc<Backend>> {
    let candidates: Vec<&Arc<Backend>> = backends.iter().filter(eligible).collect();
    let first = weighted_draw(&candidates, None)?;
    let Some(second) = weighted_draw(&candidates, Some(first)) else {
        return Some(Arc::clone(candidates[first]));
    };
    let (a, b) = (candidates[first], candidates[second]);
    Some(Arc::clone(if less_loaded(b, a) { b } else { a }))
}

/// Index of a candidate drawn with probability proportional to weight, skipping `skip`.
fn weighted_draw(candidates: &[&Arc<Backend>], skip: Option<usize>) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, b)| u64::from(b.weight()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    for (i, b) in candidates.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let w = u64::from(b.weight());
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

#[cfg(test)]
mod tests;
