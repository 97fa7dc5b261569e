//! Routing and the handlers. Each handler validates everything before it changes
//! anything, so a rejected request leaves state as it was.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;

use plumb_core::pool::{Backend, Pool, Registered};

use crate::json::*;
use crate::Admin;

/// Dispatches a request whose body has been read.
pub(crate) fn route(
    admin: &Admin,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz"] => only(method, &[Method::GET], || text(StatusCode::OK, "ok\n")),
        [] | [""] => only(method, &[Method::GET], || {
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                DASHBOARD.as_bytes().to_vec(),
            )
        }),
        ["api", "v1", "errors"] => only(method, &[Method::GET], || {
            let errors: Vec<ErrorView> = admin
                .server
                .recent_errors()
                .into_iter()
                .map(|e| ErrorView {
                    at: humantime::format_rfc3339_seconds(e.at).to_string(),
                    listener: e.listener,
                    cause: e.cause.as_str(),
                    backend: e.backend.map(|b| b.to_string()),
                    client: e.client.to_string(),
                    request_id: e.request_id,
                    request: e.request,
                    status: e.status,
                })
                .collect();
            json(StatusCode::OK, &errors)
        }),
        ["api", "v1", "status"] => only(method, &[Method::GET], || status(admin)),
        ["api", "v1", "pools"] => only(method, &[Method::GET], || {
            let pools: Vec<PoolView> = admin.server.pools().iter().map(|p| pool_view(p)).collect();
            json(StatusCode::OK, &pools)
        }),
        ["api", "v1", "pools", pool] => {
            only(method, &[Method::GET], || match find_pool(admin, pool) {
                Ok(p) => json(StatusCode::OK, &pool_view(&p)),
                Err(e) => e.response(),
            })
        }
        ["api", "v1", "pools", pool, "backends", addr] => match *method {
            Method::PUT => register(admin, pool, addr, body),
            Method::DELETE => drain(admin, pool, addr, body, true),
            _ => not_allowed(&[Method::PUT, Method::DELETE]),
        },
        ["api", "v1", "pools", pool, "backends", addr, "drain"] => match *method {
            Method::POST => drain(admin, pool, addr, body, false),
            _ => not_allowed(&[Method::POST]),
        },
        ["metrics"] => only(method, &[Method::GET], || {
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                admin.server.metrics_text().into_bytes(),
            )
        }),
        ["api", "v1", "connections"] => only(method, &[Method::GET], || connections(admin)),
        ["api", "v1", "reload"] => only(method, &[Method::POST], || reload(admin)),
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown_path",
            &format!("no such endpoint: {path}"),
        ),
    }
}

/// The dashboard: one self-contained page (no external assets), polling the API.
const DASHBOARD: &str = include_str!("assets/dashboard.html");

fn status(admin: &Admin) -> Response<Full<Bytes>> {
    let server = &admin.server;
    let listeners = server
        .config()
        .listeners
        .iter()
        .map(|l| {
            let stats = server.listener_stats(&l.name);
            ListenerStatus {
                name: l.name.clone(),
                listen: l.listen.iter().map(ToString::to_string).collect(),
                protocol: l.protocol.as_str(),
                pool: l.pool.clone(),
                routes: l
                    .routes
                    .iter()
                    .map(|r| RouteView {
                        host: r.host.clone(),
                        path_prefix: r.path_prefix.clone(),
                        pool: r.pool.clone(),
                    })
                    .collect(),
                max_connections: l.max_connections,
                accepted: stats.as_ref().map_or(0, |s| s.accepted()),
                refused: stats.as_ref().map_or(0, |s| s.refused()),
            }
        })
        .collect();
    json(
        StatusCode::OK,
        &Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: server.uptime().as_secs_f64(),
            config_checksum: admin
                .config_checksum
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            listeners,
            connections: server.conns().len(),
        },
    )
}

fn pool_view(p: &Pool) -> PoolView {
    let now = p.now_ms();
    PoolView {
        idle_connections: p.idle_connections(),
        name: p.name().to_string(),
        balance: p.settings().balance.as_str(),
        health_checks: p.settings().health.as_ref().map(|h| match h.kind {
            plumb_config::model::HealthKind::Tcp => "tcp",
            plumb_config::model::HealthKind::Http { .. } => "http",
        }),
        discovery: p.discovery_status().map(|d| DiscoveryView {
            source: d.source,
            up: d.up,
            addresses: d.addresses,
            last_ok_age_ms: d.last_ok_ms.map(|t| now.saturating_sub(t)),
            last_error: d.last_error,
            ttl_s: d.ttl_s,
            resolutions: d.resolutions,
        }),
        backends: p.backends().iter().map(|b| backend_view(b, now)).collect(),
    }
}

fn backend_view(b: &Backend, now: u64) -> BackendView {
    let state = b.state(now);
    let last_check = b.last_check();
    let reason = if b.is_draining() {
        Some("drained through the admin API".to_string())
    } else if b.is_ejected(now) {
        Some(format!(
            "ejected after consecutive failures for {} ms more",
            b.ejected_until().saturating_sub(now)
        ))
    } else if !b.is_healthy() {
        last_check
            .as_ref()
            .map(|c| format!("health check failed: {}", c.reason))
    } else {
        None
    };
    BackendView {
        address: b.addr().to_string(),
        weight: b.weight(),
        state: state.as_str(),
        reason,
        last_check: last_check.map(|c| CheckView {
            ok: c.ok,
            reason: c.reason,
            age_ms: now.saturating_sub(c.at_ms),
        }),
        active_connections: b.active(),
        connections: b.picked(),
        consecutive_failures: b.consecutive_failures(),
        errors: b
            .errors()
            .into_iter()
            .map(|(c, n)| (c.as_str(), n))
            .collect(),
        drain: b.drain_deadline().map(|(deadline, deregister)| DrainView {
            remaining_ms: deadline.saturating_sub(now),
            deregister,
        }),
    }
}

fn connections(admin: &Admin) -> Response<Full<Bytes>> {
    let conns: Vec<ConnView> = admin
        .server
        .conns()
        .snapshot()
        .iter()
        .map(|c| {
            let (client_tcp, upstream_tcp) = c.tcp_info();
            let suspected_blackhole = client_tcp.is_some_and(|i| i.suspected_blackhole())
                || upstream_tcp.is_some_and(|i| i.suspected_blackhole());
            ConnView {
                id: c.id(),
                listener: c.listener().to_string(),
                pool: c.pool().to_string(),
                client: c.client().to_string(),
                backend: c.backend().map(|b| b.to_string()),
                age_ms: c.age().as_millis() as u64,
                bytes_from_client: c.bytes_from_client(),
                bytes_to_client: c.bytes_to_client(),
                state: c.state().as_str(),
                client_tcp: client_tcp.map(Into::into),
                upstream_tcp: upstream_tcp.map(Into::into),
                suspected_blackhole,
            }
        })
        .collect();
    json(StatusCode::OK, &conns)
}

fn reload(admin: &Admin) -> Response<Full<Bytes>> {
    match admin.reload() {
        Ok(summary) => json(
            StatusCode::OK,
            &ReloadView {
                file: admin
                    .config_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                changes: summary.changes,
                needs_restart: summary.needs_restart,
            },
        ),
        Err(crate::reload::Failed::Invalid(errors)) => json(
            StatusCode::BAD_REQUEST,
            &InvalidConfig {
                error: "invalid_config",
                detail: "the config file has errors; nothing was changed",
                errors: errors.0.iter().map(ToString::to_string).collect(),
            },
        ),
        Err(e @ crate::reload::Failed::NoFile) => {
            error(StatusCode::CONFLICT, "no_config_file", &e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            &format!("{e}; nothing was changed"),
        ),
    }
}

fn register(admin: &Admin, pool: &str, addr: &str, body: &Bytes) -> Response<Full<Bytes>> {
    let p = match find_pool(admin, pool) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let addr = match parse_addr(addr) {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let req: RegisterBody = match parse_body(body) {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let weight = match req.weight {
        None => None,
        Some(w) if (1..=1000).contains(&w) => Some(w as u32),
        Some(w) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_weight",
                &format!("weight {w} is out of range (1 to 1000)"),
            )
        }
    };
    let (code, result) = match p.register(addr, weight) {
        Registered::Created => (StatusCode::CREATED, "registered"),
        Registered::Updated => (StatusCode::OK, "updated"),
        Registered::Restored => (StatusCode::OK, "restored"),
    };
    json(
        code,
        &Done {
            pool: pool.to_string(),
            backend: addr.to_string(),
            result,
            drain_timeout_ms: None,
        },
    )
}

fn drain(
    admin: &Admin,
    pool: &str,
    addr: &str,
    body: &Bytes,
    deregister: bool,
) -> Response<Full<Bytes>> {
    let p = match find_pool(admin, pool) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let addr = match parse_addr(addr) {
        Ok(a) => a,
        Err(e) => return e.response(),
    };
    let timeout = if deregister {
        if !body.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "DELETE takes no body; it drains with the pool's drain.timeout",
            );
        }
        None
    } else {
        let req: DrainBody = match parse_body(body) {
            Ok(b) => b,
            Err(e) => return e.response(),
        };
        match req.timeout {
            None => None,
            Some(t) => match plumb_config::parse_duration(&t) {
                Some(d) => Some(d),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_timeout",
                        &format!("{t:?} is not a duration (such as \"250ms\", \"10s\", \"2m\")"),
                    )
                }
            },
        }
    };
    match p.drain(addr, timeout, deregister) {
        Ok(t) => json(
            StatusCode::ACCEPTED,
            &Done {
                pool: pool.to_string(),
                backend: addr.to_string(),
                result: if deregister {
                    "deregistering"
                } else {
                    "draining"
                },
                drain_timeout_ms: Some(t.as_millis() as u64),
            },
        ),
        Err(e) => error(
            StatusCode::NOT_FOUND,
            "unknown_backend",
            &format!("pool {pool:?} has {e}"),
        ),
    }
}

fn find_pool(admin: &Admin, name: &str) -> Result<std::sync::Arc<Pool>, ApiError> {
    let name = percent_decode(name).unwrap_or_default();
    admin.server.pool(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_pool",
            &format!("no pool named {name:?}"),
        )
    })
}

fn parse_addr(raw: &str) -> Result<SocketAddr, ApiError> {
    let text = percent_decode(raw).unwrap_or_else(|| raw.to_string());
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_address",
            &format!("{text:?} is not an address (expected IP:port, such as 127.0.0.1:9001 or [::1]:9001)"),
        )
    })
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("invalid JSON body: {e}"),
        )
    })
}

/// Decodes `%XX` escapes (for `[::1]` written as `%5B%3A%3A1%5D`); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn only(
    method: &Method,
    allowed: &[Method],
    f: impl FnOnce() -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    if allowed.contains(method) {
        f()
    } else {
        not_allowed(allowed)
    }
}

fn not_allowed(allowed: &[Method]) -> Response<Full<Bytes>> {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this endpoint takes {}", list.join(", ")),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&list.join(", ")) {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    r
}

/// A rejected request: status, a short machine-readable error, and a detail for people.
pub(crate) struct ApiError {
    code: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(code: StatusCode, error: &'static str, detail: &str) -> ApiError {
        ApiError {
            code,
            error,
            detail: detail.to_string(),
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        error(self.code, self.error, &self.detail)
    }
}

/// A JSON error response.
pub(crate) fn error(code: StatusCode, error: &str, detail: &str) -> Response<Full<Bytes>> {
    json(code, &ErrorBody { error, detail })
}

fn json<T: Serialize>(code: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(code, "application/json", body)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialise: {e}\n"),
        ),
    }
}

fn text(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(code, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn respond(code: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_bracketed_ipv6() {
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A9001").as_deref(),
            Some("[::1]:9001")
        );
        assert_eq!(
            percent_decode("127.0.0.1:80").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%5"), None);
    }
}
