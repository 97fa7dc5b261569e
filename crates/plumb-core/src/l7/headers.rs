//! What plumb changes in requests and responses it forwards: hop-by-hop headers
//! removed (RFC 9110 §7.6.1), `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`
//! added, and a request id.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and never cross a proxy (names made once, so that
/// removing them does not parse and hash a string each time).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (a WebSocket handshake
/// must reach the backend).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if h.contains_key(header::CONNECTION) {
        // The usual tokens name no header of their own (`close`) or one removed
        // below anyway (`keep-alive`, `upgrade`): only others are looked up.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !["keep-alive", "close", "upgrade", ""]
                    .iter()
                    .any(|known| t.eq_ignore_ascii_case(known))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if keep_upgrade && name == header::UPGRADE {
                continue;
            }
            h.remove(&name);
        }
    }
    // One pass over the (few) headers present, then removals only for the hop-by-hop
    // names found: most requests and responses carry none of them.
    let mut found = [false; 8];
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            found[i] = true;
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        h.remove(name);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks to switch protocols (WebSocket and the like).
pub(crate) fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// One client connection's part of the forwarding headers, made once per
/// connection: formatting an address costs more than everything else plumb does to
/// a request's head.
#[derive(Debug, Clone)]
pub struct ForwardedFor {
    /// The client's address as `X-Forwarded-For` lists it.
    ip: HeaderValue,
    /// `for=<node>;proto=<proto>`, the start of this hop's `Forwarded` element.
    element: String,
    proto: &'static str,
}

impl ForwardedFor {
    /// For a client at `client`, reached over `proto` (`http` or `https`).
    pub fn new(client: SocketAddr, proto: &'static str) -> ForwardedFor {
        let ip = client.ip();
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        ForwardedFor {
            ip: HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("")),
            element: format!("for={node};proto={proto}"),
            proto,
        }
    }
}

/// `a, b` as a header value, without a second copy of the bytes.
fn joined(prev: &str, next: &str) -> Option<HeaderValue> {
    let mut s = String::with_capacity(prev.len() + 2 + next.len());
    s.push_str(prev);
    s.push_str(", ");
    s.push_str(next);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// Adds the client to `X-Forwarded-For` (appended to what a front sent) and
/// `Forwarded`, and sets `X-Forwarded-Proto`.
pub fn add_forwarded(h: &mut HeaderMap, client: &ForwardedFor, host: &str) {
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            joined(prev, client.ip.to_str().unwrap_or_default())
        }
        _ => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    let with_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',');
    let mut element = String::with_capacity(client.element.len() + 6 + host.len());
    element.push_str(&client.element);
    if with_host {
        element.push_str(";host=");
        element.push_str(host);
    }
    let forwarded = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => joined(prev, &element),
        _ => HeaderValue::from_maybe_shared(bytes::Bytes::from(element)).ok(),
    };
    if let Some(v) = forwarded {
        h.insert(header::FORWARDED, v);
    }
}

/// The request id: the client's, when allowed and sane, else a new random one.
pub fn request_id(h: &HeaderMap, name: &str, keep: bool) -> String {
    if keep {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
                return v.to_string();
            }
        }
    }
    // 32 lowercase hex digits, written directly (`format!` costs several times more).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let digits: Vec<u8> = (0..32)
        .rev()
        .map(|i| HEX[((n >> (i * 4)) & 0xf) as usize])
        .collect();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("keep-alive").is_none());
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.7")]);
        add_forwarded(
            &mut h,
            &ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http"),
            "example.com",
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 192.0.2.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.1;proto=http;host=example.com"
        );
        let mut h6 = HeaderMap::new();
        add_forwarded(
            &mut h6,
            &ForwardedFor::new("[2001:db8::1]:5000".parse().unwrap(), "http"),
            "",
        );
        assert_eq!(
            h6.get("forwarded").unwrap(),
            "for=\"[2001:db8::1]\";proto=http"
        );
    }

    #[test]
    fn request_ids() {
        let h = map(&[("plumb-request-id", "abc-123")]);
        assert_eq!(request_id(&h, "plumb-request-id", true), "abc-123");
        let fresh = request_id(&h, "plumb-request-id", false);
        assert_eq!(fresh.len(), 32);
        assert!(fresh
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fresh, "abc-123");
        // Fresh ids differ (128 random bits) and use every digit position: over a few
        // hundred ids, each position takes more than one value.
        let ids: Vec<String> = (0..300)
            .map(|_| request_id(&h, "plumb-request-id", false))
            .collect();
        for pos in 0..32 {
            let distinct: std::collections::HashSet<u8> =
                ids.iter().map(|i| i.as_bytes()[pos]).collect();
            assert!(distinct.len() > 1, "digit {pos} never changes");
        }
        let bad = map(&[("plumb-request-id", "has space")]);
        assert_ne!(request_id(&bad, "plumb-request-id", true), "has space");
    }
}
