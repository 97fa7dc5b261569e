//! `TCP_INFO`, laid out as in `linux/tcp.h` (through `tcpi_bytes_retrans`, Linux 4.19+).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::raw::{getsockopt, Pod};

/// The kernel's `struct tcp_info`. Times are in microseconds unless named otherwise.
/// Fields a kernel does not fill stay zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "the fields are the kernel's; see linux/tcp.h")]
pub struct TcpInfo {
    pub state: u8,
    pub ca_state: u8,
    /// Retransmissions of the segment at the head of the queue, right now (for a
    /// connecting socket: SYN retransmissions so far).
    pub retransmits: u8,
    pub probes: u8,
    pub backoff: u8,
    pub options: u8,
    pub wscale: u8,
    pub app_limited: u8,
    pub rto: u32,
    pub ato: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    pub sacked: u32,
    pub lost: u32,
    pub retrans: u32,
    pub fackets: u32,
    pub last_data_sent: u32,
    pub last_ack_sent: u32,
    pub last_data_recv: u32,
    pub last_ack_recv: u32,
    pub pmtu: u32,
    pub rcv_ssthresh: u32,
    /// Smoothed round-trip time.
    pub rtt: u32,
    pub rttvar: u32,
    pub snd_ssthresh: u32,
    pub snd_cwnd: u32,
    pub advmss: u32,
    pub reordering: u32,
    pub rcv_rtt: u32,
    pub rcv_space: u32,
    /// Retransmissions over the life of the connection (SYNs included).
    pub total_retrans: u32,
    pub pacing_rate: u64,
    pub max_pacing_rate: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub notsent_bytes: u32,
    pub min_rtt: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub delivery_rate: u64,
    pub busy_time: u64,
    pub rwnd_limited: u64,
    pub sndbuf_limited: u64,
    pub delivered: u32,
    pub delivered_ce: u32,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
}

// SAFETY: `TcpInfo` is `repr(C)` and made only of integers, so any bit pattern is valid.
unsafe impl Pod for TcpInfo {}

/// `TCP_ESTABLISHED` in `tcpi_state`.
pub const STATE_ESTABLISHED: u8 = 1;
/// `TCP_FIN_WAIT1`: this side sent FIN, not yet acknowledged.
pub const STATE_FIN_WAIT1: u8 = 4;
/// `TCP_CLOSE_WAIT`: the peer sent FIN; this side may still send.
pub const STATE_CLOSE_WAIT: u8 = 8;
/// `TCP_LAST_ACK`: both sent FIN, ours not yet acknowledged.
pub const STATE_LAST_ACK: u8 = 9;
/// `TCP_CLOSING`: simultaneous close.
pub const STATE_CLOSING: u8 = 11;

impl TcpInfo {
    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(u64::from(self.rtt))
    }

    /// Round-trip time variation.
    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(u64::from(self.rttvar))
    }

    /// Whether the kernel considers the connection established.
    pub fn is_established(&self) -> bool {
        self.state == STATE_ESTABLISHED
    }

    /// Whether data (not only a FIN) is sent and unacknowledged: in ESTABLISHED and
    /// CLOSE_WAIT any unacknowledged segment is data; after this side's FIN
    /// (FIN_WAIT1, LAST_ACK, CLOSING) `unacked` counts the FIN too, so the byte
    /// counters must show data beyond what was acknowledged.
    fn data_in_flight(&self) -> bool {
        match self.state {
            STATE_ESTABLISHED | STATE_CLOSE_WAIT => self.unacked > 0,
            STATE_FIN_WAIT1 | STATE_LAST_ACK | STATE_CLOSING => {
                self.unacked > 0
                    && self.bytes_sent.saturating_sub(self.bytes_retrans) > self.bytes_acked
            }
            _ => false,
        }
    }

    /// The signature of a path MTU black hole (incident 000) as one socket sees it:
    /// the handshake succeeded, data is outstanding, and the segment at the head of
    /// the queue has been retransmitted at least twice with no acknowledgement
    /// since. Small packets (the handshake, ACKs) crossed the path; the full-size
    /// data segment does not. It holds after this side closed too (a response
    /// followed by FIN is the common case). A peer that vanished looks the same
    /// from here, so this is a suspicion to act on (probe the path, clamp the MSS),
    /// not a verdict.
    pub fn suspected_blackhole(&self) -> bool {
        self.data_in_flight() && self.retransmits >= 2
    }
}

pub(crate) fn read(fd: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let (info, _len) = getsockopt::<TcpInfo>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blackhole_signature() {
        let healthy = TcpInfo {
            state: STATE_ESTABLISHED,
            unacked: 3,
            retransmits: 0,
            total_retrans: 5,
            ..TcpInfo::default()
        };
        assert!(
            !healthy.suspected_blackhole(),
            "past retransmissions that were recovered are not a black hole"
        );
        let once = TcpInfo {
            retransmits: 1,
            ..healthy
        };
        assert!(
            !once.suspected_blackhole(),
            "one lost segment is ordinary loss"
        );
        let stuck = TcpInfo {
            retransmits: 3,
            ..healthy
        };
        assert!(stuck.suspected_blackhole());
        let idle = TcpInfo {
            unacked: 0,
            ..stuck
        };
        assert!(!idle.suspected_blackhole(), "nothing outstanding");
        // Found by the incident 000 lab: a response the server closed after (the
        // socket in FIN_WAIT1) stuck behind a black hole was not flagged.
        let closed_after = TcpInfo {
            state: STATE_FIN_WAIT1,
            bytes_sent: 70_000,
            bytes_retrans: 9_000,
            bytes_acked: 29,
            ..stuck
        };
        assert!(closed_after.suspected_blackhole(), "FIN_WAIT1, data stuck");
        let fin_only = TcpInfo {
            unacked: 1,
            bytes_sent: 65_536,
            bytes_retrans: 0,
            bytes_acked: 65_536,
            ..closed_after
        };
        assert!(
            !fin_only.suspected_blackhole(),
            "only the FIN is outstanding (a vanished peer): not a segment-size problem"
        );
        let connecting = TcpInfo { state: 2, ..stuck };
        assert!(
            !connecting.suspected_blackhole(),
            "SYN_SENT: no handshake yet"
        );
        let time_wait = TcpInfo { state: 6, ..stuck };
        assert!(
            !time_wait.suspected_blackhole(),
            "TIME_WAIT: all acknowledged"
        );
    }

    #[test]
    fn layout_matches_kernel_offsets() {
        // Offsets from linux/tcp.h: the u32 block starts after eight u8 fields and the
        // first u64 (pacing_rate) after 24 u32s.
        assert_eq!(std::mem::offset_of!(TcpInfo, rto), 8);
        assert_eq!(std::mem::offset_of!(TcpInfo, total_retrans), 100);
        assert_eq!(std::mem::offset_of!(TcpInfo, pacing_rate), 104);
        assert_eq!(std::mem::offset_of!(TcpInfo, bytes_retrans), 208);
    }
}
