//! The one vocabulary of failure (DESIGN.md §5). A [`Cause`] is carried to the client
//! (an RST now, an HTTP header later), to the access log field `cause`, and to the
//! metric label `cause`; each of those mappings lives here and nowhere else.

use std::fmt;
use std::io;

/// Why a connection or request did not end normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The backend answered the SYN with an RST.
    UpstreamConnectRefused,
    /// The backend did not complete the handshake within `pool.timeouts.connect`.
    UpstreamConnectTimeout,
    /// An ICMP host or network unreachable came back, on connect or later.
    UpstreamUnreachable,
    /// The connect failed locally (no ephemeral port, no buffer...).
    UpstreamConnectError,
    /// The backend reset an established connection.
    UpstreamReset,
    /// The backend's kernel gave up: data or keepalive probes unacknowledged for
    /// `TCP_USER_TIMEOUT` or the keepalive budget.
    UpstreamTcpTimeout,
    /// Neither side sent a byte for `pool.timeouts.tunnel_idle`, and the backend owed
    /// the next one (the client spoke last).
    UpstreamIdleTimeout,
    /// Any other I/O error on the backend leg.
    UpstreamIoError,
    /// HTTP: the backend reset the connection after the request was sent and before
    /// a response head arrived.
    UpstreamResetBeforeResponse,
    /// HTTP: the backend closed the connection (FIN) before a complete response head.
    UpstreamClosedEarly,
    /// HTTP: no response head within `pool.timeouts.response_header`.
    UpstreamResponseTimeout,
    /// HTTP: the backend's response was not valid HTTP.
    UpstreamBadResponse,
    /// Every backend of the pool is down, drained or already tried.
    NoHealthyBackend,
    /// Every backend that could take the connection is at
    /// `upstream.max_connections_per_backend`.
    BackendConnectionLimit,
    /// The backend was drained or deregistered and its drain deadline passed.
    BackendDrained,
    /// The backend failed its health checks (`on_marked_down = "reset"`).
    BackendMarkedDown,
    /// The listener's `max_connections` was reached; the connection was reset at once.
    ListenerConnectionLimit,
    /// The client reset its connection.
    ClientReset,
    /// The client's kernel stopped acknowledging (TCP_USER_TIMEOUT or keepalive).
    ClientTcpTimeout,
    /// Neither side sent a byte for `pool.timeouts.tunnel_idle`, and the client owed
    /// the next one (the backend spoke last).
    ClientIdleTimeout,
    /// The client did not send what plumb must read first (the PROXY header) in time.
    ClientHeaderTimeout,
    /// ICMP unreachable on the client leg.
    ClientUnreachable,
    /// Any other I/O error on the client leg.
    ClientIoError,
    /// HTTPS: the client's TLS handshake failed.
    ClientTlsError,
    /// The client sent bytes plumb cannot accept (a malformed PROXY header or HTTP
    /// request).
    BadRequest,
    /// HTTP: no route matches the request and the listener has no default pool.
    NoRoute,
    /// HTTP: the request head is larger than `max_header_bytes` (431).
    RequestHeaderTooLarge,
    /// HTTP: the request body is larger than `max_body_bytes` (413).
    RequestTooLarge,
    /// HTTP: the client went away before the response was complete.
    ClientClosedEarly,
    /// plumb is shutting down and the grace period ran out.
    Shutdown,
}

impl Cause {
    /// Every cause, for docs and exhaustive tests.
    pub const ALL: [Cause; 30] = [
        Cause::UpstreamConnectRefused,
        Cause::UpstreamConnectTimeout,
        Cause::UpstreamUnreachable,
        Cause::UpstreamConnectError,
        Cause::UpstreamReset,
        Cause::UpstreamTcpTimeout,
        Cause::UpstreamIdleTimeout,
        Cause::UpstreamIoError,
        Cause::UpstreamResetBeforeResponse,
        Cause::UpstreamClosedEarly,
        Cause::UpstreamResponseTimeout,
        Cause::UpstreamBadResponse,
        Cause::NoHealthyBackend,
        Cause::BackendConnectionLimit,
        Cause::BackendDrained,
        Cause::BackendMarkedDown,
        Cause::ListenerConnectionLimit,
        Cause::ClientReset,
        Cause::ClientTcpTimeout,
        Cause::ClientIdleTimeout,
        Cause::ClientHeaderTimeout,
        Cause::ClientUnreachable,
        Cause::ClientIoError,
        Cause::ClientTlsError,
        Cause::BadRequest,
        Cause::NoRoute,
        Cause::RequestHeaderTooLarge,
        Cause::RequestTooLarge,
        Cause::ClientClosedEarly,
        Cause::Shutdown,
    ];

    /// Position in [`Cause::ALL`], for counters.
    pub fn index(self) -> usize {
        Cause::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The name used in headers, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::UpstreamConnectRefused => "upstream_connect_refused",
            Cause::UpstreamConnectTimeout => "upstream_connect_timeout",
            Cause::UpstreamUnreachable => "upstream_unreachable",
            Cause::UpstreamConnectError => "upstream_connect_error",
            Cause::UpstreamReset => "upstream_reset",
            Cause::UpstreamTcpTimeout => "upstream_tcp_timeout",
            Cause::UpstreamIdleTimeout => "upstream_idle_timeout",
            Cause::UpstreamIoError => "upstream_io_error",
            Cause::UpstreamResetBeforeResponse => "upstream_reset_before_response",
            Cause::UpstreamClosedEarly => "upstream_closed_early",
            Cause::UpstreamResponseTimeout => "upstream_response_timeout",
            Cause::UpstreamBadResponse => "upstream_bad_response",
            Cause::NoHealthyBackend => "no_healthy_backend",
            Cause::BackendConnectionLimit => "backend_connection_limit",
            Cause::BackendDrained => "backend_drained",
            Cause::BackendMarkedDown => "backend_marked_down",
            Cause::ListenerConnectionLimit => "listener_connection_limit",
            Cause::ClientReset => "client_reset",
            Cause::ClientTcpTimeout => "client_tcp_timeout",
            Cause::ClientIdleTimeout => "client_idle_timeout",
            Cause::ClientHeaderTimeout => "client_header_timeout",
            Cause::ClientUnreachable => "client_unreachable",
            Cause::ClientIoError => "client_io_error",
            Cause::ClientTlsError => "client_tls_error",
            Cause::BadRequest => "bad_request",
            Cause::NoRoute => "no_route",
            Cause::RequestHeaderTooLarge => "request_header_too_large",
            Cause::RequestTooLarge => "request_too_large",
            Cause::ClientClosedEarly => "client_closed_early",
            Cause::Shutdown => "shutdown",
        }
    }

    /// Whether the cause lies with the client (its leg, or what it sent).
    pub fn is_client_side(self) -> bool {
        matches!(
            self,
            Cause::ClientReset
                | Cause::ClientTcpTimeout
                | Cause::ClientIdleTimeout
                | Cause::ClientHeaderTimeout
                | Cause::ClientUnreachable
                | Cause::ClientIoError
                | Cause::ClientTlsError
                | Cause::ClientClosedEarly
                | Cause::BadRequest
                | Cause::RequestTooLarge
                | Cause::RequestHeaderTooLarge
        )
    }

    /// The HTTP status of an error response plumb makes for this cause.
    pub fn http_status(self) -> u16 {
        match self {
            Cause::UpstreamConnectTimeout
            | Cause::UpstreamResponseTimeout
            | Cause::UpstreamIdleTimeout
            | Cause::UpstreamTcpTimeout => 504,
            Cause::NoHealthyBackend
            | Cause::BackendConnectionLimit
            | Cause::ListenerConnectionLimit
            | Cause::BackendDrained
            | Cause::BackendMarkedDown
            | Cause::Shutdown => 503,
            Cause::NoRoute => 404,
            Cause::RequestHeaderTooLarge => 431,
            Cause::RequestTooLarge => 413,
            Cause::BadRequest => 400,
            Cause::ClientHeaderTimeout | Cause::ClientIdleTimeout => 408,
            Cause::ClientReset
            | Cause::ClientTcpTimeout
            | Cause::ClientUnreachable
            | Cause::ClientIoError
            | Cause::ClientTlsError
            | Cause::ClientClosedEarly => 400,
            Cause::UpstreamConnectRefused
            | Cause::UpstreamUnreachable
            | Cause::UpstreamConnectError
            | Cause::UpstreamReset
            | Cause::UpstreamIoError
            | Cause::UpstreamResetBeforeResponse
            | Cause::UpstreamClosedEarly
            | Cause::UpstreamBadResponse => 502,
        }
    }

    /// The cause of a failed connect to a backend.
    pub fn of_connect_error(e: &io::Error) -> Cause {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Cause::UpstreamConnectRefused,
            // The kernel's own SYN retries ran out before our timer did.
            io::ErrorKind::TimedOut => Cause::UpstreamConnectTimeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Cause::UpstreamUnreachable
            }
            _ => Cause::UpstreamConnectError,
        }
    }

    /// The cause of an I/O error on an established leg.
    pub fn of_io_error(e: &io::Error, side: Side) -> Cause {
        use io::ErrorKind as K;
        if WriteStalled::found_in(e) {
            // plumb's own bound on a write the peer would not take, not the kernel's.
            return match side {
                Side::Client => Cause::ClientIdleTimeout,
                Side::Upstream => Cause::UpstreamIdleTimeout,
            };
        }
        match (side, e.kind()) {
            (Side::Client, K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted) => {
                Cause::ClientReset
            }
            (Side::Upstream, K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted) => {
                Cause::UpstreamReset
            }
            (Side::Client, K::TimedOut) => Cause::ClientTcpTimeout,
            (Side::Upstream, K::TimedOut) => Cause::UpstreamTcpTimeout,
            (Side::Client, K::HostUnreachable | K::NetworkUnreachable) => Cause::ClientUnreachable,
            (Side::Upstream, K::HostUnreachable | K::NetworkUnreachable) => {
                Cause::UpstreamUnreachable
            }
            (Side::Client, _) => Cause::ClientIoError,
            (Side::Upstream, _) => Cause::UpstreamIoError,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A write the peer took no byte of for this long (its receive window stayed shut):
/// plumb gave up on it. Carried inside an `io::Error` of kind `TimedOut`, and mapped
/// to the idle-timeout cause of the side that stopped reading.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the peer took no bytes for {}ms", .0.as_millis())]
pub struct WriteStalled(pub std::time::Duration);

impl WriteStalled {
    /// Whether `e` is plumb's write-stall bound running out (not a kernel timeout).
    pub fn found_in(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<WriteStalled>())
    }
}

/// The two legs of a proxied connection: downstream (client) and upstream (backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's connection to plumb.
    Client,
    /// plumb's connection to the backend.
    Upstream,
}

impl Side {
    /// The other leg.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_snake_case() {
        let names: HashSet<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Cause::ALL.len());
        for n in names {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
        }
    }

    #[test]
    fn io_errors_map_to_the_side_they_happened_on() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Cause::of_io_error(&reset, Side::Client), Cause::ClientReset);
        assert_eq!(
            Cause::of_io_error(&reset, Side::Upstream),
            Cause::UpstreamReset
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Cause::of_connect_error(&refused),
            Cause::UpstreamConnectRefused
        );
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            Cause::of_io_error(&timeout, Side::Upstream),
            Cause::UpstreamTcpTimeout
        );
        assert_eq!(
            Cause::of_connect_error(&timeout),
            Cause::UpstreamConnectTimeout
        );
    }
}
