//! Backends found by resolving a DNS name (`pool.discovery.dns`): every address
//! the name resolves to becomes a backend of its own, with its own health checks
//! and counters, so one bad address (incident 001) is ejected alone.
//!
//! The name is resolved again when the shortest TTL of the answer runs out,
//! clamped between [`MIN_INTERVAL`] and the configured `refresh`. Addresses that
//! appear are added (ramping up over the pool's `slow_start`); addresses that
//! disappear are drained with the pool's drain settings, then removed — never cut.
//! A failed or empty resolution changes nothing: the pool keeps the last set it
//! had, says so (log, `GET /api/v1/pools`, `plumb_discovery_up`) and tries again.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use plumb_config::model::DnsDiscovery;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;

/// Resolutions never come closer together than this, whatever the TTL says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed resolution, the next try comes after this (or `refresh` if
/// shorter).
pub const RETRY: Duration = Duration::from_secs(5);

/// One backend as discovery found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// Listed, but to take no new connections (etcd's `"draining": true`).
    pub draining: bool,
}

/// What discovery last did, for the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    /// `dns name:port`.
    pub source: String,
    /// Whether the last resolution worked (false until the first one does).
    pub up: bool,
    /// Addresses in the last good answer.
    pub addresses: Vec<String>,
    /// Pool milliseconds of the last good answer.
    pub last_ok_ms: Option<u64>,
    /// Why the last resolution failed, while it is failing.
    pub last_error: Option<String>,
    /// The TTL of the last good answer, in seconds.
    pub ttl_s: Option<u64>,
    /// Resolutions so far, good and bad.
    pub resolutions: u64,
}

fn resolver(cfg: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut builder = match cfg.nameserver {
        Some(ns) => {
            let conn = |protocol| {
                let mut c = ConnectionConfig::new(protocol);
                c.port = ns.port();
                c
            };
            let server = NameServerConfig::new(
                ns.ip(),
                true,
                vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
            );
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Every resolution asks the server: the schedule below honours the TTL.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// One resolution: the addresses (sorted) and the answer's TTL.
async fn resolve(r: &TokioResolver, name: &str) -> Result<(Vec<IpAddr>, Duration), String> {
    // A trailing dot: the name is absolute, no search domains are tried.
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let lookup = r.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
    // The shortest TTL among the address records (a hosts-file answer has none
    // of its own: then `refresh` decides).
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .filter(|r| r.data.ip_addr().is_some())
        .map(|r| Duration::from_secs(u64::from(r.ttl)))
        .min()
        .unwrap_or(Duration::MAX);
    let mut ips: Vec<IpAddr> = lookup.iter().collect();
    ips.sort();
    ips.dedup();
    Ok((ips, ttl))
}

/// When to resolve next after a good answer with this TTL.
pub fn next_after(ttl: Duration, refresh: Duration) -> Duration {
    ttl.clamp(MIN_INTERVAL, refresh.max(MIN_INTERVAL))
}

/// Runs discovery for `pool` until `stop`; `first_done` fires once the first
/// resolution has been applied or has failed.
pub(crate) async fn run(
    pool: Weak<Pool>,
    cfg: DnsDiscovery,
    stop: CancellationToken,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let source = format!("dns {}:{}", cfg.name, cfg.port);
    let mut first_done = Some(first_done);
    let mut first = true;
    let mut resolver = None;
    loop {
        if resolver.is_none() {
            match self::resolver(&cfg) {
                Ok(r) => resolver = Some(r),
                Err(e) => {
                    if let Some(p) = pool.upgrade() {
                        p.discovery_failed(&source, format!("cannot set up the resolver: {e}"));
                    }
                }
            }
        }
        let result = match &resolver {
            Some(r) => tokio::select! {
                () = stop.cancelled() => return,
                r = resolve(r, &cfg.name) => Some(r),
            },
            None => None,
        };
        // A reload may have replaced this task while it waited: its answer is stale.
        if stop.is_cancelled() {
            return;
        }
        let Some(p) = pool.upgrade() else { return };
        let Some(result) = result else {
            drop(p);
            if let Some(tx) = first_done.take() {
                let _ = tx.send(());
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RETRY.min(cfg.refresh)) => {}
            }
            continue;
        };
        let wait = match result {
            Ok((ips, ttl)) if !ips.is_empty() => {
                let found: Vec<Found> = ips
                    .iter()
                    .map(|ip| Found {
                        addr: SocketAddr::new(*ip, cfg.port),
                        weight: cfg.weight,
                        draining: false,
                    })
                    .collect();
                p.apply_discovered(&source, &found, Some(ttl), !first);
                first = false;
                next_after(ttl, cfg.refresh)
            }
            Ok(_) => {
                p.discovery_failed(
                    &source,
                    "the name resolved to no address; keeping the last known set".into(),
                );
                RETRY.min(cfg.refresh)
            }
            Err(e) => {
                p.discovery_failed(&source, format!("{e}; keeping the last known set"));
                RETRY.min(cfg.refresh)
            }
        };
        drop(p);
        if let Some(tx) = first_done.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts discovery for `pool` if its settings ask for it; the receiver completes
/// after the first resolution.
pub(crate) fn start(
    pool: &Arc<Pool>,
    stop: CancellationToken,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match pool.settings().discovery.clone()? {
        plumb_config::model::Discovery::Dns(cfg) => {
            tokio::spawn(run(Arc::downgrade(pool), cfg, stop, tx));
        }
        #[cfg(feature = "etcd")]
        plumb_config::model::Discovery::Etcd(cfg) => {
            tokio::spawn(etcd::run(Arc::downgrade(pool), cfg, stop, tx));
        }
        #[cfg(not(feature = "etcd"))]
        plumb_config::model::Discovery::Etcd(cfg) => {
            pool.discovery_failed(&format!("etcd {}", cfg.prefix), NO_ETCD.to_string());
            let _ = tx.send(());
        }
    }
    Some(rx)
}

/// Why etcd discovery does not run in this build.
pub const NO_ETCD: &str =
    "this plumb was built without etcd support (cargo build --features etcd, \
     which needs protoc: Debian's protobuf-compiler)";

/// The config, or an error for each part this build cannot serve (etcd
/// discovery without the `etcd` feature): `plumb check` and `plumb serve` report
/// them as they report config errors.
pub fn supported(
    config: plumb_config::Config,
) -> Result<plumb_config::Config, plumb_config::ConfigErrors> {
    let missing: Vec<plumb_config::ConfigError> = config
        .pools
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            !cfg!(feature = "etcd")
                && matches!(p.discovery, Some(plumb_config::model::Discovery::Etcd(_)))
        })
        .map(|(i, _)| plumb_config::ConfigError {
            path: format!("pool[{i}].discovery.etcd"),
            message: NO_ETCD.to_string(),
        })
        .collect();
    if missing.is_empty() {
        Ok(config)
    } else {
        Err(plumb_config::ConfigErrors(missing))
    }
}

#[cfg(feature = "etcd")]
mod etcd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_sets_the_schedule_within_bounds() {
        let refresh = Duration::from_secs(30);
        assert_eq!(
            next_after(Duration::from_secs(5), refresh),
            Duration::from_secs(5)
        );
        assert_eq!(next_after(Duration::ZERO, refresh), MIN_INTERVAL);
        assert_eq!(next_after(Duration::from_secs(3600), refresh), refresh);
    }
}
