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

/// Which of `HOP_BY_HOP` `name` is. Lengths first: most names have none of the six
/// lengths, and a standard name's text is a table lookup, so a typical header costs
/// a few instructions rather than eight comparisons of `HeaderName`s.
fn hop_index(name: &HeaderName) -> Option<usize> {
    let s = name.as_str();
    match s.len() {
        2 | 7 | 10 | 16 | 17 | 19 => HOP_BY_HOP.iter().position(|hop| hop.as_str() == s),
        _ => None,
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (a WebSocket handshake
/// must reach the backend).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) headers present, then removals only for the hop-by-hop
    // names found: most requests and responses carry none but `Connection`.
    let mut found = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = hop_index(name) {
            found[i] = true;
        }
    }
    if found[0] {
        // The usual tokens name no header of their own (`close`) or one removed
        // below anyway (`keep-alive`, `upgrade`): only others are looked up.
        let named: Vec<HeaderName> = tokens(h, &header::CONNECTION)
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
    h.contains_key(header::UPGRADE) && lists(h, &header::CONNECTION, "upgrade")
}

/// The tokens of a comma-separated list field (`Connection`, `Transfer-Encoding`),
/// over all its lines, trimmed, in order.
pub(crate) fn tokens<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a list field names `token` (case-insensitive).
pub(crate) fn lists(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(h, name).any(|t| t.eq_ignore_ascii_case(token))
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
    /// For a client at `client`, reached over `proto` (`http` or `https`). Once per
    /// connection, and with one request per connection it is a real share of the
    /// work: the address is written once, IPv4 without `fmt`.
    pub fn new(client: SocketAddr, proto: &'static str) -> ForwardedFor {
        let ip = client.ip();
        let text = ip_text(ip);
        let mut element = String::with_capacity(text.len() + 16 + proto.len());
        element.push_str("for=");
        match ip {
            IpAddr::V4(_) => element.push_str(&text),
            IpAddr::V6(_) => {
                element.push_str("\"[");
                element.push_str(&text);
                element.push_str("]\"");
            }
        }
        element.push_str(";proto=");
        element.push_str(proto);
        ForwardedFor {
            ip: HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("")),
            element,
            proto,
        }
    }
}

/// An address as text, as `Display` writes it.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    s.push(char::from(b'0' + octet / 10 % 10));
                }
                s.push(char::from(b'0' + octet % 10));
            }
            s
        }
        IpAddr::V6(v6) => v6.to_string(),
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
/// `Forwarded`, and sets `X-Forwarded-Proto`. Each header is looked up once (an
/// entry), not once to read and again to write.
pub fn add_forwarded(h: &mut HeaderMap, client: &ForwardedFor, host: &str) {
    append_or_set(h.entry(X_FORWARDED_FOR), client.ip.clone());
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
    let Ok(own) = HeaderValue::from_maybe_shared(bytes::Bytes::from(element)) else {
        return;
    };
    append_or_set(h.entry(header::FORWARDED), own);
}

/// Sets the entry to `own`, or, when it holds text, to its values followed by
/// `own` (several lines of a list header are one list, RFC 9110 §5.3: joined with
/// ", ", blank ones skipped). A value that is not text is replaced by `own`.
fn append_or_set(entry: header::Entry<'_, HeaderValue>, own: HeaderValue) {
    match entry {
        header::Entry::Occupied(mut e) => {
            let mut prev: Option<std::borrow::Cow<'_, str>> = None;
            let mut text = true;
            for v in e.iter() {
                match v.to_str() {
                    Ok(t) if t.trim().is_empty() => {}
                    Ok(t) => match &mut prev {
                        None => prev = Some(std::borrow::Cow::Borrowed(t)),
                        Some(p) => {
                            let p = p.to_mut();
                            p.push_str(", ");
                            p.push_str(t);
                        }
                    },
                    Err(_) => {
                        text = false;
                        break;
                    }
                }
            }
            let own_text = own.to_str().unwrap_or_default();
            match prev.filter(|_| text).map(|p| joined(&p, own_text)) {
                Some(Some(v)) => {
                    e.insert(v);
                }
                // Unjoinable (cannot happen for header-safe text): keep what was sent.
                Some(None) => {}
                None => {
                    e.insert(own);
                }
            }
        }
        header::Entry::Vacant(e) => {
            e.insert(own);
        }
    }
}

/// The request id: the client's, when allowed and sane, else a new random one. A
/// header value, so that the request, the response and the log share one copy.
pub fn request_id(h: &HeaderMap, name: &HeaderName, keep: bool) -> HeaderValue {
    if keep {
        if let Some(v) = h.get(name) {
            let sane = |t: &str| {
                !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())
            };
            if let Ok(text) = v.to_str() {
                let t = text.trim();
                if sane(t) {
                    if t.len() == text.len() {
                        return v.clone();
                    }
                    if let Ok(trimmed) = HeaderValue::from_str(t) {
                        return trimmed;
                    }
                }
            }
        }
    }
    new_request_id()
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits, written directly
/// (`format!` costs several times more).
pub(crate) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((n >> ((31 - i) * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).unwrap_or(HeaderValue::from_static("-"))
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
    fn forwarded_headers_join_repeated_lines_and_replace_blank_ones() {
        let client = ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "https");
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", " "),
            ("x-forwarded-proto", "http"),
        ]);
        add_forwarded(&mut h, &client, "");
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["203.0.113.7, 198.51.100.2, 192.0.2.1"]);
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fwd, ["for=192.0.2.1;proto=https"]);
        let proto: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
        assert_eq!(proto, ["https"]);
    }

    #[test]
    fn every_hop_by_hop_name_is_recognised_and_no_other() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(hop), Some(i), "{hop}");
        }
        for other in [
            "accept",
            "x-trace",
            "upgrade-insecure-requests",
            "trailers",
            "tk",
        ] {
            let name = HeaderName::from_static(other);
            assert_eq!(hop_index(&name), None, "{other}");
        }
    }

    proptest::proptest! {
        /// Every IPv4 address is written as `Display` writes it.
        #[test]
        fn ipv4_text_as_display(octets in proptest::array::uniform4(0u8..)) {
            let ip = IpAddr::from(octets);
            proptest::prop_assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn request_ids() {
        let name = HeaderName::from_static("plumb-request-id");
        let h = map(&[("plumb-request-id", "abc-123")]);
        assert_eq!(request_id(&h, &name, true), "abc-123");
        let padded = map(&[("plumb-request-id", " abc-123 ")]);
        assert_eq!(request_id(&padded, &name, true), "abc-123");
        let fresh = request_id(&h, &name, false);
        assert_eq!(fresh.len(), 32);
        assert!(fresh
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(fresh, "abc-123");
        // Fresh ids differ (128 random bits) and use every digit position: over a few
        // hundred ids, each position takes more than one value.
        let ids: Vec<HeaderValue> = (0..300).map(|_| request_id(&h, &name, false)).collect();
        for pos in 0..32 {
            let distinct: std::collections::HashSet<u8> =
                ids.iter().map(|i| i.as_bytes()[pos]).collect();
            assert!(distinct.len() > 1, "digit {pos} never changes");
        }
        let bad = map(&[("plumb-request-id", "has space")]);
        assert_ne!(request_id(&bad, &name, true), "has space");
    }
}
