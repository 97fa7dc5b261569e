//! `plumb probe --metrics-listen`: the probe results as Prometheus metrics, per
//! address where blackbox_exporter has one series per target, scraped at
//! `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use plumb_probe::{ProbeResult, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Addr {
    url: String,
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    url: String,
    address: String,
    status: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    url: String,
    address: String,
    phase: String,
}

type Hist = Family<Phase, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 0.1 ms to about 52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every series `plumb probe` exports.
#[derive(Debug)]
pub struct ProbeMetrics {
    registry: Registry,
    success: Family<Addr, Gauge>,
    results: Family<Outcome, Counter>,
    phases: Hist,
    syn_retransmits: Family<Addr, Counter>,
    http_status: Family<Addr, Gauge>,
    rtt: Family<Addr, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pmtu: Family<Addr, Gauge>,
}

impl ProbeMetrics {
    pub fn new() -> ProbeMetrics {
        let mut registry = Registry::with_prefix("plumb_probe");
        let success = Family::<Addr, Gauge>::default();
        registry.register(
            "success",
            "1 when the last probe of this address succeeded (ok or warn), else 0",
            success.clone(),
        );
        let results = Family::<Outcome, Counter>::default();
        registry.register(
            "results",
            "Probes by status and cause (none when not failed)",
            results.clone(),
        );
        let phases: Hist = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "phase_duration",
            "Time of each phase: dns, connect, tls, ttfb, total",
            Unit::Seconds,
            phases.clone(),
        );
        let syn_retransmits = Family::<Addr, Counter>::default();
        registry.register(
            "syn_retransmits",
            "SYNs retransmitted before the handshake completed (TCP_INFO)",
            syn_retransmits.clone(),
        );
        let http_status = Family::<Addr, Gauge>::default();
        registry.register(
            "http_status_code",
            "Response status of the last probe (0 when none)",
            http_status.clone(),
        );
        let rtt = Family::<Addr, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "tcp_rtt",
            "Smoothed round-trip time of the last probe's connection (TCP_INFO)",
            Unit::Seconds,
            rtt.clone(),
        );
        let pmtu = Family::<Addr, Gauge>::default();
        registry.register_with_unit(
            "tcp_pmtu",
            "Path MTU the kernel used on the last probe's connection (TCP_INFO)",
            Unit::Bytes,
            pmtu.clone(),
        );
        ProbeMetrics {
            registry,
            success,
            results,
            phases,
            syn_retransmits,
            http_status,
            rtt,
            pmtu,
        }
    }

    /// Records one result.
    pub fn record(&self, r: &ProbeResult) {
        let addr = Addr {
            url: r.url.clone(),
            address: r.address.to_string(),
        };
        self.success
            .get_or_create(&addr)
            .set(i64::from(r.status != Status::Fail));
        self.results
            .get_or_create(&Outcome {
                url: r.url.clone(),
                address: addr.address.clone(),
                status: r.status.as_str().to_string(),
                cause: r.cause.unwrap_or("none").to_string(),
            })
            .inc();
        for (phase, ms) in [
            ("dns", Some(r.dns)),
            ("connect", r.connect),
            ("tls", r.tls),
            ("ttfb", r.ttfb),
            ("total", Some(r.total)),
        ] {
            if let Some(ms) = ms {
                self.phases
                    .get_or_create(&Phase {
                        url: r.url.clone(),
                        address: addr.address.clone(),
                        phase: phase.to_string(),
                    })
                    .observe(ms / 1000.0);
            }
        }
        self.syn_retransmits
            .get_or_create(&addr)
            .inc_by(u64::from(r.syn_retransmits.unwrap_or(0)));
        self.http_status
            .get_or_create(&addr)
            .set(i64::from(r.http_status.unwrap_or(0)));
        if let Some(t) = r.tcp_info {
            self.rtt.get_or_create(&addr).set(t.rtt_ms / 1000.0);
            self.pmtu.get_or_create(&addr).set(i64::from(t.pmtu));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            eprintln!("plumb probe: cannot encode metrics: {e}");
        }
        plumb_core::metrics::classic_text(&out)
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<ProbeMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: back off instead of spinning on the thread
            // that also measures the probes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scrape takes milliseconds; a connection gets 30 s in all.
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn answer<B>(req: &Request<B>, metrics: &ProbeMetrics) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = code;
        if let Ok(v) = ctype.parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET /metrics\n".into(),
        ),
        (_, path) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no {path} here; metrics are at /metrics\n"),
        ),
    }
}

/// Binds `addr` for `--metrics-listen`, naming it in the error.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot listen: {e}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
