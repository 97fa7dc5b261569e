//! Backends from etcd (`pool.discovery.etcd`): each key under the prefix is a
//! backend, its value `{"address": "IP:port", "weight": N, "draining": bool}`.
//!
//! A session reads the whole prefix, applies it, then watches from the next
//! revision and applies the set again after each batch of events, within
//! moments of the write. A key that expires with its lease is a delete like
//! any other: the backend is drained. When etcd cannot be reached (the watch
//! breaks, keep-alive pings go unanswered, a request times out) the pool keeps
//! its last known backends, says so, and a new session starts after a pause —
//! reading the prefix afresh, so it resynchronises whatever it missed.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use plumb_config::model::EtcdDiscovery;
use tokio_util::sync::CancellationToken;

use super::Found;
use crate::pool::Pool;

/// Pause before a new session after one failed; doubles to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// A key's value, parsed.
fn parse(value: &[u8]) -> Result<Found, String> {
    let v: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let addr = v["address"]
        .as_str()
        .ok_or("no \"address\"")?
        .parse()
        .map_err(|_| format!("{} is not an IP:port address", v["address"]))?;
    let weight = match &v["weight"] {
        serde_json::Value::Null => 1,
        w => w
            .as_u64()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| format!("weight {w} is not 1 to 1000"))? as u32,
    };
    let draining = v["draining"].as_bool().unwrap_or(false);
    Ok(Found {
        addr,
        weight,
        draining,
    })
}

/// Runs etcd discovery for `pool` until `stop`.
pub(crate) async fn run(
    pool: Weak<Pool>,
    cfg: EtcdDiscovery,
    stop: CancellationToken,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let source = format!("etcd {}", cfg.prefix);
    let mut first_done = Some(first_done);
    let mut state = Session {
        first: true,
        pause: FIRST_PAUSE,
        seen: None,
    };
    loop {
        let e = tokio::select! {
            () = stop.cancelled() => return,
            e = session(&pool, &cfg, &source, &mut state, &mut first_done) => e,
        };
        if stop.is_cancelled() {
            return;
        }
        let Some(p) = pool.upgrade() else { return };
        p.discovery_failed(&source, format!("{e}; keeping the last known set"));
        let pause = state.pause;
        drop(p);
        if let Some(tx) = first_done.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        state.pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// What carries from one session to the next.
struct Session {
    /// No answer applied yet (the first is applied without slow start).
    first: bool,
    /// The pause before the next session if this one fails; back to the first
    /// pause once a session has read the prefix.
    pause: Duration,
    /// The cluster id and revision of the last read: a store that comes back
    /// with another id or an older revision was replaced or restored, and its
    /// (possibly empty) contents are not applied.
    seen: Option<(u64, i64)>,
}

/// One connection's worth: read the prefix, apply, watch and apply until the
/// watch breaks or ends. Returns why it ended (a watch on a prefix has no
/// natural end).
async fn session(
    pool: &Weak<Pool>,
    cfg: &EtcdDiscovery,
    source: &str,
    state: &mut Session,
    first_done: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> String {
    match session_inner(pool, cfg, source, state, first_done).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    pool: &Weak<Pool>,
    cfg: &EtcdDiscovery,
    source: &str,
    state: &mut Session,
    first_done: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<std::convert::Infallible, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        // HTTP/2 pings find a hung etcd in about 15 s without waiting for the next
        // write. Not more often: etcd refuses pings closer than 5 s apart by
        // default and closes the connection (too_many_pings).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member cut off from the quorum ends the watch instead of keeping it
        // open with no events.
        .with_require_leader(true);
    let mut client = Client::connect(cfg.endpoints.clone(), Some(opts))
        .await
        .map_err(|e| format!("cannot connect to etcd: {e}"))?;
    let got = client
        .get(cfg.prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("cannot read {}: {e}", cfg.prefix))?;
    let (cluster, revision) = got
        .header()
        .map_or((0, 0), |h| (h.cluster_id(), h.revision()));
    if let Some((seen_cluster, seen_revision)) = state.seen {
        if cluster != seen_cluster || revision < seen_revision {
            return Err(format!(
                "etcd came back as another store (cluster {cluster:x} at revision {revision}, was {seen_cluster:x} at {seen_revision}): restored or replaced? not applying it"
            ));
        }
    }
    state.seen = Some((cluster, revision));
    let mut keys: BTreeMap<Vec<u8>, Found> = BTreeMap::new();
    for kv in got.kvs() {
        put(&mut keys, kv.key(), kv.value(), pool, source);
    }
    apply(pool, source, &keys, &mut state.first)?;
    state.pause = FIRST_PAUSE;
    if let Some(tx) = first_done.take() {
        let _ = tx.send(());
    }
    let mut watch = client
        .watch(
            cfg.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| format!("cannot watch {}: {e}", cfg.prefix))?;
    loop {
        let Some(resp) = watch
            .message()
            .await
            .map_err(|e| format!("the watch broke: {e}"))?
        else {
            return Err("the watch ended".into());
        };
        if resp.canceled() {
            return Err(format!(
                "the watch was cancelled ({}; compacted at {})",
                resp.cancel_reason(),
                resp.compact_revision()
            ));
        }
        if resp.events().is_empty() {
            continue;
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            state.seen = Some((cluster, kv.mod_revision().max(revision)));
            match ev.event_type() {
                EventType::Put => put(&mut keys, kv.key(), kv.value(), pool, source),
                EventType::Delete => {
                    keys.remove(kv.key());
                }
            }
        }
        apply(pool, source, &keys, &mut state.first)?;
    }
}

fn put(
    keys: &mut BTreeMap<Vec<u8>, Found>,
    key: &[u8],
    value: &[u8],
    pool: &Weak<Pool>,
    source: &str,
) {
    match parse(value) {
        Ok(f) => {
            keys.insert(key.to_vec(), f);
        }
        Err(e) => {
            // A bad value is that key's problem: it keeps its last good value (or
            // is no backend if it never had one); the other keys apply.
            if let Some(p) = pool.upgrade() {
                tracing::warn!(pool = %p.name(), %source, key = %String::from_utf8_lossy(key), error = %e, "ignoring a value that is not a backend");
            }
        }
    }
}

fn apply(
    pool: &Weak<Pool>,
    source: &str,
    keys: &BTreeMap<Vec<u8>, Found>,
    first: &mut bool,
) -> Result<(), String> {
    let p = pool.upgrade().ok_or("the pool is gone")?;
    // Keys naming one address are one backend: draining only if every key says
    // so, with the highest weight any of them gives.
    let mut by_addr: BTreeMap<std::net::SocketAddr, Found> = BTreeMap::new();
    for f in keys.values() {
        by_addr
            .entry(f.addr)
            .and_modify(|m| {
                m.draining &= f.draining;
                m.weight = m.weight.max(f.weight);
            })
            .or_insert(*f);
    }
    let found: Vec<Found> = by_addr.into_values().collect();
    p.apply_discovered(source, &found, None, !*first);
    *first = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_or_refused_with_why() {
        let f = parse(br#"{"address": "127.0.0.2:80", "weight": 3, "draining": true}"#).unwrap();
        assert_eq!(
            (f.addr.to_string(), f.weight, f.draining),
            ("127.0.0.2:80".into(), 3, true)
        );
        assert_eq!(parse(br#"{"address": "[::1]:80"}"#).unwrap().weight, 1);
        assert!(parse(b"127.0.0.1:80").unwrap_err().starts_with("not JSON"));
        assert_eq!(parse(br#"{"weight": 2}"#).unwrap_err(), "no \"address\"");
        assert_eq!(
            parse(br#"{"address": "db:80"}"#).unwrap_err(),
            "\"db:80\" is not an IP:port address"
        );
        assert_eq!(
            parse(br#"{"address": "10.0.0.1:80", "weight": 0}"#).unwrap_err(),
            "weight 0 is not 1 to 1000"
        );
    }
}
