//! What plumb changes in requests and responses it forwards: hop-by-hop headers
//! removed (RFC 9110 §7.6.1), `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`
//! added, and a request id.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
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

/// `HOP_BY_HOP` as text, in the same order (the configuration's list, which also
/// keeps these names from being the request-id header).
pub(crate) const HOP_NAMES: [&str; 8] = plumb_config::model::HOP_BY_HOP_HEADERS;

/// `Connection` and `Transfer-Encoding` in `HOP_NAMES`.
pub(crate) const CONNECTION_HOP: usize = 0;
pub(crate) const TRANSFER_ENCODING_HOP: usize = 5;

/// Which of `HOP_BY_HOP` a field name is, in any case (a backend's, as it sent it).
/// Lengths first: most names have none of the six lengths. Compared as text against
/// `HOP_NAMES`: comparing `HeaderName`s, or taking each hop name's text from its
/// `HeaderName`, cost several times more (callgrind).
pub(crate) fn hop_position(name: &[u8]) -> Option<usize> {
    match name.len() {
        2 | 7 | 10 | 16 | 17 | 19 => HOP_NAMES
            .iter()
            .position(|hop| name.eq_ignore_ascii_case(hop.as_bytes())),
        _ => None,
    }
}

fn hop_index(name: &HeaderName) -> Option<usize> {
    hop_position(name.as_str().as_bytes())
}

/// The elements of a comma-separated field value as sent, trimmed (empty ones too).
pub(crate) fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (a WebSocket handshake
/// must reach the backend).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let hop = hop_present(h);
    let named = connection_named(h, &hop);
    remove_hop(h, &hop, &named, keep_upgrade);
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Which of [`HOP_BY_HOP`] `h` has: one pass over the (few) fields present, so that
/// removals are only for names found (most messages carry none but `Connection`).
fn hop_present(h: &HeaderMap) -> [bool; HOP_BY_HOP.len()] {
    let mut found = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = hop_index(name) {
            found[i] = true;
        }
    }
    found
}

/// The other fields `Connection` names. The usual tokens name no field of their own
/// (`close`) or one that goes anyway (`keep-alive`, `upgrade`): only others count.
fn connection_named(h: &HeaderMap, hop: &[bool; HOP_BY_HOP.len()]) -> Vec<HeaderName> {
    if !hop[0] {
        return Vec::new();
    }
    tokens(h, &header::CONNECTION)
        .filter(|t| !names_no_field(t.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Whether a `Connection` token (trimmed) is one of the usual ones, which name no
/// field that is not hop-by-hop anyway: `close`, `keep-alive`, `upgrade`, or empty.
pub(crate) fn names_no_field(token: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade", b""]
        .iter()
        .any(|known| token.eq_ignore_ascii_case(known))
}

/// Removes the hop-by-hop fields found (`hop`, `named`); with `keep_upgrade`, not
/// `Connection` and `Upgrade`.
fn remove_hop(
    h: &mut HeaderMap,
    hop: &[bool; HOP_BY_HOP.len()],
    named: &[HeaderName],
    keep_upgrade: bool,
) {
    for name in named {
        h.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(hop).filter(|(_, f)| **f) {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        h.remove(name);
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

/// `own` after the text values of `prev` (several lines of a list field are one
/// list, RFC 9110 §5.3: joined with ", ", blank ones skipped). With no such values,
/// or one that is not text, `own` alone.
fn appended<'a>(prev: impl Iterator<Item = &'a HeaderValue>, own: HeaderValue) -> HeaderValue {
    let mut joined: Option<String> = None;
    for v in prev {
        match v.to_str() {
            Ok(t) if t.trim().is_empty() => {}
            Ok(t) => {
                let s =
                    joined.get_or_insert_with(|| String::with_capacity(t.len() + 2 + own.len()));
                if !s.is_empty() {
                    s.push_str(", ");
                }
                s.push_str(t);
            }
            Err(_) => return own,
        }
    }
    let Some(mut s) = joined else {
        return own;
    };
    s.push_str(", ");
    s.push_str(own.to_str().unwrap_or_default());
    // Text fields joined by ", " stay a valid value; `own` is the fallback all the same.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or(own)
}

/// How a request's fields change on their way upstream, worked out once from the
/// client's map without touching it: hop-by-hop fields go (RFC 9110 §7.6.1), and
/// plumb sets its own: `X-Forwarded-For` (the client appended to what a front sent),
/// `X-Forwarded-Proto`, `Forwarded`, the request id, and where needed `Host` and one
/// joined `Cookie` line. [`Rewrite::apply`] makes the map hyper's client sends;
/// [`Upstream::iter`] lists the same fields for plumb's own HTTP/1.1 path, which
/// writes them straight out: no copy of the map, no growth.
#[derive(Debug)]
pub(crate) struct Rewrite {
    /// The hop-by-hop names present, in [`HOP_BY_HOP`] order.
    hop: [bool; HOP_BY_HOP.len()],
    /// Other names the client's `Connection` lists.
    named: Vec<HeaderName>,
    /// An upgrade goes through: `Upgrade` stays and `Connection: upgrade` is set.
    keep_upgrade: bool,
    /// Plumb's fields, each replacing any the client sent: `Host` first (when set),
    /// then the rest in this order.
    own: [Option<(HeaderName, HeaderValue)>; 7],
}

/// The client's fields as they go upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstream<'a> {
    pub(crate) fields: &'a HeaderMap,
    pub(crate) rewrite: &'a Rewrite,
}

impl Rewrite {
    /// For a request with fields `h` from `client`, routed by `host`, with request
    /// id `rid`. `set_host` replaces the client's `Host` (HTTP/2 and absolute-form
    /// requests have none of their own), and `join_cookies` makes one line of
    /// several `Cookie` fields (HTTP/2 splits them; HTTP/1.1 wants one, RFC 9113
    /// §8.2.3).
    pub(crate) fn new(
        h: &HeaderMap,
        keep_upgrade: bool,
        client: &ForwardedFor,
        host: &str,
        rid: (HeaderName, HeaderValue),
        set_host: Option<HeaderValue>,
        join_cookies: bool,
    ) -> Rewrite {
        let hop = hop_present(h);
        let named = connection_named(h, &hop);
        // What plumb sets is worked out from the fields that go upstream: a field
        // the client's `Connection` names is not one of them.
        let lines = |name: &HeaderName| {
            let gone = named.contains(name);
            h.get_all(name).into_iter().filter(move |_| !gone)
        };
        // The client's Host was to stay; named by `Connection`, it goes, and is set
        // again (the same value: the one the request was routed by).
        let set_host = match set_host {
            None if named.contains(&header::HOST) => h.get(header::HOST).cloned(),
            other => other,
        };
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
        // (The element is a valid value: the host was checked above. Were it not,
        // the client's `Forwarded` lines would go as sent.)
        let forwarded = HeaderValue::from_maybe_shared(bytes::Bytes::from(element))
            .ok()
            .map(|own| appended(lines(&header::FORWARDED), own));
        let cookie = if join_cookies && lines(&header::COOKIE).nth(1).is_some() {
            let joined = lines(&header::COOKIE)
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join("; ");
            HeaderValue::from_str(&joined).ok()
        } else {
            None
        };
        let xff = appended(lines(&X_FORWARDED_FOR), client.ip.clone());
        Rewrite {
            hop,
            named,
            keep_upgrade,
            own: [
                set_host.map(|v| (header::HOST, v)),
                Some((X_FORWARDED_FOR, xff)),
                Some((X_FORWARDED_PROTO, HeaderValue::from_static(client.proto))),
                forwarded.map(|v| (header::FORWARDED, v)),
                Some(rid),
                cookie.map(|v| (header::COOKIE, v)),
                keep_upgrade.then(|| (header::CONNECTION, HeaderValue::from_static("upgrade"))),
            ],
        }
    }

    fn own(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.own.iter().flatten().map(|(n, v)| (n, v))
    }

    /// Whether the client's field `name` goes upstream as it is.
    fn keeps(&self, name: &HeaderName) -> bool {
        if let Some(i) = hop_index(name) {
            // Present, so flagged; `Upgrade` stays for an upgrade (`Connection` is
            // plumb's own then).
            return self.keep_upgrade && HOP_BY_HOP[i] == header::UPGRADE;
        }
        if self.named.contains(name) {
            return false;
        }
        !self.own().any(|(own, _)| own == name)
    }

    /// Makes `h` (the map the rewrite was worked out from) the map that goes
    /// upstream.
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        remove_hop(h, &self.hop, &self.named, self.keep_upgrade);
        for (name, value) in self.own() {
            h.insert(name.clone(), value.clone());
        }
    }
}

impl<'a> Upstream<'a> {
    /// The fields that go upstream, in order: `Host` when plumb sets it, the
    /// client's that stay, then plumb's others.
    pub(crate) fn iter(self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        let (host, rest) = self.rewrite.own.split_at(1);
        let pair = |o: &'a Option<(HeaderName, HeaderValue)>| o.as_ref().map(|(n, v)| (n, v));
        host.iter()
            .filter_map(pair)
            .chain(
                self.fields
                    .iter()
                    .filter(move |(n, _)| self.rewrite.keeps(n)),
            )
            .chain(rest.iter().filter_map(pair))
    }

    /// At least the bytes the fields take as `name: value\r\n` lines.
    pub(crate) fn len_bound(self) -> usize {
        let line = |(n, v): (&HeaderName, &HeaderValue)| n.as_str().len() + v.len() + 4;
        self.fields.iter().map(line).sum::<usize>() + self.rewrite.own().map(line).sum::<usize>()
    }

    /// The map hyper's client sends: a copy of the client's, rewritten.
    pub(crate) fn to_map(self) -> HeaderMap {
        let mut h = self.fields.clone();
        self.rewrite.apply(&mut h);
        h
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

/// The request id as a response field, marked sensitive: HPACK then sends it as
/// a literal never indexed. Each id is unique, so indexing it would only push the
/// fields that do repeat (`server`, `content-type`) out of an HTTP/2 connection's
/// table, and h2's encoder would first compare it with every earlier id held
/// under the same name. HTTP/1.1 writes it the same either way.
pub(crate) fn id_field(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
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

    fn rid() -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_static("plumb-request-id"),
            HeaderValue::from_static("r1"),
        )
    }

    /// `h` as it goes upstream through hyper's client (the map) and through plumb's
    /// own path (the field list), after checking that the two agree.
    fn upstream(h: &HeaderMap, rewrite: &Rewrite) -> HeaderMap {
        let view = Upstream { fields: h, rewrite };
        let map = view.to_map();
        let listed: Vec<(String, Vec<u8>)> = view
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut from_map: Vec<(String, Vec<u8>)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        from_map.sort();
        assert_eq!(sorted, from_map, "the written fields and the map disagree");
        // Per name, the lines keep their order.
        for name in map.keys() {
            let in_map: Vec<&[u8]> = map.get_all(name).iter().map(|v| v.as_bytes()).collect();
            let in_list: Vec<&[u8]> = listed
                .iter()
                .filter(|(n, _)| n == name.as_str())
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(in_map, in_list, "{name}");
        }
        map
    }

    fn forwarded(h: &HeaderMap, client: &ForwardedFor, host: &str) -> HeaderMap {
        upstream(h, &Rewrite::new(h, false, client, host, rid(), None, false))
    }

    #[test]
    fn forwarded_headers_append() {
        let h = map(&[("x-forwarded-for", "203.0.113.7")]);
        let h = forwarded(
            &h,
            &ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http"),
            "example.com",
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 192.0.2.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=192.0.2.1;proto=http;host=example.com"
        );
        assert_eq!(h.get("plumb-request-id").unwrap(), "r1");
        let h6 = forwarded(
            &HeaderMap::new(),
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
        let h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", " "),
            ("x-forwarded-proto", "http"),
        ]);
        let h = forwarded(&h, &client, "");
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["203.0.113.7, 198.51.100.2, 192.0.2.1"]);
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fwd, ["for=192.0.2.1;proto=https"]);
        let proto: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
        assert_eq!(proto, ["https"]);
    }

    #[test]
    fn rewrite_drops_hop_by_hop_sets_plumbs_fields_and_keeps_the_rest_in_order() {
        let client = ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http");
        let h = map(&[
            ("host", "client.example"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("accept", "*/*"),
            ("plumb-request-id", "spoofed"),
            ("te", "trailers"),
            ("cookie", "a=1"),
            ("x-two", "a"),
            ("cookie", "b=2"),
            ("x-two", "b"),
        ]);
        // An HTTP/2 request: Host set by plumb (written first), cookies joined.
        let rw = Rewrite::new(
            &h,
            false,
            &client,
            "routed.example",
            rid(),
            Some(HeaderValue::from_static("routed.example")),
            true,
        );
        let view = Upstream {
            fields: &h,
            rewrite: &rw,
        };
        let lines: Vec<String> = view
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            lines,
            [
                "host: routed.example",
                "accept: */*",
                "x-two: a",
                "x-two: b",
                "x-forwarded-for: 192.0.2.1",
                "x-forwarded-proto: http",
                "forwarded: for=192.0.2.1;proto=http;host=routed.example",
                "plumb-request-id: r1",
                "cookie: a=1; b=2",
            ]
        );
        upstream(&h, &rw);
        // HTTP/1.1 with its own Host: the client's stays where it was (second
        // here), and two Cookie lines stay two.
        let h1 = map(&[
            ("accept", "*/*"),
            ("host", "client.example"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        let rw = Rewrite::new(&h1, false, &client, "client.example", rid(), None, false);
        let m = upstream(&h1, &rw);
        assert_eq!(m.get_all("cookie").iter().count(), 2);
        let names: Vec<&str> = Upstream {
            fields: &h1,
            rewrite: &rw,
        }
        .iter()
        .map(|(n, _)| n.as_str())
        .take(2)
        .collect();
        assert_eq!(names, ["accept", "host"]);
    }

    #[test]
    fn fields_the_clients_connection_names_do_not_feed_plumbs_own() {
        let client = ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http");
        let h = map(&[
            ("host", "client.example"),
            ("connection", "host, x-forwarded-for, forwarded, cookie"),
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        // The client's Host was to stay (None), but Connection names it: it goes,
        // and plumb sets the same value again. The forwarding fields start afresh,
        // and no Cookie is made of the named lines.
        let rw = Rewrite::new(&h, false, &client, "client.example", rid(), None, true);
        let m = upstream(&h, &rw);
        let host: Vec<_> = m.get_all("host").iter().collect();
        assert_eq!(host, ["client.example"]);
        assert_eq!(m.get("x-forwarded-for").unwrap(), "192.0.2.1");
        assert_eq!(
            m.get("forwarded").unwrap(),
            "for=192.0.2.1;proto=http;host=client.example"
        );
        assert!(m.get("cookie").is_none());
        assert!(m.get("connection").is_none());
    }

    #[test]
    fn rewrite_of_an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let client = ForwardedFor::new("192.0.2.1:5000".parse().unwrap(), "http");
        let h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        let rw = Rewrite::new(&h, true, &client, "", rid(), None, false);
        let m = upstream(&h, &rw);
        assert_eq!(m.get("upgrade").unwrap(), "websocket");
        let conn: Vec<_> = m.get_all("connection").iter().collect();
        assert_eq!(conn, ["upgrade"]);
        assert!(m.get("keep-alive").is_none());
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
