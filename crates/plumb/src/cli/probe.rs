//! `plumb probe`: flags, rounds, output. The probing itself is plumb-probe's.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use plumb_probe::{Family, Options, ProbeResult, Status, Summary, Target};

use super::Format;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// http://host[:port]/path, https://host[:port]/path or tcp://host:port.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,
    /// Only IPv4 addresses.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Only IPv6 addresses.
    #[arg(short = '6')]
    ipv6: bool,
    /// HOST:PORT:ADDR[,ADDR...] as curl's --resolve (repeatable).
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR")]
    resolve: Vec<String>,
    /// Budget of one probe of one address.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Slower than this is `warn`.
    #[arg(long, default_value = "1s", value_parser = duration)]
    warn: Duration,
    /// Expected status or range (200, 200-399).
    #[arg(long, default_value = "200-399", value_parser = status_range)]
    expect_status: (u16, u16),
    /// Extra request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = header)]
    headers: Vec<(String, String)>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body.
    #[arg(long)]
    data: Option<String>,
    /// https: trust the CA certificates in this PEM file (instead of the system's).
    #[arg(long, value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// https: accept any certificate (the handshake is still timed).
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Rounds to run (default 1; with --every or --for, until they end or Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Time between rounds (with up to 10% jitter).
    #[arg(long, value_parser = duration)]
    every: Option<Duration>,
    /// Run for this long.
    #[arg(long = "for", value_parser = duration)]
    duration: Option<Duration>,
    /// Output: text lines, or json (one object per result).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn duration(s: &str) -> Result<Duration, String> {
    plumb_config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (such as 250ms, 5s, 2m)"))
}

fn status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a status or range (such as 200 or 200-399)");
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let n = s.trim().parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header (\"Name: value\")"))?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{k:?} is not a header name"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

pub fn run(a: ProbeArgs) -> anyhow::Result<ExitCode> {
    let mut targets = Vec::new();
    for url in &a.urls {
        match Target::parse(url) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("plumb probe: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let family = if a.ipv4 {
        Family::V4
    } else if a.ipv6 {
        Family::V6
    } else {
        Family::Both
    };
    let tls = if targets
        .iter()
        .any(|t| t.scheme == plumb_probe::Scheme::Https)
    {
        match plumb_probe::client_config(a.cacert.as_deref(), a.insecure) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("plumb probe: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        None
    };
    let opts = Options {
        tls,
        timeout: a.timeout,
        warn: a.warn,
        expect_status: a.expect_status,
        method: a.method.clone(),
        headers: a.headers.clone(),
        data: a.data.clone(),
    };
    let continuous = a.every.is_some() || a.duration.is_some();
    let rounds = a.count.unwrap_or(if continuous { u64::MAX } else { 1 });
    let every = a.every.unwrap_or(Duration::from_secs(15));
    let rt = super::runtime(Some(1))?;
    let summary = rt.block_on(async {
        let mut summary = Summary::default();
        let until = a.duration.map(|d| tokio::time::Instant::now() + d);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        for round in 0..rounds {
            if round > 0 {
                let jitter = every.mul_f64(0.9 + 0.2 * fastrand::f64());
                tokio::select! {
                    _ = &mut ctrl_c => break,
                    () = tokio::time::sleep(jitter) => {}
                }
            }
            if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                break;
            }
            for t in &targets {
                let results = tokio::select! {
                    _ = &mut ctrl_c => return summary,
                    r = probe_target(t, family, &a.resolve, &opts) => r,
                };
                for r in &results {
                    print(r, a.format);
                    summary.add(r);
                }
            }
        }
        summary
    });
    if rounds > 1 && a.format == Format::Text {
        print!("{}", summary.render());
    }
    Ok(if summary.any_failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn probe_target(
    t: &Target,
    family: Family,
    overrides: &[String],
    opts: &Options,
) -> Vec<ProbeResult> {
    match plumb_probe::resolve(&t.host, t.port, family, overrides).await {
        Ok(resolved) => {
            let mut out = Vec::new();
            for addr in &resolved.addrs {
                out.push(plumb_probe::probe_address(t, *addr, resolved.took, opts).await);
            }
            out
        }
        Err(e) => vec![ProbeResult {
            url: t.url.clone(),
            host: t.host.clone(),
            address: std::net::SocketAddr::from(([0, 0, 0, 0], t.port)),
            family: "-",
            status: Status::Fail,
            cause: Some("dns_error"),
            detail: Some(e.to_string()),
            http_status: None,
            dns: e.took.as_secs_f64() * 1000.0,
            connect: None,
            tls: None,
            ttfb: None,
            total: e.took.as_secs_f64() * 1000.0,
            syn_retransmits: None,
            tcp_info: None,
        }],
    }
}

fn print(r: &ProbeResult, format: Format) {
    match format {
        Format::Json => match serde_json::to_string(r) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("plumb probe: cannot serialise a result: {e}"),
        },
        Format::Text => {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let status = match r.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Fail => "fail",
            };
            let mut line = format!(
                "{status:<4} {} {} {}  dns {:.2} connect {} tls {} ttfb {} total {:.2} ms",
                r.url,
                r.address,
                r.http_status.map_or("-".to_string(), |s| s.to_string()),
                r.dns,
                f(r.connect),
                f(r.tls),
                f(r.ttfb),
                r.total
            );
            if let Some(n) = r.syn_retransmits {
                line.push_str(&format!("  syn_retransmits {n}"));
            }
            if let Some(t) = r.tcp_info {
                line.push_str(&format!(
                    "  rtt {:.2}ms retrans {} pmtu {} mss {}",
                    t.rtt_ms, t.retransmits, t.pmtu, t.snd_mss
                ));
            }
            if let Some(c) = r.cause {
                line.push_str(&format!("  cause {c}"));
            }
            if let Some(d) = &r.detail {
                line.push_str(&format!(" ({d})"));
            }
            println!("{line}");
        }
    }
}
