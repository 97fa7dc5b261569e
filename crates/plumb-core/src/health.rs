//! Active health checks: one task per backend, each check on a fresh connection (never
//! a reused one, so a connection-tracking limit on the path shows up), bounded by the
//! check timeout, closed with FIN by default.
//!
//! `rise` passes in a row mark an unhealthy backend healthy, `fall` failures in a row
//! mark a healthy one unhealthy; every change is logged with the reason of the check
//! that caused it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use plumb_config::model::{CheckClose, Health, HealthKind, TcpOptions};

use crate::pool::{Backend, CheckReport, Pool};
use crate::{sockopt, upstream};

/// The most of a response a check reads looking for the status line.
const MAX_HEAD: usize = 8 * 1024;
/// After sending FIN, how long a check waits for the backend's own FIN before
/// letting go (it has read everything by then, so the close stays orderly).
const FIN_WAIT: Duration = Duration::from_millis(500);

pub(crate) async fn run(
    pool: Arc<Pool>,
    b: Arc<Backend>,
    hc: Health,
    stop: tokio_util::sync::CancellationToken,
) {
    let (mut passes, mut fails) = (0u32, 0u32);
    // The first check comes after a random part of the interval, so that the checks
    // of many backends do not fire together.
    let mut wait = hc.interval.mul_f64(fastrand::f64());
    loop {
        tokio::select! {
            () = b.gone.cancelled() => return,
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = hc.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        let result = check(&b, &hc, &pool.settings().tcp).await;
        let now = pool.now_ms();
        let reason = match &result {
            Ok(()) => "ok".to_string(),
            Err(r) => r.clone(),
        };
        pool.metrics
            .health_checks
            .get_or_create(&crate::metrics::CheckLabels {
                pool: pool.name().to_string(),
                backend: b.addr().to_string(),
                result: result_class(&reason),
            })
            .inc();
        b.set_check(CheckReport {
            ok: result.is_ok(),
            reason: reason.clone(),
            at_ms: now,
        });
        if result.is_ok() {
            passes += 1;
            fails = 0;
            if !b.is_healthy() && passes >= hc.rise && !b.is_ejected(now) {
                b.set_healthy(true);
                b.clear_ejection();
                b.begin_ramp(now);
                tracing::info!(pool = %pool.name(), backend.addr = %b.addr(), reason = %reason, passes, "backend up");
            }
        } else {
            fails += 1;
            passes = 0;
            tracing::debug!(pool = %pool.name(), backend.addr = %b.addr(), reason = %reason, "health check failed");
            if b.is_healthy() && fails >= hc.fall {
                b.set_healthy(false);
                tracing::warn!(pool = %pool.name(), backend.addr = %b.addr(), reason = %reason, fails, "backend down");
                pool.marked_down(&b);
            }
        }
    }
}

/// A check result as a metric label: `ok`, `connect_refused`, `connect_timeout`,
/// `status`, `response_timeout`, `closed`, `reset`, `invalid_response`, `error`.
fn result_class(reason: &str) -> String {
    let class = if reason == "ok" {
        "ok"
    } else if reason.starts_with("connect refused") {
        "connect_refused"
    } else if reason.starts_with("connect timeout") {
        "connect_timeout"
    } else if reason.starts_with("status ") {
        "status"
    } else if reason.starts_with("response timeout") {
        "response_timeout"
    } else if reason.starts_with("closed") {
        "closed"
    } else if reason.starts_with("reset") {
        "reset"
    } else if reason.starts_with("invalid") {
        "invalid_response"
    } else {
        "error"
    };
    class.to_string()
}

/// One check: `Ok` or the reason it failed (`connect refused`, `status 503`...).
pub async fn check(b: &Backend, hc: &Health, tcp: &TcpOptions) -> Result<(), String> {
    let deadline = Instant::now() + hc.timeout;
    let ms = hc.timeout.as_millis();
    let mut stream = match upstream::connect(b.addr(), tcp, hc.timeout).await {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.cause {
                crate::Cause::UpstreamConnectRefused => "connect refused".to_string(),
                crate::Cause::UpstreamConnectTimeout => format!("connect timeout after {ms}ms"),
                crate::Cause::UpstreamUnreachable => format!("unreachable: {}", e.source),
                _ => format!("connect error: {}", e.source),
            })
        }
    };
    let result = match &hc.kind {
        HealthKind::Tcp => Ok(()),
        HealthKind::Http {
            path,
            host,
            expect_status,
        } => {
            let host = host.clone().unwrap_or_else(|| b.addr().to_string());
            let exchange = http_status(&mut stream, path, &host, hc.large_probe_bytes);
            match tokio::time::timeout_at(deadline, exchange).await {
                Err(_) => Err(format!("response timeout after {ms}ms")),
                Ok(Err(e)) => Err(e),
                Ok(Ok(status)) if (expect_status.0..=expect_status.1).contains(&status) => Ok(()),
                Ok(Ok(status)) => Err(format!("status {status}")),
            }
        }
    };
    close(stream, hc.close, deadline).await;
    result
}

/// Sends a GET and reads the status code.
async fn http_status(
    s: &mut TcpStream,
    path: &str,
    host: &str,
    pad_to: Option<usize>,
) -> Result<u16, String> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: plumb-health-check\r\nConnection: close\r\n");
    if let Some(n) = pad_to {
        // One header long enough that the request fills at least `n` bytes: a full
        // segment that an MTU black hole would eat.
        let pad = n
            .saturating_sub(req.len() + "X-Plumb-Padding: \r\n\r\n".len())
            .max(1);
        req.push_str("X-Plumb-Padding: ");
        req.extend(std::iter::repeat_n('p', pad));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            return parse_status(&head[..end]);
        }
        if head.len() > MAX_HEAD {
            return Err("invalid response: no status line".to_string());
        }
        match s.read(&mut buf).await {
            Ok(0) if head.is_empty() => return Err("closed before response".to_string()),
            Ok(0) => return Err("invalid response: closed mid-status line".to_string()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err("reset before response".to_string())
            }
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

fn parse_status(line: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!(
            "invalid response: {:?}",
            text.chars().take(60).collect::<String>()
        ));
    }
    code.parse().map_err(|_| format!("invalid status {code:?}"))
}

/// Closes a check's connection: FIN after reading whatever the backend still sends
/// (unread data would turn the close into an RST), or RST when configured.
async fn close(mut s: TcpStream, how: CheckClose, deadline: Instant) {
    match how {
        CheckClose::Rst => sockopt::arm_reset(&s),
        CheckClose::Fin => {
            let _ = s.shutdown().await;
            let until = deadline.max(Instant::now()).min(Instant::now() + FIN_WAIT);
            let mut sink = [0u8; 4096];
            while let Ok(Ok(n)) = tokio::time::timeout_at(until, s.read(&mut sink)).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert!(parse_status(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status(b"HTTP/1.1 2000 OK").is_err());
        assert!(parse_status(b"").is_err());
    }
}
