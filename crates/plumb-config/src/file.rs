//! The config file as serde reads it. Every scalar is a raw [`Value`] so that
//! [`crate::validate`] can report each bad value with its path, instead of serde
//! stopping at the first wrong type. Unknown keys are collected with `serde_ignored`
//! (all of them, with paths) rather than `deny_unknown_fields` (first one only).
#![allow(
    missing_docs,
    reason = "each field is documented in docs/config.md and on the model"
)]

use serde::Deserialize;
use toml::Value;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct File {
    pub runtime: Option<Runtime>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub listener: Vec<Listener>,
    #[serde(default)]
    pub pool: Vec<Pool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Runtime {
    pub workers: Option<Value>,
    pub access_log: Option<Value>,
    pub shutdown_grace: Option<Value>,
    pub upgrade_socket: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Admin {
    pub listen: Option<Value>,
    pub token_file: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Listener {
    pub name: Option<Value>,
    pub listen: Option<Value>,
    pub protocol: Option<Value>,
    pub backlog: Option<Value>,
    pub max_connections: Option<Value>,
    pub pool: Option<Value>,
    pub accept_proxy: Option<Value>,
    pub expose_error_details: Option<Value>,
    pub tcp: Option<Tcp>,
    pub timeouts: Option<ListenerTimeouts>,
    pub route: Option<Value>,
    pub request_id_header: Option<Value>,
    pub keep_request_id: Option<Value>,
    pub max_header_bytes: Option<Value>,
    pub max_body_bytes: Option<Value>,
    pub tls: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListenerTimeouts {
    pub header_read: Option<Value>,
    pub keepalive_idle: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pool {
    pub name: Option<Value>,
    pub balance: Option<Value>,
    pub backends: Option<Value>,
    pub connect_attempts: Option<Value>,
    pub timeouts: Option<PoolTimeouts>,
    pub tcp: Option<Tcp>,
    pub send_proxy: Option<Value>,
    pub health: Option<Health>,
    pub drain: Option<Drain>,
    pub on_marked_down: Option<Value>,
    pub upstream: Option<Upstream>,
    pub passive: Option<Passive>,
    pub slow_start: Option<Value>,
    pub retry_budget_percent: Option<Value>,
    // Parsed so that it is not "unknown", and refused as not yet supported.
    pub discovery: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Health {
    pub kind: Option<Value>,
    pub path: Option<Value>,
    pub host: Option<Value>,
    pub expect_status: Option<Value>,
    pub interval: Option<Value>,
    pub timeout: Option<Value>,
    pub rise: Option<Value>,
    pub fall: Option<Value>,
    pub close: Option<Value>,
    pub large_probe_bytes: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Drain {
    pub timeout: Option<Value>,
    pub close_spread: Option<Value>,
    pub on_timeout: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Upstream {
    pub max_idle_per_backend: Option<Value>,
    pub idle_timeout: Option<Value>,
    pub preconnect: Option<Value>,
    pub max_connections_per_backend: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Passive {
    pub consecutive_failures: Option<Value>,
    pub ejection: Option<Value>,
    pub max_ejection: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PoolTimeouts {
    pub connect: Option<Value>,
    pub tunnel_idle: Option<Value>,
    pub response_header: Option<Value>,
    pub idle: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Tcp {
    pub keepalive_idle: Option<Value>,
    pub keepalive_interval: Option<Value>,
    pub keepalive_count: Option<Value>,
    pub user_timeout: Option<Value>,
    pub mss: Option<Value>,
}
