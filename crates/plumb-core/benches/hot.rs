//! Micro-benchmarks of the pure functions every proxied request goes through:
//! choosing a backend, naming the cause of an error, rewriting headers, routing.
//! Run: `cargo bench -p plumb-core --bench hot` (criterion prints each function's
//! time and its change since the last run on this machine).

#![allow(clippy::expect_used, reason = "a benchmark's set-up fails loudly")]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use plumb_core::hot;
use plumb_core::pool::Pool;
use plumb_core::{Cause, Side};

fn pool(balance: &str, backends: usize) -> Arc<Pool> {
    let list: Vec<String> = (0..backends)
        .map(|i| format!("\"127.0.0.1:{}\"", 9000 + i))
        .collect();
    let text = format!(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbalance = \"{balance}\"\nbackends = [{}]\n",
        list.join(", ")
    );
    let cfg = plumb_config::parse(&text)
        .expect("bench config")
        .pools
        .remove(0);
    Pool::new(&cfg, Arc::default(), Arc::default())
}

fn balancer_pick(c: &mut Criterion) {
    // Pool::pick reads the clock through tokio (paused-time tests), so it runs in a
    // runtime context.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    for (balance, n) in [
        ("round_robin", 2),
        ("round_robin", 16),
        ("least_conn", 16),
        ("random_two", 16),
    ] {
        let p = pool(balance, n);
        c.bench_function(&format!("pick/{balance}/{n}"), |b| {
            b.iter(|| drop(black_box(p.pick(black_box(&[])))))
        });
    }
    let p = pool("round_robin", 16);
    let tried: Vec<SocketAddr> = vec!["127.0.0.1:9000".parse().expect("addr")];
    c.bench_function("pick/round_robin/16/after_one_failed", |b| {
        b.iter(|| drop(black_box(p.pick(black_box(&tried)))))
    });
}

fn cause_mapping(c: &mut Criterion) {
    let errors = [
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        std::io::Error::from(std::io::ErrorKind::TimedOut),
        std::io::Error::from_raw_os_error(libc_ehostunreach()),
    ];
    c.bench_function("cause/of_io_error", |b| {
        b.iter(|| {
            for e in &errors {
                black_box(Cause::of_io_error(black_box(e), Side::Upstream));
            }
        })
    });
    c.bench_function("cause/status_and_name", |b| {
        b.iter(|| {
            for cause in Cause::ALL {
                black_box((black_box(cause).http_status(), cause.as_str()));
            }
        })
    });
}

/// EHOSTUNREACH on Linux.
fn libc_ehostunreach() -> i32 {
    113
}

fn request_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn header_rewriting(c: &mut Criterion) {
    let head = request_head();
    let client: SocketAddr = "192.0.2.10:53124".parse().expect("addr");
    c.bench_function("headers/strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            || head.clone(),
            |h| hot::strip_hop_by_hop(h, false),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut with_connection = head.clone();
    with_connection.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace"),
    );
    with_connection.insert("x-trace", HeaderValue::from_static("1"));
    c.bench_function("headers/strip_hop_by_hop/connection_named", |b| {
        b.iter_batched_ref(
            || with_connection.clone(),
            |h| hot::strip_hop_by_hop(h, false),
            criterion::BatchSize::SmallInput,
        )
    });
    let forwarded = hot::ForwardedFor::new(client, "http");
    let (parts, ()) = hyper::Request::get("/catalog/item?id=42")
        .body(())
        .expect("request")
        .into_parts();
    let mut parts = parts;
    parts.headers = head.clone();
    let rid = (
        HeaderName::from_static("plumb-request-id"),
        HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
    );
    // The whole rewrite of a request's head: hop-by-hop out, forwarding fields and
    // the request id in, written as the upstream HTTP/1.1 head (no body) or made the
    // map hyper's client sends (a body).
    let mut buf = bytes::BytesMut::with_capacity(1024);
    c.bench_function("headers/rewrite/written", |b| {
        b.iter(|| {
            hot::upstream_head(
                &mut buf,
                black_box(&parts),
                &forwarded,
                "shop.example.com",
                rid.clone(),
            );
            black_box(buf.len())
        })
    });
    c.bench_function("headers/rewrite/map", |b| {
        b.iter(|| {
            black_box(hot::upstream_map(
                black_box(&parts),
                &forwarded,
                "shop.example.com",
                rid.clone(),
            ))
        })
    });
    c.bench_function("headers/request_id/new", |b| {
        let name = HeaderName::from_static("plumb-request-id");
        b.iter(|| black_box(hot::request_id(black_box(&head), &name, false)))
    });
}

fn routing(c: &mut Criterion) {
    let text = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\n\
        [[listener.route]]\nhost = \"api.example.com\"\npath_prefix = \"/v1\"\npool = \"p\"\n\
        [[listener.route]]\nhost = \"*.example.com\"\npath_prefix = \"/static\"\npool = \"p\"\n\
        [[listener.route]]\npath_prefix = \"/\"\npool = \"p\"\n\
        [[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:9000\"]\n";
    let cfg = plumb_config::parse(text).expect("bench config");
    let routes: Vec<(plumb_config::model::Route, usize)> = cfg.listeners[0]
        .routes
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| (r, i))
        .collect();
    c.bench_function("route/normalize_and_match", |b| {
        b.iter(|| {
            let host = hot::normalize_host(black_box("Shop.Example.com:8080"));
            black_box(hot::first_match(
                &routes,
                &host,
                black_box("/static/app.js"),
            ))
        })
    });
    c.bench_function("route/has_dot_segments", |b| {
        b.iter(|| {
            black_box(hot::has_dot_segments(black_box(
                "/static/js/vendor/app.min.js",
            )))
        })
    });
}

criterion_group!(
    benches,
    balancer_pick,
    cause_mapping,
    header_rewriting,
    routing
);
criterion_main!(benches);
