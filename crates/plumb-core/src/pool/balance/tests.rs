use std::collections::HashMap;

use super::*;
use crate::pool::{ActiveGuard, BackendState};

fn pool(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Arc::new(Backend::new(
                SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                *w,
            ))
        })
        .collect()
}

fn port(b: &Backend) -> u16 {
    b.addr().port() - 9000
}

/// Picks `n` times, releasing each connection at once; returns picks per backend index.
fn counts(kind: Balance, weights: &[u32], n: usize) -> Vec<usize> {
    let backends = pool(weights);
    let bal = Balancer::new(kind);
    let mut out = vec![0; weights.len()];
    for _ in 0..n {
        let b = bal.pick(&backends, &[]).unwrap();
        out[port(&b) as usize] += 1;
    }
    out
}

#[test]
fn round_robin_honours_weights_exactly_and_interleaves() {
    assert_eq!(
        counts(Balance::RoundRobin, &[1, 1, 1], 300),
        vec![100, 100, 100]
    );
    assert_eq!(
        counts(Balance::RoundRobin, &[5, 1, 1], 700),
        vec![500, 100, 100]
    );
    let backends = pool(&[5, 1, 1]);
    let bal = Balancer::new(Balance::RoundRobin);
    let seq: Vec<u16> = (0..7)
        .map(|_| port(&bal.pick(&backends, &[]).unwrap()))
        .collect();
    // Smooth: the heavy backend is never picked more than twice in a row here.
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn least_conn_fills_the_emptiest_backend_by_weight() {
    let backends = pool(&[1, 1, 2]);
    let bal = Balancer::new(Balance::LeastConn);
    // Hold every connection open: load must spread 1:1:2.
    let held: Vec<ActiveGuard> = (0..400)
        .map(|_| ActiveGuard::new(bal.pick(&backends, &[]).unwrap()))
        .collect();
    let active: Vec<usize> = backends.iter().map(|b| b.active()).collect();
    assert_eq!(active, vec![100, 100, 200]);
    drop(held);
    assert!(backends.iter().all(|b| b.active() == 0));
}

#[test]
fn least_conn_rotates_ties() {
    // With nothing held every backend ties; rotation spreads picks evenly.
    assert_eq!(
        counts(Balance::LeastConn, &[1, 1, 1], 300),
        vec![100, 100, 100]
    );
}

#[test]
fn random_two_follows_weights_and_balances_load() {
    // Held open, weights 3:1: the draw is weighted and the comparison is per unit of
    // weight, so load settles at 3:1.
    let backends = pool(&[3, 1]);
    let bal = Balancer::new(Balance::RandomTwo);
    let held: Vec<ActiveGuard> = (0..4000)
        .map(|_| ActiveGuard::new(bal.pick(&backends, &[]).unwrap()))
        .collect();
    let heavy = backends[0].active();
    assert!(
        (2950..=3050).contains(&heavy),
        "weight-3 backend holds {heavy} of 4000"
    );
    drop(held);
    // Equal weights, held open: the less loaded of two always wins, so the spread
    // stays tight (pure random would differ by about a hundred here).
    let backends = pool(&[1, 1, 1, 1]);
    let held: Vec<ActiveGuard> = (0..4000)
        .map(|_| ActiveGuard::new(bal.pick(&backends, &[]).unwrap()))
        .collect();
    let active: Vec<usize> = backends.iter().map(|b| b.active()).collect();
    let (min, max) = (active.iter().min().unwrap(), active.iter().max().unwrap());
    assert!(
        max - min <= 20,
        "power of two choices should stay even: {active:?}"
    );
    drop(held);
}

#[test]
fn tried_and_unavailable_backends_are_skipped() {
    for kind in [Balance::RoundRobin, Balance::LeastConn, Balance::RandomTwo] {
        let backends = pool(&[1, 1, 1]);
        let bal = Balancer::new(kind);
        backends[1].set_state(BackendState::Draining);
        let tried = [backends[0].addr()];
        let mut seen = HashMap::new();
        for _ in 0..50 {
            let b = bal.pick(&backends, &tried).unwrap();
            *seen.entry(port(&b)).or_insert(0) += 1;
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![2],
            "{kind:?}"
        );
        let all = [backends[0].addr(), backends[2].addr()];
        assert!(bal.pick(&backends, &all).is_none(), "{kind:?}");
    }
}

#[test]
fn empty_pool_picks_nothing() {
    for kind in [Balance::RoundRobin, Balance::LeastConn, Balance::RandomTwo] {
        assert!(Balancer::new(kind).pick(&[], &[]).is_none());
    }
}
