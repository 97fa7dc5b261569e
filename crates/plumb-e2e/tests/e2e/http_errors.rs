//! Errors made by plumb on an HTTP listener: one test per cause. Each answer carries
//! the cause's status, `plumb-error: <cause>`, the request id (header and body), a
//! body naming the cause, and the same cause in the access log.
//!
//! Not covered here: `backend_drained`. For HTTP it is not produced by design: a drain
//! stops new requests at once (they see `no_healthy_backend` or go to another backend)
//! and the drain deadline closes only connections in the connection table under the
//! backend, which for HTTP are upgraded tunnels, not request/response exchanges.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::http_basics::{
    assert_plumb_error, get, http_config, log_line, ok, origin, Client, Step,
};
use crate::support::{blackhole, eventually, refusing_addr, Plumb};

fn failed(l: &Value) -> &Vec<Value> {
    l["failed_attempts"].as_array().expect("failed_attempts")
}

/// Asserts the log line of an error: cause, status, and the one failed attempt.
fn assert_failed_attempt(l: &Value, status: u16, cause: &str, backend: SocketAddr) {
    assert_eq!(l["cause"], cause, "{l}");
    assert_eq!(l["status"], status, "{l}");
    assert_eq!(l["attempts"], 1, "{l}");
    assert_eq!(failed(l).len(), 1, "{l}");
    assert_eq!(failed(l)[0]["backend"], backend.to_string(), "{l}");
    assert_eq!(failed(l)[0]["cause"], cause, "{l}");
    assert!(failed(l)[0]["ms"].as_f64().is_some(), "{l}");
    assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_refused_is_502() {
    let refusing = refusing_addr();
    let plumb = Plumb::start(&http_config(&[refusing], "", "")).await;
    let r = get(plumb.addr(), "/", &[]).await;
    let rid = assert_plumb_error(&r, 502, "upstream_connect_refused");
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 502, "upstream_connect_refused", refusing);
    assert_eq!(l["backend"], Value::Null, "no backend answered: {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_is_504() {
    let hole = blackhole();
    let plumb = Plumb::start(&http_config(
        &[hole.addr],
        "[pool.timeouts]\nconnect = \"300ms\"\n",
        "",
    ))
    .await;
    let t0 = Instant::now();
    let r = get(plumb.addr(), "/", &[]).await;
    let took = t0.elapsed();
    let rid = assert_plumb_error(&r, 504, "upstream_connect_timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}, expected about 300 ms"
    );
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 504, "upstream_connect_timeout", hole.addr);
    let ms = failed(&l)[0]["ms"].as_f64().unwrap();
    assert!((250.0..3000.0).contains(&ms), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_before_response_is_502() {
    let o = origin(|_| vec![Step::Reset]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let r = get(plumb.addr(), "/reset", &[]).await;
    let rid = assert_plumb_error(&r, 502, "upstream_reset_before_response");
    assert_eq!(o.seen().len(), 1, "the origin read the request");
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 502, "upstream_reset_before_response", o.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closed_early_is_502() {
    let o = origin(|_| vec![Step::Close]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let r = get(plumb.addr(), "/fin", &[]).await;
    let rid = assert_plumb_error(&r, 502, "upstream_closed_early");
    assert_eq!(o.seen().len(), 1);
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 502, "upstream_closed_early", o.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_timeout_is_504() {
    let o = origin(|_| vec![Step::Hang]).await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.timeouts]\nresponse_header = \"300ms\"\n",
        "",
    ))
    .await;
    let t0 = Instant::now();
    let r = get(plumb.addr(), "/slow", &[]).await;
    let took = t0.elapsed();
    let rid = assert_plumb_error(&r, 504, "upstream_response_timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}, expected about 300 ms"
    );
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 504, "upstream_response_timeout", o.addr);
}

/// Not in §5's list but a cause plumb has: the backend answered with something that
/// is not HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bad_response_is_502() {
    let o = origin(|_| vec![Step::Write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec())]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let r = get(plumb.addr(), "/", &[]).await;
    let rid = assert_plumb_error(&r, 502, "upstream_bad_response");
    let l = log_line(&plumb, &rid).await;
    assert_failed_attempt(&l, 502, "upstream_bad_response", o.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_is_503() {
    let o = origin(|_| vec![Step::Write(ok("up"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    assert_eq!(get(plumb.addr(), "/", &[]).await.text(), "up");
    plumb
        .server
        .pool("app")
        .unwrap()
        .drain(o.addr, None, false)
        .unwrap();
    let r = get(plumb.addr(), "/", &[]).await;
    let rid = assert_plumb_error(&r, 503, "no_healthy_backend");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "no_healthy_backend", "{l}");
    assert_eq!(l["status"], 503, "{l}");
    assert_eq!(l["attempts"], 0, "{l}");
    assert_eq!(l["pool"], "app", "{l}");
    assert_eq!(o.seen().len(), 1, "the drained backend got nothing new");
}

/// `max_connections_per_backend = 1` and one slow request in flight: a second request
/// is refused at once with 503 `backend_connection_limit`; the first one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connection_limit_is_503() {
    let o = origin(|r| {
        if r.path == "/slow" {
            vec![
                Step::Sleep(Duration::from_millis(800)),
                Step::Write(ok("slow")),
            ]
        } else {
            vec![Step::Write(ok("fast"))]
        }
    })
    .await;
    let plumb = Plumb::start(&http_config(
        &[o.addr],
        "[pool.upstream]\nmax_connections_per_backend = 1\n",
        "",
    ))
    .await;
    let mut held = Client::connect(plumb.addr()).await;
    held.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(eventually(Duration::from_secs(3), || o.seen().len() == 1).await);

    let t0 = Instant::now();
    let r = get(plumb.addr(), "/fast", &[]).await;
    assert!(t0.elapsed() < Duration::from_millis(700), "refused at once");
    let rid = assert_plumb_error(&r, 503, "backend_connection_limit");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "backend_connection_limit", "{l}");
    assert_eq!(l["status"], 503, "{l}");
    assert_eq!(l["attempts"], 0, "{l}");

    let first = held.response().await;
    assert_eq!(first.text(), "slow");
    assert_eq!(
        o.seen().len(),
        1,
        "the refused request never reached the origin"
    );
    // With the slot free again, requests pass.
    assert_eq!(get(plumb.addr(), "/fast", &[]).await.text(), "fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let o = origin(|_| vec![Step::Write(ok("a"))]).await;
    let toml = format!(
        "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npath_prefix = \"/a\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nbackends = [\"{}\"]\n",
        o.addr
    );
    let plumb = Plumb::start(&toml).await;
    assert_eq!(get(plumb.addr(), "/a/1", &[]).await.text(), "a");
    let r = get(plumb.addr(), "/b", &[]).await;
    let rid = assert_plumb_error(&r, 404, "no_route");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "no_route", "{l}");
    assert_eq!(l["status"], 404, "{l}");
    assert_eq!(l["attempts"], 0, "{l}");
    assert_eq!(l["path"], "/b", "{l}");
    assert_eq!(o.seen().len(), 1);
}

/// Backend addresses and timings are in the error body only with
/// `expose_error_details = true`; the log has them either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_details_only_when_exposed() {
    let refusing = refusing_addr();
    let toml = format!(
        r#"
[[listener]]
name = "private"
protocol = "http"
listen = "127.0.0.1:0"
pool = "app"

[[listener]]
name = "exposed"
protocol = "http"
listen = "127.0.0.1:0"
pool = "app"
expose_error_details = true

[[pool]]
name = "app"
backends = ["{refusing}"]
"#
    );
    let plumb = Plumb::start(&toml).await;
    let private = get(plumb.addrs[0], "/", &[]).await;
    let exposed = get(plumb.addrs[1], "/", &[]).await;
    let rid_p = assert_plumb_error(&private, 502, "upstream_connect_refused");
    let rid_e = assert_plumb_error(&exposed, 502, "upstream_connect_refused");

    let addr = refusing.to_string();
    let p = private.text();
    assert!(!p.contains(&addr), "backend address leaked: {p:?}");
    assert!(!p.contains("127.0.0.1"), "an address leaked: {p:?}");
    assert!(!p.contains("ms"), "timing leaked: {p:?}");
    let e = exposed.text();
    assert!(e.contains(&addr), "no backend address: {e:?}");
    assert!(
        e.lines().any(|l| l.contains(&addr)
            && l.contains("upstream_connect_refused")
            && l.ends_with("ms")),
        "no attempt line with its timing: {e:?}"
    );
    for rid in [rid_p, rid_e] {
        let l = log_line(&plumb, &rid).await;
        assert_eq!(failed(&l)[0]["backend"], addr, "{l}");
    }
}

/// A client that sends a request and goes away (FIN) while plumb waits for the
/// response head: the request still gets its access-log line, with a client cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_response_is_logged() {
    let o = origin(|_| {
        vec![
            Step::Sleep(Duration::from_millis(600)),
            Step::Write(ok("late")),
        ]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /gone HTTP/1.1\r\nHost: h\r\nplumb-request-id: gone-early-1\r\n\r\n")
        .await;
    assert!(eventually(Duration::from_secs(3), || o.seen().len() == 1).await);
    drop(c);
    let mut line = None;
    for _ in 0..300 {
        line = plumb
            .log()
            .into_iter()
            .find(|l| l["request_id"] == "gone-early-1");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let l = line.expect("no access-log line for a request whose client went away");
    assert_eq!(l["cause"], "client_closed_early", "{l}");
}

/// Errors reach HTTP/2 clients the same way: status, `plumb-error`, request id, body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_over_h2_name_their_cause() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let refusing = refusing_addr();
    let plumb = Plumb::start(&http_config(&[refusing], "", "")).await;
    let stream = tokio::net::TcpStream::connect(plumb.addr()).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("http://{}/h2-error", plumb.addr()))
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(crate::http_basics::T, tx.send_request(req))
        .await
        .expect("no h2 response")
        .unwrap();
    assert_eq!(resp.status(), 502);
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        header("plumb-error").as_deref(),
        Some("upstream_connect_refused")
    );
    let rid = header("plumb-request-id").expect("request id");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("upstream_connect_refused") && text.contains(&rid),
        "{text}"
    );
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["version"], "HTTP/2.0", "{l}");
    assert_eq!(l["cause"], "upstream_connect_refused", "{l}");
}
