use std::time::Duration;

use crate::*;

const MINIMAL: &str = r#"
[[listener]]
name = "front"
listen = "127.0.0.1:8080"
pool = "app"

[[pool]]
name = "app"
backends = ["127.0.0.1:9001"]
"#;

/// Parses `text` and returns its errors, one per line, or panics if it is valid.
fn errors(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected errors, got a valid config: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn check(text: &str, expected: &[&str]) {
    let got = errors(text);
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, expected);
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = parse(MINIMAL).unwrap();
    let p = &c.pools[0];
    assert_eq!(p.balance, Balance::RoundRobin);
    assert_eq!(p.timeouts.connect, Duration::from_secs(3));
    assert_eq!(p.connect_attempts, 3);
    assert_eq!(p.backends[0].weight, 1);
    assert_eq!(p.tcp.user_timeout, Some(Duration::from_secs(60)));
    assert!(p.tcp.keepalive.is_some());
    let l = &c.listeners[0];
    assert_eq!(l.backlog, 4096);
    assert_eq!(l.max_connections, None);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.runtime.access_log, AccessLog::Stderr);
}

#[test]
fn bad_duration_names_its_path() {
    let text = format!("{MINIMAL}\n[pool.timeouts]\nconnect = \"3x\"\n");
    check(
        &text,
        &[
            r#"pool[0].timeouts.connect: "3x" is not a duration (such as "250ms", "5s", "2m", "1h")"#,
        ],
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = r#"
[[listener]]
name = "front"
listen = ["127.0.0.1:8080", "nope"]
pool = "missing"
backlog = 0
colour = "blue"

[[pool]]
name = "app"
balance = "fastest"
backends = ["127.0.0.1:9001", "127.0.0.1:9001", { address = "10.0.0.1:80", weight = 0 }]

[[pool]]
name = "app"
backends = ["127.0.0.1:9002"]
[pool.timeouts]
connect = "0s"
tunnel_idle = 5
"#;
    check(
        text,
        &[
            "listener[0].colour: unknown key",
            r#"pool[0].balance: "fastest" is not a balancing algorithm (expected "round_robin", "least_conn" or "random_two")"#,
            "pool[0].backends[1]: duplicate backend 127.0.0.1:9001",
            "pool[0].backends[2].weight: 0 is out of range (1 to 1000)",
            "pool[1].timeouts.connect: must be greater than zero: every wait needs a timer",
            r#"pool[1].timeouts.tunnel_idle: 5 is not a duration (such as "250ms", "5s", "2m", "1h")"#,
            r#"listener[0].listen[1]: "nope" is not an address (expected IP:port, such as "127.0.0.1:8080" or "[::1]:8080")"#,
            "listener[0].backlog: 0 is out of range (1 to 65535)",
            r#"pool[1].name: duplicate pool name "app""#,
            r#"listener[0].pool: pool "missing" does not exist"#,
        ],
    );
}

#[test]
fn unknown_keys_anywhere_are_reported() {
    let text = format!("{MINIMAL}\n[runtime]\nthreads = 2\n[pool.tcp]\nkeepalive = true\n");
    check(
        &text,
        &[
            "pool[0].tcp.keepalive: unknown key",
            "runtime.threads: unknown key",
        ],
    );
}

#[test]
fn a_wrong_table_shape_does_not_hide_other_errors() {
    check(
        "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\ntimeouts = \"3s\"\nbogus = 1\nbackends = [\"nope\"]\n",
        &[
            r#"pool[0].timeouts: expected a table, found "3s""#,
            "pool[0].bogus: unknown key",
            r#"pool[0].backends[0]: "nope" is not an address (expected IP:port, such as "127.0.0.1:8080" or "[::1]:8080")"#,
        ],
    );
    check(
        "listener = 3\n",
        &[
            "listener: expected [[listener]] entries (an array of tables)",
            "listener: at least one [[listener]] is required",
        ],
    );
}

#[test]
fn absurd_durations_are_refused() {
    let text = format!(
        "{MINIMAL}[pool.timeouts]\ntunnel_idle = \"18446744073709551615s\"\nconnect = \"9000h\"\n"
    );
    check(
        &text,
        &[
            r#"pool[0].timeouts.connect: "9000h" is too long (at most 365 days)"#,
            r#"pool[0].timeouts.tunnel_idle: "18446744073709551615s" is too long (at most 365 days)"#,
        ],
    );
}

#[test]
fn wrong_table_shape_is_reported_with_path() {
    check(
        "[[listener]]\nname = \"a\"\n[[pool]]\ntimeouts = 3\n",
        &[
            "pool[0].timeouts: expected a table, found 3",
            "pool[0].name: missing",
            "pool[0].backends: missing (a list of backend addresses)",
            r#"listener[0].listen: missing (an address such as "127.0.0.1:8080")"#,
            "listener[0].pool: missing (the name of a [[pool]])",
        ],
    );
}

#[test]
fn syntax_error_gives_line_and_column() {
    let e = errors("[[listener]]\nname = \"a\nlisten = 1\n");
    assert!(e.starts_with("line 2, column"), "{e}");
    assert!(e.contains("invalid TOML"), "{e}");
}

#[test]
fn listener_needs_pool_and_addresses() {
    check(
        "[[listener]]\nname = \"front\"\n",
        &[
            r#"listener[0].listen: missing (an address such as "127.0.0.1:8080")"#,
            "listener[0].pool: missing (the name of a [[pool]])",
        ],
    );
    check("", &["listener: at least one [[listener]] is required"]);
}

#[test]
fn dns_discovery_takes_the_place_of_backends() {
    let text = MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "discovery = { dns = \"app.internal:8080\", refresh = \"10s\", nameserver = \"127.0.0.1:5353\", weight = 3 }",
    );
    let p = &parse(&text).unwrap().pools[0];
    assert!(p.backends.is_empty());
    assert_eq!(
        p.discovery,
        Some(Discovery::Dns(DnsDiscovery {
            name: "app.internal".into(),
            port: 8080,
            refresh: Duration::from_secs(10),
            nameserver: Some("127.0.0.1:5353".parse().unwrap()),
            weight: 3,
        }))
    );
    assert_eq!(p.slow_start, Some(DEFAULT_DISCOVERY_SLOW_START));
    let text = MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "discovery = { dns = \"app.internal:80\", nameserver = \"10.0.0.2\" }\nslow_start = \"2s\"",
    );
    let p = &parse(&text).unwrap().pools[0];
    let Some(Discovery::Dns(d)) = &p.discovery else {
        panic!("{p:?}")
    };
    assert_eq!(d.refresh, DEFAULT_DNS_REFRESH);
    assert_eq!(d.nameserver, Some("10.0.0.2:53".parse().unwrap()));
    assert_eq!(p.slow_start, Some(Duration::from_secs(2)));
}

#[test]
fn etcd_discovery_names_endpoints_and_a_prefix() {
    let text = MINIMAL.replace(
        "backends = [\"127.0.0.1:9001\"]",
        "discovery = { etcd = { endpoints = [\"http://10.0.0.5:2379\", \"10.0.0.6:2379\"], prefix = \"/plumb/pools/app/\" } }",
    );
    let p = &parse(&text).unwrap().pools[0];
    assert_eq!(
        p.discovery,
        Some(Discovery::Etcd(EtcdDiscovery {
            endpoints: vec!["http://10.0.0.5:2379".into(), "http://10.0.0.6:2379".into()],
            prefix: "/plumb/pools/app/".into(),
        }))
    );
    let with = |d: &str| MINIMAL.replace("backends = [\"127.0.0.1:9001\"]", d);
    check(
        &with("discovery = { etcd = { endpoints = [], prefix = \"\" }, refresh = \"5s\" }"),
        &[
            "pool[0].discovery.refresh: unknown key (with etcd, the keys go inside `etcd = { ... }`)",
            "pool[0].discovery.etcd.endpoints: expected a non-empty list of URLs, found []",
            "pool[0].discovery.etcd.prefix: empty: every key of etcd would be a backend",
        ],
    );
    check(
        &with("discovery = { etcd = { endpoints = [\"etcd\"], colour = 1 } }"),
        &[
            "pool[0].discovery.etcd.colour: unknown key",
            r#"pool[0].discovery.etcd.endpoints[0]: "etcd" is not an etcd endpoint (such as "http://127.0.0.1:2379")"#,
            r#"pool[0].discovery.etcd.prefix: missing (such as "/plumb/pools/app/")"#,
        ],
    );
}

#[test]
fn bad_discovery_is_refused_with_its_path() {
    let with = |d: &str| MINIMAL.replace("backends = [\"127.0.0.1:9001\"]", d);
    check(
        &MINIMAL.replace(
            "backends = [",
            "discovery = { dns = \"app.internal:80\" }\nbackends = [",
        ),
        &["pool[0].backends: a pool takes its backends from `backends` or from `discovery`, not both"],
    );
    check(
        &with("discovery = { dns = \"app.internal\" }"),
        &[
            r#"pool[0].discovery.dns: "app.internal" is not a host name and port (such as "app.internal:8080")"#,
        ],
    );
    check(
        &with("discovery = { dns = \"bad name:80\", refresh = \"500ms\", colour = 1, nameserver = \"dns\", weight = 0 }"),
        &[
            "pool[0].discovery.colour: unknown key",
            r#"pool[0].discovery.dns: "bad name:80" is not a host name and port (such as "app.internal:8080")"#,
            "pool[0].discovery.refresh: must be at least 1s",
            r#"pool[0].discovery.nameserver: "dns" is not an address (an IP, or IP:port such as "127.0.0.1:5353")"#,
            "pool[0].discovery.weight: 0 is out of range (1 to 1000)",
        ],
    );
    check(
        &with("discovery = \"app.internal:80\""),
        &[
            r#"pool[0].discovery: expected a table such as { dns = "app.internal:8080" }, found "app.internal:80""#,
        ],
    );
    check(
        &with("discovery = { refresh = \"5s\" }"),
        &[
            r#"pool[0].discovery.dns: missing: the name and port to resolve ("app.internal:8080"), or `etcd`"#,
        ],
    );
}

#[test]
fn weights_ipv6_and_tcp_options() {
    let text = r#"
[[listener]]
name = "front"
listen = ["127.0.0.1:8080", "[::1]:8080"]
pool = "app"
max_connections = 10
[listener.tcp]
mss = 1200

[[pool]]
name = "app"
balance = "least_conn"
backends = [{ address = "[::1]:9001", weight = 3 }, "127.0.0.1:9002"]
send_proxy = "v2"
[pool.tcp]
keepalive_idle = "0s"
user_timeout = "10s"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.listeners[0].listen.len(), 2);
    assert_eq!(c.listeners[0].tcp.mss, Some(1200));
    assert_eq!(c.pools[0].backends[0].weight, 3);
    assert_eq!(c.pools[0].backends[0].addr.to_string(), "[::1]:9001");
    assert_eq!(c.pools[0].tcp.keepalive, None);
    assert_eq!(c.pools[0].tcp.user_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.pools[0].send_proxy, Some(ProxyVersion::V2));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("3x"), None);
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration(""), None);
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(Duration::from_secs(120)), "2m");
}

mod props {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text at all: an error or a config, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = crate::parse(&text);
        }

        /// TOML-shaped text built from the config's own keys and odd values.
        #[test]
        fn toml_shaped_text_never_panics(lines in proptest::collection::vec(line(), 0..30)) {
            let text = lines.join("\n");
            if let Err(e) = crate::parse(&text) {
                prop_assert!(!e.0.is_empty());
                for err in &e.0 {
                    prop_assert!(!err.message.is_empty());
                }
            }
        }
    }

    fn line() -> impl Strategy<Value = String> {
        let header = prop::sample::select(vec![
            "[[listener]]",
            "[[pool]]",
            "[runtime]",
            "[admin]",
            "[pool.timeouts]",
            "[pool.tcp]",
            "[listener.tcp]",
            "[listener.timeouts]",
            "[[pool.backends]]",
        ])
        .prop_map(str::to_string);
        let key = prop::sample::select(vec![
            "name",
            "listen",
            "pool",
            "backends",
            "balance",
            "connect",
            "tunnel_idle",
            "weight",
            "address",
            "mss",
            "backlog",
            "max_connections",
            "workers",
            "keepalive_idle",
            "user_timeout",
            "send_proxy",
            "accept_proxy",
            "health",
            "access_log",
            "connect_attempts",
            "keepalive_count",
            "x",
        ]);
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "\"[a-z0-9:.\\[\\]]{0,20}\"",
            Just("\"127.0.0.1:80\"".to_string()),
            Just("[\"127.0.0.1:1\", { address = \"[::1]:2\", weight = 2 }]".to_string()),
            Just("\"5s\"".to_string()),
            Just("true".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("[]".to_string()),
            Just("1.5".to_string()),
        ];
        prop_oneof![header, (key, value).prop_map(|(k, v)| format!("{k} = {v}"))]
    }
}

#[test]
fn backend_lifecycle_settings() {
    let text = format!(
        "{MINIMAL}on_marked_down = \"keep\"\nslow_start = \"20s\"\n\
         [pool.health]\nkind = \"http\"\npath = \"/healthz\"\nexpect_status = \"200-299\"\ninterval = \"1s\"\n\
         [pool.drain]\ntimeout = \"5s\"\non_timeout = \"close\"\n\
         [pool.upstream]\nmax_connections_per_backend = 100\n"
    );
    let c = parse(&text).unwrap();
    let p = &c.pools[0];
    let h = p.health.as_ref().unwrap();
    assert_eq!(
        h.kind,
        HealthKind::Http {
            path: "/healthz".into(),
            host: None,
            expect_status: (200, 299)
        }
    );
    assert_eq!((h.rise, h.fall, h.close), (2, 3, CheckClose::Fin));
    assert_eq!(p.drain.on_timeout, DrainClose::Close);
    assert_eq!(p.drain.close_spread, Duration::from_secs(1));
    assert_eq!(p.on_marked_down, OnMarkedDown::Keep);
    assert_eq!(p.upstream.max_connections_per_backend, Some(100));
    assert_eq!(p.upstream.preconnect, 0);
    assert_eq!(p.slow_start, Some(Duration::from_secs(20)));

    let bad = format!(
        "{MINIMAL}[pool.health]\nkind = \"tcp\"\npath = \"/x\"\nclose = \"slam\"\nexpect_status = \"abc\"\n"
    );
    check(
        &bad,
        &[
            "pool[0].health.path: only applies to kind = \"http\"",
            "pool[0].health.expect_status: only applies to kind = \"http\"",
            "pool[0].health.close: \"slam\" is not a close mode (expected \"fin\" or \"rst\")",
        ],
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    check(&text, &["admin.listen: 0.0.0.0:9901 is not a loopback address: the admin API can drain and deregister backends, so binding it elsewhere requires admin.token_file"]);
    let ok = format!(
        "{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"/etc/plumb/token\"\n"
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn port_zero_never_clashes() {
    let text = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:1\"]\n";
    assert!(parse(text).is_ok());
    let clash = "[admin]\nlisten = \"127.0.0.1:9\"\n[[listener]]\nname = \"a\"\nlisten = [\"127.0.0.1:9\", \"127.0.0.1:8\"]\npool = \"p\"\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:8\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:1\"]\n";
    check(
        clash,
        &[
            "listener[0].listen[0]: 127.0.0.1:9 is the admin API's address",
            "listener[1].listen[0]: 127.0.0.1:8 is already used by another listener",
        ],
    );
}

#[test]
fn a_request_id_header_plumb_already_sets_or_removes_is_refused() {
    for (name, ok) in [
        ("X-Forwarded-For", false),
        ("host", false),
        ("Connection", false),
        ("content-length", false),
        ("x-request-id", true),
    ] {
        let text = format!(
            "[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\n\
             pool = \"p\"\nrequest_id_header = \"{name}\"\n[[pool]]\nname = \"p\"\n\
             backends = [\"127.0.0.1:9001\"]\n"
        );
        if ok {
            assert!(parse(&text).is_ok(), "{name}");
            continue;
        }
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("listener[0].request_id_header")
                && err.contains(&format!("{name:?} is a header plumb sets")),
            "{name}: {err}"
        );
    }
}

#[test]
fn http_listeners_and_routes() {
    let text = r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
request_id_header = "X-Request-Id"
[listener.timeouts]
header_read = "5s"
keepalive_idle = "30s"
[[listener.route]]
host = "API.example.com"
path_prefix = "/v1/"
pool = "api"
[[listener.route]]
host = "*.static.example.com"
pool = "api"

[[pool]]
name = "api"
backends = ["127.0.0.1:9001"]
retry_budget_percent = 10
[pool.timeouts]
response_header = "5s"
idle = "20s"
"#;
    let c = parse(text).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.protocol, Protocol::Http);
    assert_eq!(l.pool, None);
    assert_eq!(l.request_id_header, "x-request-id");
    assert_eq!(l.keepalive_idle, Duration::from_secs(30));
    assert_eq!(l.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(l.routes[0].path_prefix.as_deref(), Some("/v1"));
    assert_eq!(c.pools[0].timeouts.response_header, Duration::from_secs(5));
    assert_eq!(c.pools[0].retry_budget_percent, 10);

    let bad = r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
[[listener.route]]
host = "bad host:80"
pool = "nope"
colour = 1
[[listener.route]]
pool = "api"

[[listener]]
name = "raw"
listen = "127.0.0.1:8081"
pool = "api"
keep_request_id = false
[[listener.route]]
path_prefix = "/x"
pool = "api"

[[pool]]
name = "api"
backends = ["127.0.0.1:9001"]
"#;
    check(
        bad,
        &[
            "listener[0].route[0].colour: unknown key",
            r#"listener[0].route[0].host: "bad host:80" is not a host name (such as "api.example.com" or "*.example.com", no port)"#,
            "listener[0].route[1]: a route needs host, path_prefix, or both",
            r#"listener[1].route: only applies to protocol = "http""#,
            r#"listener[1].keep_request_id: only applies to protocol = "http""#,
            r#"listener[0].route[0].pool: pool "nope" does not exist"#,
        ],
    );
    check(
        "[[listener]]\nname = \"w\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:1\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:2\"]\n",
        &["listener[0].pool: missing: an http listener needs a default pool, routes, or both"],
    );
}

#[test]
fn tcp_only_settings_are_refused_behind_http_listeners() {
    let text = r#"
[[listener]]
name = "web"
protocol = "http"
listen = "127.0.0.1:8080"
pool = "app"
accept_proxy = true

[[pool]]
name = "app"
backends = ["127.0.0.1:9001"]
send_proxy = "v2"
[pool.upstream]
preconnect = 2
"#;
    check(
        text,
        &[
            "listener[0].accept_proxy: not supported on http listeners yet (only tcp listeners read a PROXY header)",
            r#"pool[0].send_proxy: not supported for pools behind http listener "web" yet (only the tcp proxy sends a PROXY header)"#,
            r#"pool[0].upstream.preconnect: not supported for pools behind http listener "web" (HTTP keeps its own kept-alive connections)"#,
        ],
    );
}
