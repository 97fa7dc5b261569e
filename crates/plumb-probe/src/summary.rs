//! The end-of-run summary: per address, success rate, p50/p95/max per phase, causes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::{ProbeResult, Status};

/// Results gathered over a run.
#[derive(Debug, Default)]
pub struct Summary {
    by_addr: BTreeMap<(String, SocketAddr), Vec<ProbeResult>>,
}

impl Summary {
    /// Adds one result.
    pub fn add(&mut self, r: &ProbeResult) {
        self.by_addr
            .entry((r.url.clone(), r.address))
            .or_default()
            .push(r.clone());
    }

    /// Whether any probe failed.
    pub fn any_failed(&self) -> bool {
        self.by_addr
            .values()
            .flatten()
            .any(|r| r.status == Status::Fail)
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::from("summary (per address; phase times in ms, p50 / p95 / max)\n");
        for ((url, addr), rs) in &self.by_addr {
            let n = rs.len();
            let ok = rs.iter().filter(|r| r.status == Status::Ok).count();
            let warn = rs.iter().filter(|r| r.status == Status::Warn).count();
            let fail = n - ok - warn;
            let _ = writeln!(
                out,
                "{url} {addr}: {n} probes, {:.1}% succeeded ({ok} ok, {warn} warn, {fail} fail)",
                100.0 * (ok + warn) as f64 / n.max(1) as f64
            );
            for (name, values) in [
                ("dns", rs.iter().map(|r| r.dns).collect::<Vec<_>>()),
                ("connect", rs.iter().filter_map(|r| r.connect).collect()),
                ("tls", rs.iter().filter_map(|r| r.tls).collect()),
                ("ttfb", rs.iter().filter_map(|r| r.ttfb).collect()),
                ("total", rs.iter().map(|r| r.total).collect()),
            ] {
                if let Some((p50, p95, max)) = percentiles(values) {
                    let _ = writeln!(out, "  {name:<8} {p50:>9.2} / {p95:>9.2} / {max:>9.2}");
                }
            }
            let syn: u32 = rs.iter().filter_map(|r| r.syn_retransmits).sum();
            if syn > 0 {
                let _ = writeln!(out, "  SYN retransmissions: {syn}");
            }
            let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
            for r in rs {
                if let Some(c) = r.cause {
                    *causes.entry(c).or_default() += 1;
                }
            }
            if !causes.is_empty() {
                let list: Vec<String> = causes.iter().map(|(c, k)| format!("{c} x{k}")).collect();
                let _ = writeln!(out, "  causes: {}", list.join(", "));
            }
        }
        out
    }
}

fn percentiles(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Some((at(0.5), at(0.95), v[v.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: u32, status: Status, cause: Option<&'static str>) -> ProbeResult {
        let ms = f64::from(n);
        ProbeResult {
            url: "https://a.test/".into(),
            host: "a.test".into(),
            address: "192.0.2.1:443".parse().unwrap(),
            family: "ipv4",
            status,
            cause,
            detail: None,
            http_status: Some(200),
            dns: ms,
            connect: Some(ms),
            tls: Some(ms),
            ttfb: Some(ms),
            total: 3.0 * ms,
            syn_retransmits: Some(u32::from(n == 7)),
            tcp_info: None,
        }
    }

    #[test]
    fn every_phase_gets_nearest_rank_percentiles_and_causes_are_counted() {
        let mut s = Summary::default();
        for n in 1..=20 {
            let (status, cause) = match n {
                19 | 20 => (Status::Fail, Some("response_timeout")),
                7 => (Status::Warn, None),
                _ => (Status::Ok, None),
            };
            s.add(&result(n, status, cause));
        }
        let text = s.render();
        assert!(s.any_failed());
        assert!(
            text.contains("20 probes, 90.0% succeeded (17 ok, 1 warn, 2 fail)"),
            "{text}"
        );
        // 1..=20: p50 is the 11th value (index round(19 * 0.5) = 10), p95 the 19th.
        for phase in ["dns", "connect", "tls", "ttfb"] {
            let line = format!("  {phase:<8} {:>9.2} / {:>9.2} / {:>9.2}", 11.0, 19.0, 20.0);
            assert!(text.contains(&line), "{line:?} not in\n{text}");
        }
        assert!(text.contains("SYN retransmissions: 1"), "{text}");
        assert!(text.contains("causes: response_timeout x2"), "{text}");
    }
}
