//! The admin API's JSON shapes: boundary types, the only serde in this crate.

use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub(crate) struct Status {
    pub version: &'static str,
    pub uptime_s: f64,
    pub config_checksum: String,
    pub listeners: Vec<ListenerStatus>,
    pub connections: usize,
}

#[derive(Serialize)]
pub(crate) struct ListenerStatus {
    pub name: String,
    pub listen: Vec<String>,
    pub protocol: &'static str,
    pub pool: Option<String>,
    pub routes: Vec<RouteView>,
    pub max_connections: Option<usize>,
    pub accepted: u64,
    pub refused: u64,
}

#[derive(Serialize)]
pub(crate) struct PoolView {
    pub idle_connections: usize,
    pub name: String,
    pub balance: &'static str,
    pub health_checks: Option<&'static str>,
    /// Present for pools whose backends come from discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryView>,
    pub backends: Vec<BackendView>,
}

#[derive(Serialize)]
pub(crate) struct DiscoveryView {
    pub source: String,
    /// Whether the last resolution worked; false: the pool keeps its last known set.
    pub up: bool,
    pub addresses: Vec<String>,
    pub last_ok_age_ms: Option<u64>,
    pub last_error: Option<String>,
    pub ttl_s: Option<u64>,
    pub resolutions: u64,
}

#[derive(Serialize)]
pub(crate) struct BackendView {
    pub address: String,
    pub weight: u32,
    pub state: &'static str,
    /// Why it is in that state, in words.
    pub reason: Option<String>,
    pub last_check: Option<CheckView>,
    pub active_connections: usize,
    pub connections: u64,
    pub consecutive_failures: u32,
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    pub drain: Option<DrainView>,
}

#[derive(Serialize)]
pub(crate) struct CheckView {
    pub ok: bool,
    pub reason: String,
    pub age_ms: u64,
}

#[derive(Serialize)]
pub(crate) struct DrainView {
    pub remaining_ms: u64,
    pub deregister: bool,
}

#[derive(Serialize)]
pub(crate) struct ConnView {
    pub id: u64,
    pub listener: String,
    pub pool: String,
    pub client: String,
    pub backend: Option<String>,
    pub age_ms: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub state: &'static str,
    pub client_tcp: Option<TcpInfoView>,
    pub upstream_tcp: Option<TcpInfoView>,
    pub suspected_blackhole: bool,
}

#[derive(Serialize)]
pub(crate) struct TcpInfoView {
    pub rtt_ms: f64,
    pub rttvar_ms: f64,
    pub retransmits: u8,
    pub total_retrans: u32,
    pub unacked: u32,
    pub lost: u32,
    pub pmtu: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    pub suspected_blackhole: bool,
}

impl From<plumb_sys::TcpInfo> for TcpInfoView {
    fn from(i: plumb_sys::TcpInfo) -> Self {
        TcpInfoView {
            rtt_ms: f64::from(i.rtt) / 1000.0,
            rttvar_ms: f64::from(i.rttvar) / 1000.0,
            retransmits: i.retransmits,
            total_retrans: i.total_retrans,
            unacked: i.unacked,
            lost: i.lost,
            pmtu: i.pmtu,
            snd_mss: i.snd_mss,
            rcv_mss: i.rcv_mss,
            suspected_blackhole: i.suspected_blackhole(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ErrorView {
    pub at: String,
    pub listener: String,
    pub cause: &'static str,
    pub backend: Option<String>,
    pub client: String,
    pub request_id: Option<String>,
    pub request: Option<String>,
    pub status: Option<u16>,
}

#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub error: &'a str,
    pub detail: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Done {
    pub pool: String,
    pub backend: String,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    pub weight: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrainBody {
    pub timeout: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ReloadView {
    pub file: String,
    pub changes: Vec<String>,
    pub needs_restart: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct InvalidConfig {
    pub error: &'static str,
    pub detail: &'static str,
    pub errors: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct RouteView {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
}
