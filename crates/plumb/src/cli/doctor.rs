//! `plumb doctor`: flags, the run of checks, the report. The checks are
//! plumb-probe's.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use plumb_probe::doctor::{Doctor, Finding, Verdict, CHECKS, DEFAULT_CHECKS};
use plumb_probe::{Options, Target};

use super::probe::{duration, header, Reach};
use super::Format;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// http://host[:port]/path, https://host[:port]/path or tcp://host:port.
    #[arg(value_name = "URL")]
    url: String,
    #[command(flatten)]
    reach: Reach,
    /// Run only these checks (repeatable or comma-separated): addresses, syn,
    /// idle-hold, mtu, idle-timeout, http. The default is all but idle-timeout
    /// (which --max-idle also turns on).
    #[arg(
        long = "check",
        visible_alias = "checks",
        value_name = "NAME",
        value_delimiter = ','
    )]
    checks: Vec<String>,
    /// Budget of one request.
    #[arg(long, default_value = "5s", value_parser = duration)]
    timeout: Duration,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_parser = header)]
    headers: Vec<(String, String)>,
    /// Probes per address in the `addresses` check.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Sequential connects per address in the `syn` check.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    connects: u32,
    /// Idle connections held in the `idle-hold` check.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    idle_conns: u32,
    /// The longest idle time the idle-timeout check tries (connections are held
    /// 1 s, 2 s, 4 s... up to this, all at once, then bisected).
    #[arg(long, value_parser = duration)]
    max_idle: Option<Duration>,
    /// Output: text (findings and a summary table), or json (one object per finding).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn run(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let usage = |msg: String| {
        eprintln!("plumb doctor: {msg}");
        Ok(ExitCode::from(2))
    };
    let target = match Target::parse(&a.url) {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    let checks: Vec<&'static str> = if a.checks.is_empty() {
        let mut all = DEFAULT_CHECKS.to_vec();
        if a.max_idle.is_some() {
            all.insert(all.len() - 1, "idle-timeout");
        }
        all
    } else {
        let mut out = Vec::new();
        for c in &a.checks {
            match CHECKS.iter().find(|k| **k == c.as_str()) {
                Some(k) => out.push(*k),
                None => {
                    return usage(format!(
                        "--check {c:?} is not a check; the checks are {}",
                        CHECKS.join(", ")
                    ))
                }
            }
        }
        out
    };
    if let Some(d) = a.max_idle {
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return usage(format!(
                "--max-idle {d:?}: must be between 1s and 1h (connections are held that long)"
            ));
        }
    }
    let tls = if target.scheme == plumb_probe::Scheme::Https {
        match plumb_probe::client_config(a.reach.cacert.as_deref(), a.reach.insecure) {
            Ok(c) => Some(c),
            Err(e) => return usage(e.to_string()),
        }
    } else {
        None
    };
    let family = a.reach.family();
    let opts = Options {
        tls,
        timeout: a.timeout,
        warn: a.timeout,
        expect_status: (200, 399),
        method: "GET".into(),
        headers: a.headers.clone(),
        data: None,
    };
    let rt = super::measuring_runtime()?;
    let findings = rt.block_on(async {
        let resolved =
            match plumb_probe::resolve(&target.host, target.port, family, &a.reach.resolve).await {
                Ok(r) => r,
                Err(e) => {
                    let f = Finding {
                        check: "addresses",
                        verdict: Verdict::Problem,
                        summary: format!("{} does not resolve: {e}", target.host),
                        evidence: serde_json::json!({ "host": target.host }),
                        suggestion: "check the name and the resolver (/etc/resolv.conf)".into(),
                    };
                    report(&f, a.format);
                    return vec![f];
                }
            };
        let doctor = Doctor {
            target: target.clone(),
            addrs: resolved.addrs,
            dns: resolved.took,
            opts,
            rounds: a.rounds,
            connects: a.connects,
            idle_conns: a.idle_conns,
            max_idle: a.max_idle.unwrap_or(Duration::from_secs(120)),
        };
        let mut findings = Vec::new();
        for check in checks {
            let spinner =
                (a.format == Format::Text && std::io::stderr().is_terminal()).then(|| {
                    let s = indicatif::ProgressBar::new_spinner();
                    s.set_message(format!("{check}..."));
                    s.enable_steady_tick(Duration::from_millis(120));
                    s
                });
            let found = doctor.run(check).await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            if let Some(f) = found {
                report(&f, a.format);
                findings.push(f);
            }
        }
        findings
    });
    if a.format == Format::Text {
        print!("{}", table(&a.url, &findings));
    }
    Ok(if findings.iter().any(|f| f.verdict == Verdict::Problem) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn report(f: &Finding, format: Format) {
    match format {
        Format::Json => match serde_json::to_string(f) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("plumb doctor: cannot serialise a finding: {e}"),
        },
        Format::Text => {
            let mut out = format!(
                "{:<12} {:<9} {}\n",
                f.verdict.as_str().to_uppercase(),
                f.check,
                f.summary
            );
            if f.verdict != Verdict::Pass {
                if let Ok(ev) = serde_json::to_string(&f.evidence) {
                    out.push_str(&format!("             evidence: {ev}\n"));
                }
            }
            if !f.suggestion.is_empty() {
                out.push_str(&format!("             fix: {}\n", f.suggestion));
            }
            print!("{out}");
        }
    }
}

/// The one-screen summary at the end.
fn table(url: &str, findings: &[Finding]) -> String {
    let mut out = format!("\nplumb doctor {url}\n");
    for f in findings {
        out.push_str(&format!("  {:<10} {}\n", f.check, f.verdict.as_str()));
    }
    let problems = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Problem)
        .count();
    out.push_str(&format!(
        "{problems} problem{} in {} check{}\n",
        if problems == 1 { "" } else { "s" },
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    ));
    out
}
