//! The HTTP listener's everyday promises: keep-alive to clients and to backends,
//! pipelining, HTTP/2 prior knowledge (curl and hyper), routing by host and path,
//! the headers plumb adds, keeps and removes, large bodies streamed intact, and bodiless
//! responses logged as clean.
//!
//! The bottom of this file holds the helpers the other `http_*` modules share: a raw
//! HTTP/1.1 client that parses responses itself, and a scripted origin (a raw
//! `TcpListener` that reads each request and then follows a list of [`Step`]s).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::support::{eventually, Plumb};

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

/// Two requests on one client connection: both answered, and the second one rides the
/// kept-alive upstream connection the first one opened (the origin accepts once; the
/// second log line has no connect time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reuses_one_upstream_connection() {
    let o = origin(|r| vec![Step::Write(ok(format!("path={}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;

    let mut c = Client::connect(plumb.addr()).await;
    c.send(b"GET /one HTTP/1.1\r\nHost: ka.test\r\n\r\n").await;
    let r1 = c.response().await;
    assert_eq!(r1.status, 200, "{r1:?}");
    assert_eq!(r1.text(), "path=/one");
    let pool = plumb.server.pool("app").unwrap();
    assert!(
        eventually(Duration::from_secs(2), || pool.idle_connections() == 1).await,
        "the upstream connection did not go back to the keep-alive pool"
    );
    c.send(b"GET /two HTTP/1.1\r\nHost: ka.test\r\n\r\n").await;
    let r2 = c.response().await;
    assert_eq!(r2.status, 200, "{r2:?}");
    assert_eq!(r2.text(), "path=/two");

    assert_eq!(
        o.accepted(),
        1,
        "the second request opened a new connection"
    );
    let seen = o.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].conn, seen[1].conn);

    let l1 = log_line(&plumb, r1.rid()).await;
    let l2 = log_line(&plumb, r2.rid()).await;
    for (l, path) in [(&l1, "/one"), (&l2, "/two")] {
        assert_eq!(l["kind"], "http", "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["cause"], Value::Null, "{l}");
        assert_eq!(l["attempts"], 1, "{l}");
        assert_eq!(l["failed_attempts"], serde_json::json!([]), "{l}");
        assert_eq!(l["backend"], o.addr.to_string(), "{l}");
        assert_eq!(l["method"], "GET", "{l}");
        assert_eq!(l["path"], path, "{l}");
        assert_eq!(l["host"], "ka.test", "{l}");
        assert_eq!(l["version"], "HTTP/1.1", "{l}");
        assert_eq!(l["pool"], "app", "{l}");
        assert_eq!(l["upgraded"], false, "{l}");
        assert!(l["header_read_ms"].as_f64().is_some(), "{l}");
        let fb = l["first_byte_ms"].as_f64().expect("first_byte_ms");
        let total = l["total_ms"].as_f64().expect("total_ms");
        assert!(fb <= total, "first byte after the end? {l}");
    }
    assert!(l1["connect_ms"].as_f64().is_some(), "a fresh connect: {l1}");
    assert_eq!(l2["connect_ms"], Value::Null, "a reused connection: {l2}");
}

/// Three requests in one write: three responses, in request order, even though the
/// first one is the slowest at the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_answered_in_order() {
    let o = origin(|r| {
        let mut steps = Vec::new();
        if r.path == "/1" {
            steps.push(Step::Sleep(Duration::from_millis(150)));
        }
        steps.push(Step::Write(ok(format!("answer to {}", r.path))));
        steps
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(
        b"GET /1 HTTP/1.1\r\nHost: p\r\n\r\nGET /2 HTTP/1.1\r\nHost: p\r\n\r\nGET /3 HTTP/1.1\r\nHost: p\r\n\r\n",
    )
    .await;
    for i in 1..=3 {
        let r = c.response().await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), format!("answer to /{i}"));
    }
    plumb.wait_log(3).await;
}

/// HTTP/2 with prior knowledge from curl: answered over h2, the origin gets HTTP/1.1
/// with the authority as Host, the log says HTTP/2.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_prior_knowledge_with_curl() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: curl is not installed");
        return;
    }
    let o = origin(|r| vec![Step::Write(ok(format!("path={}", r.path)))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let url = format!("http://{}/h2/curl?x=1", plumb.addr());
    let out = timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("curl")
            .args([
                "--http2-prior-knowledge",
                "-sS",
                "--max-time",
                "5",
                "-D",
                "-",
                "-H",
                "x-test: from-curl",
                &url,
            ])
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("curl ran");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/2 200"), "{stdout}");
    let rid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("plumb-request-id: "))
        .expect("a request id header")
        .trim()
        .to_string();
    assert!(is_hex32(&rid), "{rid}");
    assert!(stdout.ends_with("path=/h2/curl?x=1"), "{stdout}");

    let seen = o.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].request_line, "GET /h2/curl?x=1 HTTP/1.1");
    assert_eq!(seen[0].header("host"), Some(&*plumb.addr().to_string()));
    assert_eq!(seen[0].header("x-test"), Some("from-curl"));
    assert_eq!(seen[0].header("plumb-request-id"), Some(&*rid));

    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["version"], "HTTP/2.0", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["cause"], Value::Null, "{l}");
    assert_eq!(l["backend"], o.addr.to_string(), "{l}");
}

/// HTTP/2 with prior knowledge from hyper: concurrent streams on one connection, and a
/// POST whose body reaches the origin intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_prior_knowledge_with_hyper_client() {
    let o = origin(|r| {
        let mut steps = Vec::new();
        if r.path == "/slow" {
            steps.push(Step::Sleep(Duration::from_millis(200)));
        }
        steps.push(Step::Write(ok(format!(
            "{} {} {}",
            r.method,
            r.path,
            r.body.len()
        ))));
        steps
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let stream = TcpStream::connect(plumb.addr()).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let base = format!("http://{}", plumb.addr());
    let send = |method: &str, path: &str, body: Vec<u8>| {
        let mut tx = tx.clone();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        async move {
            let resp = tx.send_request(req).await.expect("h2 request");
            let status = resp.status().as_u16();
            let rid = resp
                .headers()
                .get("plumb-request-id")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, rid, String::from_utf8_lossy(&body).to_string())
        }
    };
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (slow, fast, post) = tokio::join!(
        send("GET", "/slow", Vec::new()),
        send("GET", "/fast", Vec::new()),
        send("POST", "/post", payload.clone()),
    );
    assert_eq!(slow.0, 200);
    assert_eq!(slow.2, "GET /slow 0");
    assert_eq!(fast.0, 200);
    assert_eq!(fast.2, "GET /fast 0");
    assert_eq!(post.0, 200);
    assert_eq!(post.2, "POST /post 100000");
    let posted = o.seen().into_iter().find(|r| r.path == "/post").unwrap();
    assert!(posted.body == payload, "the POST body changed on the way");

    for (_, rid, _) in [&slow, &fast, &post] {
        let rid = rid.as_deref().expect("request id header");
        let l = log_line(&plumb, rid).await;
        assert_eq!(l["version"], "HTTP/2.0", "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["cause"], Value::Null, "{l}");
    }
    let l = log_line(&plumb, post.1.as_deref().unwrap()).await;
    assert_eq!(l["bytes_from_client"], 100_000, "{l}");
}

/// Over HTTP/2 the request id goes out as an HPACK literal never indexed (why:
/// `headers::id_field`). Checked on the wire, response by response: exactly one
/// never-indexed field (the id; plumb marks no other), and after the first
/// response nothing is added to the table but a new `date`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_id_is_never_indexed() {
    let o = origin(|_| vec![Step::Write(ok("x"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut s = TcpStream::connect(plumb.addr()).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    s.write_all(&out).await.unwrap();
    let mut kinds = Vec::new();
    let mut buf = Vec::new();
    let began = tokio::time::Instant::now();
    for stream in (1u32..120).step_by(2) {
        // GET / (static table entries), :scheme http, :authority "a" (literal).
        let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
        let mut frame = vec![0, 0, block.len() as u8, 1, 0x5]; // HEADERS, END_STREAM|END_HEADERS
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&block);
        s.write_all(&frame).await.unwrap();
        // The response's HEADERS frame for this stream (SETTINGS, its ACK, and
        // WINDOW_UPDATEs may come first; DATA after).
        let block = timeout(T, async {
            loop {
                while buf.len() < 9 {
                    assert!(fill(&mut s, &mut buf).await, "plumb closed the connection");
                }
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                while buf.len() < 9 + len {
                    assert!(fill(&mut s, &mut buf).await, "plumb closed the connection");
                }
                let frame: Vec<u8> = buf.drain(..9 + len).collect();
                let id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                if frame[3] == 1 && id == stream {
                    assert_eq!(
                        frame[4] & 0x4,
                        0x4,
                        "one HEADERS frame per response (no CONTINUATION)"
                    );
                    break frame[9..].to_vec();
                }
            }
        })
        .await
        .expect("a response head within 5 s");
        kinds.push(hpack_kinds(&block));
    }
    for (i, k) in kinds.iter().enumerate() {
        assert_eq!(k.never_indexed, 1, "response {i}: {k:?}");
    }
    // After the first response only a new `date` (hyper's, once a second) may be
    // added to the table; the backend's `content-length` h2 never indexes.
    let seconds = usize::try_from(began.elapsed().as_secs()).unwrap_or(usize::MAX);
    let added: usize = kinds[1..].iter().map(|k| k.incremental).sum();
    assert!(
        added <= seconds + 1 && kinds[1..].iter().all(|k| k.incremental <= 1),
        "fields indexed after the first response in {seconds} s: {kinds:?}"
    );
}

/// How many fields of an HPACK block each representation carried (RFC 7541 §6).
#[derive(Debug, Default)]
struct HpackKinds {
    indexed: usize,
    incremental: usize,
    not_indexed: usize,
    never_indexed: usize,
}

fn hpack_kinds(mut b: &[u8]) -> HpackKinds {
    // An integer with an N-bit prefix (§5.1).
    fn int(b: &mut &[u8], bits: u32) -> usize {
        let max = (1usize << bits) - 1;
        let mut v = usize::from(b[0]) & max;
        *b = &b[1..];
        if v == max {
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v += usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
        }
        v
    }
    // A string literal (§5.2), Huffman or not: only skipped.
    fn skip_str(b: &mut &[u8]) {
        let n = int(b, 7);
        *b = &b[n..];
    }
    let mut k = HpackKinds::default();
    while !b.is_empty() {
        let first = b[0];
        if first & 0x80 != 0 {
            int(&mut b, 7);
            k.indexed += 1;
            continue;
        }
        if first & 0xe0 == 0x20 {
            int(&mut b, 5); // a table size update
            continue;
        }
        let (bits, count) = if first & 0x40 != 0 {
            (6, &mut k.incremental)
        } else if first & 0x10 != 0 {
            (4, &mut k.never_indexed)
        } else {
            (4, &mut k.not_indexed)
        };
        *count += 1;
        if int(&mut b, bits) == 0 {
            skip_str(&mut b);
        }
        skip_str(&mut b);
    }
    k
}

/// Routes: exact host, `*.wildcard` host, path prefix on whole segments, then the
/// default pool; without a default pool an unmatched request gets 404 `no_route`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path() {
    let exact = origin(|_| vec![Step::Write(ok("exact"))]).await;
    let wild = origin(|_| vec![Step::Write(ok("wild"))]).await;
    let apis = origin(|_| vec![Step::Write(ok("apis"))]).await;
    let dflt = origin(|_| vec![Step::Write(ok("dflt"))]).await;
    let toml = format!(
        r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
pool = "dflt"
[[listener.route]]
host = "api.example.com"
pool = "exact"
[[listener.route]]
host = "*.example.com"
pool = "wild"
[[listener.route]]
path_prefix = "/api"
pool = "apis"

[[listener]]
name = "strict"
protocol = "http"
listen = "127.0.0.1:0"
[[listener.route]]
host = "only.example.com"
pool = "exact"

[[pool]]
name = "exact"
backends = ["{}"]
[[pool]]
name = "wild"
backends = ["{}"]
[[pool]]
name = "apis"
backends = ["{}"]
[[pool]]
name = "dflt"
backends = ["{}"]
"#,
        exact.addr, wild.addr, apis.addr, dflt.addr
    );
    let plumb = Plumb::start(&toml).await;
    let web = plumb.addrs[0];
    let strict = plumb.addrs[1];
    let cases = [
        ("api.example.com", "/", "exact"),
        ("API.Example.COM:8080", "/x", "exact"),
        ("api.example.com.", "/api/x", "exact"),
        ("a.example.com", "/", "wild"),
        ("a.b.example.com", "/api", "wild"),
        ("example.com", "/", "dflt"),
        ("badexample.com", "/", "dflt"),
        ("other.test", "/api", "apis"),
        ("other.test", "/api/", "apis"),
        ("other.test", "/api/v1/users", "apis"),
        ("other.test", "/apix", "dflt"),
        ("other.test", "/ap", "dflt"),
        ("other.test", "/", "dflt"),
    ];
    for (host, path, want) in cases {
        let r = get(web, path, &[("Host", host)]).await;
        assert_eq!(r.status, 200, "{host}{path}: {r:?}");
        assert_eq!(r.text(), want, "{host}{path}");
        let l = log_line(&plumb, r.rid()).await;
        assert_eq!(l["pool"], want, "{host}{path}: {l}");
    }

    // No default pool on "strict".
    let hit = get(strict, "/", &[("Host", "only.example.com")]).await;
    assert_eq!(hit.text(), "exact");
    let miss = get(strict, "/", &[("Host", "else.example.com")]).await;
    let rid = assert_plumb_error(&miss, 404, "no_route");
    let l = log_line(&plumb, &rid).await;
    assert_eq!(l["cause"], "no_route", "{l}");
    assert_eq!(l["status"], 404, "{l}");
    assert_eq!(l["pool"], Value::Null, "{l}");
    assert_eq!(l["attempts"], 0, "{l}");
    assert_eq!(l["backend"], Value::Null, "{l}");
}

/// X-Forwarded-For appended, X-Forwarded-Proto set (a client's spoofed value replaced),
/// Forwarded appended, the Host header kept as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers() {
    let o = origin(|_| vec![Step::Write(ok("ok"))]).await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let r = get(
        plumb.addr(),
        "/theirs",
        &[
            ("Host", "Fwd.Example:8443"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let r2 = get(plumb.addr(), "/plain", &[("Host", "plain.test")]).await;
    assert_eq!(r2.status, 200);
    let seen = o.seen();
    let theirs = seen.iter().find(|r| r.path == "/theirs").unwrap();
    assert_eq!(
        theirs.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(theirs.header("x-forwarded-proto"), Some("http"));
    assert_eq!(theirs.all("x-forwarded-proto").len(), 1);
    assert_eq!(
        theirs.header("forwarded"),
        Some("for=198.51.100.1, for=127.0.0.1;proto=http;host=Fwd.Example:8443")
    );
    assert_eq!(theirs.header("host"), Some("Fwd.Example:8443"));
    assert_eq!(theirs.all("host").len(), 1);
    let plain = seen.iter().find(|r| r.path == "/plain").unwrap();
    assert_eq!(plain.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(plain.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        plain.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=plain.test")
    );
    assert_eq!(plain.header("host"), Some("plain.test"));
}

/// Request ids: generated (32 hex) when absent, the same in the response, at the
/// origin and in the log; a client's kept; a malformed one replaced;
/// `keep_request_id = false` replaces even a good one; `request_id_header` renames it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids() {
    let o = origin(|_| vec![Step::Write(ok("ok"))]).await;
    let toml = format!(
        r#"
[[listener]]
name = "default"
protocol = "http"
listen = "127.0.0.1:0"
pool = "app"

[[listener]]
name = "replace"
protocol = "http"
listen = "127.0.0.1:0"
pool = "app"
request_id_header = "X-Request-Id"
keep_request_id = false

[[listener]]
name = "custom"
protocol = "http"
listen = "127.0.0.1:0"
pool = "app"
request_id_header = "X-Request-Id"

[[pool]]
name = "app"
backends = ["{}"]
"#,
        o.addr
    );
    let plumb = Plumb::start(&toml).await;
    let (default, replace, custom) = (plumb.addrs[0], plumb.addrs[1], plumb.addrs[2]);
    let seen = |path: &str| o.seen().into_iter().find(|r| r.path == path).unwrap();

    // Generated.
    let r = get(default, "/gen", &[]).await;
    let rid = r
        .header("plumb-request-id")
        .expect("request id")
        .to_string();
    assert!(is_hex32(&rid), "{rid}");
    assert_eq!(seen("/gen").header("plumb-request-id"), Some(&*rid));
    assert_eq!(log_line(&plumb, &rid).await["path"], "/gen");

    // Kept.
    let r = get(default, "/kept", &[("plumb-request-id", "client-id-42")]).await;
    assert_eq!(r.header("plumb-request-id"), Some("client-id-42"));
    assert_eq!(
        seen("/kept").header("plumb-request-id"),
        Some("client-id-42")
    );
    assert_eq!(seen("/kept").all("plumb-request-id").len(), 1);
    assert_eq!(log_line(&plumb, "client-id-42").await["path"], "/kept");

    // Malformed (a space): replaced.
    let r = get(default, "/bad-id", &[("plumb-request-id", "has space")]).await;
    let rid = r.header("plumb-request-id").unwrap().to_string();
    assert!(is_hex32(&rid), "{rid}");
    assert_eq!(seen("/bad-id").header("plumb-request-id"), Some(&*rid));

    // keep_request_id = false, custom header: replaced.
    let r = get(replace, "/replaced", &[("X-Request-Id", "mine")]).await;
    let rid = r.header("x-request-id").expect("x-request-id").to_string();
    assert!(is_hex32(&rid), "{rid}");
    assert!(
        r.header("plumb-request-id").is_none(),
        "the default header name is not used: {r:?}"
    );
    let s = seen("/replaced");
    assert_eq!(s.header("x-request-id"), Some(&*rid));
    assert_eq!(s.all("x-request-id").len(), 1);
    assert!(s.header("plumb-request-id").is_none(), "{s:?}");
    assert_eq!(log_line(&plumb, &rid).await["listener"], "replace");

    // Custom header, kept.
    let r = get(custom, "/custom", &[("X-Request-Id", "mine-kept")]).await;
    assert_eq!(r.header("x-request-id"), Some("mine-kept"));
    assert_eq!(seen("/custom").header("x-request-id"), Some("mine-kept"));
    assert_eq!(log_line(&plumb, "mine-kept").await["listener"], "custom");
}

/// Hop-by-hop headers (Connection and the headers it names, Keep-Alive, TE,
/// Proxy-Authorization, Proxy-Connection) stop at plumb in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_plumb() {
    let o = origin(|_| {
        vec![Step::Write(response(
            200,
            &[
                ("Connection", "keep-alive, X-Origin-Hop"),
                ("X-Origin-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("X-End-To-End", "kept"),
            ],
            b"hop",
        ))]
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;
    c.send(
        b"GET /hop HTTP/1.1\r\nHost: hop.test\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Connection: keep-alive\r\nX-Normal: yes\r\n\r\n",
    )
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hop");
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    for h in ["x-origin-hop", "keep-alive", "proxy-connection"] {
        assert!(r.header(h).is_none(), "{h} reached the client: {r:?}");
    }
    if let Some(c) = r.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-origin-hop"), "{r:?}");
    }

    let s = &o.seen()[0];
    assert_eq!(s.header("x-normal"), Some("yes"));
    assert_eq!(s.header("host"), Some("hop.test"));
    for h in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(s.header(h).is_none(), "{h} reached the origin: {s:?}");
    }
    if let Some(c) = s.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-secret-hop"), "{s:?}");
    }
}

/// A 1 MiB upload (Content-Length and chunked) and a 4 MiB download (Content-Length
/// and chunked) arrive byte for byte; the log counts body bytes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_intact() {
    const UP: usize = 1 << 20;
    const DOWN: usize = 4 << 20;
    let down = Arc::new(pattern(DOWN, 7));
    let d = Arc::clone(&down);
    let o = origin(move |r| match r.path.as_str() {
        "/down" => vec![Step::Write(ok(&d[..]))],
        "/down-chunked" => {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in d.chunks(100_000) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            vec![Step::Write(out)]
        }
        _ => vec![Step::Write(ok(format!("got {}", r.body.len())))],
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let up = pattern(UP, 3);

    // Content-Length upload.
    let mut c = Client::connect(plumb.addr()).await;
    let mut req =
        format!("POST /up HTTP/1.1\r\nHost: big\r\nContent-Length: {UP}\r\n\r\n").into_bytes();
    req.extend_from_slice(&up);
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.text(), format!("got {UP}"));
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["bytes_from_client"], UP, "{l}");
    assert_eq!(l["bytes_to_client"], format!("got {UP}").len(), "{l}");

    // Chunked upload, on the same connection.
    let mut req =
        b"POST /up-chunked HTTP/1.1\r\nHost: big\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in up.chunks(65_536) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req).await;
    let r = c.response().await;
    assert_eq!(r.text(), format!("got {UP}"));
    let l = log_line(&plumb, r.rid()).await;
    assert_eq!(l["bytes_from_client"], UP, "{l}");
    for path in ["/up", "/up-chunked"] {
        let s = o.seen().into_iter().find(|r| r.path == path).unwrap();
        assert!(s.complete);
        assert!(s.body == up, "{path}: the upload changed on the way");
    }

    // Downloads.
    for path in ["/down", "/down-chunked"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: big\r\n\r\n").as_bytes())
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), DOWN, "{path}");
        assert!(r.body == *down, "{path}: the download changed on the way");
        let l = log_line(&plumb, r.rid()).await;
        assert_eq!(l["bytes_to_client"], DOWN, "{path}: {l}");
        assert_eq!(l["bytes_from_client"], 0, "{path}: {l}");
        assert_eq!(l["cause"], Value::Null, "{path}: {l}");
    }
}

/// A HEAD answered with a Content-Length and no body, and a 204: both reach the
/// client intact (the connection stays usable) and both log without a cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_204_log_no_cause() {
    let o = origin(|r| match (r.method.as_str(), r.path.as_str()) {
        ("HEAD", _) => vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Head: yes\r\n\r\n".to_vec(),
        )],
        (_, "/empty") => vec![Step::Write(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())],
        _ => vec![Step::Write(ok("after"))],
    })
    .await;
    let plumb = Plumb::start(&http_config(&[o.addr], "", "")).await;
    let mut c = Client::connect(plumb.addr()).await;

    c.send(b"HEAD /head HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let head = timeout(T, c.try_response(true))
        .await
        .expect("no HEAD response")
        .unwrap();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("x-head"), Some("yes"));
    assert_eq!(
        head.header("content-length"),
        Some("1234"),
        "a HEAD response keeps the length of the body it stands for: {head:?}"
    );

    c.send(b"GET /empty HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let empty = c.response().await;
    assert_eq!(empty.status, 204, "{empty:?}");
    assert!(empty.body.is_empty());

    c.send(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let after = c.response().await;
    assert_eq!(after.text(), "after", "framing broke after HEAD/204");

    for (r, status) in [(&head, 200), (&empty, 204), (&after, 200)] {
        let l = log_line(&plumb, r.rid()).await;
        assert_eq!(l["status"], status, "{l}");
        assert_eq!(l["cause"], Value::Null, "{l}");
        assert_eq!(l["error"], Value::Null, "{l}");
    }
    let l = log_line(&plumb, head.rid()).await;
    assert_eq!(l["method"], "HEAD", "{l}");
    assert_eq!(l["bytes_to_client"], 0, "{l}");
}

// ---------------------------------------------------------------------------------
// Helpers shared by the http_* modules
// ---------------------------------------------------------------------------------

/// How long a test waits for one response.
pub(crate) const T: Duration = Duration::from_secs(5);

/// An HTTP listener `front` with default pool `app` over `backends`.
pub(crate) fn http_config(
    backends: &[SocketAddr],
    pool_extra: &str,
    listener_extra: &str,
) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[listener]]\nname = \"front\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n\n[[pool]]\nname = \"app\"\nbackends = [{}]\n{pool_extra}\n",
        list.join(", ")
    )
}

/// Deterministic bytes.
pub(crate) fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(i >> 12).wrapping_add(seed) % 251) as u8)
        .collect()
}

pub(crate) fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The access-log line of the request with this id (waits, bounded).
pub(crate) async fn log_line(plumb: &Plumb, rid: &str) -> Value {
    for _ in 0..300 {
        if let Some(l) = plumb.log().into_iter().find(|l| l["request_id"] == rid) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no access-log line for request {rid}: {:?}", plumb.log());
}

/// Checks an error made by plumb: status, `plumb-error`, a request id, a body naming
/// the cause. Returns the request id.
pub(crate) fn assert_plumb_error(r: &Resp, status: u16, cause: &str) -> String {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("plumb-error"), Some(cause), "{r:?}");
    let rid = r
        .header("plumb-request-id")
        .unwrap_or_else(|| panic!("no request id: {r:?}"))
        .to_string();
    assert!(!rid.is_empty());
    let text = r.text();
    assert!(
        text.contains(cause),
        "the body does not name {cause}: {text:?}"
    );
    assert!(
        text.contains(&rid),
        "the body does not carry the id: {text:?}"
    );
    rid
}

/// A response as the client got it.
#[derive(Clone)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(300).collect();
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body", &shown)
            .finish()
    }
}

impl Resp {
    /// The first header with this name (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The `plumb-request-id` (panics when missing).
    pub(crate) fn rid(&self) -> &str {
        self.header("plumb-request-id")
            .unwrap_or_else(|| panic!("no plumb-request-id: {self:?}"))
    }
}

fn parse_head(head: &[u8]) -> io::Result<Resp> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not a status line: {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: Vec::new(),
    })
}

/// A raw HTTP/1.1 client connection to plumb.
pub(crate) struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = timeout(T, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to plumb");
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads a response head; its body stays unread.
    pub(crate) async fn head(&mut self) -> io::Result<Resp> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_head(&head);
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF before a response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    pub(crate) async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let mut l: Vec<u8> = self.buf.drain(..i + 2).collect();
                l.truncate(i);
                return Ok(l);
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads the body of `r` into it. `head_request`: the request was a HEAD.
    pub(crate) async fn body(&mut self, r: &mut Resp, head_request: bool) -> io::Result<()> {
        if head_request || r.status / 100 == 1 || r.status == 204 || r.status == 304 {
            return Ok(());
        }
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.line().await?;
                let line = String::from_utf8_lossy(&line).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|e| io::Error::other(format!("chunk size {line:?}: {e}")))?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    return Ok(());
                }
                let data = self.exact(size).await?;
                r.body.extend_from_slice(&data);
                self.exact(2).await?;
            }
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().map_err(io::Error::other)?;
            r.body = self.exact(n).await?;
            Ok(())
        } else {
            while self.fill().await? > 0 {}
            r.body = std::mem::take(&mut self.buf);
            Ok(())
        }
    }

    pub(crate) async fn try_response(&mut self, head_request: bool) -> io::Result<Resp> {
        let mut r = self.head().await?;
        self.body(&mut r, head_request).await?;
        Ok(r)
    }

    /// The next response, whole (panics after [`T`] or on EOF).
    pub(crate) async fn response(&mut self) -> Resp {
        timeout(T, self.try_response(false))
            .await
            .expect("no response within 5 s")
            .expect("reading the response")
    }

    /// Whatever is buffered plus everything until EOF or an error, bounded by `limit`
    /// (`None`: the connection was still open at the limit).
    pub(crate) async fn until_eof(
        &mut self,
        limit: Duration,
    ) -> Option<(Vec<u8>, Option<io::Error>)> {
        let r = timeout(limit, async {
            loop {
                match self.fill().await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(e),
                }
            }
        })
        .await
        .ok()?;
        Some((std::mem::take(&mut self.buf), r))
    }
}

/// One request: a fresh connection, `Connection: close`, the response.
pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: test.local\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut c = Client::connect(addr).await;
    c.send(req.as_bytes()).await;
    c.response().await
}

/// A whole HTTP/1.1 response with a Content-Length.
pub(crate) fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let reason = match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        _ => "Whatever",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `200 OK` with this body.
pub(crate) fn ok(body: impl AsRef<[u8]>) -> Vec<u8> {
    response(200, &[], body.as_ref())
}

/// What a scripted origin does after reading a request (head and body).
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    Sleep(Duration),
    /// Half-close (FIN) and drop the connection.
    Close,
    /// Close with `SO_LINGER` 0: an RST.
    Reset,
    /// Never answer; read (and discard) until the peer closes.
    Hang,
    /// Echo every byte (after an upgrade) until EOF, then half-close.
    Echo,
    /// Keep the connection until the next request's bytes arrive, then close it
    /// without reading them: the kernel answers with an RST (the keep-alive race).
    CloseOnNextRequest,
}

/// A request as the origin read it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    /// Which accepted connection (0, 1, ...).
    pub conn: usize,
    pub request_line: String,
    pub method: String,
    /// The request target as sent (with the query).
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The whole body arrived.
    pub complete: bool,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::str::from_utf8(v).unwrap_or("<not utf-8>"))
    }

    pub(crate) fn raw_header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

type Script = Arc<dyn Fn(&Req) -> Vec<Step> + Send + Sync>;

#[derive(Default)]
struct OriginState {
    accepted: AtomicUsize,
    /// Connections the origin closed on its own (Close, CloseOnNextRequest).
    closed: AtomicUsize,
    seen: Mutex<Vec<Req>>,
}

/// A scripted HTTP/1.1 origin on loopback. Dropping it stops it and every connection.
pub(crate) struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections the origin closed itself.
    pub(crate) fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Every request head read so far (with its body when complete), in order.
    pub(crate) fn seen(&self) -> Vec<Req> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// Starts an origin that answers each request with `script(&request)`.
pub(crate) async fn origin(script: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static) -> Origin {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(OriginState::default());
    let st = Arc::clone(&state);
    let script: Script = Arc::new(script);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                r = l.accept() => {
                    let Ok((s, _)) = r else { return };
                    let n = st.accepted.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve_origin_conn(s, n, Arc::clone(&st), Arc::clone(&script)));
                }
                Some(_) = conns.join_next() => {}
            }
        }
    });
    Origin { addr, state, task }
}

fn parse_request_head(raw: &[u8], conn: usize) -> Req {
    let mut lines = raw
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let colon = l.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&l[..colon]).trim().to_string();
            let v = l[colon + 1..].trim_ascii().to_vec();
            Some((name, v))
        })
        .collect();
    Req {
        conn,
        request_line,
        method,
        path,
        headers,
        body: Vec::new(),
        complete: false,
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn take_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let mut l: Vec<u8> = buf.drain(..i + 2).collect();
            l.truncate(i);
            return Some(l);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

async fn take_exact(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize, out: &mut Vec<u8>) -> bool {
    while buf.len() < n {
        if !fill(s, buf).await {
            out.append(buf);
            return false;
        }
    }
    out.extend(buf.drain(..n));
    true
}

/// Reads the body the head announces; false when the connection ended first.
async fn read_body(s: &mut TcpStream, buf: &mut Vec<u8>, req: &Req, out: &mut Vec<u8>) -> bool {
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let Some(line) = take_line(s, buf).await else {
                return false;
            };
            let line = String::from_utf8_lossy(&line).to_string();
            let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            else {
                return false;
            };
            if size == 0 {
                loop {
                    match take_line(s, buf).await {
                        None => return false,
                        Some(l) if l.is_empty() => return true,
                        Some(_) => {}
                    }
                }
            }
            if !take_exact(s, buf, size, out).await {
                return false;
            }
            let mut crlf = Vec::new();
            if !take_exact(s, buf, 2, &mut crlf).await {
                return false;
            }
        }
    } else if let Some(n) = req.header("content-length") {
        let Ok(n) = n.trim().parse::<usize>() else {
            return false;
        };
        take_exact(s, buf, n, out).await
    } else {
        true
    }
}

async fn serve_origin_conn(mut s: TcpStream, conn: usize, st: Arc<OriginState>, script: Script) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(e) = find(&buf, b"\r\n\r\n") {
                break e;
            }
            if !fill(&mut s, &mut buf).await {
                return;
            }
        };
        let raw: Vec<u8> = buf.drain(..end + 4).collect();
        let mut req = parse_request_head(&raw, conn);
        let idx = {
            let mut seen = st.seen.lock().unwrap();
            seen.push(req.clone());
            seen.len() - 1
        };
        let mut body = Vec::new();
        let complete = read_body(&mut s, &mut buf, &req, &mut body).await;
        req.body = body;
        req.complete = complete;
        st.seen.lock().unwrap()[idx] = req.clone();
        if !complete {
            return;
        }
        for step in script(&req) {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => {
                    let _ = s.shutdown().await;
                    st.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Step::Reset => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    return;
                }
                Step::Hang => {
                    let mut sink = vec![0u8; 16 * 1024];
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                Step::Echo => {
                    if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    return;
                }
                Step::CloseOnNextRequest => {
                    let _ = s.readable().await;
                    st.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}
