//! Choosing a backend among candidates the pool has already filtered: smooth weighted
//! round robin, weighted least connections, and weighted power of two random choices.
//! Pure logic over the candidate list; no I/O. Weights come from a function so the
//! pool can ramp them (slow start).

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

    /// Chooses among `candidates`; `weight` gives each one's current weight.
    pub fn pick(
        &self,
        candidates: &[&Arc<Backend>],
        weight: impl Fn(&Backend) -> u64,
    ) -> Option<Arc<Backend>> {
        match self.kind {
            Balance::RoundRobin => self.round_robin(candidates, weight),
            Balance::LeastConn => self.least_conn(candidates, weight),
            Balance::RandomTwo => random_two(candidates, weight),
        }
    }

    /// Smooth weighted round robin (as in nginx): each pick adds every candidate's
    /// weight to its running total, takes the largest, and subtracts the sum of
    /// weights from the winner. Weights 5,1,1 give a a b a c a a, not a a a a a b c.
    fn round_robin(
        &self,
        candidates: &[&Arc<Backend>],
        weight: impl Fn(&Backend) -> u64,
    ) -> Option<Arc<Backend>> {
        let _lock = self.rr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: i64 = 0;
        let mut best: Option<(&Arc<Backend>, i64)> = None;
        for b in candidates {
            let w = i64::try_from(weight(b)).unwrap_or(i64::MAX / 1024);
            total += w;
            let cur = b.current.fetch_add(w, Ordering::Relaxed) + w;
            if best.is_none_or(|(_, c)| cur > c) {
                best = Some((b, cur));
            }
        }
        let (best, _) = best?;
        best.current.fetch_sub(total, Ordering::Relaxed);
        Some(Arc::clone(best))
    }

    /// Fewest active connections per unit of weight; ties go to the next backend after
    /// the previous winner.
    fn least_conn(
        &self,
        candidates: &[&Arc<Backend>],
        weight: impl Fn(&Backend) -> u64,
    ) -> Option<Arc<Backend>> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<&Arc<Backend>> = None;
        for i in 0..n {
            let b = candidates[(start + i) % n];
            if best.is_none_or(|x| less_loaded(b, x, &weight)) {
                best = Some(b);
            }
        }
        best.cloned()
    }
}

/// Whether `a` carries less load per unit of weight than `b`, counting the connection
/// about to be placed: (active_a + 1) / w_a < (active_b + 1) / w_b.
fn less_loaded(a: &Backend, b: &Backend, weight: &impl Fn(&Backend) -> u64) -> bool {
    let la = u128::from(a.active() as u64 + 1) * u128::from(weight(b));
    let lb = u128::from(b.active() as u64 + 1) * u128::from(weight(a));
    la < lb
}

/// Power of two choices: draw two distinct backends with probability proportional to
/// weight, keep the less loaded. Nearly as even as least_conn, with no shared cursor
/// and no herd onto one "least loaded" backend when many pickers look at once.
fn random_two(
    candidates: &[&Arc<Backend>],
    weight: impl Fn(&Backend) -> u64,
) -> Option<Arc<Backend>> {
    let first = weighted_draw(candidates, None, &weight)?;
    let Some(second) = weighted_draw(candidates, Some(first), &weight) else {
        return Some(Arc::clone(candidates[first]));
    };
    let (a, b) = (candidates[first], candidates[second]);
    Some(Arc::clone(if less_loaded(b, a, &weight) { b } else { a }))
}

/// Index of a candidate drawn with probability proportional to weight, skipping `skip`.
fn weighted_draw(
    candidates: &[&Arc<Backend>],
    skip: Option<usize>,
    weight: &impl Fn(&Backend) -> u64,
) -> Option<usize> {
    let total: u64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, b)| weight(b))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    for (i, b) in candidates.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let w = weight(b);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

#[cfg(test)]
mod tests;
