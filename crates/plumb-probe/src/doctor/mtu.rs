//! The `mtu` check: the PMTU black-hole search.
//!
//! A path whose MTU is smaller than the ends believe, and which loses the ICMP
//! "fragmentation needed" that would tell the sender, passes handshakes and small
//! requests and silently eats every full-size segment (incident 000). From user
//! space: on fresh connections with TCP_NODELAY, send one request padded to exactly
//! one segment of a chosen size and watch TCP_INFO until the kernel has it
//! acknowledged (`unacked == 0`) or the wait runs out (a stall, with
//! retransmissions). Bisect between a small size that is acknowledged and the
//! connection's MSS, then confirm the stalling size with the MSS clamped
//! (`TCP_MAXSEG`) and with don't-fragment cleared. Acknowledgement is the kernel's,
//! so the server does not even have to read the request.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{Doctor, Finding, Verdict};

/// The smallest request size tried; below the 576-byte IPv4 minimum MTU.
const SMALL: usize = 512;
/// How long an unacknowledged segment may wait before it counts as stalled: several
/// retransmission timeouts at the 200 ms minimum, so a path that merely loses one
/// packet still gets through.
const STALL: Duration = Duration::from_millis(1500);

/// What became of one padded request.
#[derive(Debug, Clone)]
enum Trial {
    /// Acknowledged in this many ms.
    Acked {
        ms: f64,
        snd_mss: u32,
        timestamps: bool,
    },
    /// Still unacknowledged after [`STALL`].
    Stalled { info: Value, snd_mss: u32 },
    /// No connection, or no way to send: no verdict.
    Failed(String),
}

impl Trial {
    fn evidence(&self, size: usize) -> Value {
        match self {
            Trial::Acked { ms, snd_mss, .. } => {
                json!({ "size": size, "result": "acknowledged", "ms": ms, "snd_mss": snd_mss })
            }
            Trial::Stalled { info, snd_mss } => {
                json!({ "size": size, "result": "stalled", "snd_mss": snd_mss, "tcp_info": info })
            }
            Trial::Failed(e) => json!({ "size": size, "result": "failed", "error": e }),
        }
    }
}

/// How the socket of a trial is set up.
#[derive(Debug, Clone, Copy, Default)]
struct Setup {
    /// `TCP_MAXSEG` before connect.
    clamp: Option<u32>,
    /// Clear don't-fragment.
    df_off: bool,
    /// Send one segment at a time, each after the last was acknowledged, so the
    /// kernel cannot coalesce them (GSO on loopback and veth hands a path's filter
    /// one large packet where a real NIC would send several).
    one_segment_at_a_time: bool,
}

impl Doctor {
    /// A request for this target padded (with an `X-Plumb-Pad` header) to `size`
    /// bytes, or the unpadded request if that is already longer.
    pub(super) fn padded_request(&self, size: usize) -> Vec<u8> {
        let t = &self.target;
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-Plumb-Pad: ",
            t.path,
            t.host_header()
        );
        let tail = "\r\n\r\n";
        let pad = size.saturating_sub(head.len() + tail.len());
        let mut out = Vec::with_capacity(size.max(head.len() + tail.len()));
        out.extend_from_slice(head.as_bytes());
        out.resize(head.len() + pad, b'a');
        out.extend_from_slice(tail.as_bytes());
        out
    }

    async fn trial(&self, addr: SocketAddr, size: usize, setup: Setup) -> Trial {
        let sock = match if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        } {
            Ok(s) => s,
            Err(e) => return Trial::Failed(e.to_string()),
        };
        if let Some(mss) = setup.clamp {
            if let Err(e) = plumb_sys::set_mss(&sock.as_fd(), mss) {
                return Trial::Failed(format!("TCP_MAXSEG {mss}: {e}"));
            }
        }
        if setup.df_off {
            if let Err(e) = plumb_sys::set_dont_fragment_off(&sock.as_fd(), addr.is_ipv6()) {
                return Trial::Failed(format!("clearing don't-fragment: {e}"));
            }
        }
        let mut stream =
            match tokio::time::timeout(Duration::from_secs(3), sock.connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Trial::Failed(format!("connect: {e}")),
                Err(_) => return Trial::Failed("connect: no handshake within 3 s".into()),
            };
        let _ = stream.set_nodelay(true);
        let snd_mss = plumb_sys::tcp_info(&stream).map_or(0, |i| i.snd_mss);
        let request = self.padded_request(size);
        let started = Instant::now();
        let chunk = if setup.one_segment_at_a_time && snd_mss > 0 {
            snd_mss as usize
        } else {
            request.len()
        };
        let mut chunks = request.chunks(chunk).peekable();
        while let Some(part) = chunks.next() {
            if let Err(e) = stream.write_all(part).await {
                return Trial::Failed(format!("write: {e}"));
            }
            if chunks.peek().is_none() {
                break;
            }
            // Wait for this segment's acknowledgement before the next.
            while plumb_sys::tcp_info(&stream).is_ok_and(|i| i.unacked > 0)
                && started.elapsed() < STALL
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        loop {
            let info = match plumb_sys::tcp_info(&stream) {
                Ok(i) => i,
                Err(e) => return Trial::Failed(format!("TCP_INFO: {e}")),
            };
            if info.unacked == 0 {
                return Trial::Acked {
                    ms: started.elapsed().as_secs_f64() * 1000.0,
                    snd_mss,
                    // TCPI_OPT_TIMESTAMPS: 12 more header bytes per segment.
                    timestamps: info.options & 1 != 0,
                };
            }
            if started.elapsed() >= STALL {
                // Close with an RST: a plain close would leave the kernel
                // retransmitting into the hole for minutes and the server holding a
                // half-received request.
                let _ = plumb_sys::set_linger_zero(&stream);
                return Trial::Stalled {
                    info: json!({
                        "unacked": info.unacked,
                        "retransmits": info.retransmits,
                        "total_retrans": info.total_retrans,
                        "lost": info.lost,
                        "pmtu": info.pmtu,
                        "snd_mss": info.snd_mss,
                        "rto_ms": info.rto / 1000,
                        "suspected_blackhole": info.suspected_blackhole(),
                    }),
                    snd_mss,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The `mtu` check.
    pub(super) async fn mtu(&self) -> Finding {
        let Some(&addr) = self.addrs.first() else {
            return super::no_address("mtu");
        };
        let inconclusive = |summary: String, evidence: Value| Finding {
            check: "mtu",
            verdict: Verdict::Inconclusive,
            summary,
            evidence,
            suggestion: String::new(),
        };
        let mut trials = Vec::new();
        let small = SMALL.max(self.padded_request(0).len());
        let first = self.trial(addr, small, Setup::default()).await;
        trials.push(first.evidence(small));
        let (mss, timestamps) = match first {
            Trial::Acked {
                snd_mss,
                timestamps,
                ..
            } => (snd_mss as usize, timestamps),
            Trial::Stalled { .. } => {
                return inconclusive(
                    format!(
                        "even a {small}-byte request stalls: the path is broken for all sizes, \
                         not only large ones"
                    ),
                    json!({ "address": addr.to_string(), "trials": trials }),
                )
            }
            Trial::Failed(e) => {
                return inconclusive(
                    format!("cannot run: {e}"),
                    json!({ "address": addr.to_string(), "trials": trials }),
                )
            }
        };
        if mss <= small {
            return inconclusive(
                format!(
                    "the connection's MSS ({mss} bytes) is no larger than the smallest request \
                     ({small} bytes): no larger segment can be sent to test the path"
                ),
                json!({ "address": addr.to_string(), "snd_mss": mss, "trials": trials }),
            );
        }
        let full = self.trial(addr, mss, Setup::default()).await;
        trials.push(full.evidence(mss));
        match full {
            Trial::Acked { .. } => {
                return Finding {
                    check: "mtu",
                    verdict: Verdict::Pass,
                    summary: format!(
                        "full-size segments ({mss} bytes, the connection's MSS) are acknowledged"
                    ),
                    evidence: json!({ "address": addr.to_string(), "trials": trials }),
                    suggestion: String::new(),
                }
            }
            Trial::Failed(e) => {
                return inconclusive(
                    format!("a full-size request could not be sent: {e}"),
                    json!({ "address": addr.to_string(), "trials": trials }),
                )
            }
            Trial::Stalled { .. } => {}
        }
        // Bisect: `lo` is acknowledged, `hi` stalls.
        let (mut lo, mut hi) = (small, mss);
        for _ in 0..12 {
            if hi - lo <= 8 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            let t = self.trial(addr, mid, Setup::default()).await;
            trials.push(t.evidence(mid));
            match t {
                Trial::Acked { .. } => lo = mid,
                Trial::Stalled { .. } => hi = mid,
                Trial::Failed(e) => {
                    return inconclusive(
                        format!("the search was cut short: {e}"),
                        json!({ "address": addr.to_string(), "trials": trials }),
                    )
                }
            }
        }
        let clamp = u32::try_from(lo).unwrap_or(u32::MAX);
        let clamped = self
            .trial(
                addr,
                hi,
                Setup {
                    clamp: Some(clamp),
                    one_segment_at_a_time: true,
                    ..Setup::default()
                },
            )
            .await;
        let unfragmented = self
            .trial(
                addr,
                hi,
                Setup {
                    df_off: true,
                    ..Setup::default()
                },
            )
            .await;
        let clamped_ok = matches!(clamped, Trial::Acked { .. });
        let df_ok = matches!(unfragmented, Trial::Acked { .. });
        let header = if addr.is_ipv4() { 40 } else { 60 } + if timestamps { 12 } else { 0 };
        let evidence = json!({
            "address": addr.to_string(),
            "largest_acknowledged": lo,
            "smallest_stalled": hi,
            "header_bytes": header,
            "path_mtu_estimate": lo + header,
            "trials": trials,
            "with_mss_clamped": clamped.evidence(hi),
            "with_dont_fragment_cleared": unfragmented.evidence(hi),
        });
        if !clamped_ok && !df_ok {
            return inconclusive(
                format!(
                    "requests of {hi} bytes and more stall, also with the MSS clamped to {lo}: \
                     not a segment-size problem (a server or middlebox refusing large requests?)"
                ),
                evidence,
            );
        }
        let confirmed = match (clamped_ok, df_ok) {
            (true, true) => "with the MSS clamped and with don't-fragment cleared",
            (true, false) => "with the MSS clamped",
            _ => "with don't-fragment cleared",
        };
        Finding {
            check: "mtu",
            verdict: Verdict::Problem,
            summary: format!(
                "MTU black hole: segments up to {lo} bytes are acknowledged, {hi} and more stall \
                 with retransmissions, and the same request gets through {confirmed}; the path \
                 MTU is about {} bytes and ICMP \"fragmentation needed\" is being lost",
                lo + header
            ),
            evidence,
            suggestion: format!(
                "clamp the MSS to {lo} where the path narrows (nft/iptables TCPMSS --set-mss {lo}, \
                 or the plumb listener's mss), or set the interface MTU to {}; let ICMP \
                 \"fragmentation needed\" (IPv6: \"packet too big\") through; \
                 net.ipv4.tcp_mtu_probing=1 on the senders recovers too",
                lo + header
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, Target};

    fn doctor(url: &str) -> Doctor {
        Doctor {
            target: Target::parse(url).unwrap(),
            addrs: vec![],
            dns: Duration::ZERO,
            opts: Options {
                timeout: Duration::from_secs(1),
                warn: Duration::from_secs(1),
                expect_status: (200, 399),
                method: "GET".into(),
                headers: vec![],
                data: None,
                tls: None,
            },
            rounds: 1,
            connects: 1,
            idle_conns: 1,
            max_idle: Duration::from_secs(1),
        }
    }

    #[test]
    fn padded_requests_are_exactly_the_size_asked_and_well_formed() {
        let d = doctor("http://a.test:8080/x?y=1");
        for size in [512, 1000, 1448, 32768] {
            let r = d.padded_request(size);
            assert_eq!(r.len(), size);
            let text = String::from_utf8(r).unwrap();
            assert!(text.starts_with("GET /x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\n"));
            assert!(text.ends_with("aaaa\r\n\r\n"));
            assert_eq!(text.matches("\r\n\r\n").count(), 1);
        }
        // Smaller than the bare request: the bare request, unpadded.
        let bare = d.padded_request(0);
        assert!(bare.ends_with(b"X-Plumb-Pad: \r\n\r\n"));
    }
}
