//! `plumb probe`: probe every resolved address of a target separately, phase by phase
//! (DNS, connect, first byte, total), with the TCP facts only the kernel knows (SYN
//! retransmissions right after connect, RTT, retransmits, path MTU, MSS).
//!
//! This crate resolves, connects and measures; the binary parses flags and prints.
//! https targets are probed with rustls (SNI from the URL's host).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod doctor;
mod measure;
mod resolve;
mod summary;
mod target;
mod tls;

pub use measure::{probe_address, ProbeResult, Status, TcpFacts};
pub use resolve::{resolve, Family, ResolveError, Resolved};
pub use summary::Summary;
pub use target::{Scheme, Target, TargetError};
pub use tls::{client_config, TlsSetupError};

use std::time::Duration;

/// What every probe of a run shares.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whole-probe budget (per address).
    pub timeout: Duration,
    /// Slower than this overall is `warn`.
    pub warn: Duration,
    /// Accepted statuses, inclusive.
    pub expect_status: (u16, u16),
    /// Request method.
    pub method: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub data: Option<String>,
    /// TLS client settings (https targets).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            warn: Duration::from_secs(1),
            expect_status: (200, 399),
            method: "GET".to_string(),
            headers: Vec::new(),
            data: None,
            tls: None,
        }
    }
}
