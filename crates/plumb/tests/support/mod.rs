//! What the binary-level tests share: a child process killed and reaped when its
//! guard drops (by PID, also when a test fails), and the check for a tool a test
//! needs, which prints why the test skips.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of this module"
)]

use std::process::{Child, Command, Stdio};

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `tool` is on PATH; when not, prints a SKIPPED line naming `installs`,
/// what provides it.
pub fn have(tool: &str, installs: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (scripts/test installs {installs} as root)");
    }
    found
}
