//! From [`file::File`] to [`Config`]: every error collected, each with its field path.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Value;

use crate::duration::parse_duration;
use crate::file;
use crate::model::*;

/// One problem in a config, at a field path such as `pool[1].timeouts.connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a field path, or a line and column for a TOML syntax error.
    pub path: String,
    /// What is wrong, lowercase, no final period.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(crate) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(text, &e)])),
    };
    let mut errors = Vec::new();
    check_shapes(&mut table, &mut errors);
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
    let de = serde_ignored::Deserializer::new(Value::Table(table), &mut on_unknown);
    let result: Result<file::File, _> = serde_path_to_error::deserialize(de);
    let file = match result {
        Ok(f) => f,
        Err(e) => {
            let path = error_path(e.path());
            let message = e.into_inner().message().to_string();
            errors.push(ConfigError { path, message });
            return Err(ConfigErrors(errors));
        }
    };
    for path in unknown {
        errors.push(ConfigError {
            path,
            message: "unknown key".to_string(),
        });
    }
    let mut v = Validator { errors };
    let config = v.config(&file);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// Tables that must be tables, checked before serde sees the file: a wrong shape is
/// reported and removed, so one misplaced value does not hide every other error.
fn check_shapes(root: &mut toml::Table, errors: &mut Vec<ConfigError>) {
    fn expect_table(t: &mut toml::Table, key: &str, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(v) = t.get(key) {
            if !v.is_table() {
                errors.push(ConfigError {
                    path: path.to_string(),
                    message: format!("expected a table, found {}", show(v)),
                });
                t.remove(key);
            }
        }
    }
    expect_table(root, "runtime", "runtime", errors);
    expect_table(root, "admin", "admin", errors);
    for (key, subtables) in [
        ("listener", &["tcp", "timeouts"][..]),
        (
            "pool",
            &["timeouts", "tcp", "health", "drain", "upstream", "passive"][..],
        ),
    ] {
        let ok = match root.get(key) {
            None => continue,
            Some(Value::Array(items)) => items.iter().all(Value::is_table),
            Some(_) => false,
        };
        if !ok {
            errors.push(ConfigError {
                path: key.to_string(),
                message: format!("expected [[{key}]] entries (an array of tables)"),
            });
            root.remove(key);
            continue;
        }
        if let Some(Value::Array(items)) = root.get_mut(key) {
            for (i, item) in items.iter_mut().enumerate() {
                if let Value::Table(t) = item {
                    for sub in subtables {
                        expect_table(t, sub, &format!("{key}[{i}].{sub}"), errors);
                    }
                }
            }
        }
    }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let path = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => String::new(),
    };
    ConfigError {
        path,
        message: format!("invalid TOML: {}", e.message()),
    }
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.to_string()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Quotes a raw value the way it appeared in the file, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The longest duration any setting accepts: long enough for any timer, short enough
/// that adding it to "now" can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn config(&mut self, f: &file::File) -> Config {
        let runtime = self.runtime(f.runtime.as_ref());
        let admin = self.admin(f.admin.as_ref());
        let pools: Vec<Pool> = f
            .pool
            .iter()
            .enumerate()
            .map(|(i, p)| self.pool(&format!("pool[{i}]"), p))
            .collect();
        let listeners: Vec<Listener> = f
            .listener
            .iter()
            .enumerate()
            .map(|(i, l)| self.listener(&format!("listener[{i}]"), l))
            .collect();
        if f.listener.is_empty() {
            self.err("listener", "at least one [[listener]] is required");
        }
        self.unique_names("pool", pools.iter().map(|p| p.name.as_str()));
        self.unique_names("listener", listeners.iter().map(|l| l.name.as_str()));
        let mut bound = HashSet::new();
        // Settings that only the TCP proxy applies must not be set where HTTP would
        // silently ignore them.
        for (i, l) in listeners.iter().enumerate() {
            if l.protocol != Protocol::Http {
                continue;
            }
            if l.accept_proxy {
                self.err(
                    &format!("listener[{i}].accept_proxy"),
                    "not supported on http listeners yet (only tcp listeners read a PROXY header)",
                );
            }
            let used: Vec<&str> = l
                .pool
                .iter()
                .map(String::as_str)
                .chain(l.routes.iter().map(|r| r.pool.as_str()))
                .collect();
            for (j, p) in pools.iter().enumerate() {
                if !used.contains(&p.name.as_str()) {
                    continue;
                }
                if p.send_proxy.is_some() {
                    self.err(
                        &format!("pool[{j}].send_proxy"),
                        format!("not supported for pools behind http listener {:?} yet (only the tcp proxy sends a PROXY header)", l.name),
                    );
                }
                if p.upstream.preconnect > 0 {
                    self.err(
                        &format!("pool[{j}].upstream.preconnect"),
                        format!("not supported for pools behind http listener {:?} (HTTP keeps its own kept-alive connections)", l.name),
                    );
                }
            }
        }
        for (i, l) in listeners.iter().enumerate() {
            if let Some(pool) = &l.pool {
                if !pool.is_empty() && !pools.iter().any(|p| &p.name == pool) {
                    self.err(
                        &format!("listener[{i}].pool"),
                        format!("pool {pool:?} does not exist"),
                    );
                }
            }
            for (j, r) in l.routes.iter().enumerate() {
                if !r.pool.is_empty() && !pools.iter().any(|p| p.name == r.pool) {
                    self.err(
                        &format!("listener[{i}].route[{j}].pool"),
                        format!("pool {:?} does not exist", r.pool),
                    );
                }
            }
            for (j, addr) in l.listen.iter().enumerate() {
                // Port 0 asks the kernel for a free port: never a clash.
                if addr.port() == 0 {
                    continue;
                }
                if !bound.insert(*addr) {
                    self.err(
                        &format!("listener[{i}].listen[{j}]"),
                        format!("{addr} is already used by another listener"),
                    );
                } else if *addr == admin.listen {
                    self.err(
                        &format!("listener[{i}].listen[{j}]"),
                        format!("{addr} is the admin API's address"),
                    );
                }
            }
        }
        Config {
            runtime,
            admin,
            listeners,
            pools,
        }
    }

    fn unique_names<'a>(&mut self, what: &str, names: impl Iterator<Item = &'a str>) {
        let mut seen = HashSet::new();
        for (i, name) in names.enumerate() {
            if !name.is_empty() && !seen.insert(name) {
                self.err(
                    &format!("{what}[{i}].name"),
                    format!("duplicate {what} name {name:?}"),
                );
            }
        }
    }

    fn runtime(&mut self, r: Option<&file::Runtime>) -> Runtime {
        let d = file::Runtime::default();
        let r = r.unwrap_or(&d);
        let workers = r
            .workers
            .as_ref()
            .and_then(|v| self.int(v, "runtime.workers", 1, 1024))
            .map(|n| n as usize);
        let access_log = match &r.access_log {
            None => AccessLog::Stderr,
            Some(v) => match self.string(v, "runtime.access_log") {
                Some("stderr") => AccessLog::Stderr,
                Some("off") => AccessLog::Off,
                Some("") => {
                    self.err(
                        "runtime.access_log",
                        "empty path (use \"stderr\", \"off\" or a file path)",
                    );
                    AccessLog::Stderr
                }
                Some(path) => AccessLog::File(PathBuf::from(path)),
                None => AccessLog::Stderr,
            },
        };
        let shutdown_grace = self.duration_or(
            r.shutdown_grace.as_ref(),
            "runtime.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
        );
        let upgrade_socket = r.upgrade_socket.as_ref().and_then(|v| {
            match self.string(v, "runtime.upgrade_socket") {
                Some("") => {
                    self.err("runtime.upgrade_socket", "empty path");
                    None
                }
                Some(path) => Some(PathBuf::from(path)),
                None => None,
            }
        });
        Runtime {
            workers,
            access_log,
            shutdown_grace,
            upgrade_socket,
        }
    }

    fn admin(&mut self, a: Option<&file::Admin>) -> Admin {
        let default_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9901));
        let d = file::Admin::default();
        let a = a.unwrap_or(&d);
        let listen = a
            .listen
            .as_ref()
            .and_then(|v| self.addr(v, "admin.listen"))
            .unwrap_or(default_listen);
        let token_file = a
            .token_file
            .as_ref()
            .and_then(|v| self.string(v, "admin.token_file"))
            .map(PathBuf::from);
        if !listen.ip().is_loopback() && token_file.is_none() {
            self.err(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address: the admin API can drain and deregister backends, so binding it elsewhere requires admin.token_file"
                ),
            );
        }
        Admin { listen, token_file }
    }

    fn listener(&mut self, path: &str, l: &file::Listener) -> Listener {
        let name = self.name(l.name.as_ref(), &format!("{path}.name"));
        let listen = match &l.listen {
            None => {
                self.err(
                    &format!("{path}.listen"),
                    "missing (an address such as \"127.0.0.1:8080\")",
                );
                Vec::new()
            }
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.err(&format!("{path}.listen"), "empty list of addresses");
                }
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| self.addr(v, &format!("{path}.listen[{i}]")))
                    .collect()
            }
            Some(v) => self
                .addr(v, &format!("{path}.listen"))
                .into_iter()
                .collect(),
        };
        let protocol = match &l.protocol {
            None => Protocol::Tcp,
            Some(v) => match self.string(v, &format!("{path}.protocol")) {
                Some("tcp") | None => Protocol::Tcp,
                Some("http") => Protocol::Http,
                Some(other) => {
                    self.err(
                        &format!("{path}.protocol"),
                        format!("{other:?} is not a protocol (expected \"tcp\" or \"http\")"),
                    );
                    Protocol::Tcp
                }
            },
        };
        let backlog = l
            .backlog
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.backlog"), 1, 65535))
            .map_or(DEFAULT_BACKLOG, |n| n as u32);
        let max_connections = l
            .max_connections
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.max_connections"), 1, 10_000_000))
            .map(|n| n as usize);
        let pool = match &l.pool {
            Some(v) => self.string(v, &format!("{path}.pool")).map(str::to_string),
            None => None,
        };
        let routes = self.routes(l.route.as_ref(), &format!("{path}.route"));
        match protocol {
            Protocol::Tcp => {
                if l.pool.is_none() {
                    self.err(&format!("{path}.pool"), "missing (the name of a [[pool]])");
                }
                if l.route.is_some() {
                    self.err(
                        &format!("{path}.route"),
                        "only applies to protocol = \"http\"",
                    );
                }
                for (key, set) in [
                    ("request_id_header", l.request_id_header.is_some()),
                    ("keep_request_id", l.keep_request_id.is_some()),
                    ("max_header_bytes", l.max_header_bytes.is_some()),
                    ("max_body_bytes", l.max_body_bytes.is_some()),
                    (
                        "timeouts.keepalive_idle",
                        l.timeouts
                            .as_ref()
                            .is_some_and(|t| t.keepalive_idle.is_some()),
                    ),
                ] {
                    if set {
                        self.err(
                            &format!("{path}.{key}"),
                            "only applies to protocol = \"http\"",
                        );
                    }
                }
            }
            Protocol::Http => {
                if l.pool.is_none() && routes.is_empty() {
                    self.err(
                        &format!("{path}.pool"),
                        "missing: an http listener needs a default pool, routes, or both",
                    );
                }
            }
        }
        let request_id_header = match &l.request_id_header {
            None => DEFAULT_REQUEST_ID_HEADER.to_string(),
            Some(v) => match self.string(v, &format!("{path}.request_id_header")) {
                Some(h)
                    if SET_BY_PLUMB_HEADERS
                        .iter()
                        .chain(&HOP_BY_HOP_HEADERS)
                        .any(|r| r.eq_ignore_ascii_case(h)) =>
                {
                    self.err(
                        &format!("{path}.request_id_header"),
                        format!(
                            "{h:?} is a header plumb sets, removes or frames the request by \
                             ({}, {}): choose another name",
                            SET_BY_PLUMB_HEADERS.join(", "),
                            HOP_BY_HOP_HEADERS.join(", ")
                        ),
                    );
                    DEFAULT_REQUEST_ID_HEADER.to_string()
                }
                Some(h)
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    h.to_ascii_lowercase()
                }
                Some(h) => {
                    self.err(
                        &format!("{path}.request_id_header"),
                        format!("{h:?} is not a header name"),
                    );
                    DEFAULT_REQUEST_ID_HEADER.to_string()
                }
                None => DEFAULT_REQUEST_ID_HEADER.to_string(),
            },
        };
        let keep_request_id = match &l.keep_request_id {
            None => true,
            some => self.boolean(some.as_ref(), &format!("{path}.keep_request_id")),
        };
        let max_header_bytes = l
            .max_header_bytes
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.max_header_bytes"), 8192, 1 << 20))
            .map_or(64 * 1024, |n| n as usize);
        let accept_proxy = self.boolean(l.accept_proxy.as_ref(), &format!("{path}.accept_proxy"));
        let expose_error_details = self.boolean(
            l.expose_error_details.as_ref(),
            &format!("{path}.expose_error_details"),
        );
        let tcp = self.tcp(l.tcp.as_ref(), &format!("{path}.tcp"));
        let mut header_read = DEFAULT_HEADER_READ;
        let mut keepalive_idle = DEFAULT_KEEPALIVE_IDLE;
        if let Some(t) = &l.timeouts {
            header_read = self.positive_duration_or(
                t.header_read.as_ref(),
                &format!("{path}.timeouts.header_read"),
                DEFAULT_HEADER_READ,
            );
            keepalive_idle = self.positive_duration_or(
                t.keepalive_idle.as_ref(),
                &format!("{path}.timeouts.keepalive_idle"),
                DEFAULT_KEEPALIVE_IDLE,
            );
        }
        let max_body_bytes = l
            .max_body_bytes
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.max_body_bytes"), 0, i64::MAX))
            .map(|n| n as u64);
        let tls = match &l.tls {
            None => None,
            Some(Value::Table(t)) => {
                for key in t.keys() {
                    if key != "cert" && key != "key" {
                        self.err(&format!("{path}.tls.{key}"), "unknown key");
                    }
                }
                let mut file = |key: &str| match t.get(key) {
                    Some(v) => self
                        .string(v, &format!("{path}.tls.{key}"))
                        .map(PathBuf::from),
                    None => {
                        self.err(&format!("{path}.tls.{key}"), "missing (a PEM file path)");
                        None
                    }
                };
                let cert = file("cert");
                let key = file("key");
                if protocol != Protocol::Http {
                    self.err(
                        &format!("{path}.tls"),
                        "only applies to protocol = \"http\"",
                    );
                }
                cert.zip(key).map(|(cert, key)| Tls { cert, key })
            }
            Some(other) => {
                self.err(
                    &format!("{path}.tls"),
                    format!(
                        "expected a table {{ cert = \"...\", key = \"...\" }}, found {}",
                        show(other)
                    ),
                );
                None
            }
        };
        Listener {
            tls,
            name,
            listen,
            protocol,
            backlog,
            max_connections,
            pool,
            routes,
            keepalive_idle,
            request_id_header,
            keep_request_id,
            max_header_bytes,
            max_body_bytes,
            accept_proxy,
            expose_error_details,
            tcp,
            header_read,
        }
    }

    fn routes(&mut self, v: Option<&Value>, path: &str) -> Vec<Route> {
        let Some(v) = v else { return Vec::new() };
        let Value::Array(items) = v else {
            self.err(
                path,
                "expected [[listener.route]] entries (an array of tables)",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let rpath = format!("{path}[{i}]");
            let Value::Table(t) = item else {
                self.err(&rpath, format!("expected a table, found {}", show(item)));
                continue;
            };
            for key in t.keys() {
                if !["host", "path_prefix", "pool"].contains(&key.as_str()) {
                    self.err(&format!("{rpath}.{key}"), "unknown key");
                }
            }
            let host = t.get("host").and_then(|h| self.string(h, &format!("{rpath}.host"))).map(|h| {
                let h = h.to_ascii_lowercase();
                let bare = h.strip_prefix("*.").unwrap_or(&h);
                if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                    self.err(
                        &format!("{rpath}.host"),
                        format!("{h:?} is not a host name (such as \"api.example.com\" or \"*.example.com\", no port)"),
                    );
                }
                h
            });
            let path_prefix = t
                .get("path_prefix")
                .and_then(|p| self.string(p, &format!("{rpath}.path_prefix")))
                .map(|p| {
                    if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) {
                        self.err(
                            &format!("{rpath}.path_prefix"),
                            format!("{p:?} is not a path (it must start with '/')"),
                        );
                    }
                    p.trim_end_matches('/').to_string()
                });
            if host.is_none() && path_prefix.is_none() {
                self.err(&rpath, "a route needs host, path_prefix, or both");
            }
            let pool = match t.get("pool") {
                Some(p) => self
                    .string(p, &format!("{rpath}.pool"))
                    .unwrap_or("")
                    .to_string(),
                None => {
                    self.err(&format!("{rpath}.pool"), "missing (the name of a [[pool]])");
                    String::new()
                }
            };
            out.push(Route {
                host,
                path_prefix,
                pool,
            });
        }
        out
    }

    fn pool(&mut self, path: &str, p: &file::Pool) -> Pool {
        let name = self.name(p.name.as_ref(), &format!("{path}.name"));
        let balance = match &p.balance {
            None => Balance::RoundRobin,
            Some(v) => match self.string(v, &format!("{path}.balance")) {
                Some("round_robin") | None => Balance::RoundRobin,
                Some("least_conn") => Balance::LeastConn,
                Some("random_two") => Balance::RandomTwo,
                Some(other) => {
                    self.err(
                        &format!("{path}.balance"),
                        format!(
                            "{other:?} is not a balancing algorithm (expected \"round_robin\", \"least_conn\" or \"random_two\")"
                        ),
                    );
                    Balance::RoundRobin
                }
            },
        };
        let discovery = p
            .discovery
            .as_ref()
            .and_then(|d| self.discovery(d, &format!("{path}.discovery")));
        let backends = match (&p.discovery, &p.backends) {
            (Some(_), None) => Vec::new(),
            (Some(_), Some(_)) => {
                self.err(
                    &format!("{path}.backends"),
                    "a pool takes its backends from `backends` or from `discovery`, not both",
                );
                Vec::new()
            }
            (None, b) => self.backends(b.as_ref(), &format!("{path}.backends")),
        };
        let connect_attempts = p
            .connect_attempts
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.connect_attempts"), 1, 16))
            .map_or(DEFAULT_CONNECT_ATTEMPTS, |n| n as usize);
        let mut timeouts = PoolTimeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            tunnel_idle: DEFAULT_TUNNEL_IDLE,
            response_header: DEFAULT_RESPONSE_HEADER,
            idle: DEFAULT_BODY_IDLE,
        };
        if let Some(t) = &p.timeouts {
            timeouts.connect = self.positive_duration_or(
                t.connect.as_ref(),
                &format!("{path}.timeouts.connect"),
                DEFAULT_CONNECT_TIMEOUT,
            );
            timeouts.tunnel_idle = self.positive_duration_or(
                t.tunnel_idle.as_ref(),
                &format!("{path}.timeouts.tunnel_idle"),
                DEFAULT_TUNNEL_IDLE,
            );
            timeouts.response_header = self.positive_duration_or(
                t.response_header.as_ref(),
                &format!("{path}.timeouts.response_header"),
                DEFAULT_RESPONSE_HEADER,
            );
            timeouts.idle = self.positive_duration_or(
                t.idle.as_ref(),
                &format!("{path}.timeouts.idle"),
                DEFAULT_BODY_IDLE,
            );
        }
        let tcp = self.tcp(p.tcp.as_ref(), &format!("{path}.tcp"));
        let send_proxy = match &p.send_proxy {
            None => None,
            Some(v) => {
                match self.string(v, &format!("{path}.send_proxy")) {
                    Some("v1") => Some(ProxyVersion::V1),
                    Some("v2") => Some(ProxyVersion::V2),
                    Some(other) => {
                        self.err(
                        &format!("{path}.send_proxy"),
                        format!("{other:?} is not a PROXY protocol version (expected \"v1\" or \"v2\")"),
                    );
                        None
                    }
                    None => None,
                }
            }
        };
        let health = p
            .health
            .as_ref()
            .map(|h| self.health(h, &format!("{path}.health")));
        let drain = self.drain(p.drain.as_ref(), &format!("{path}.drain"));
        let on_marked_down = match &p.on_marked_down {
            None => OnMarkedDown::Reset,
            Some(v) => match self.string(v, &format!("{path}.on_marked_down")) {
                Some("reset") | None => OnMarkedDown::Reset,
                Some("keep") => OnMarkedDown::Keep,
                Some(other) => {
                    self.err(
                        &format!("{path}.on_marked_down"),
                        format!("{other:?} is not an action (expected \"reset\" or \"keep\")"),
                    );
                    OnMarkedDown::Reset
                }
            },
        };
        let upstream = self.upstream(p.upstream.as_ref(), &format!("{path}.upstream"));
        let retry_budget_percent = p
            .retry_budget_percent
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.retry_budget_percent"), 0, 100))
            .map_or(20, |n| n as u32);
        let passive = self.passive(p.passive.as_ref(), &format!("{path}.passive"));
        let slow_start = p
            .slow_start
            .as_ref()
            .map(|v| {
                self.positive_duration_or(
                    Some(v),
                    &format!("{path}.slow_start"),
                    Duration::from_secs(30),
                )
            })
            // Addresses that appear in discovery ramp up unless told otherwise.
            .or(discovery.as_ref().map(|_| DEFAULT_DISCOVERY_SLOW_START));
        Pool {
            name,
            balance,
            backends,
            discovery,
            connect_attempts,
            timeouts,
            tcp,
            send_proxy,
            health,
            drain,
            on_marked_down,
            upstream,
            passive,
            slow_start,
            retry_budget_percent,
        }
    }

    fn discovery(&mut self, v: &Value, path: &str) -> Option<Discovery> {
        let Value::Table(t) = v else {
            self.err(
                path,
                format!(
                    "expected a table such as {{ dns = \"app.internal:8080\" }}, found {}",
                    show(v)
                ),
            );
            return None;
        };
        if let Some(etcd) = t.get("etcd") {
            for key in t.keys() {
                if key != "etcd" {
                    self.err(
                        &format!("{path}.{key}"),
                        "unknown key (with etcd, the keys go inside `etcd = { ... }`)",
                    );
                }
            }
            return self.etcd(etcd, &format!("{path}.etcd"));
        }
        for key in t.keys() {
            if !["dns", "refresh", "nameserver", "weight"].contains(&key.as_str()) {
                self.err(&format!("{path}.{key}"), "unknown key");
            }
        }
        let Some(dns) = t.get("dns") else {
            self.err(
                &format!("{path}.dns"),
                "missing: the name and port to resolve (\"app.internal:8080\"), or `etcd`",
            );
            return None;
        };
        let dpath = format!("{path}.dns");
        let target = self.string(dns, &dpath).and_then(|s| {
            let parsed = s.rsplit_once(':').and_then(|(name, port)| {
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    });
                valid.then(|| (name.to_string(), port))
            });
            if parsed.is_none() {
                self.err(
                    &dpath,
                    format!("{s:?} is not a host name and port (such as \"app.internal:8080\")"),
                );
            }
            parsed
        });
        let refresh = self.positive_duration_or(
            t.get("refresh"),
            &format!("{path}.refresh"),
            DEFAULT_DNS_REFRESH,
        );
        if refresh < Duration::from_secs(1) {
            self.err(&format!("{path}.refresh"), "must be at least 1s");
        }
        let nameserver = t.get("nameserver").and_then(|v| {
            let npath = format!("{path}.nameserver");
            let s = self.string(v, &npath)?;
            let parsed = s.parse::<SocketAddr>().ok().or_else(|| {
                s.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            if parsed.is_none() {
                self.err(
                    &npath,
                    format!(
                        "{s:?} is not an address (an IP, or IP:port such as \"127.0.0.1:5353\")"
                    ),
                );
            }
            parsed
        });
        let weight = t
            .get("weight")
            .and_then(|w| self.int(w, &format!("{path}.weight"), 1, 1000))
            .map_or(1, |w| w as u32);
        let (name, port) = target?;
        Some(Discovery::Dns(DnsDiscovery {
            name,
            port,
            refresh,
            nameserver,
            weight,
        }))
    }

    fn etcd(&mut self, v: &Value, path: &str) -> Option<Discovery> {
        let Value::Table(t) = v else {
            self.err(
                path,
                format!(
                    "expected a table such as {{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/plumb/pools/app/\" }}, found {}",
                    show(v)
                ),
            );
            return None;
        };
        for key in t.keys() {
            if key != "endpoints" && key != "prefix" {
                self.err(&format!("{path}.{key}"), "unknown key");
            }
        }
        let endpoints: Vec<String> = match t.get("endpoints") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let ipath = format!("{path}.endpoints[{i}]");
                    let s = self.string(item, &ipath)?;
                    if s.starts_with("https://") {
                        self.err(
                            &ipath,
                            format!("{s:?}: https is not supported yet (plumb's etcd client has no TLS); use http:// on a trusted network"),
                        );
                        return None;
                    }
                    let rest = s.strip_prefix("http://").unwrap_or(s);
                    let ok = rest.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if ok {
                        Some(if s.contains("://") {
                            s.to_string()
                        } else {
                            format!("http://{s}")
                        })
                    } else {
                        self.err(
                            &ipath,
                            format!(
                                "{s:?} is not an etcd endpoint (such as \"http://127.0.0.1:2379\")"
                            ),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.err(
                    &format!("{path}.endpoints"),
                    format!("expected a non-empty list of URLs, found {}", show(other)),
                );
                Vec::new()
            }
            None => {
                self.err(
                    &format!("{path}.endpoints"),
                    "missing (a list such as [\"http://127.0.0.1:2379\"])",
                );
                Vec::new()
            }
        };
        let prefix = match t.get("prefix") {
            Some(v) => match self.string(v, &format!("{path}.prefix")) {
                Some("") => {
                    self.err(
                        &format!("{path}.prefix"),
                        "empty: every key of etcd would be a backend",
                    );
                    None
                }
                Some(p) => Some(p.to_string()),
                None => None,
            },
            None => {
                self.err(
                    &format!("{path}.prefix"),
                    "missing (such as \"/plumb/pools/app/\")",
                );
                None
            }
        };
        if endpoints.is_empty() {
            return None;
        }
        Some(Discovery::Etcd(EtcdDiscovery {
            endpoints,
            prefix: prefix?,
        }))
    }

    fn health(&mut self, h: &file::Health, path: &str) -> Health {
        let kind_name = match &h.kind {
            None => "tcp",
            Some(v) => self.string(v, &format!("{path}.kind")).unwrap_or("tcp"),
        };
        let http_only = [
            ("path", h.path.is_some()),
            ("host", h.host.is_some()),
            ("expect_status", h.expect_status.is_some()),
            ("large_probe_bytes", h.large_probe_bytes.is_some()),
        ];
        let kind = match kind_name {
            "tcp" => {
                for (key, set) in http_only {
                    if set {
                        self.err(&format!("{path}.{key}"), "only applies to kind = \"http\"");
                    }
                }
                HealthKind::Tcp
            }
            "http" => {
                let hpath = match &h.path {
                    None => "/".to_string(),
                    Some(v) => match self.string(v, &format!("{path}.path")) {
                        Some(p)
                            if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) =>
                        {
                            p.to_string()
                        }
                        Some(p) => {
                            self.err(&format!("{path}.path"), format!("{p:?} is not a request path (it must start with '/' and have no spaces)"));
                            "/".to_string()
                        }
                        None => "/".to_string(),
                    },
                };
                let host = match &h.host {
                    None => None,
                    Some(v) => match self.string(v, &format!("{path}.host")) {
                        Some(host)
                            if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()) =>
                        {
                            Some(host.to_string())
                        }
                        Some(host) => {
                            self.err(
                                &format!("{path}.host"),
                                format!("{host:?} is not a valid Host header"),
                            );
                            None
                        }
                        None => None,
                    },
                };
                let expect_status = match &h.expect_status {
                    None => (200, 399),
                    Some(v) => self.status_range(v, &format!("{path}.expect_status")),
                };
                HealthKind::Http {
                    path: hpath,
                    host,
                    expect_status,
                }
            }
            other => {
                self.err(
                    &format!("{path}.kind"),
                    format!("{other:?} is not a health check kind (expected \"tcp\" or \"http\")"),
                );
                HealthKind::Tcp
            }
        };
        let interval = self.positive_duration_or(
            h.interval.as_ref(),
            &format!("{path}.interval"),
            DEFAULT_HEALTH_INTERVAL,
        );
        let timeout = self.positive_duration_or(
            h.timeout.as_ref(),
            &format!("{path}.timeout"),
            DEFAULT_HEALTH_TIMEOUT,
        );
        let rise = h
            .rise
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.rise"), 1, 100))
            .map_or(2, |n| n as u32);
        let fall = h
            .fall
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.fall"), 1, 100))
            .map_or(3, |n| n as u32);
        let close = match &h.close {
            None => CheckClose::Fin,
            Some(v) => match self.string(v, &format!("{path}.close")) {
                Some("fin") | None => CheckClose::Fin,
                Some("rst") => CheckClose::Rst,
                Some(other) => {
                    self.err(
                        &format!("{path}.close"),
                        format!("{other:?} is not a close mode (expected \"fin\" or \"rst\")"),
                    );
                    CheckClose::Fin
                }
            },
        };
        let large_probe_bytes = h
            .large_probe_bytes
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.large_probe_bytes"), 1, 65536))
            .map(|n| n as usize);
        Health {
            kind,
            interval,
            timeout,
            rise,
            fall,
            close,
            large_probe_bytes,
        }
    }

    fn status_range(&mut self, v: &Value, path: &str) -> (u16, u16) {
        let range = match v {
            Value::Integer(n) => Some((*n, *n)),
            Value::String(s) => match s.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => s.trim().parse().ok().map(|n| (n, n)),
            },
            _ => None,
        };
        match range {
            Some((a, b)) if (100..=599).contains(&a) && (100..=599).contains(&b) && a <= b => {
                (a as u16, b as u16)
            }
            _ => {
                self.err(
                    path,
                    format!(
                        "{} is not a status or range (such as 200 or \"200-399\")",
                        show(v)
                    ),
                );
                (200, 399)
            }
        }
    }

    fn drain(&mut self, d: Option<&file::Drain>, path: &str) -> Drain {
        let df = file::Drain::default();
        let d = d.unwrap_or(&df);
        let timeout = self.duration_or(
            d.timeout.as_ref(),
            &format!("{path}.timeout"),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let close_spread = self.duration_or(
            d.close_spread.as_ref(),
            &format!("{path}.close_spread"),
            DEFAULT_CLOSE_SPREAD,
        );
        let on_timeout = match &d.on_timeout {
            None => DrainClose::Reset,
            Some(v) => match self.string(v, &format!("{path}.on_timeout")) {
                Some("reset") | None => DrainClose::Reset,
                Some("close") => DrainClose::Close,
                Some(other) => {
                    self.err(
                        &format!("{path}.on_timeout"),
                        format!("{other:?} is not an action (expected \"reset\" or \"close\")"),
                    );
                    DrainClose::Reset
                }
            },
        };
        Drain {
            timeout,
            close_spread,
            on_timeout,
        }
    }

    fn upstream(&mut self, u: Option<&file::Upstream>, path: &str) -> Upstream {
        let df = file::Upstream::default();
        let u = u.unwrap_or(&df);
        let max_connections_per_backend = u
            .max_connections_per_backend
            .as_ref()
            .and_then(|v| {
                self.int(
                    v,
                    &format!("{path}.max_connections_per_backend"),
                    1,
                    10_000_000,
                )
            })
            .map(|n| n as usize);
        let preconnect = u
            .preconnect
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.preconnect"), 0, 1000))
            .map_or(0, |n| n as usize);
        let idle_timeout = self.positive_duration_or(
            u.idle_timeout.as_ref(),
            &format!("{path}.idle_timeout"),
            DEFAULT_UPSTREAM_IDLE,
        );
        let max_idle_per_backend = u
            .max_idle_per_backend
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.max_idle_per_backend"), 0, 100_000))
            .map_or(DEFAULT_MAX_IDLE_PER_BACKEND, |n| n as usize);
        Upstream {
            max_connections_per_backend,
            preconnect,
            idle_timeout,
            max_idle_per_backend,
        }
    }

    fn passive(&mut self, p: Option<&file::Passive>, path: &str) -> Passive {
        let df = file::Passive::default();
        let p = p.unwrap_or(&df);
        let consecutive_failures = p
            .consecutive_failures
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.consecutive_failures"), 0, 1000))
            .map_or(5, |n| n as u32);
        let ejection = self.positive_duration_or(
            p.ejection.as_ref(),
            &format!("{path}.ejection"),
            Duration::from_secs(10),
        );
        let max_ejection = self.positive_duration_or(
            p.max_ejection.as_ref(),
            &format!("{path}.max_ejection"),
            Duration::from_secs(300),
        );
        if max_ejection < ejection {
            self.err(
                &format!("{path}.max_ejection"),
                "must not be shorter than ejection",
            );
        }
        Passive {
            consecutive_failures,
            ejection,
            max_ejection,
        }
    }

    fn backends(&mut self, v: Option<&Value>, path: &str) -> Vec<BackendSpec> {
        let items = match v {
            None => {
                self.err(path, "missing (a list of backend addresses)");
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.err(
                    path,
                    format!("expected a list of addresses, found {}", show(other)),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.err(path, "empty: a pool needs at least one backend");
        }
        let mut out: Vec<BackendSpec> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let spec = match item {
                Value::String(_) => self
                    .addr(item, &ipath)
                    .map(|addr| BackendSpec { addr, weight: 1 }),
                Value::Table(t) => {
                    for key in t.keys() {
                        if key != "address" && key != "weight" {
                            self.err(&format!("{ipath}.{key}"), "unknown key");
                        }
                    }
                    let addr = match t.get("address") {
                        Some(a) => self.addr(a, &format!("{ipath}.address")),
                        None => {
                            self.err(&format!("{ipath}.address"), "missing");
                            None
                        }
                    };
                    let weight = match t.get("weight") {
                        Some(w) => self
                            .int(w, &format!("{ipath}.weight"), 1, 1000)
                            .map(|w| w as u32),
                        None => Some(1),
                    };
                    match (addr, weight) {
                        (Some(addr), Some(weight)) => Some(BackendSpec { addr, weight }),
                        _ => None,
                    }
                }
                other => {
                    self.err(
                        &ipath,
                        format!(
                            "expected an address or {{ address = \"...\", weight = N }}, found {}",
                            show(other)
                        ),
                    );
                    None
                }
            };
            if let Some(spec) = spec {
                if out.iter().any(|b| b.addr == spec.addr) {
                    self.err(&ipath, format!("duplicate backend {}", spec.addr));
                } else {
                    out.push(spec);
                }
            }
        }
        out
    }

    fn tcp(&mut self, t: Option<&file::Tcp>, path: &str) -> TcpOptions {
        let mut out = TcpOptions::default();
        let Some(t) = t else { return out };
        let ka = out.keepalive.unwrap_or(TcpKeepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        });
        let idle = self.duration_or(
            t.keepalive_idle.as_ref(),
            &format!("{path}.keepalive_idle"),
            ka.idle,
        );
        let interval = self.positive_duration_or(
            t.keepalive_interval.as_ref(),
            &format!("{path}.keepalive_interval"),
            ka.interval,
        );
        let count = t
            .keepalive_count
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.keepalive_count"), 1, 127))
            .map_or(ka.count, |n| n as u32);
        for (key, d) in [("keepalive_idle", idle), ("keepalive_interval", interval)] {
            if d > Duration::from_secs(32767) {
                self.err(
                    &format!("{path}.{key}"),
                    "must be at most 32767s (the kernel's limit)",
                );
            } else if !d.is_zero() && d < Duration::from_secs(1) {
                self.err(
                    &format!("{path}.{key}"),
                    "must be at least 1s (the kernel counts in seconds)",
                );
            }
        }
        out.keepalive = (!idle.is_zero()).then_some(TcpKeepalive {
            idle,
            interval,
            count,
        });
        let user_timeout = self.duration_or(
            t.user_timeout.as_ref(),
            &format!("{path}.user_timeout"),
            out.user_timeout.unwrap_or_default(),
        );
        if user_timeout.as_millis() > u128::from(u32::MAX) {
            self.err(&format!("{path}.user_timeout"), "too long");
        }
        out.user_timeout = (!user_timeout.is_zero()).then_some(user_timeout);
        out.mss = t
            .mss
            .as_ref()
            .and_then(|v| self.int(v, &format!("{path}.mss"), 88, 65495))
            .map(|n| n as u32);
        out
    }

    /// Names: non-empty, printable, no spaces (they become metric labels and URL parts).
    fn name(&mut self, v: Option<&Value>, path: &str) -> String {
        let Some(v) = v else {
            self.err(path, "missing");
            return String::new();
        };
        let Some(s) = self.string(v, path) else {
            return String::new();
        };
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            self.err(
                path,
                format!("{s:?} is not a valid name (1 to 64 of a-z, A-Z, 0-9, '-', '_', '.')"),
            );
        }
        s.to_string()
    }

    fn string<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.err(path, format!("expected a string, found {}", show(other)));
                None
            }
        }
    }

    fn boolean(&mut self, v: Option<&Value>, path: &str) -> bool {
        match v {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                self.err(
                    path,
                    format!("expected true or false, found {}", show(other)),
                );
                false
            }
        }
    }

    fn int(&mut self, v: &Value, path: &str, min: i64, max: i64) -> Option<i64> {
        match v {
            Value::Integer(n) if (min..=max).contains(n) => Some(*n),
            Value::Integer(n) => {
                self.err(path, format!("{n} is out of range ({min} to {max})"));
                None
            }
            other => {
                self.err(path, format!("expected an integer, found {}", show(other)));
                None
            }
        }
    }

    fn addr(&mut self, v: &Value, path: &str) -> Option<SocketAddr> {
        let s = self.string(v, path)?;
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "{s:?} is not an address (expected IP:port, such as \"127.0.0.1:8080\" or \"[::1]:8080\")"
                    ),
                );
                None
            }
        }
    }

    fn duration_or(&mut self, v: Option<&Value>, path: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        let parsed = match v {
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        match parsed {
            Some(d) if d > MAX_DURATION => {
                self.err(path, format!("{} is too long (at most 365 days)", show(v)));
                default
            }
            Some(d) => d,
            None => {
                self.err(
                    path,
                    format!(
                        "{} is not a duration (such as \"250ms\", \"5s\", \"2m\", \"1h\")",
                        show(v)
                    ),
                );
                default
            }
        }
    }

    fn positive_duration_or(
        &mut self,
        v: Option<&Value>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration_or(v, path, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero: every wait needs a timer");
            return default;
        }
        d
    }
}
