//! What to probe: `http://host[:port]/path` or `tcp://host:port`.

use hyper::Uri;

/// How a target is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A bare connect.
    Tcp,
    /// An HTTP/1.1 request.
    Http,
    /// An HTTP/1.1 request over TLS.
    Https,
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// How.
    pub scheme: Scheme,
    /// The host name or literal, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Path and query (HTTP).
    pub path: String,
}

/// A target that cannot be probed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URL.
    #[error("{0:?} is not a URL (such as http://example.com/ or tcp://example.com:443)")]
    NotAUrl(String),
    /// A scheme plumb does not probe.
    #[error(
        "{url:?}: scheme {scheme:?} is not supported (http or tcp; https is not supported yet)"
    )]
    Scheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// `tcp://` without a port.
    #[error("{0:?}: a tcp:// target needs a port")]
    NoPort(String),
}

impl Target {
    /// Parses a target URL.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| TargetError::NotAUrl(url.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some("tcp") => Scheme::Tcp,
            Some(other) => {
                return Err(TargetError::Scheme {
                    url: url.to_string(),
                    scheme: other.to_string(),
                })
            }
            None => return Err(TargetError::NotAUrl(url.to_string())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::NotAUrl(url.to_string()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(TargetError::NotAUrl(url.to_string()));
        }
        let port = match (authority.port_u16(), scheme) {
            (Some(p), _) => p,
            (None, Scheme::Http) => 80,
            (None, Scheme::Https) => 443,
            (None, Scheme::Tcp) => return Err(TargetError::NoPort(url.to_string())),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Target {
            url: url.to_string(),
            scheme,
            host,
            port,
            path: if path.is_empty() {
                "/".to_string()
            } else {
                path
            },
        })
    }

    /// The Host header value: the host, with the port when it is not the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if (self.scheme == Scheme::Http && self.port == 80)
            || (self.scheme == Scheme::Https && self.port == 443)
        {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://example.com/x?y=1").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port, t.path.as_str()),
            (Scheme::Http, "example.com", 80, "/x?y=1")
        );
        let t = Target::parse("tcp://[::1]:443").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Tcp, "::1", 443)
        );
        assert_eq!(
            Target::parse("http://a:8080").unwrap().host_header(),
            "a:8080"
        );
        assert!(matches!(
            Target::parse("tcp://a"),
            Err(TargetError::NoPort(_))
        ));
        assert!(matches!(
            Target::parse("ftp://a/"),
            Err(TargetError::Scheme { .. })
        ));
        assert_eq!(Target::parse("https://a/").unwrap().port, 443);
        assert_eq!(Target::parse("https://a/").unwrap().host_header(), "a");
        assert_eq!(
            Target::parse("https://a:8443/").unwrap().host_header(),
            "a:8443"
        );
        assert!(Target::parse("not a url").is_err());
    }
}
