//! plumb's data plane: listeners, pools and balancing, the TCP proxy, and the
//! connection table that maps every client connection to its backend connection.
//!
//! What it deliberately does not do: parse config files (plumb-config), make socket
//! system calls of its own (plumb-sys), serve the admin API (plumb-admin), or read the
//! wall clock for timers (tokio's clock only, so paused-time tests work).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accesslog;
pub mod cause;
pub mod conntable;
pub mod discovery;
pub mod health;
pub mod l4;
mod l7;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy_protocol;
pub mod recent;
pub mod server;
mod sockopt;
pub mod tls;
pub mod upstream;
pub mod workers;

/// The pure functions on every request's path, for the criterion benchmarks
/// (`benches/hot.rs`), so that a change that slows one shows up in review. Not an
/// API: names and signatures follow the data plane.
#[doc(hidden)]
pub mod hot {
    pub use crate::l7::headers::{request_id, strip_hop_by_hop, ForwardedFor};
    pub use crate::l7::route::{first_match, has_dot_segments, normalize_host};

    /// A request's rewrite for upstream (hop-by-hop fields out, forwarding fields
    /// and the request id in), written as plumb's own HTTP/1.1 path writes it.
    pub fn upstream_head(
        buf: &mut bytes::BytesMut,
        head: &hyper::http::request::Parts,
        client: &ForwardedFor,
        host: &str,
        rid: (hyper::header::HeaderName, hyper::header::HeaderValue),
    ) {
        rewritten(head, client, host, rid, |up| {
            crate::l7::h1::encode_head(buf, up)
        });
    }

    /// The same rewrite as the map hyper's client sends (requests with a body).
    pub fn upstream_map(
        head: &hyper::http::request::Parts,
        client: &ForwardedFor,
        host: &str,
        rid: (hyper::header::HeaderName, hyper::header::HeaderValue),
    ) -> hyper::HeaderMap {
        rewritten(head, client, host, rid, |up| up.fields.to_map())
    }

    fn rewritten<R>(
        head: &hyper::http::request::Parts,
        client: &ForwardedFor,
        host: &str,
        rid: (hyper::header::HeaderName, hyper::header::HeaderValue),
        then: impl FnOnce(crate::l7::client::UpHead<'_>) -> R,
    ) -> R {
        let rewrite =
            crate::l7::headers::Rewrite::new(&head.headers, false, client, host, rid, None, false);
        then(crate::l7::client::UpHead {
            method: &head.method,
            uri: &head.uri,
            fields: crate::l7::headers::Upstream {
                fields: &head.headers,
                rewrite: &rewrite,
            },
        })
    }
}

/// A hash map for keys plumb itself chooses (backend addresses, pool names,
/// status codes), not clients: foldhash rather than SipHash, whose flooding
/// resistance such keys do not need and which cost more than the lookups it guards.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Locks `m`, going on past a poisoned lock (a panicked task leaves no state that
/// the others cannot use).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use accesslog::{AccessLog, End};
pub use cause::{Cause, Side};
pub use listener::{bind, bind_all, bind_all_with, BoundListener};
pub use server::Server;
