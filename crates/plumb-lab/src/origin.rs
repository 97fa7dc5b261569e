//! A named HTTP/1.1 origin: answers every request with a line naming itself, and an
//! `x-origin` header, so a client can see which backend plumb chose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running origin.
#[derive(Debug)]
pub struct Origin {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Origin {
    /// Serves on `listener` until [`Origin::stop`] or drop.
    pub fn spawn(name: &str, listener: TcpListener) -> std::io::Result<Origin> {
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(accept(
            name.to_string(),
            listener,
            Arc::clone(&served),
            stop.clone(),
        ));
        Ok(Origin {
            name: name.to_string(),
            addr,
            served,
            stop,
        })
    }

    /// The origin's name, as it appears in responses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting; open connections end after their current request.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    name: String,
    listener: TcpListener,
    served: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let name: Arc<str> = Arc::from(name);
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(origin = %name, error = %e, "origin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let name = Arc::clone(&name);
        let served = Arc::clone(&served);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let name = Arc::clone(&name);
                let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                async move { Ok::<_, Infallible>(answer(&name, n, &req)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn answer(name: &str, n: u64, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = format!(
        "{name} answered {} {} (request {n} on this origin)\n",
        req.method(),
        req.uri().path()
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = hyper::header::HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-origin", v);
    }
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
