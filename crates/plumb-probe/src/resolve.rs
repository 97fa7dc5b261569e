//! Every address of a name: `--resolve` overrides first (as curl's), then literals,
//! then the hosts file (alone when it names the host, as glibc's `files dns`), then
//! DNS with the system's resolver configuration (hickory-resolver).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;
use std::str::FromStr;
use tokio::time::Instant;

/// Which address families to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A and AAAA.
    Both,
    /// A only (`-4`).
    V4,
    /// AAAA only (`-6`).
    V6,
}

/// The addresses of a target, and how long finding them took.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Every address, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
    /// Time spent resolving (zero for overrides and literals).
    pub took: Duration,
}

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host:?}: {detail}")]
pub struct ResolveError {
    /// The name.
    pub host: String,
    /// Why.
    pub detail: String,
    /// How long it took to fail.
    pub took: Duration,
}

/// Resolves `host`. `overrides` are `HOST:PORT:ADDR` entries as curl takes them.
pub async fn resolve(
    host: &str,
    port: u16,
    family: Family,
    overrides: &[String],
) -> Result<Resolved, ResolveError> {
    let fam_ok = |ip: &IpAddr| match family {
        Family::Both => true,
        Family::V4 => ip.is_ipv4(),
        Family::V6 => ip.is_ipv6(),
    };
    let mut forced = Vec::new();
    for o in overrides {
        let mut parts = o.splitn(3, ':');
        let (h, p, a) = (parts.next(), parts.next(), parts.next());
        if h == Some(host) && p.and_then(|p| p.parse::<u16>().ok()) == Some(port) {
            for addr in a.unwrap_or("").split(',') {
                if let Ok(ip) = addr
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                {
                    if fam_ok(&ip) {
                        forced.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
    }
    if !forced.is_empty() {
        return Ok(Resolved {
            addrs: forced,
            took: Duration::ZERO,
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !fam_ok(&ip) {
            return Err(ResolveError {
                host: host.to_string(),
                detail: "the address literal is not of the requested family (-4/-6)".into(),
                took: Duration::ZERO,
            });
        }
        return Ok(Resolved {
            addrs: vec![SocketAddr::new(ip, port)],
            took: Duration::ZERO,
        });
    }
    let t0 = Instant::now();
    // The hosts file first, and alone when it gives the host an address of the
    // wanted family, as glibc's `hosts: files dns` does: asking DNS for the family
    // the file does not list would wait out the DNS timeout (15 s with no
    // reachable server) for nothing.
    let listed: Vec<SocketAddr> = hickory_resolver::Hosts::from_system()
        .map(|h| in_hosts(&h, host))
        .unwrap_or_default()
        .into_iter()
        .filter(fam_ok)
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if !listed.is_empty() {
        return Ok(Resolved {
            addrs: listed,
            took: t0.elapsed(),
        });
    }
    let fail = |detail: String, t0: Instant| ResolveError {
        host: host.to_string(),
        detail,
        took: t0.elapsed(),
    };
    let mut builder = TokioResolver::builder_tokio().map_err(|e| fail(e.to_string(), t0))?;
    builder.options_mut().ip_strategy = match family {
        Family::Both => LookupIpStrategy::Ipv4AndIpv6,
        Family::V4 => LookupIpStrategy::Ipv4Only,
        Family::V6 => LookupIpStrategy::Ipv6Only,
    };
    let resolver = builder.build().map_err(|e| fail(e.to_string(), t0))?;
    let lookup = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| fail(e.to_string(), t0))?;
    let addrs: Vec<SocketAddr> = lookup
        .iter()
        .filter(fam_ok)
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    if addrs.is_empty() {
        return Err(fail("no address of the requested family".to_string(), t0));
    }
    Ok(Resolved {
        addrs,
        took: t0.elapsed(),
    })
}

/// Every address a hosts file gives `host` (IPv4 first, then in file order).
fn in_hosts(hosts: &hickory_resolver::Hosts, host: &str) -> Vec<IpAddr> {
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::{Name, RecordType};
    let Ok(name) = Name::from_str(host) else {
        return Vec::new();
    };
    [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(|t| hosts.lookup_static_host(&Query::query(name.clone(), t)))
        .flat_map(|l| {
            l.answers()
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_file_gives_every_address_of_a_name() {
        let mut hosts = hickory_resolver::Hosts::default();
        hosts
            .read_hosts_conf(
                "10.0.2.11 svc.lab\n10.0.2.12 svc.lab other\n# 10.9.9.9 svc.lab\nfd00::13 Svc.Lab\n"
                    .as_bytes(),
            )
            .unwrap();
        let want: Vec<IpAddr> = ["10.0.2.11", "10.0.2.12", "fd00::13"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(in_hosts(&hosts, "svc.lab"), want);
        assert_eq!(
            in_hosts(&hosts, "SVC.lab."),
            want,
            "case and a trailing dot"
        );
        assert_eq!(in_hosts(&hosts, "other"), vec![want[1]]);
        assert!(in_hosts(&hosts, "missing.lab").is_empty());
    }

    #[tokio::test]
    async fn overrides_and_literals() {
        let r = resolve(
            "api.test",
            80,
            Family::Both,
            &["api.test:80:127.0.0.1,::1".to_string()],
        )
        .await
        .unwrap();
        assert_eq!(r.addrs.len(), 2);
        let r = resolve(
            "api.test",
            80,
            Family::V6,
            &["api.test:80:127.0.0.1,[::1]".to_string()],
        )
        .await
        .unwrap();
        assert_eq!(r.addrs, vec!["[::1]:80".parse().unwrap()]);
        let r = resolve("127.0.0.2", 9, Family::Both, &[]).await.unwrap();
        assert_eq!(r.addrs, vec!["127.0.0.2:9".parse().unwrap()]);
        // A literal of the other family is an error, never an empty success.
        let e = resolve("127.0.0.2", 9, Family::V6, &[]).await.unwrap_err();
        assert!(e.to_string().contains("not of the requested family"), "{e}");
        // /etc/hosts: localhost resolves without any network.
        let r = resolve("localhost", 9, Family::V4, &[]).await.unwrap();
        assert!(
            r.addrs.iter().all(|a| a.ip().is_loopback()),
            "{:?}",
            r.addrs
        );
    }
}
