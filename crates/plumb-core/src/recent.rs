//! The last failures, newest first, for the dashboard: what failed, why, where, and
//! the request id to look up in the access log.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::cause::Cause;

/// How many failures are kept.
const KEEP: usize = 100;

/// One failure.
#[derive(Debug, Clone)]
pub struct RecentError {
    /// When it was recorded.
    pub at: SystemTime,
    /// Listener name.
    pub listener: String,
    /// Why.
    pub cause: Cause,
    /// The backend involved, if any.
    pub backend: Option<SocketAddr>,
    /// The client.
    pub client: SocketAddr,
    /// HTTP: the request id; TCP: none.
    pub request_id: Option<String>,
    /// HTTP: method and path; TCP: none.
    pub request: Option<String>,
    /// HTTP: the status the client got.
    pub status: Option<u16>,
}

/// A bounded list of recent failures.
#[derive(Debug, Default)]
pub struct RecentErrors {
    list: Mutex<VecDeque<RecentError>>,
}

impl RecentErrors {
    /// Records a failure, dropping the oldest beyond the bound.
    pub fn push(&self, e: RecentError) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEEP {
            list.pop_back();
        }
        list.push_front(e);
    }

    /// The failures, newest first.
    pub fn snapshot(&self) -> Vec<RecentError> {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
