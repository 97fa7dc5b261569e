//! The validated config: what runtime code sees. Every field has its default filled in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Process-wide settings.
    pub runtime: Runtime,
    /// The admin API listener.
    pub admin: Admin,
    /// Where clients connect, in file order.
    pub listeners: Vec<Listener>,
    /// Groups of backends, in file order.
    pub pools: Vec<Pool>,
}

impl Config {
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Worker threads of the runtime. `None`: one per core. One thread per core is
    /// what a proxy wants; more only adds context switches.
    pub workers: Option<usize>,
    /// Where the JSON access log goes: one line per connection at its close.
    pub access_log: AccessLog,
    /// On SIGTERM/SIGINT plumb stops accepting, lets open connections finish for this
    /// long, then closes the rest. Default 30 s: long enough for requests in flight,
    /// short enough for an orchestrator's kill timeout.
    pub shutdown_grace: Duration,
    /// A Unix socket path where this plumb hands its listening sockets to a
    /// successor (`plumb serve --take-over`) for a binary upgrade without refusing
    /// a connection. Default: none (no upgrades).
    pub upgrade_socket: Option<PathBuf>,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// Standard error, beside the diagnostic log (the default).
    Stderr,
    /// Appended to this file.
    File(PathBuf),
    /// Not written.
    Off,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Default `127.0.0.1:9901`. A non-loopback address requires `token_file`.
    pub listen: SocketAddr,
    /// File holding the bearer token required on every admin request.
    pub token_file: Option<PathBuf>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes in, bytes out (L4).
    Tcp,
    /// HTTP/1.1 and HTTP/2 (h2c), proxied request by request (L7).
    Http,
}

impl Protocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// `[[listener.route]]`: requests matching `host` and `path_prefix` go to `pool`.
/// Routes are tried in file order; the first match wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exact host (`api.example.com`) or a leading wildcard (`*.example.com`),
    /// lowercase, without port. `None`: any host.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`,
    /// not `/apix`). `None`: any path.
    pub path_prefix: Option<String>,
    /// The pool.
    pub pool: String,
}

/// `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name, used in logs and metric labels.
    pub name: String,
    /// One or more addresses to bind.
    pub listen: Vec<SocketAddr>,
    /// What the listener speaks.
    pub protocol: Protocol,
    /// The kernel's accept queue length (`listen(2)` backlog). Default 4096: a burst of
    /// connections waits in the queue rather than overflowing it (incident 003).
    pub backlog: u32,
    /// At this many open client connections, a new one is accepted and reset at once
    /// (cause `listener_connection_limit`) rather than left in the kernel's queues.
    pub max_connections: Option<usize>,
    /// The pool connections go to (for HTTP: requests no route matches). Required for
    /// TCP listeners.
    pub pool: Option<String>,
    /// HTTP: routes to pools by host and path.
    pub routes: Vec<Route>,
    /// HTTP: a client connection with no request in flight is closed after this long.
    /// Default 60 s.
    pub keepalive_idle: Duration,
    /// HTTP: the request-id header. Default `plumb-request-id`.
    pub request_id_header: String,
    /// HTTP: keep a request id the client sent (default true) instead of making one.
    pub keep_request_id: bool,
    /// HTTP: the largest request head accepted; larger gets 431. Default 64 KiB.
    pub max_header_bytes: usize,
    /// HTTP: the largest request body accepted; larger gets 413 (before anything is
    /// sent upstream when the client announces its length). Default: no limit.
    pub max_body_bytes: Option<u64>,
    /// HTTP: terminate TLS with this certificate and key (HTTP/2 and HTTP/1.1 by
    /// ALPN). The files are read again on reload (SIGHUP) and when they change.
    pub tls: Option<Tls>,
    /// Read a PROXY protocol header (v1 or v2) from each client first: the client
    /// address it carries replaces the peer address. Only for a trusted front.
    pub accept_proxy: bool,
    /// Whether errors made by plumb may show backend addresses (HTTP listeners).
    pub expose_error_details: bool,
    /// Socket options for client connections.
    pub tcp: TcpOptions,
    /// Bound on reading what plumb must read before proxying: the PROXY header, and
    /// for HTTP each request head (slowloris). Default 10 s.
    pub header_read: Duration,
}

/// `listener.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Two random backends (by weight); the less loaded wins.
    RandomTwo,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
        }
    }
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// One backend of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of new connections, 1..=1000. Default 1.
    pub weight: u32,
}

/// `[[pool]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Unique name, used in logs and metric labels.
    pub name: String,
    /// Balancing algorithm. Default `round_robin`.
    pub balance: Balance,
    /// Static backends (empty when `discovery` finds them).
    pub backends: Vec<BackendSpec>,
    /// Where backends come from when not listed: each discovered address becomes a
    /// backend of its own.
    pub discovery: Option<Discovery>,
    /// How many backends a connection may try before the client is reset. Each backend
    /// is tried at most once. Default 3.
    pub connect_attempts: usize,
    /// Timers.
    pub timeouts: PoolTimeouts,
    /// Socket options for backend connections.
    pub tcp: TcpOptions,
    /// Send a PROXY protocol header to backends so they see the client address.
    pub send_proxy: Option<ProxyVersion>,
    /// Active health checks; `None`: backends are not probed (passive ejection still
    /// applies).
    pub health: Option<Health>,
    /// What drain and deregistration do to open connections.
    pub drain: Drain,
    /// What happens to a backend's open connections when its health checks fail.
    pub on_marked_down: OnMarkedDown,
    /// Idle and per-backend connection limits.
    pub upstream: Upstream,
    /// Passive ejection: failures seen by real traffic take a backend out.
    pub passive: Passive,
    /// A backend coming (back) up ramps its weight from 1/10 to full over this long.
    pub slow_start: Option<Duration>,
    /// HTTP: retries may add at most this share of the pool's requests, in percent.
    /// Default 20: retries help with one bad backend and cannot multiply an overload.
    pub retry_budget_percent: u32,
}

/// `pool.health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What a check does.
    pub kind: HealthKind,
    /// Time between checks of one backend (with up to 10% jitter so checks of many
    /// backends do not fire together). Default 5 s.
    pub interval: Duration,
    /// Bound on one whole check: connect, request and response. Default 2 s.
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy backend healthy. Default 2.
    pub rise: u32,
    /// Consecutive failures that mark a healthy backend unhealthy. Default 3.
    pub fall: u32,
    /// How a check closes its connection. Default FIN: some servers log or misbehave
    /// on an RST (incident 003).
    pub close: CheckClose,
    /// HTTP checks: pad the request to at least this many bytes so that one
    /// full-size segment crosses the path (an MTU black hole fails the check).
    pub large_probe_bytes: Option<usize>,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// A fresh connect that succeeds is healthy.
    Tcp,
    /// A GET on a fresh connection; a status in the expected range is healthy.
    Http {
        /// Request path. Default `/`.
        path: String,
        /// Host header. Default: the backend address.
        host: Option<String>,
        /// Inclusive range of healthy statuses. Default 200 to 399.
        expect_status: (u16, u16),
    },
}

/// How a health check closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckClose {
    /// Orderly close.
    Fin,
    /// Reset (`SO_LINGER` 0).
    Rst,
}

/// `pool.drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// How long a drained backend's open connections may go on. Default 30 s.
    pub timeout: Duration,
    /// Closes at the deadline are spread over this long, so clients don't reconnect in
    /// one storm. Default 1 s.
    pub close_spread: Duration,
    /// RST (default: the client learns at once its connection is gone) or FIN.
    pub on_timeout: DrainClose,
}

/// How drain closes connections at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainClose {
    /// RST both legs.
    Reset,
    /// FIN both legs.
    Close,
}

/// `pool.discovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Every address a DNS name resolves to.
    Dns(DnsDiscovery),
    /// Every key under a prefix in etcd.
    Etcd(EtcdDiscovery),
}

/// `pool.discovery = { etcd = { endpoints = [...], prefix = "..." } }`: each key
/// under `prefix` is a backend, its value JSON `{"address": "IP:port", "weight":
/// N, "draining": bool}` (weight and draining optional). Keys written with an
/// etcd lease vanish when their lease expires: a backend that dies without
/// deregistering is drained when its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdDiscovery {
    /// etcd client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix (`/plumb/pools/app/`).
    pub prefix: String,
}

/// `pool.discovery = { dns = "name:port", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name to resolve.
    pub name: String,
    /// The port every resolved address is used with.
    pub port: u16,
    /// The longest time between two resolutions (default 30 s); a shorter TTL
    /// resolves sooner, but never more often than every second.
    pub refresh: Duration,
    /// Ask this server (`IP:port`) instead of the system's resolvers.
    pub nameserver: Option<SocketAddr>,
    /// The weight of each discovered backend (default 1).
    pub weight: u32,
}

/// `pool.on_marked_down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMarkedDown {
    /// Reset the backend's open connections: it is unreachable, and their bytes would
    /// go nowhere.
    Reset,
    /// Leave them to their own timers.
    Keep,
}

/// `pool.upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// Open connections per backend at most; the next client goes to another backend
    /// or is refused (`backend_connection_limit`). Default: no limit.
    pub max_connections_per_backend: Option<usize>,
    /// Idle connections opened ahead of clients, per backend. Default 0: plumb opens a
    /// backend connection only when a client needs one (incident 004: pre-opened idle
    /// connections froze a single-threaded backend).
    pub preconnect: usize,
    /// A pre-opened or kept-alive connection unused for this long is closed. Default
    /// 30 s, shorter than common backend keep-alive timeouts (60 s and up), so plumb
    /// closes first and never sends a request on a connection the backend is closing.
    pub idle_timeout: Duration,
    /// HTTP: kept-alive idle connections per backend at most. Default 128: enough
    /// that a burst of concurrent requests does not force fresh connections (a
    /// keep-alive pool smaller than the concurrency halved throughput in the
    /// benchmark), while `idle_timeout` still closes what goes unused.
    pub max_idle_per_backend: usize,
}

/// `pool.passive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive connect failures or resets that eject a backend. Default 5;
    /// 0 turns passive ejection off.
    pub consecutive_failures: u32,
    /// First ejection's length; doubles on each consecutive ejection. Default 10 s.
    pub ejection: Duration,
    /// Longest ejection. Default 5 min.
    pub max_ejection: Duration,
}

/// `pool.timeouts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// Bound on each connect attempt. Default 3 s: one lost SYN (retransmitted after
    /// 1 s) still connects; a black-holed backend is abandoned quickly.
    pub connect: Duration,
    /// A proxied TCP connection (or an upgraded HTTP one, such as a WebSocket) with no
    /// byte in either direction for this long is closed. Default 1 h.
    pub tunnel_idle: Duration,
    /// HTTP: bound on waiting for the response head after the request was sent.
    /// Default 30 s.
    pub response_header: Duration,
    /// HTTP: bound on the silence between two chunks of a request or response body.
    /// Default 60 s.
    pub idle: Duration,
}

/// TCP socket options of one leg (client or backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// TCP keepalive: finds a peer that vanished while the connection was idle.
    /// Default idle 30 s, interval 10 s, 3 probes: a silent peer is found about 60 s
    /// after the last byte. `keepalive_idle = "0s"` turns it off.
    pub keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// gives up. Default 60 s. `"0s"` leaves the kernel default (about 15 minutes).
    /// Linux also applies it to keepalive: once it has passed since the last byte
    /// received, the first unanswered probe ends the connection. So it should be at
    /// least `keepalive_idle + keepalive_interval x keepalive_count`, or
    /// `keepalive_count` stops mattering; the defaults are exactly that.
    pub user_timeout: Option<Duration>,
    /// `TCP_MAXSEG` clamp on the MSS advertised in the handshake. Default unset.
    pub mss: Option<u32>,
}

/// Keepalive timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(10),
                count: 3,
            }),
            user_timeout: Some(Duration::from_secs(60)),
            mss: None,
        }
    }
}

/// Default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default `listen(2)` backlog.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// `pool.discovery.refresh` default: re-resolve at least this often.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
/// `pool.slow_start` default for pools with discovery: new addresses ramp up.
pub const DEFAULT_DISCOVERY_SLOW_START: Duration = Duration::from_secs(10);

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default tunnel idle timeout.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(3600);
/// Default connect attempts.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 3;
/// Default bound on reading a PROXY header or an HTTP request head.
pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
/// Default keep-alive idle of HTTP client connections.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Default bound on waiting for a response head.
pub const DEFAULT_RESPONSE_HEADER: Duration = Duration::from_secs(30);
/// Default bound on silence inside a body.
pub const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(60);
/// Default request-id header.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "plumb-request-id";
/// Hop-by-hop headers (RFC 9110 §7.6.1), which an http listener removes both ways.
pub const HOP_BY_HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];
/// Headers an http listener sets or frames a request by. With
/// [`HOP_BY_HOP_HEADERS`], not usable as the request-id header: a request id under
/// one of these names would replace the routed Host, a forwarding field or the
/// framing, or be dropped.
pub const SET_BY_PLUMB_HEADERS: [&str; 7] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "cookie",
    "content-length",
    "expect",
];
/// Default health check interval.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default health check timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default drain close spread.
pub const DEFAULT_CLOSE_SPREAD: Duration = Duration::from_secs(1);
/// Default idle timeout of pre-opened connections.
pub const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(30);
/// Default bound on kept-alive idle connections per backend.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 128;
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
