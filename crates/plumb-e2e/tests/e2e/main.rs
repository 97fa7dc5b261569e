//! plumb end to end: plumb runs in-process on loopback; clients and backends are
//! real sockets. Each module covers one promise; `support` starts plumb and peers.

mod accesslog;
mod balance;
mod bytes;
mod close;
mod ipv6;
mod limits;
mod proxy_proto;
mod retry;
mod sockopt;
mod support;
mod timeouts;
