//! The `idle-timeout` check: after how long idle does a connection stop working?
//!
//! Incident 002: a middlebox forgot idle connections after a few minutes and then
//! dropped their packets without a word, so the next request on a long-lived
//! connection vanished. Connections are opened together and each is held idle for a
//! different time (doubling from 1 s up to `--max-idle`), then used: an answer, a
//! FIN, an RST, or silence. Silence is split by TCP_INFO: the request
//! unacknowledged is a black hole on the path; acknowledged but unanswered is the
//! server. A second round bisects between the longest working and the shortest
//! failing idle time.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Doctor, Finding, Verdict};
use crate::Scheme;

/// How a connection fared after its idle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The request was answered (tcp://: keepalive probes were acknowledged).
    Answered,
    /// The peer had closed it (FIN).
    Fin,
    /// The peer or a middlebox reset it.
    Rst,
    /// The request was never acknowledged: dropped on the path.
    Silence,
    /// Acknowledged but never answered: the server stopped serving it.
    NoAnswer,
    /// Could not even connect.
    NoConnect,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Fin => "fin",
            Outcome::Rst => "rst",
            Outcome::Silence => "silence",
            Outcome::NoAnswer => "acknowledged_no_answer",
            Outcome::NoConnect => "no_connect",
        }
    }
}

/// How long to wait for the answer after the idle time.
const ANSWER: Duration = Duration::from_secs(5);

/// The idle times of the first round: 1 s doubling, ending at `max`.
fn schedule(max: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut d = Duration::from_secs(1);
    while d < max {
        out.push(d);
        d *= 2;
    }
    out.push(max);
    out
}

/// Up to three idle times strictly between `lo` and `hi`, whole seconds.
fn between(lo: Duration, hi: Duration) -> Vec<Duration> {
    let (lo, hi) = (lo.as_secs(), hi.as_secs());
    if hi <= lo + 1 {
        return Vec::new();
    }
    let mut out: Vec<Duration> = (1..=3)
        .map(|i| lo + (hi - lo) * i / 4)
        .filter(|s| *s > lo && *s < hi)
        .map(Duration::from_secs)
        .collect();
    out.dedup();
    out
}

impl Doctor {
    async fn hold(&self, addr: SocketAddr, idle: Duration) -> Outcome {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await
        else {
            return Outcome::NoConnect;
        };
        tokio::time::sleep(idle).await;
        // Whatever is already buffered (a server's greeting) answers nothing: drain
        // it, so that only what arrives after our question counts.
        let mut buf = [0u8; 4096];
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => return Outcome::Fin,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Rst,
                Err(_) => return Outcome::Silence,
            }
        }
        if self.target.scheme == Scheme::Tcp {
            // Nothing to send to an unknown protocol: let the kernel ask instead.
            // Keepalive probes carry no data; an acknowledged probe is an answer.
            let ka = plumb_sys::Keepalive {
                idle: Duration::from_secs(1),
                interval: Duration::from_secs(1),
                count: 3,
            };
            if plumb_sys::set_keepalive(&s, ka).is_err() {
                return Outcome::NoConnect;
            }
            let mut buf = [0u8; 1];
            return match tokio::time::timeout(ANSWER, s.read(&mut buf)).await {
                Err(_) | Ok(Ok(1..)) => Outcome::Answered,
                Ok(Ok(0)) => Outcome::Fin,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Rst,
                Ok(Err(_)) => Outcome::Silence,
            };
        }
        // https: the TLS handshake is the request; a ClientHello-sized write of an
        // HTTP request gets the same acknowledgement or silence, and any reply (even a
        // TLS alert) is an answer.
        let request = self.padded_request(0);
        if let Err(e) = s.write_all(&request).await {
            return if e.kind() == std::io::ErrorKind::ConnectionReset {
                Outcome::Rst
            } else {
                Outcome::Fin
            };
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(ANSWER, s.read(&mut buf)).await {
            Ok(Ok(0)) => Outcome::Fin,
            Ok(Ok(_)) => Outcome::Answered,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Rst,
            Ok(Err(_)) => Outcome::Silence,
            Err(_) => match plumb_sys::tcp_info(&s) {
                Ok(i) if i.unacked > 0 => Outcome::Silence,
                _ => Outcome::NoAnswer,
            },
        }
    }

    /// Holds one connection per idle time, all at once.
    async fn hold_all(&self, addr: SocketAddr, idles: &[Duration]) -> Vec<(Duration, Outcome)> {
        let mut set = tokio::task::JoinSet::new();
        for &idle in idles {
            let doctor = self.clone();
            set.spawn(async move { (idle, doctor.hold(addr, idle).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }

    /// The `idle-timeout` check.
    pub(super) async fn idle_timeout(&self) -> Finding {
        let Some(&addr) = self.addrs.first() else {
            return super::no_address("idle-timeout");
        };
        let mut results = self.hold_all(addr, &schedule(self.max_idle)).await;
        // A connection that could not even be opened says nothing about idle time.
        let first_bad = |rs: &[(Duration, Outcome)]| {
            rs.iter()
                .filter(|(_, o)| !matches!(o, Outcome::Answered | Outcome::NoConnect))
                .map(|(d, _)| *d)
                .min()
        };
        let longer_worked = |rs: &[(Duration, Outcome)], bad: Duration| {
            rs.iter()
                .filter(|(d, o)| *o == Outcome::Answered && *d > bad)
                .map(|(d, _)| *d)
                .max()
        };
        let evidence = |rs: &[(Duration, Outcome)]| -> Value {
            let mut rs = rs.to_vec();
            rs.sort_by_key(|(d, _)| *d);
            json!({
                "address": addr.to_string(),
                "max_idle_s": self.max_idle.as_secs_f64(),
                "held": rs.iter().map(|(d, o)| json!({ "idle_s": d.as_secs_f64(), "outcome": o.as_str() })).collect::<Vec<_>>(),
            })
        };
        let Some(bad) = first_bad(&results) else {
            return Finding {
                check: "idle-timeout",
                verdict: Verdict::Pass,
                summary: format!(
                    "connections idle for up to {} s still worked",
                    self.max_idle.as_secs()
                ),
                evidence: evidence(&results),
                suggestion: String::new(),
            };
        };
        let good = results
            .iter()
            .filter(|(d, o)| *o == Outcome::Answered && *d < bad)
            .map(|(d, _)| *d)
            .max();
        let Some(good) = good else {
            let what = results
                .iter()
                .find(|(d, _)| *d == bad)
                .map_or("failed", |(_, o)| o.as_str());
            return Finding {
                check: "idle-timeout",
                verdict: Verdict::Inconclusive,
                summary: format!(
                    "even a connection idle for {} s failed ({what}): not an idle timeout; see \
                     the addresses and http checks",
                    bad.as_secs()
                ),
                evidence: evidence(&results),
                suggestion: String::new(),
            };
        };
        // Second round: narrow the gap.
        results.extend(self.hold_all(addr, &between(good, bad)).await);
        let bad = first_bad(&results).unwrap_or(bad);
        if let Some(longer) = longer_worked(&results, bad) {
            return Finding {
                check: "idle-timeout",
                verdict: Verdict::Inconclusive,
                summary: format!(
                    "a connection idle for {} s failed but one idle for {} s worked: \
                     failures that do not grow with idle time are not an idle timeout",
                    bad.as_secs(),
                    longer.as_secs()
                ),
                evidence: evidence(&results),
                suggestion: "run it again, and see the addresses check for failures that \
                             come and go"
                    .into(),
            };
        }
        let good = results
            .iter()
            .filter(|(d, o)| *o == Outcome::Answered && *d < bad)
            .map(|(d, _)| *d)
            .max()
            .unwrap_or(good);
        let outcome = results
            .iter()
            .find(|(d, _)| *d == bad)
            .map_or(Outcome::Silence, |(_, o)| *o);
        let how = match outcome {
            Outcome::Silence => {
                "the request went unacknowledged: something on the path forgets idle \
                 connections and drops their packets without a word"
            }
            Outcome::Rst => "the connection was reset",
            Outcome::Fin => "the server had closed it (FIN)",
            Outcome::NoAnswer => {
                "the request was acknowledged but never answered: the server stops serving \
                 idle connections without closing them"
            }
            Outcome::NoConnect | Outcome::Answered => "it failed",
        };
        let keepalive = (good.as_secs() / 2).max(1);
        // The timeout lies between the two: machine-readable for alerting and tests.
        let mut found = evidence(&results);
        found["works_up_to_s"] = json!(good.as_secs_f64());
        found["fails_from_s"] = json!(bad.as_secs_f64());
        found["failure"] = json!(outcome.as_str());
        Finding {
            check: "idle-timeout",
            verdict: Verdict::Problem,
            summary: format!(
                "connections idle for {} s worked, after {} s {how}",
                good.as_secs(),
                bad.as_secs()
            ),
            evidence: found,
            suggestion: match outcome {
                Outcome::Fin => format!(
                    "clients must expect the close: retire pooled connections idle for more \
                     than {} s (plumb: idle_timeout below {} s)",
                    good.as_secs(),
                    good.as_secs()
                ),
                _ => format!(
                    "send TCP keepalives more often than every {} s (e.g. keepalive_idle = \
                     \"{keepalive}s\") or retire pooled connections idle that long; raise the \
                     middlebox's idle timeout if it is yours",
                    good.as_secs()
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_round_doubles_up_to_the_limit_and_the_second_fills_the_gap() {
        let s = |v: &[u64]| {
            v.iter()
                .map(|s| Duration::from_secs(*s))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            schedule(Duration::from_secs(120)),
            s(&[1, 2, 4, 8, 16, 32, 64, 120])
        );
        assert_eq!(schedule(Duration::from_secs(4)), s(&[1, 2, 4]));
        assert_eq!(schedule(Duration::from_secs(1)), s(&[1]));
        assert_eq!(
            between(Duration::from_secs(4), Duration::from_secs(8)),
            s(&[5, 6, 7])
        );
        assert_eq!(
            between(Duration::from_secs(2), Duration::from_secs(4)),
            s(&[3])
        );
        assert!(between(Duration::from_secs(2), Duration::from_secs(3)).is_empty());
    }
}
