//! `plumb doctor`: checks that name a failure with its evidence and a fix
//! (DESIGN.md §7). Each check has its own time budget and builds on
//! [`probe_address`]; the verdict is `pass`, `problem` or `inconclusive`, never a
//! guess dressed as a pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{probe_address, Options, ProbeResult, Scheme, Status, Target};

mod idle_timeout;
mod mtu;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Looked for the failure and did not find it.
    Pass,
    /// Found it.
    Problem,
    /// Could not tell, and says why.
    Inconclusive,
}

impl Verdict {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Problem => "problem",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The check's name.
    pub check: &'static str,
    /// What it found.
    pub verdict: Verdict,
    /// One sentence.
    pub summary: String,
    /// The measurements behind the verdict.
    pub evidence: Value,
    /// What to do about it (empty on a pass).
    pub suggestion: String,
}

/// Every check, in the order they run.
pub const CHECKS: &[&str] = &[
    "addresses",
    "syn",
    "idle-hold",
    "mtu",
    "idle-timeout",
    "http",
];

/// The checks of a default run, which finishes in well under two minutes;
/// `idle-timeout` holds connections for up to `max_idle` and is opt-in.
pub const DEFAULT_CHECKS: &[&str] = &["addresses", "syn", "idle-hold", "mtu", "http"];

/// What every check of a run shares.
#[derive(Debug, Clone)]
pub struct Doctor {
    /// The target.
    pub target: Target,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// How long resolving took.
    pub dns: Duration,
    /// Probe settings (timeout, TLS, headers).
    pub opts: Options,
    /// Probes per address in `addresses`.
    pub rounds: u32,
    /// Sequential connects per address in `syn`.
    pub connects: u32,
    /// Idle connections held in `idle-hold`.
    pub idle_conns: u32,
    /// The longest idle time `idle-timeout` tries.
    pub max_idle: Duration,
}

impl Doctor {
    /// Runs one check by name.
    pub async fn run(&self, check: &str) -> Option<Finding> {
        Some(match check {
            "addresses" => self.addresses().await,
            "syn" => self.syn().await,
            "idle-hold" => self.idle_hold().await,
            "mtu" => self.mtu().await,
            "idle-timeout" => self.idle_timeout().await,
            "http" => self.http().await,
            _ => return None,
        })
    }

    async fn probe(&self, addr: SocketAddr, timeout: Duration) -> ProbeResult {
        let opts = Options {
            timeout,
            ..self.opts.clone()
        };
        probe_address(&self.target, addr, self.dns, &opts).await
    }

    /// Every address several times: one failing or much slower than its siblings.
    async fn addresses(&self) -> Finding {
        if self.addrs.is_empty() {
            return no_address("addresses");
        }
        let mut per: Vec<(SocketAddr, Vec<ProbeResult>)> = Vec::new();
        for &addr in &self.addrs {
            let mut rs = Vec::new();
            for _ in 0..self.rounds {
                rs.push(self.probe(addr, self.opts.timeout).await);
            }
            per.push((addr, rs));
        }
        let medians: Vec<Option<f64>> = per
            .iter()
            .map(|(_, rs)| {
                median(
                    rs.iter()
                        .filter(|r| r.status != Status::Fail)
                        .map(|r| r.total),
                )
            })
            .collect();
        let fastest = medians
            .iter()
            .flatten()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let mut evidence = BTreeMap::new();
        let mut failing = Vec::new();
        let mut slow = Vec::new();
        for ((addr, rs), med) in per.iter().zip(&medians) {
            let fails: Vec<&ProbeResult> = rs.iter().filter(|r| r.status == Status::Fail).collect();
            let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &fails {
                *causes.entry(r.cause.unwrap_or("unknown")).or_default() += 1;
            }
            evidence.insert(
                addr.to_string(),
                json!({
                    "probes": rs.len(),
                    "failed": fails.len(),
                    "causes": causes,
                    "median_total_ms": med,
                    "syn_retransmits": rs.iter().filter_map(|r| r.syn_retransmits).sum::<u32>(),
                }),
            );
            if let Some(worst) = causes.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c) {
                failing.push(format!(
                    "{addr} ({} of {}: {})",
                    fails.len(),
                    rs.len(),
                    in_words(worst)
                ));
            } else if let Some(m) = med {
                if per.len() > 1 && *m > 3.0 * fastest && *m - fastest > 20.0 {
                    slow.push(format!("{addr} (median {m:.1} ms against {fastest:.1} ms)"));
                }
            }
        }
        let evidence = json!({ "addresses": evidence });
        let n = self.addrs.len();
        if !failing.is_empty() {
            Finding {
                check: "addresses",
                verdict: Verdict::Problem,
                summary: format!(
                    "{} of {n} addresses failed: {}",
                    failing.len(),
                    failing.join(", ")
                ),
                evidence,
                suggestion: "take the failing address out of DNS or the load balancer's \
                             rotation, and compare it with its siblings (connection-tracking \
                             limits, security groups, a dead node behind it)"
                    .into(),
            }
        } else if !slow.is_empty() {
            Finding {
                check: "addresses",
                verdict: Verdict::Problem,
                summary: format!("much slower than its siblings: {}", slow.join(", ")),
                evidence,
                suggestion: "look at what differs behind that address (an overloaded node, \
                             a longer path); `plumb probe --count 20` shows whether it lasts"
                    .into(),
            }
        } else {
            Finding {
                check: "addresses",
                verdict: Verdict::Pass,
                summary: format!(
                    "all {n} address{} answered {} probe{} each",
                    if n == 1 { "" } else { "es" },
                    self.rounds,
                    if self.rounds == 1 { "" } else { "s" }
                ),
                evidence,
                suggestion: String::new(),
            }
        }
    }

    /// Sequential bare connects: any that needed a SYN retransmission.
    async fn syn(&self) -> Finding {
        let mut tcp = self.target.clone();
        tcp.scheme = Scheme::Tcp;
        let opts = Options {
            timeout: Duration::from_secs(3),
            ..self.opts.clone()
        };
        let local = self.addrs.iter().all(|a| a.ip().is_loopback());
        let before = local
            .then(plumb_sys::kernel_tcp_counters)
            .and_then(Result::ok);
        let budget = Instant::now() + Duration::from_secs(20);
        let mut evidence = BTreeMap::new();
        let mut bad = Vec::new();
        let mut total_connects = 0;
        let mut total_ok = 0;
        let mut untested: Vec<String> = Vec::new();
        'addrs: for (i, &addr) in self.addrs.iter().enumerate() {
            if Instant::now() >= budget {
                untested.extend(self.addrs[i..].iter().map(ToString::to_string));
                break 'addrs;
            }
            let mut times = Vec::new();
            let (mut retransmitted, mut syns, mut timeouts, mut other) = (0u32, 0u32, 0u32, 0u32);
            for _ in 0..self.connects {
                if Instant::now() >= budget {
                    break;
                }
                let r = probe_address(&tcp, addr, Duration::ZERO, &opts).await;
                total_connects += 1;
                let n = r.syn_retransmits.unwrap_or(0);
                syns += n;
                if n > 0 {
                    retransmitted += 1;
                }
                match (r.status, r.cause) {
                    (Status::Fail, Some("connect_timeout")) => timeouts += 1,
                    (Status::Fail, _) => other += 1,
                    _ => {
                        total_ok += 1;
                        times.push(r.connect.unwrap_or(r.total));
                    }
                }
                // Three timeouts say enough and would eat the budget.
                if timeouts >= 3 {
                    break;
                }
            }
            evidence.insert(
                addr.to_string(),
                json!({
                    "connects": times.len() as u32 + timeouts + other,
                    "needed_syn_retransmit": retransmitted,
                    "syn_retransmits": syns,
                    "timed_out": timeouts,
                    "other_failures": other,
                    "connect_ms_p50": median(times.iter().copied()),
                    "connect_ms_max": times.iter().copied().fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t)))),
                }),
            );
            if retransmitted > 0 || timeouts > 0 {
                bad.push(format!(
                    "{addr}: {retransmitted} of {} connects needed a SYN retransmission{}",
                    times.len() as u32 + timeouts + other,
                    if timeouts > 0 {
                        format!(", {timeouts} got no answer within 3 s")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let mut evidence = json!({ "addresses": evidence });
        if let (Some(b), Ok(a)) = (before, plumb_sys::kernel_tcp_counters()) {
            evidence["kernel_delta"] = json!({
                "ListenOverflows": a.listen_overflows.saturating_sub(b.listen_overflows),
                "ListenDrops": a.listen_drops.saturating_sub(b.listen_drops),
                "TCPSynRetrans": a.syn_retrans.saturating_sub(b.syn_retrans),
            });
        }
        if !untested.is_empty() {
            evidence["untested_addresses"] = json!(untested);
        }
        if bad.is_empty() && !untested.is_empty() {
            Finding {
                check: "syn",
                verdict: Verdict::Inconclusive,
                summary: format!(
                    "no SYN retransmission in {total_connects} connects, but the 20 s budget ran \
                     out before {} (fewer --connects tests every address)",
                    untested.join(", ")
                ),
                evidence,
                suggestion: String::new(),
            }
        } else if bad.is_empty() && total_ok == 0 {
            Finding {
                check: "syn",
                verdict: Verdict::Inconclusive,
                summary: format!(
                    "none of {total_connects} connects completed (refused or failed without a \
                     SYN retransmission); see the addresses check"
                ),
                evidence,
                suggestion: String::new(),
            }
        } else if bad.is_empty() {
            Finding {
                check: "syn",
                verdict: Verdict::Pass,
                summary: format!("{total_connects} connects, none needed a SYN retransmission"),
                evidence,
                suggestion: String::new(),
            }
        } else {
            let overflowing = evidence["kernel_delta"]["ListenOverflows"]
                .as_u64()
                .is_some_and(|n| n > 0);
            Finding {
                check: "syn",
                verdict: Verdict::Problem,
                summary: format!(
                    "SYNs go unanswered ({}): each costs the client at least 1 s; {}",
                    bad.join("; "),
                    if overflowing {
                        "the kernel counted listen-queue overflows, so the server's accept queue is full"
                    } else {
                        "the server's listen queue is overflowing, or a firewall or kernel setting drops SYNs"
                    }
                ),
                evidence,
                suggestion:
                    "on the server: check `nstat -az TcpExtListenOverflows TcpExtListenDrops`, \
                             raise the listen backlog and net.core.somaxconn, make the accept loop \
                             keep up; on the path: conntrack limits and firewall drops"
                        .into(),
            }
        }
    }

    /// Idle connections held open: does a new request still get answered?
    async fn idle_hold(&self) -> Finding {
        let Some(&addr) = self.addrs.first() else {
            return no_address("idle-hold");
        };
        if self.target.scheme == Scheme::Tcp {
            return Finding {
                check: "idle-hold",
                verdict: Verdict::Inconclusive,
                summary: "needs an http:// or https:// target: a bare connect is answered by \
                          the kernel, not the server"
                    .into(),
                evidence: json!({}),
                suggestion: String::new(),
            };
        }
        let mut idle = Vec::new();
        for _ in 0..self.idle_conns {
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => idle.push(s),
                _ => break,
            }
        }
        let held = idle.len();
        let budget = Duration::from_secs(3).min(self.opts.timeout);
        let with = self.probe(addr, budget).await;
        drop(idle);
        let mut evidence = json!({
            "address": addr.to_string(),
            "idle_connections_held": held,
            "with_idle": result_evidence(&with),
        });
        if with.status != Status::Fail {
            return Finding {
                check: "idle-hold",
                verdict: Verdict::Pass,
                summary: format!(
                    "answered in {:.1} ms while {held} idle connections were held",
                    with.total
                ),
                evidence,
                suggestion: String::new(),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The same budget as with them held, or a server that is merely slow would
        // pass here after failing there.
        let without = self.probe(addr, budget).await;
        evidence["without_idle"] = result_evidence(&without);
        if without.status == Status::Fail {
            Finding {
                check: "idle-hold",
                verdict: Verdict::Inconclusive,
                summary: "the request failed with and without idle connections held; see the \
                          addresses and http checks"
                    .into(),
                evidence,
                suggestion: String::new(),
            }
        } else {
            Finding {
                check: "idle-hold",
                verdict: Verdict::Problem,
                summary: format!(
                    "the server stalls while {held} idle connections are held ({}), and answers \
                     in {:.1} ms once they close: it handles one connection at a time, so a load \
                     balancer's idle pre-opened connections will starve it",
                    in_words(with.cause.unwrap_or("unknown")),
                    without.total
                ),
                evidence,
                suggestion: "run the server with several workers or threads; in front of it, turn \
                             off idle pre-connecting and cap idle connections per backend (plumb: \
                             preconnect = 0, max_idle_per_backend)"
                    .into(),
            }
        }
    }

    /// The page itself: where its time goes, and how close to a monitor's timeout.
    async fn http(&self) -> Finding {
        let Some(&addr) = self.addrs.first() else {
            return no_address("http");
        };
        if self.target.scheme == Scheme::Tcp {
            return Finding {
                check: "http",
                verdict: Verdict::Inconclusive,
                summary: "not an HTTP target".into(),
                evidence: json!({}),
                suggestion: String::new(),
            };
        }
        let r = self.probe(addr, self.opts.timeout).await;
        let transfer = r.ttfb.map(|ttfb| {
            (r.total - r.connect.unwrap_or(0.0) - r.tls.unwrap_or(0.0) - ttfb).max(0.0)
        });
        let mut evidence = result_evidence(&r);
        evidence["transfer_ms"] = json!(transfer);
        const MONITOR_MS: f64 = 5000.0;
        if r.status == Status::Fail {
            Finding {
                check: "http",
                verdict: Verdict::Problem,
                summary: format!(
                    "the request failed after {:.1} ms: {}",
                    r.total,
                    in_words(r.cause.unwrap_or("unknown"))
                ),
                evidence,
                suggestion: "see the detail in the evidence; `plumb probe --count 20` shows \
                             whether it is every time"
                    .into(),
            }
        } else if r.dns + r.total >= MONITOR_MS / 2.0 {
            let (phase, ms) = [
                ("dns", r.dns),
                ("connect", r.connect.unwrap_or(0.0)),
                ("tls", r.tls.unwrap_or(0.0)),
                ("ttfb (server think time)", r.ttfb.unwrap_or(0.0)),
                ("transfer", transfer.unwrap_or(0.0)),
            ]
            .into_iter()
            .fold(("", 0.0), |m, p| if p.1 > m.1 { p } else { m });
            Finding {
                check: "http",
                verdict: Verdict::Problem,
                summary: format!(
                    "{:.0} ms in all, most of it {phase} ({ms:.0} ms): within reach of the 5 s \
                     timeout most monitors and health checks use",
                    r.dns + r.total
                ),
                evidence,
                suggestion: "make the page faster (or a dedicated cheap health endpoint), or \
                             raise the monitor's timeout knowingly"
                    .into(),
            }
        } else {
            Finding {
                check: "http",
                verdict: Verdict::Pass,
                summary: format!(
                    "status {} in {:.1} ms (ttfb {:.1} ms, transfer {:.1} ms)",
                    r.http_status.unwrap_or(0),
                    r.dns + r.total,
                    r.ttfb.unwrap_or(0.0),
                    transfer.unwrap_or(0.0)
                ),
                evidence,
                suggestion: String::new(),
            }
        }
    }
}

fn no_address(check: &'static str) -> Finding {
    Finding {
        check,
        verdict: Verdict::Inconclusive,
        summary: "the name resolved to no address".into(),
        evidence: json!({}),
        suggestion: String::new(),
    }
}

fn result_evidence(r: &ProbeResult) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// A probe cause as an operator says it.
fn in_words(cause: &str) -> &'static str {
    match cause {
        "connect_timeout" => "SYN unanswered (connect timeout)",
        "connect_refused" => "refused: RST in answer to the SYN",
        "unreachable" => "ICMP unreachable",
        "response_timeout" => "connected, then no answer in time",
        "reset" => "reset after connecting",
        "closed" => "closed without an answer",
        "tls_error" => "TLS handshake failed",
        "http_status" => "unexpected HTTP status",
        "bad_response" => "not a valid HTTP response",
        "dns_error" => "name did not resolve",
        _ => "failed",
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}
