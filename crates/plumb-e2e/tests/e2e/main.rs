//! plumb end to end: plumb runs in-process on loopback; clients and backends are
//! real sockets. Each module covers one promise; `support` starts plumb and peers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test binary: a failed unwrap is a failed test"
)]

mod accesslog;
mod admin;
mod backend_limit;
mod balance;
mod bytes;
mod close;
mod discovery;
mod drain;
mod ejection;
mod health;
mod http_basics;
mod http_errors;
mod http_input;
mod http_retry;
mod http_review;
mod http_timeouts;
mod http_upgrade;
mod ipv6;
mod limits;
mod preconnect;
mod proxy_proto;
mod reload;
mod retry;
mod sockopt;
mod support;
mod timeouts;
mod workers;
