//! The admin listener: hyper HTTP/1.1 connections with bounded header and body reads,
//! bearer-token check, and graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use plumb_core::Server;

use crate::api;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;
/// Bound on reading a request's head and body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin API serves.
#[derive(Debug)]
pub struct Admin {
    /// The data plane.
    pub server: Arc<Server>,
    /// The bearer token every request must carry, if one is configured.
    pub token: Option<String>,
    /// SHA-256 of the config file in force, for `GET /api/v1/status`.
    pub config_checksum: std::sync::Mutex<String>,
    /// The config file, for `POST /api/v1/reload`.
    pub config_path: Option<std::path::PathBuf>,
}

impl Admin {
    /// The admin API of `server`, started from the config file `path` (`None` when
    /// there is no file, as in `plumb demo`) whose text hashed to `checksum`.
    pub fn new(
        server: Arc<Server>,
        token: Option<String>,
        checksum: String,
        path: Option<std::path::PathBuf>,
    ) -> Admin {
        Admin {
            server,
            token,
            config_checksum: std::sync::Mutex::new(checksum),
            config_path: path,
        }
    }

    /// Re-reads the config file and applies it (also what SIGHUP does).
    pub fn reload(&self) -> Result<plumb_core::server::ReloadSummary, crate::reload::Failed> {
        let Some(path) = &self.config_path else {
            return Err(crate::reload::Failed::NoFile);
        };
        let (summary, checksum) = crate::reload::from_file(&self.server, path)?;
        *self
            .config_checksum
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = checksum;
        Ok(summary)
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(handle(&admin, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(client.addr = %peer, error = %e, "admin connection ended with an error");
                },
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    stop.cancel();
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // The dashboard page itself holds no data (it asks for a token and sends it with
    // every API call), so it is served without one; everything else needs it.
    let is_page = req.method() == hyper::Method::GET && req.uri().path() == "/";
    if let Some(token) = &admin.token {
        if !is_page && !authorized(&req, token) {
            return api::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token> (admin.token_file)",
            );
        }
    }
    let (parts, body) = req.into_parts();
    let body =
        match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                return api::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_body",
                    &format!("cannot read the request body: {e}"),
                );
            }
            Err(_) => {
                return api::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
            }
        };
    api::route(admin, &parts.method, parts.uri.path(), &body)
}

/// Compares the bearer token in constant time (for equal lengths).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = req.headers().get(hyper::header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    let want = token.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
