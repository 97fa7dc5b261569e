//! Prometheus metrics (DESIGN.md §6), exposed by the admin API at `GET /metrics`.
//!
//! Event counters and histograms are updated where the events happen; gauges that
//! describe state (backend health, idle connections, open connections) are set from
//! that state at each scrape; the kernel's TCP counters are read from `/proc/net` at
//! each scrape. Names carry the `plumb_` prefix, counters end in `_total`, durations
//! are histograms in seconds.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::FastMap;

/// Labels of listener-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Labels of a listener and a cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerCauseLabels {
    /// Listener name.
    pub listener: String,
    /// The cause (DESIGN.md §5).
    pub cause: String,
}

/// Labels of ended connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// Listener name.
    pub listener: String,
    /// Pool name ("" when none).
    pub pool: String,
    /// `none` for a normal close, else the cause.
    pub cause: String,
}

/// Labels of HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener name.
    pub listener: String,
    /// Pool name ("" when no route matched).
    pub pool: String,
    /// Status sent to the client.
    pub code: String,
    /// `none`, or the cause.
    pub cause: String,
}

/// Labels of per-leg series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegLabels {
    /// Listener name.
    pub listener: String,
    /// Pool name.
    pub pool: String,
    /// `client` or `upstream`.
    pub leg: String,
}

/// Labels of pool-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of backend-level series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub backend: String,
}

/// Labels of backend state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendStateLabels {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// `healthy`, `unhealthy` or `draining`.
    pub state: String,
}

/// Labels of health-check results.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// `ok`, `connect_refused`, `connect_timeout`, `status`, `response_timeout`...
    pub result: String,
}

/// Labels of a pool and a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolResultLabels {
    /// Pool name.
    pub pool: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Every `result` label value of `plumb_health_checks_total`.
pub(crate) const CHECK_RESULTS: &[&str] = &[
    "ok",
    "connect_refused",
    "connect_timeout",
    "status",
    "response_timeout",
    "closed",
    "reset",
    "invalid_response",
    "error",
];

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Every metric plumb exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted.
    pub connections_accepted: Family<ListenerLabels, Counter>,
    /// Connections refused at once (over `max_connections`).
    pub connections_refused: Family<ListenerCauseLabels, Counter>,
    /// Connections open now (set at scrape).
    pub connections_active: Family<ListenerLabels, Gauge>,
    /// Connections ended, by cause (`none` for a normal close).
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Connection lifetimes.
    pub connection_duration: Hist<ListenerLabels>,
    /// HTTP requests, by status and cause.
    pub requests: Family<RequestLabels, Counter>,
    /// HTTP request durations (to the end of the response).
    pub request_duration: Hist<ListenerLabels>,
    /// HTTP time to the response head.
    pub first_byte: Hist<ListenerLabels>,
    /// Upstream connect time.
    pub upstream_connect: Hist<BackendLabels>,
    /// Failed connect attempts and resets seen by traffic, by backend and cause.
    pub upstream_failures: Family<BackendCauseLabels, Counter>,
    /// 1 if a backend takes new connections (set at scrape).
    pub backend_up: Family<BackendLabels, Gauge>,
    /// 1 for the backend's current state (set at scrape).
    pub backend_state: Family<BackendStateLabels, Gauge>,
    /// Health-check results.
    pub health_checks: Family<CheckLabels, Counter>,
    /// Drains started.
    pub drains_started: Family<PoolLabels, Counter>,
    /// Drains that reached their end (deadline or no connection left).
    pub drains_completed: Family<PoolLabels, Counter>,
    /// Connections closed by a drain deadline.
    pub drain_closed: Family<PoolLabels, Counter>,
    /// Idle kept-alive upstream connections (set at scrape).
    pub idle_connections: Family<PoolLabels, Gauge>,
    /// Discovery resolutions, by result.
    pub discovery_resolutions: Family<PoolResultLabels, Counter>,
    /// 1 while the pool's last discovery resolution worked.
    pub discovery_up: Family<PoolLabels, Gauge>,
    /// Connections whose leg had the black-hole signature when it closed.
    pub suspected_blackhole: Family<LegLabels, Counter>,
    /// Access-log lines dropped because the writer fell behind (brought up to date
    /// at scrape).
    pub access_log_dropped: Counter,
}

/// Labels of a backend and a cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendCauseLabels {
    /// Pool name.
    pub pool: String,
    /// Backend address.
    pub backend: String,
    /// The cause.
    pub cause: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All families, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("plumb");
        let m = Metrics {
            registry: Registry::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            connections_active: Family::default(),
            connections_closed: Family::default(),
            connection_duration: Family::new_with_constructor(seconds as fn() -> Histogram),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds as fn() -> Histogram),
            first_byte: Family::new_with_constructor(seconds as fn() -> Histogram),
            upstream_connect: Family::new_with_constructor(seconds as fn() -> Histogram),
            upstream_failures: Family::default(),
            backend_up: Family::default(),
            backend_state: Family::default(),
            health_checks: Family::default(),
            drains_started: Family::default(),
            drains_completed: Family::default(),
            drain_closed: Family::default(),
            idle_connections: Family::default(),
            discovery_resolutions: Family::default(),
            discovery_up: Family::default(),
            suspected_blackhole: Family::default(),
            access_log_dropped: Counter::default(),
        };
        let r = &mut registry;
        r.register(
            "connections_accepted",
            "Client connections accepted",
            m.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections reset at once, by cause (listener_connection_limit)",
            m.connections_refused.clone(),
        );
        r.register(
            "connections_active",
            "Client connections open now",
            m.connections_active.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections ended, by cause (none: a normal close)",
            m.connections_closed.clone(),
        );
        r.register_with_unit(
            "connection_duration",
            "Client connection lifetimes",
            Unit::Seconds,
            m.connection_duration.clone(),
        );
        r.register(
            "requests",
            "HTTP requests, by status code and cause (none: no failure)",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "HTTP requests from start to the end of the response",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register_with_unit(
            "time_to_first_byte",
            "HTTP requests from start to the response head",
            Unit::Seconds,
            m.first_byte.clone(),
        );
        r.register_with_unit(
            "upstream_connect",
            "Time to connect to a backend",
            Unit::Seconds,
            m.upstream_connect.clone(),
        );
        r.register(
            "upstream_failures",
            "Connect failures and resets seen by traffic, by backend and cause",
            m.upstream_failures.clone(),
        );
        r.register(
            "backend_up",
            "1 if the backend takes new connections",
            m.backend_up.clone(),
        );
        r.register(
            "backend_state",
            "1 for the backend's current state",
            m.backend_state.clone(),
        );
        r.register(
            "health_checks",
            "Health check results, by result",
            m.health_checks.clone(),
        );
        r.register(
            "discovery_resolutions",
            "Discovery (DNS) resolutions of a pool's backends, by result",
            m.discovery_resolutions.clone(),
        );
        r.register(
            "discovery_up",
            "1 while the pool's last discovery resolution worked (0: it keeps its last known backends)",
            m.discovery_up.clone(),
        );
        r.register(
            "drains_started",
            "Backend drains started",
            m.drains_started.clone(),
        );
        r.register(
            "drains_completed",
            "Backend drains that reached their end",
            m.drains_completed.clone(),
        );
        r.register(
            "drain_closed_connections",
            "Connections closed at a drain deadline",
            m.drain_closed.clone(),
        );
        r.register(
            "pool_idle_connections",
            "Idle kept-alive connections to backends",
            m.idle_connections.clone(),
        );
        r.register(
            "suspected_blackhole",
            "Connections closed while a leg had data outstanding and retransmitted with no acknowledgement (the TCP_INFO signature of a path MTU black hole)",
            m.suspected_blackhole.clone(),
        );
        r.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        r.register_collector(Box::new(KernelCollector));
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition (format 0.0.4, `text/plain; version=0.0.4`),
    /// which Prometheus and `promtool check metrics` both read.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        classic_text(&out)
    }

    /// Counts a failure seen by traffic against a backend.
    pub(crate) fn upstream_failure(
        &self,
        pool: &str,
        backend: std::net::SocketAddr,
        cause: crate::Cause,
    ) {
        self.upstream_failures
            .get_or_create(&BackendCauseLabels {
                pool: pool.to_string(),
                backend: backend.to_string(),
                cause: cause.as_str().to_string(),
            })
            .inc();
    }

    /// Removes a backend's series when it leaves its pool, so that backends coming
    /// and going (registration, discovery) do not grow the exposition without bound.
    pub(crate) fn forget_backend(&self, pool: &str, backend: std::net::SocketAddr) {
        let (pool, backend) = (pool.to_string(), backend.to_string());
        let labels = BackendLabels {
            pool: pool.clone(),
            backend: backend.clone(),
        };
        self.upstream_connect.remove(&labels);
        self.backend_up.remove(&labels);
        for cause in crate::Cause::ALL {
            self.upstream_failures.remove(&BackendCauseLabels {
                pool: pool.clone(),
                backend: backend.clone(),
                cause: cause.as_str().to_string(),
            });
        }
        for result in CHECK_RESULTS {
            self.health_checks.remove(&CheckLabels {
                pool: pool.clone(),
                backend: backend.clone(),
                result: (*result).to_string(),
            });
        }
    }

    /// Records a connect time.
    pub(crate) fn connected(
        &self,
        pool: &str,
        backend: std::net::SocketAddr,
        took: std::time::Duration,
    ) {
        self.upstream_connect
            .get_or_create(&BackendLabels {
                pool: pool.to_string(),
                backend: backend.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// One listener's metric handles, resolved once when its context is built, so that
/// the per-request and per-connection path neither builds label strings nor hashes
/// them in the registry's families: a handle shares its series with the family
/// (what `/metrics` shows), and a series not seen yet is created on first use.
#[derive(Debug)]
pub(crate) struct ListenerMetrics {
    /// `plumb_connections_accepted_total` of this listener.
    pub(crate) accepted: Counter,
    /// `plumb_connection_duration_seconds` of this listener.
    pub(crate) connection_duration: Histogram,
    /// `plumb_request_duration_seconds` of this listener (HTTP listeners).
    pub(crate) request_duration: Option<Histogram>,
    /// `plumb_time_to_first_byte_seconds` of this listener (HTTP listeners).
    pub(crate) first_byte: Option<Histogram>,
    /// Request counters by pool, status and cause (read-locked on the hot path; a
    /// write only for a combination not seen before).
    requests: std::sync::RwLock<FastMap<RequestKey, Counter>>,
    /// Closed-connection counters by cause (the pool is the listener's default pool).
    closed: std::sync::RwLock<FastMap<Option<crate::Cause>, Counter>>,
}

type RequestKey = (Option<Arc<str>>, u16, Option<crate::Cause>);

impl ListenerMetrics {
    pub(crate) fn new(m: &Metrics, listener: &str, http: bool) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        ListenerMetrics {
            accepted: m.connections_accepted.get_or_create(&labels).clone(),
            connection_duration: m.connection_duration.get_or_create(&labels).clone(),
            request_duration: http.then(|| m.request_duration.get_or_create(&labels).clone()),
            first_byte: http.then(|| m.first_byte.get_or_create(&labels).clone()),
            requests: std::sync::RwLock::default(),
            closed: std::sync::RwLock::default(),
        }
    }

    /// Counts one HTTP request in `plumb_http_requests_total`.
    pub(crate) fn request(
        &self,
        m: &Metrics,
        listener: &str,
        pool: Option<&Arc<str>>,
        code: u16,
        cause: Option<crate::Cause>,
    ) {
        inc_cached(&self.requests, (pool.cloned(), code, cause), || {
            m.requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_string(),
                    pool: pool.map_or("", |p| p).to_string(),
                    code: code.to_string(),
                    cause: cause.map_or("none", crate::Cause::as_str).to_string(),
                })
                .clone()
        });
    }

    /// Counts an ended connection and its lifetime.
    pub(crate) fn closed(
        &self,
        m: &Metrics,
        listener: &str,
        pool: &str,
        cause: Option<crate::Cause>,
        duration: std::time::Duration,
    ) {
        self.connection_duration.observe(duration.as_secs_f64());
        inc_cached(&self.closed, cause, || {
            m.connections_closed
                .get_or_create(&ClosedLabels {
                    listener: listener.to_string(),
                    pool: pool.to_string(),
                    cause: cause.map_or("none", crate::Cause::as_str).to_string(),
                })
                .clone()
        });
    }
}

/// Increments the counter cached under `key`, made with `make` (from its family)
/// the first time: a read lock on the hot path, a write lock once per new key.
fn inc_cached<K: std::hash::Hash + Eq>(
    cache: &std::sync::RwLock<FastMap<K, Counter>>,
    key: K,
    make: impl FnOnce() -> Counter,
) {
    if let Some(c) = cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        c.inc();
        return;
    }
    cache
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(make)
        .inc();
}

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples
/// `x_total`. The classic text format names the family after its samples, and has
/// no `# UNIT` or `# EOF` lines; this rewrites one into the other.
pub fn classic_text(om: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(om.len() + 256);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Reads the kernel's TCP counters at each scrape.
#[derive(Debug)]
struct KernelCollector;

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(k) = plumb_sys::kernel_tcp_counters() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "kernel_listen_overflows",
                "TcpExtListenOverflows: connections dropped because an accept queue was full",
                k.listen_overflows,
            ),
            (
                "kernel_listen_drops",
                "TcpExtListenDrops: SYNs dropped at a listening socket",
                k.listen_drops,
            ),
            (
                "kernel_retrans_segs",
                "TcpRetransSegs: TCP segments retransmitted",
                k.retrans_segs,
            ),
            (
                "kernel_tcp_timeouts",
                "TcpExtTCPTimeouts: TCP retransmission timeouts",
                k.timeouts,
            ),
            (
                "kernel_syn_retrans",
                "TcpExtTCPSynRetrans: SYN and SYN-ACK retransmissions",
                k.syn_retrans,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples_in_the_classic_format() {
        let om = "# HELP plumb_requests HTTP requests.\n# TYPE plumb_requests counter\nplumb_requests_total{code=\"200\"} 3\n# HELP plumb_up Up.\n# TYPE plumb_up gauge\nplumb_up 1\n# HELP plumb_d D.\n# TYPE plumb_d histogram\n# UNIT plumb_d seconds\nplumb_d_sum 0\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP plumb_requests_total HTTP requests.\n# TYPE plumb_requests_total counter\nplumb_requests_total{code=\"200\"} 3\n# HELP plumb_up Up.\n# TYPE plumb_up gauge\nplumb_up 1\n# HELP plumb_d D.\n# TYPE plumb_d histogram\nplumb_d_sum 0\n"
        );
    }

    #[test]
    fn every_family_is_exposed() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                listener: "l".into(),
                pool: "p".into(),
                code: "502".into(),
                cause: "upstream_connect_refused".into(),
            })
            .inc();
        let text = m.encode();
        for family in [
            "plumb_requests_total",
            "plumb_kernel_listen_overflows_total",
            "plumb_kernel_listen_drops_total",
            "plumb_kernel_retrans_segs_total",
            "plumb_kernel_tcp_timeouts_total",
            "plumb_kernel_syn_retrans_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter")),
                "{family} missing:\n{text}"
            );
        }
        assert!(text.contains("plumb_requests_total{listener=\"l\",pool=\"p\",code=\"502\",cause=\"upstream_connect_refused\"} 1"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    /// The cached handles count into the same series the families expose, with the
    /// same label values as before the cache (pool "" when none, cause "none").
    #[test]
    fn listener_handles_count_into_the_exposed_series() {
        let m = Metrics::new();
        let web = ListenerMetrics::new(&m, "web", true);
        let pool: Arc<str> = Arc::from("app");
        for _ in 0..3 {
            web.request(&m, "web", Some(&pool), 200, None);
        }
        web.request(&m, "web", None, 404, Some(crate::Cause::NoRoute));
        web.request(&m, "web", None, 404, Some(crate::Cause::NoRoute));
        web.closed(&m, "web", "app", None, std::time::Duration::from_millis(5));
        web.closed(&m, "web", "app", None, std::time::Duration::from_millis(5));
        web.accepted.inc();
        let tcp = ListenerMetrics::new(&m, "tunnel", false);
        tcp.closed(
            &m,
            "tunnel",
            "db",
            Some(crate::Cause::UpstreamReset),
            std::time::Duration::ZERO,
        );
        let text = m.encode();
        for line in [
            "plumb_requests_total{listener=\"web\",pool=\"app\",code=\"200\",cause=\"none\"} 3",
            "plumb_requests_total{listener=\"web\",pool=\"\",code=\"404\",cause=\"no_route\"} 2",
            "plumb_connections_closed_total{listener=\"web\",pool=\"app\",cause=\"none\"} 2",
            "plumb_connections_closed_total{listener=\"tunnel\",pool=\"db\",cause=\"upstream_reset\"} 1",
            "plumb_connections_accepted_total{listener=\"web\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // HTTP histograms only for HTTP listeners.
        assert!(
            text.contains("plumb_request_duration_seconds_count{listener=\"web\"}"),
            "{text}"
        );
        assert!(
            !text.contains("plumb_request_duration_seconds_count{listener=\"tunnel\"}"),
            "{text}"
        );
    }
}
