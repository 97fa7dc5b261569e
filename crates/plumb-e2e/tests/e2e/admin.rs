//! The admin API (docs/admin-api.md) in front of a running plumb: status, pools,
//! registering and updating backends (which then carry traffic), the connection table,
//! bearer tokens, and every kind of rejected request, each of which must leave the
//! pools exactly as they were.
//!
//! The API is spoken as raw HTTP/1.1 over a fresh TCP connection per request, so what
//! is asserted is exactly what goes over the wire. The client (`AdminApi`) is shared
//! with the drain, health and ejection tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{blackhole, config, echo, echo_on, named, read_to_end, Plumb};

/// Bound on one admin request, connect to last byte.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// The admin API of a [`Plumb`], served in-process on a free loopback port.
pub(crate) struct AdminApi {
    pub(crate) addr: SocketAddr,
    /// Sent as `Authorization: Bearer <token>` by [`AdminApi::call`].
    token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for AdminApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Resp {
    /// The body parsed as JSON (panics with the body if it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body))
    }

    /// A header's value (name compared case-insensitively).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves the admin API for `plumb`, requiring `token` if given.
pub(crate) async fn start_admin(plumb: &Plumb, token: Option<&str>) -> AdminApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Arc::new(plumb_admin::Admin::new(
        Arc::clone(&plumb.server),
        token.map(str::to_string),
        "test".into(),
        None,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(plumb_admin::serve(admin, listener, async move {
        let _ = stopped.await;
    }));
    AdminApi {
        addr,
        token: token.map(str::to_string),
        stop: Some(stop),
        task,
    }
}

impl AdminApi {
    /// One request on a fresh connection. `auth` is the whole `Authorization` value.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: Option<&str>,
    ) -> Resp {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: plumb-admin\r\nConnection: close\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let exchange = async {
            let mut s = TcpStream::connect(self.addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let (raw, err) = read_to_end(&mut s).await;
            assert!(
                err.is_none(),
                "{method} {path}: reading the response failed: {err:?}"
            );
            raw
        };
        let raw = tokio::time::timeout(REQUEST_LIMIT, exchange)
            .await
            .unwrap_or_else(|_| {
                panic!("{method} {path}: no complete response within {REQUEST_LIMIT:?}")
            });
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: malformed response {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// One request with the API's token, if it has one.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.send(method, path, body, auth.as_deref()).await
    }

    /// GET that must answer 200 with JSON.
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let r = self.call("GET", path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        r.json()
    }

    /// Every pool, as `GET /api/v1/pools` shows them.
    pub(crate) async fn pools(&self) -> Value {
        self.get_json("/api/v1/pools").await
    }

    /// One backend of pool `pool` as `GET /api/v1/pools/{pool}` shows it, if listed.
    pub(crate) async fn backend(&self, pool: &str, addr: SocketAddr) -> Option<Value> {
        let p = self.get_json(&format!("/api/v1/pools/{pool}")).await;
        p["backends"]
            .as_array()
            .expect("backends is an array")
            .iter()
            .find(|b| b["address"] == addr.to_string())
            .cloned()
    }

    /// Polls the backend (every 10 ms, at most `limit`) until `pred` holds; returns
    /// the view and when it was first seen to hold, or `None` on time-out.
    pub(crate) async fn wait_backend(
        &self,
        pool: &str,
        addr: SocketAddr,
        limit: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Option<(Option<Value>, Instant)> {
        let deadline = Instant::now() + limit;
        loop {
            let b = self.backend(pool, addr).await;
            if pred(b.as_ref()) {
                return Some((b, Instant::now()));
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Like [`AdminApi::wait_backend`], panicking with the last view on time-out.
    pub(crate) async fn expect_backend(
        &self,
        pool: &str,
        addr: SocketAddr,
        limit: Duration,
        what: &str,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> (Option<Value>, Instant) {
        match self.wait_backend(pool, addr, limit, pred).await {
            Some(x) => x,
            None => panic!(
                "backend {addr} not {what} within {limit:?}; now: {:?}",
                self.backend(pool, addr).await
            ),
        }
    }
}

/// Status line, headers and (Content-Length delimited) body.
fn parse_response(raw: &[u8]) -> Option<Resp> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let resp = Resp {
        status,
        headers,
        body: body.to_string(),
    };
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().ok()?;
        if len != resp.body.len() {
            return None;
        }
    }
    Some(resp)
}

/// The backend name a `named` backend writes first (all names here are 2 bytes).
pub(crate) async fn read_name(s: &mut TcpStream) -> String {
    let mut name = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut name))
        .await
        .expect("no backend name within 5 s")
        .expect("reading the backend name failed");
    String::from_utf8_lossy(&name).into_owned()
}

/// Connects through plumb and reads which named backend answered; the connection is
/// returned open.
pub(crate) async fn connect_named(addr: SocketAddr) -> (String, TcpStream) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let name = read_name(&mut s).await;
    (name, s)
}

/// Writes `msg` and expects it echoed back within 2 s.
pub(crate) async fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write failed");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
        .await
        .expect("no echo within 2 s")
        .expect("reading the echo failed");
    assert_eq!(got, msg, "echo differs");
}

fn path_of(addr: SocketAddr) -> String {
    format!("/api/v1/pools/app/backends/{addr}")
}

/// The error code of a JSON error response, checking its shape on the way.
fn error_code(r: &Resp) -> String {
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "error responses are JSON: {r:?}"
    );
    let v = r.json();
    let detail = v["detail"].as_str().unwrap_or("");
    assert!(!detail.is_empty(), "an error names its detail: {v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_status_and_pools() {
    let a = echo().await;
    let b = echo().await;
    let plumb = Plumb::start(&config(&[a.addr.to_string(), b.addr.to_string()], "", "")).await;
    let api = start_admin(&plumb, None).await;

    let r = api.call("GET", "/healthz", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "ok\n");

    // Three connections through plumb, all finished.
    for k in 0..3 {
        let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
        echo_round_trip(&mut s, format!("hello {k}").as_bytes()).await;
    }
    plumb.wait_log(3).await;

    let st = api.get_json("/api/v1/status").await;
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"), "{st}");
    assert!(st["uptime_s"].as_f64().is_some_and(|u| u >= 0.0), "{st}");
    assert_eq!(st["config_checksum"], "test", "{st}");
    assert_eq!(st["connections"], 0, "{st}");
    let listeners = st["listeners"].as_array().expect("listeners is an array");
    assert_eq!(listeners.len(), 1, "{st}");
    assert_eq!(listeners[0]["name"], "front", "{st}");
    assert_eq!(listeners[0]["pool"], "app", "{st}");
    assert_eq!(listeners[0]["protocol"], "tcp", "{st}");
    assert_eq!(listeners[0]["accepted"], 3, "{st}");
    assert_eq!(listeners[0]["refused"], 0, "{st}");

    let pools = api.pools().await;
    let pools = pools.as_array().expect("pools is an array");
    assert_eq!(pools.len(), 1);
    let p = &pools[0];
    assert_eq!(p["name"], "app", "{p}");
    assert_eq!(p["balance"], "round_robin", "{p}");
    assert_eq!(p["health_checks"], Value::Null, "{p}");
    let backends = p["backends"].as_array().expect("backends is an array");
    let addrs: Vec<&str> = backends
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [a.addr.to_string(), b.addr.to_string()], "{p}");
    let mut total = 0;
    for be in backends {
        assert_eq!(be["state"], "healthy", "{be}");
        assert_eq!(be["weight"], 1, "{be}");
        assert_eq!(be["reason"], Value::Null, "{be}");
        assert_eq!(be["drain"], Value::Null, "{be}");
        assert_eq!(be["active_connections"], 0, "{be}");
        assert_eq!(be["consecutive_failures"], 0, "{be}");
        assert_eq!(be["errors"], json!({}), "{be}");
        total += be["connections"].as_u64().unwrap();
    }
    assert_eq!(total, 3, "every connection is counted on its backend: {p}");

    // One pool by name says the same.
    let one = api.get_json("/api/v1/pools/app").await;
    assert_eq!(one["name"], "app");
    assert_eq!(one["backends"], p["backends"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_registers_a_backend_that_then_takes_traffic() {
    let b0 = named("b0").await;
    let b1 = named("b1").await;
    let plumb = Plumb::start(&config(&[b0.addr.to_string()], "", "")).await;
    let api = start_admin(&plumb, None).await;

    // Before: only b0 answers.
    for _ in 0..3 {
        let (name, _s) = connect_named(plumb.addr()).await;
        assert_eq!(name, "b0");
    }

    let r = api.call("PUT", &path_of(b1.addr), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["result"], "registered", "{v}");
    assert_eq!(v["pool"], "app", "{v}");
    assert_eq!(v["backend"], b1.addr.to_string(), "{v}");

    let view = api
        .backend("app", b1.addr)
        .await
        .expect("registered backend is listed");
    assert_eq!(view["state"], "healthy", "{view}");
    assert_eq!(view["weight"], 1, "{view}");

    // Now round robin alternates between the two.
    let mut names = Vec::new();
    for _ in 0..6 {
        let (name, _s) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    let to_b1 = names.iter().filter(|n| *n == "b1").count();
    assert_eq!(to_b1, 3, "equal weights share equally: {names:?}");

    // A new weight: 200 updated, and the share follows it (1:5).
    let r = api
        .call("PUT", &path_of(b1.addr), Some(r#"{"weight": 5}"#))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "updated");
    assert_eq!(api.backend("app", b1.addr).await.unwrap()["weight"], 5);
    let mut names = Vec::new();
    for _ in 0..12 {
        let (name, _s) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    let to_b1 = names.iter().filter(|n| *n == "b1").count();
    assert!(
        (9..=11).contains(&to_b1),
        "weights 1:5 give b1 about 10 of 12: {names:?}"
    );

    // A PUT without a body on an existing backend changes nothing but says updated.
    let r = api.call("PUT", &path_of(b1.addr), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "updated");
    assert_eq!(api.backend("app", b1.addr).await.unwrap()["weight"], 5);
}

/// `slow_start`: a backend registered through the API starts at a tenth of its
/// weight and reaches all of it after the ramp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_backend_ramps_up_with_slow_start() {
    let b0 = named("b0").await;
    let b1 = named("b1").await;
    let plumb = Plumb::start(&config(&[b0.addr.to_string()], "slow_start = \"1s\"", "")).await;
    let api = start_admin(&plumb, None).await;
    let r = api.call("PUT", &path_of(b1.addr), None).await;
    assert_eq!(r.status, 201, "{r:?}");
    let registered = Instant::now();

    // Right after registering: weight 0.1 against 1, so about 1 in 11.
    let mut names = Vec::new();
    for _ in 0..11 {
        let (name, _s) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    assert!(
        registered.elapsed() < Duration::from_millis(300),
        "too slow to see the start of the ramp"
    );
    let early = names.iter().filter(|n| *n == "b1").count();
    assert!(
        early <= 2,
        "a new backend got {early} of 11 at the start of its ramp: {names:?}"
    );

    // After the ramp: an equal share.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(registered.elapsed())).await;
    let mut names = Vec::new();
    for _ in 0..10 {
        let (name, _s) = connect_named(plumb.addr()).await;
        names.push(name);
    }
    let late = names.iter().filter(|n| *n == "b1").count();
    assert!(
        (4..=6).contains(&late),
        "after the ramp b1 got {late} of 10: {names:?}"
    );
}

/// Every rejected request: its status, its error code, and the pools unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_and_change_nothing() {
    let a = echo().await;
    let plumb = Plumb::start(&config(&[a.addr.to_string()], "", "")).await;
    let api = start_admin(&plumb, None).await;
    let existing = path_of(a.addr);
    let absent = path_of("127.0.0.1:9".parse().unwrap());

    struct Case<'a> {
        method: &'a str,
        path: String,
        body: Option<&'a str>,
        status: u16,
        error: &'a str,
    }
    let case = |method, path: &str, body, status, error| Case {
        method,
        path: path.to_string(),
        body,
        status,
        error,
    };
    let cases = [
        case(
            "PUT",
            "/api/v1/pools/nope/backends/127.0.0.1:9",
            None,
            404,
            "unknown_pool",
        ),
        case("GET", "/api/v1/pools/nope", None, 404, "unknown_pool"),
        case(
            "POST",
            "/api/v1/pools/nope/backends/127.0.0.1:9/drain",
            None,
            404,
            "unknown_pool",
        ),
        case(
            "DELETE",
            "/api/v1/pools/nope/backends/127.0.0.1:9",
            None,
            404,
            "unknown_pool",
        ),
        case(
            "PUT",
            "/api/v1/pools/app/backends/not-an-address",
            None,
            400,
            "bad_address",
        ),
        case(
            "PUT",
            "/api/v1/pools/app/backends/localhost:80",
            None,
            400,
            "bad_address",
        ),
        case(
            "PUT",
            "/api/v1/pools/app/backends/127.0.0.1",
            None,
            400,
            "bad_address",
        ),
        case(
            "PUT",
            "/api/v1/pools/app/backends/127.0.0.1:99999",
            None,
            400,
            "bad_address",
        ),
        case("PUT", &absent, Some(r#"{"weight": 0}"#), 400, "bad_weight"),
        case(
            "PUT",
            &absent,
            Some(r#"{"weight": 5000}"#),
            400,
            "bad_weight",
        ),
        case("PUT", &absent, Some(r#"{"weight": -1}"#), 400, "bad_weight"),
        case(
            "PUT",
            &existing,
            Some(r#"{"weight": 0}"#),
            400,
            "bad_weight",
        ),
        case(
            "PUT",
            &existing,
            Some(r#"{"weight": 1001}"#),
            400,
            "bad_weight",
        ),
        case("PUT", &absent, Some(r#"{"weight": 2"#), 400, "bad_body"),
        case("PUT", &absent, Some("weight=2"), 400, "bad_body"),
        case(
            "PUT",
            &absent,
            Some(r#"{"weight": 2, "colour": "red"}"#),
            400,
            "bad_body",
        ),
        case("PUT", &absent, Some(r#"{"weight": "2"}"#), 400, "bad_body"),
        case(
            "PUT",
            &existing,
            Some(r#"{"weight": 2, "colour": "red"}"#),
            400,
            "bad_body",
        ),
        case("GET", "/api/v1/nope", None, 404, "unknown_path"),
        case("GET", "/nope", None, 404, "unknown_path"),
        case("GET", "/api/v2/pools", None, 404, "unknown_path"),
        case(
            "POST",
            &format!("{absent}/drain"),
            None,
            404,
            "unknown_backend",
        ),
        case("DELETE", &absent, None, 404, "unknown_backend"),
        case(
            "POST",
            &format!("{existing}/drain"),
            Some(r#"{"timeout": "3x"}"#),
            400,
            "bad_timeout",
        ),
        case(
            "POST",
            &format!("{existing}/drain"),
            Some(r#"{"timeout": "10"}"#),
            400,
            "bad_timeout",
        ),
        case(
            "POST",
            &format!("{existing}/drain"),
            Some(r#"{"timeout": 10}"#),
            400,
            "bad_body",
        ),
        case(
            "POST",
            &format!("{existing}/drain"),
            Some(r#"{"timeout": "1s", "x": 1}"#),
            400,
            "bad_body",
        ),
        case(
            "POST",
            &format!("{existing}/drain"),
            Some("{"),
            400,
            "bad_body",
        ),
        case(
            "DELETE",
            &existing,
            Some(r#"{"timeout": "1s"}"#),
            400,
            "bad_body",
        ),
        case("POST", "/api/v1/reload", None, 409, "no_config_file"),
    ];
    // Wrong methods: 405 with the methods the path takes.
    let wrong_methods = [
        ("POST", "/healthz".to_string(), "GET"),
        ("POST", "/api/v1/status".to_string(), "GET"),
        ("DELETE", "/api/v1/pools".to_string(), "GET"),
        ("PUT", "/api/v1/pools/app".to_string(), "GET"),
        ("GET", existing.clone(), "PUT, DELETE"),
        ("POST", existing.clone(), "PUT, DELETE"),
        ("GET", format!("{existing}/drain"), "POST"),
        ("DELETE", format!("{existing}/drain"), "POST"),
        ("POST", "/api/v1/connections".to_string(), "GET"),
        ("GET", "/api/v1/reload".to_string(), "POST"),
    ];

    let before = api.pools().await;
    assert_eq!(before[0]["backends"].as_array().unwrap().len(), 1);
    for c in &cases {
        let r = api.call(c.method, &c.path, c.body).await;
        let what = format!("{} {} {:?}", c.method, c.path, c.body);
        assert_eq!(r.status, c.status, "{what}: {r:?}");
        assert_eq!(error_code(&r), c.error, "{what}: {r:?}");
        assert_eq!(api.pools().await, before, "{what} changed the pools");
    }
    for (method, path, allow) in &wrong_methods {
        let r = api.call(method, path, None).await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert_eq!(error_code(&r), "method_not_allowed", "{method} {path}");
        assert_eq!(r.header("allow"), Some(*allow), "{method} {path}: {r:?}");
        assert_eq!(
            api.pools().await,
            before,
            "{method} {path} changed the pools"
        );
    }
    // Traffic still flows to the one backend, which is not draining.
    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    echo_round_trip(&mut s, b"still here").await;
}

/// An IPv6 backend named in the path, percent-encoded and plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_backend_in_the_path() {
    let Ok(l6) = TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED ipv6_backend_in_the_path: cannot bind [::1]:0");
        return;
    };
    let v6 = echo_on(l6);
    let v4 = named("b0").await;
    let plumb = Plumb::start(&config(&[v4.addr.to_string()], "", "")).await;
    let api = start_admin(&plumb, None).await;
    let port = v6.addr.port();

    let encoded = format!("/api/v1/pools/app/backends/%5B%3A%3A1%5D%3A{port}");
    let r = api.call("PUT", &encoded, Some(r#"{"weight": 3}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["backend"], format!("[::1]:{port}"));
    let view = api.backend("app", v6.addr).await.expect("listed");
    assert_eq!(view["address"], format!("[::1]:{port}"), "{view}");
    assert_eq!(view["weight"], 3, "{view}");
    assert_eq!(view["state"], "healthy", "{view}");

    // Brackets written plainly, with only the colon encoded, name the same backend.
    let r = api
        .call(
            "PUT",
            &format!("/api/v1/pools/app/backends/[::1]:{port}"),
            Some(r#"{"weight": 4}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["result"], "updated");
    assert_eq!(api.backend("app", v6.addr).await.unwrap()["weight"], 4);

    // It carries traffic: with weights 1 and 4, most of 10 connections go to it
    // (those echo the first bytes back instead of writing a name).
    let mut to_v6 = 0;
    for k in 0..10 {
        let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
        s.write_all(b"zz").await.unwrap();
        let mut got = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("connection {k}: no answer"))
            .unwrap();
        if &got == b"zz" {
            to_v6 += 1;
        } else {
            assert_eq!(&got, b"b0");
        }
    }
    assert!(
        (7..=9).contains(&to_v6),
        "weights 1:4 send about 8 of 10 to [::1]: {to_v6}"
    );
    let log = plumb.wait_log(10).await;
    assert!(
        log.iter().any(|l| l["backend"] == format!("[::1]:{port}")),
        "the access log names the IPv6 backend: {log:?}"
    );

    // Deregistering through the encoded path: gone at once (nothing open to it).
    let r = api.call("DELETE", &encoded, None).await;
    assert_eq!(r.status, 202, "{r:?}");
    api.expect_backend("app", v6.addr, Duration::from_secs(2), "removed", |b| {
        b.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required() {
    let a = echo().await;
    let extra = echo().await;
    let plumb = Plumb::start(&config(&[a.addr.to_string()], "", "")).await;
    let api = start_admin(&plumb, Some("s3cret")).await;
    let put = path_of(extra.addr);

    let before = api.pools().await;
    let bad_auth: [Option<&str>; 6] = [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
    ];
    for auth in bad_auth {
        for (method, path) in [
            ("GET", "/api/v1/pools"),
            ("GET", "/api/v1/status"),
            ("PUT", put.as_str()),
            ("DELETE", path_of(a.addr).as_str()),
            ("POST", &format!("{}/drain", path_of(a.addr))),
        ] {
            let r = api.send(method, path, None, auth).await;
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
            assert_eq!(
                error_code(&r),
                "unauthorized",
                "{method} {path} with {auth:?}"
            );
            assert!(!r.body.contains("s3cret"), "the token is not echoed: {r:?}");
        }
        assert_eq!(
            api.pools().await,
            before,
            "a request with {auth:?} changed the pools"
        );
    }

    // The right token works.
    let r = api.send("PUT", &put, None, Some("Bearer s3cret")).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(api.backend("app", extra.addr).await.is_some());
    let r = api
        .send("GET", "/healthz", None, Some("Bearer s3cret"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A backend that echoes, and on the client's FIN keeps its side open (so the
/// connection sits half-closed) until `release` is notified.
async fn echo_keeping_open() -> (SocketAddr, Arc<Notify>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let r2 = Arc::clone(&release);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let release = Arc::clone(&r2);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::time::timeout(Duration::from_secs(30), release.notified()).await;
            });
        }
    });
    (addr, release, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_table_lists_open_connections() {
    let (backend, release, task) = echo_keeping_open().await;
    let plumb = Plumb::start(&config(&[backend.to_string()], "", "")).await;
    let api = start_admin(&plumb, None).await;

    assert_eq!(api.get_json("/api/v1/connections").await, json!([]));

    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    echo_round_trip(&mut s, b"0123456789").await;
    echo_round_trip(&mut s, b"abc").await;
    let client = s.local_addr().unwrap();

    let conns = api.get_json("/api/v1/connections").await;
    let list = conns.as_array().expect("an array");
    assert_eq!(list.len(), 1, "{conns}");
    let c = &list[0];
    assert_eq!(c["listener"], "front", "{c}");
    assert_eq!(c["pool"], "app", "{c}");
    assert_eq!(c["client"], client.to_string(), "{c}");
    assert_eq!(c["backend"], backend.to_string(), "{c}");
    assert_eq!(c["bytes_from_client"], 13, "{c}");
    assert_eq!(c["bytes_to_client"], 13, "{c}");
    assert_eq!(c["state"], "established", "{c}");
    assert!(c["id"].as_u64().is_some(), "{c}");
    assert!(c["age_ms"].as_u64().is_some(), "{c}");
    let st = api.get_json("/api/v1/status").await;
    assert_eq!(st["connections"], 1, "{st}");

    // The client half-closes; the backend keeps its side open.
    s.shutdown().await.unwrap();
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        last = api.get_json("/api/v1/connections").await;
        if last[0]["state"] == "client_half_closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last[0]["state"], "client_half_closed", "{last}");

    // The backend closes its side too: the connection ends and leaves the table.
    release.notify_one();
    let (rest, err) = tokio::time::timeout(Duration::from_secs(2), read_to_end(&mut s))
        .await
        .expect("no EOF after the backend closed");
    assert!(rest.is_empty() && err.is_none(), "{rest:?} {err:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = api.get_json("/api/v1/connections").await;
        if now == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "connection still listed: {now}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["end"], "client_closed", "{}", log[0]);
    task.abort();
}

/// A connection whose backend does not answer the SYN is listed as `connecting`, with
/// the backend it is trying; when the client resets meanwhile it leaves the table at
/// once instead of waiting out the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_table_shows_connecting() {
    let hole = blackhole();
    let plumb = Plumb::start(&config(
        &[hole.addr.to_string()],
        "[pool.timeouts]\nconnect = \"3s\"",
        "",
    ))
    .await;
    let api = start_admin(&plumb, None).await;

    let s = TcpStream::connect(plumb.addr()).await.unwrap();
    let client = s.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let c = loop {
        let conns = api.get_json("/api/v1/connections").await;
        if conns[0]["state"] == "connecting" && conns[0]["backend"] == hole.addr.to_string() {
            break conns[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "not listed as connecting: {conns}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(c["client"], client.to_string(), "{c}");
    assert_eq!(c["bytes_from_client"], 0, "{c}");
    assert_eq!(c["bytes_to_client"], 0, "{c}");

    // The client gives up with an RST.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let t0 = Instant::now();
    loop {
        let conns = api.get_json("/api/v1/connections").await;
        if conns == json!([]) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "still listed {:?} after the client reset: {conns}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = plumb.wait_log(1).await;
    assert_eq!(log[0]["cause"], "client_reset", "{}", log[0]);
    assert_eq!(log[0]["attempts"], 1, "{}", log[0]);
}
