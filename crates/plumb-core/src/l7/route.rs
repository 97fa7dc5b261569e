//! Choosing a pool for a request by host and path. Pure; no I/O.

use plumb_config::model::Route;

/// The host a request names, lowercase, without port or trailing dot.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let raw = raw.trim();
    let without_port = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = without_port.trim_end_matches('.');
    // Hosts usually come in lower case already: borrowed then, not copied.
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Whether a path has `.` or `..` segments, also percent-encoded (`%2e`).
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e` or `%2E`; looked at in place (this
/// runs for every request).
fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// Whether `route` matches a request for `host` (normalized) and `path`.
pub(crate) fn matches(route: &Route, host: &str, path: &str) -> bool {
    let host_ok = match &route.host {
        None => true,
        Some(pattern) => match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => pattern == host,
        },
    };
    let path_ok = match &route.path_prefix {
        None => true,
        // Stored without a trailing slash; "" is the root prefix "/".
        Some(prefix) if prefix.is_empty() => true,
        Some(prefix) => {
            path == prefix
                || (path.starts_with(prefix.as_str())
                    && path.as_bytes().get(prefix.len()) == Some(&b'/'))
        }
    };
    host_ok && path_ok
}

/// The index of the first route matching, if any.
pub fn first_match<'a, T>(routes: &'a [(Route, T)], host: &str, path: &str) -> Option<&'a T> {
    routes
        .iter()
        .find(|(r, _)| matches(r, host, path))
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The in-place check agrees with decoding each segment and comparing.
        #[test]
        fn dot_segments_as_decoded(path in "(/(\\.|%2[eE]|%2|a|b%|\\.\\.){0,4}){0,5}") {
            let decoded = path.split('/').any(|seg| {
                let d = seg.replace("%2e", ".").replace("%2E", ".");
                d == "." || d == ".."
            });
            proptest::prop_assert_eq!(has_dot_segments(&path), decoded, "{}", path);
        }
    }

    fn route(host: Option<&str>, prefix: Option<&str>) -> Route {
        Route {
            host: host.map(str::to_string),
            path_prefix: prefix.map(|p| p.trim_end_matches('/').to_string()),
            pool: "p".to_string(),
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        let exact = route(Some("api.example.com"), None);
        assert!(matches(&exact, "api.example.com", "/"));
        assert!(!matches(&exact, "www.example.com", "/"));
        let wild = route(Some("*.example.com"), None);
        assert!(matches(&wild, "a.example.com", "/"));
        assert!(matches(&wild, "a.b.example.com", "/"));
        assert!(!matches(&wild, "example.com", "/"));
        assert!(!matches(&wild, "badexample.com", "/"));
    }

    #[test]
    fn paths_match_whole_segments() {
        let api = route(None, Some("/api"));
        assert!(matches(&api, "h", "/api"));
        assert!(matches(&api, "h", "/api/v1/x"));
        assert!(!matches(&api, "h", "/apix"));
        assert!(!matches(&api, "h", "/"));
        let slash = route(None, Some("/api/"));
        assert!(matches(&slash, "h", "/api/x"));
        let root = route(None, Some("/"));
        assert!(matches(&root, "h", "/anything"));
    }

    #[test]
    fn dot_segments() {
        assert!(has_dot_segments("/public/../admin"));
        assert!(has_dot_segments("/public/%2e%2E/admin"));
        assert!(has_dot_segments("/a/./b"));
        assert!(has_dot_segments("/a/.."));
        assert!(!has_dot_segments("/a/..b/c.d"));
        assert!(!has_dot_segments("/"));
    }

    #[test]
    fn first_match_wins_in_order() {
        let routes = vec![
            (route(Some("a.example.com"), Some("/static")), 1),
            (route(Some("a.example.com"), None), 2),
            (route(None, Some("/static")), 3),
        ];
        assert_eq!(
            first_match(&routes, "a.example.com", "/static/x.css"),
            Some(&1)
        );
        assert_eq!(first_match(&routes, "a.example.com", "/"), Some(&2));
        assert_eq!(first_match(&routes, "b.example.com", "/static/x"), Some(&3));
        assert_eq!(first_match(&routes, "b.example.com", "/"), None);
    }
}
