//! `plumb probe`: flags, rounds, output. The probing itself is plumb-probe's.

mod metrics;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plumb_probe::{Family, Options, ProbeResult, Status, Summary, Target};

use super::Format;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// http://host[:port]/path, https://host[:port]/path or tcp://host:port.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,
    #[command(flatten)]
    reach: Reach,
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
    /// Rounds to run (default 1; with --every or --for, until they end or Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Time between rounds (with up to 10% jitter).
    #[arg(long, value_parser = duration)]
    every: Option<Duration>,
    /// Run for this long.
    #[arg(long = "for", value_parser = duration)]
    duration: Option<Duration>,
    /// Output: text (a timing waterfall on a terminal, one line per result when
    /// piped), or json (one object per result).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Run this shell command after each failed probe, with the result in the
    /// environment (PLUMB_URL, PLUMB_ADDRESS, PLUMB_STATUS, PLUMB_CAUSE,
    /// PLUMB_DETAIL, PLUMB_RESULT as JSON). It gets 10 s.
    #[arg(long, value_name = "CMD")]
    on_fail: Option<String>,
    /// Serve the results as Prometheus metrics at http://ADDR/metrics, per address
    /// (plumb_probe_success{url,address}, phase histograms, SYN retransmissions).
    /// Implies continuous probing (every 15 s unless --every says otherwise).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// How targets are reached, shared by probe and doctor: address family, curl-style
/// name overrides, and whom to trust for https.
#[derive(Debug, Args)]
pub struct Reach {
    /// Only IPv4 addresses.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Only IPv6 addresses.
    #[arg(short = '6')]
    ipv6: bool,
    /// HOST:PORT:ADDR[,ADDR...] as curl's --resolve (repeatable).
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// https: trust the CA certificates in this PEM file (instead of the system's).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// https: accept any certificate (the handshake is still timed).
    #[arg(short = 'k', long)]
    pub insecure: bool,
}

impl Reach {
    /// The address families asked for.
    pub fn family(&self) -> Family {
        if self.ipv4 {
            Family::V4
        } else if self.ipv6 {
            Family::V6
        } else {
            Family::Both
        }
    }
}

pub(super) fn duration(s: &str) -> Result<Duration, String> {
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

pub(super) fn header(s: &str) -> Result<(String, String), String> {
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
    let family = a.reach.family();
    let tls = if targets
        .iter()
        .any(|t| t.scheme == plumb_probe::Scheme::Https)
    {
        match plumb_probe::client_config(a.reach.cacert.as_deref(), a.reach.insecure) {
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
    let continuous = a.every.is_some() || a.duration.is_some() || a.metrics_listen.is_some();
    let rounds = a.count.unwrap_or(if continuous { u64::MAX } else { 1 });
    let every = a.every.unwrap_or(Duration::from_secs(15));
    let metrics_listener = match a.metrics_listen.map(metrics::bind).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plumb probe: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let rt = super::measuring_runtime()?;
    let summary = rt.block_on(async {
        let exported = match metrics_listener {
            Some(l) => {
                let l = tokio::net::TcpListener::from_std(l)?;
                eprintln!("plumb probe: metrics at http://{}/metrics", l.local_addr()?);
                let m = Arc::new(metrics::ProbeMetrics::new());
                tokio::spawn(metrics::serve(l, m.clone()));
                Some(m)
            }
            None => None,
        };
        let mut summary = Summary::default();
        let until = a.duration.map(|d| tokio::time::Instant::now() + d);
        let progress = Progress::new(continuous && a.format == Format::Text, a.count, every);
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
            progress.round(round + 1);
            for t in &targets {
                let results = tokio::select! {
                    _ = &mut ctrl_c => {
                        progress.finish();
                        return Ok(summary);
                    }
                    r = probe_target(t, family, &a.reach.resolve, &opts) => r,
                };
                for r in &results {
                    progress.print(r, a.format);
                    summary.add(r);
                    if let Some(m) = &exported {
                        m.record(r);
                    }
                    if r.status == Status::Fail {
                        if let Some(cmd) = &a.on_fail {
                            on_fail(cmd, r).await;
                        }
                    }
                }
            }
        }
        progress.finish();
        Ok::<_, anyhow::Error>(summary)
    })?;
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

/// A status line under the results while probing continuously on a terminal: the
/// round, the tally so far and the interval. Results print above it; piped or JSON
/// output has none.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    rounds: Option<u64>,
    every: Duration,
    tally: std::cell::Cell<[u64; 3]>,
}

impl Progress {
    fn new(wanted: bool, rounds: Option<u64>, every: Duration) -> Progress {
        use std::io::IsTerminal;
        let bar = (wanted && std::io::stdout().is_terminal() && std::io::stderr().is_terminal())
            .then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            });
        Progress {
            bar,
            rounds,
            every,
            tally: std::cell::Cell::new([0; 3]),
        }
    }

    fn round(&self, n: u64) {
        self.redraw(n);
    }

    fn redraw(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(n);
            let [ok, warn, fail] = self.tally.get();
            let of = self.rounds.map_or(String::new(), |r| format!("/{r}"));
            bar.set_message(format!(
                "round {n}{of} every {:?}: {ok} ok, {warn} warn, {fail} fail  (Ctrl-C for the summary)",
                self.every
            ));
        }
    }

    fn print(&self, r: &ProbeResult, format: Format) {
        let mut t = self.tally.get();
        t[match r.status {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }] += 1;
        self.tally.set(t);
        match &self.bar {
            Some(bar) => {
                bar.suspend(|| print(r, format));
                self.redraw(bar.position());
            }
            None => print(r, format),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Runs `--on-fail` for one failed result, bounded in time.
async fn on_fail(cmd: &str, r: &ProbeResult) {
    let json = serde_json::to_string(r).unwrap_or_default();
    let child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .env("PLUMB_URL", &r.url)
        .env("PLUMB_ADDRESS", r.address.to_string())
        .env("PLUMB_STATUS", "fail")
        .env("PLUMB_CAUSE", r.cause.unwrap_or(""))
        .env("PLUMB_DETAIL", r.detail.as_deref().unwrap_or(""))
        .env("PLUMB_RESULT", json)
        // Its own process group, so that a timeout ends everything it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(mut child) => {
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    eprintln!("plumb probe: --on-fail exited with {status}")
                }
                Ok(Err(e)) => eprintln!("plumb probe: --on-fail: {e}"),
                Err(_) => {
                    if let Some(pid) = child.id() {
                        // The group's id is the shell's PID: SIGKILL to the group
                        // reaches the shell's children too.
                        let _ = plumb_sys::kill_process_group(pid);
                        let _ = child.wait().await;
                    }
                    eprintln!("plumb probe: --on-fail did not finish within 10s; killed it and its children")
                }
                _ => {}
            }
        }
        Err(e) => eprintln!("plumb probe: cannot run --on-fail: {e}"),
    }
}

fn print(r: &ProbeResult, format: Format) {
    use std::io::IsTerminal;
    if format == Format::Text && std::io::stdout().is_terminal() {
        print!("{}", waterfall(r));
        return;
    }
    match format {
        Format::Json => match serde_json::to_string(r) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("plumb probe: cannot serialise a result: {e}"),
        },
        Format::Text => {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let status = r.status.as_str();
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

/// A result as a timing waterfall for a terminal (like httpstat): one bar per phase,
/// aligned, coloured by status.
fn waterfall(r: &ProbeResult) -> String {
    // https://no-color.org: a set NO_COLOR keeps the layout and drops the colour.
    let plain = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let (colour, status) = match r.status {
        _ if plain => ("", r.status.as_str()),
        Status::Ok => ("\x1b[32m", r.status.as_str()),
        Status::Warn => ("\x1b[33m", r.status.as_str()),
        Status::Fail => ("\x1b[31m", r.status.as_str()),
    };
    let reset = if plain { "" } else { "\x1b[0m" };
    let mut out = format!(
        "{colour}{status:<4}{reset} {} {} {}",
        r.url,
        r.address,
        r.http_status.map_or(String::new(), |s| s.to_string())
    );
    if let Some(c) = r.cause {
        out.push_str(&format!("  {colour}{c}{reset}"));
    }
    out.push('\n');
    // Phase spans as (name, start, length) in ms: resolution first, then the
    // connection's phases one after another; `total` (connect to the end of the
    // response) spans them all after resolution.
    let dns = r.dns;
    let connect = r.connect.unwrap_or(0.0);
    let tls = r.tls.unwrap_or(0.0);
    let ttfb = r.ttfb.unwrap_or(0.0);
    let phases = [
        ("dns", 0.0, dns),
        ("connect", dns, connect),
        ("tls", dns + connect, tls),
        ("ttfb", dns + connect + tls, ttfb),
        ("total", dns, r.total),
    ];
    let width = 40.0;
    let scale = (dns + r.total).max(0.001);
    for (name, start, len) in phases {
        if len <= 0.0 && name != "total" {
            continue;
        }
        let from = (start / scale * width).round() as usize;
        let n = ((len / scale * width).round() as usize).max(1);
        out.push_str(&format!(
            "  {name:<8} {len:>9.2} ms  {}{colour}{}{reset}\n",
            " ".repeat(from.min(40)),
            "\u{2588}".repeat(n.min(40))
        ));
    }
    if let Some(n) = r.syn_retransmits.filter(|n| *n > 0) {
        out.push_str(&format!("  SYN retransmissions: {n}\n"));
    }
    if let Some(t) = r.tcp_info {
        out.push_str(&format!(
            "  rtt {:.2} ms, retransmits {}, pmtu {}, mss {}\n",
            t.rtt_ms, t.retransmits, t.pmtu, t.snd_mss
        ));
    }
    if let Some(d) = &r.detail {
        out.push_str(&format!("  {d}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waterfall_bars_follow_one_another_on_one_scale() {
        let r = ProbeResult {
            url: "https://a.test/".into(),
            host: "a.test".into(),
            address: "127.0.0.1:443".parse().unwrap(),
            family: "ipv4",
            status: Status::Ok,
            cause: None,
            detail: None,
            http_status: Some(200),
            dns: 10.0,
            connect: Some(10.0),
            tls: Some(10.0),
            ttfb: Some(10.0),
            total: 30.0,
            syn_retransmits: None,
            tcp_info: None,
        };
        let text = waterfall(&r);
        let bar = |name: &str| {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"));
            let bar = line.split(" ms  ").nth(1).unwrap();
            let bar = bar.replace("\x1b[32m", "").replace("\x1b[0m", "");
            let start = bar.chars().take_while(|c| *c == ' ').count();
            (start, bar.chars().count() - start)
        };
        // 40 columns for 40 ms: each 10 ms phase is 10 columns, each after the last.
        assert_eq!(bar("dns"), (0, 10), "{text}");
        assert_eq!(bar("connect"), (10, 10), "{text}");
        assert_eq!(bar("tls"), (20, 10), "{text}");
        assert_eq!(bar("ttfb"), (30, 10), "{text}");
        assert_eq!(bar("total"), (10, 30), "{text}");
        assert!(text.contains("ok") && text.contains("200"), "{text}");
    }
}
