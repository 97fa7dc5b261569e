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
    /// The pool connections go to.
    pub pool: String,
    /// Read a PROXY protocol header (v1 or v2) from each client first: the client
    /// address it carries replaces the peer address. Only for a trusted front.
    pub accept_proxy: bool,
    /// Whether errors made by plumb may show backend addresses (HTTP listeners).
    pub expose_error_details: bool,
    /// Socket options for client connections.
    pub tcp: TcpOptions,
    /// Bound on reading what plumb must read before proxying (the PROXY header).
    pub header_read: Duration,
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
    /// Static backends.
    pub backends: Vec<BackendSpec>,
    /// How many backends a connection may try before the client is reset. Each backend
    /// is tried at most once. Default 3.
    pub connect_attempts: usize,
    /// Timers.
    pub timeouts: PoolTimeouts,
    /// Socket options for backend connections.
    pub tcp: TcpOptions,
    /// Send a PROXY protocol header to backends so they see the client address.
    pub send_proxy: Option<ProxyVersion>,
}

/// `pool.timeouts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// Bound on each connect attempt. Default 3 s: one lost SYN (retransmitted after
    /// 1 s) still connects; a black-holed backend is abandoned quickly.
    pub connect: Duration,
    /// A proxied TCP connection with no byte in either direction for this long is
    /// closed. Default 1 h.
    pub tunnel_idle: Duration,
}

/// TCP socket options of one leg (client or backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// TCP keepalive: finds a peer that vanished while the connection was idle.
    /// Default idle 60 s, interval 10 s, 6 probes. `keepalive_idle = "0s"` turns it off.
    pub keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// gives up. Default 30 s. `"0s"` leaves the kernel default (about 15 minutes).
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
                idle: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                count: 6,
            }),
            user_timeout: Some(Duration::from_secs(30)),
            mss: None,
        }
    }
}

/// Default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default `listen(2)` backlog.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default tunnel idle timeout.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(3600);
/// Default connect attempts.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 3;
/// Default bound on reading a PROXY header.
pub const DEFAULT_HEADER_READ: Duration = Duration::from_secs(5);
/// Default shutdown grace.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
