//! Pool lifecycle logic with paused time: no sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn cfg(extra: &str) -> model::Pool {
    let text = format!(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]\n{extra}"
    );
    plumb_config::parse(&text).unwrap().pools.remove(0)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(start_paused = true)]
async fn passive_ejection_backs_off_and_panic_mode_still_tries() {
    let pool = Pool::new(&cfg("[pool.passive]\nconsecutive_failures = 2\nejection = \"10s\"\nmax_ejection = \"25s\"\n"), Arc::default(), Arc::default());
    let b1 = pool.backend(addr(9001)).unwrap();
    pool.report_failure(&b1, Cause::UpstreamConnectRefused);
    assert!(b1.is_available(pool.now_ms()), "one failure is not enough");
    pool.report_failure(&b1, Cause::UpstreamConnectRefused);
    assert!(!b1.is_available(pool.now_ms()), "two in a row eject");
    for _ in 0..30 {
        assert_ne!(pool.pick(&[]).unwrap().backend().addr(), addr(9001));
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(b1.is_available(pool.now_ms()), "back after 10s");
    // Failing again right away: the next ejection is twice as long, capped at 25 s.
    pool.report_failure(&b1, Cause::UpstreamReset);
    pool.report_failure(&b1, Cause::UpstreamReset);
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(!b1.is_available(pool.now_ms()), "second ejection lasts 20s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(b1.is_available(pool.now_ms()));
    pool.report_failure(&b1, Cause::UpstreamReset);
    pool.report_failure(&b1, Cause::UpstreamReset);
    tokio::time::advance(Duration::from_secs(24)).await;
    assert!(
        !b1.is_available(pool.now_ms()),
        "third would be 40s, capped at 25s"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(b1.is_available(pool.now_ms()));
    // A success after returning resets the back-off.
    pool.report_success(&b1);
    pool.report_failure(&b1, Cause::UpstreamReset);
    pool.report_failure(&b1, Cause::UpstreamReset);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        b1.is_available(pool.now_ms()),
        "back-off starts over at 10s"
    );

    // Everything ejected: the least recently failed backend is still tried.
    for port in [9001, 9002, 9003] {
        let b = pool.backend(addr(port)).unwrap();
        pool.report_failure(&b, Cause::UpstreamConnectRefused);
        pool.report_failure(&b, Cause::UpstreamConnectRefused);
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    let g = pool.pick(&[]).unwrap();
    assert_eq!(g.backend().addr(), addr(9001), "9001 failed longest ago");
    let g2 = pool.pick(&[addr(9001)]).unwrap();
    assert_eq!(g2.backend().addr(), addr(9002));
}

#[tokio::test(start_paused = true)]
async fn connection_limit_sends_clients_elsewhere_then_refuses() {
    let pool = Pool::new(
        &cfg("[pool.upstream]\nmax_connections_per_backend = 1\n"),
        Arc::default(),
        Arc::default(),
    );
    let held: Vec<ActiveGuard> = (0..3).map(|_| pool.pick(&[]).unwrap()).collect();
    let mut ports: Vec<u16> = held.iter().map(|g| g.backend().addr().port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![9001, 9002, 9003], "one each, then full");
    assert_eq!(
        pool.pick(&[]).unwrap_err(),
        PickError::BackendConnectionLimit
    );
    assert_eq!(
        PickError::BackendConnectionLimit.cause().as_str(),
        "backend_connection_limit"
    );
    drop(held);
    assert!(pool.pick(&[]).is_ok());
}

#[tokio::test(start_paused = true)]
async fn drain_stops_new_picks_at_once_and_deregistration_removes() {
    let pool = Pool::new(
        &cfg("[pool.drain]\ntimeout = \"5s\"\n"),
        Arc::default(),
        Arc::default(),
    );
    pool.drain(addr(9002), None, true).unwrap();
    for _ in 0..30 {
        assert_ne!(pool.pick(&[]).unwrap().backend().addr(), addr(9002));
    }
    assert_eq!(
        pool.backend(addr(9002)).unwrap().state(pool.now_ms()),
        BackendState::Draining
    );
    // No connections were open: it leaves as soon as the drain task runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pool.backend(addr(9002)).is_none());
    assert_eq!(
        pool.drain(addr(9002), None, true),
        Err(UnknownBackend(addr(9002)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_drained_backend_holding_connections_waits_for_the_deadline() {
    let pool = Pool::new(
        &cfg("[pool.drain]\ntimeout = \"5s\"\n"),
        Arc::default(),
        Arc::default(),
    );
    let held = pool.pick(&[addr(9002), addr(9003)]).unwrap();
    assert_eq!(held.backend().addr(), addr(9001));
    pool.drain(addr(9001), None, true).unwrap();
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert!(
        pool.backend(addr(9001)).is_some(),
        "still draining before the deadline"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        pool.backend(addr(9001)).is_none(),
        "gone once its last connection ended"
    );
}

#[tokio::test(start_paused = true)]
async fn register_adds_updates_and_restores() {
    let pool = Pool::new(
        &cfg("slow_start = \"10s\"\n"),
        Arc::default(),
        Arc::default(),
    );
    assert_eq!(pool.register(addr(9004), Some(4)), Registered::Created);
    let b4 = pool.backend(addr(9004)).unwrap();
    assert_eq!(b4.weight(), 4);
    assert_eq!(
        b4.effective_weight(pool.now_ms(), 10_000),
        40,
        "new backends ramp up"
    );
    assert_eq!(pool.register(addr(9004), Some(2)), Registered::Updated);
    assert_eq!(b4.weight(), 2);
    pool.drain(addr(9004), Some(Duration::from_secs(60)), true)
        .unwrap();
    assert_eq!(pool.register(addr(9004), None), Registered::Restored);
    assert!(b4.is_available(pool.now_ms()));
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        pool.backend(addr(9004)).is_some(),
        "the cancelled drain removed nothing"
    );
}

#[test]
fn an_abort_shows_in_the_count_a_request_took_with_its_token() {
    let b = Backend::new(addr(9001), 1);
    let before = b.abort_ticket();
    assert!(!b.aborted_since(before.count), "nothing aborted yet");
    b.abort_http(Cause::BackendMarkedDown);
    assert!(
        before.token.is_cancelled(),
        "the token of requests in flight is cancelled"
    );
    assert!(b.aborted_since(before.count), "and their count is behind");
    assert_eq!(b.abort_cause(), Cause::BackendMarkedDown);
    // Requests that start afterwards get a fresh token and the new count.
    let after = b.abort_ticket();
    assert!(!after.token.is_cancelled());
    assert!(!b.aborted_since(after.count));
}
