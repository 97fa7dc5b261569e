//! The fault matrix and a three-minute soak, in a network namespace of their own
//! (so the black-hole and SYN-loss faults can use nftables without touching the
//! machine). Root only; skips with a reason otherwise. The 30-minute soak is the
//! same command with `--soak 30m` (docs/reliability.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the report"
)]

use std::path::PathBuf;
use std::time::Duration;

use plumb_netlab::Lab;
use serde_json::Value;

const CHAOS: &str = env!("CARGO_BIN_EXE_plumb-chaos");

/// The plumb binary beside this test's build (cargo builds it for the
/// workspace's tests).
fn plumb() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let p = dir.join("plumb");
    p.is_file().then_some(p)
}

fn run(lab: &Lab, name: &str, extra: &[&str], within: Duration) -> Value {
    let host = lab.host(name);
    let dir = lab.dir().join(name);
    let plumb = plumb().unwrap();
    let mut args = vec![
        CHAOS,
        "run",
        "--plumb",
        plumb.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--nft",
    ];
    args.extend_from_slice(extra);
    let ran = host.run(&args, within);
    let report: Value =
        serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {ran}"));
    eprintln!(
        "{name}: {} s, outcomes {}, posts {}, cross-check {}, plumb {}",
        report["ran_s"],
        report["outcomes"],
        report["posts"],
        report["access_log_cross_check"]["errors_checked"],
        report["plumb"]
    );
    assert_eq!(
        report["outcomes"]["silent"], 0,
        "silent outcomes: {:#}",
        report["silent"]
    );
    assert_eq!(report["posts"]["duplicated"], 0, "{report:#}");
    assert_eq!(
        report["access_log_cross_check"]["mismatch_count"], 0,
        "{report:#}"
    );
    assert_eq!(
        report["metrics_cross_check"],
        serde_json::json!([]),
        "{report:#}"
    );
    assert_eq!(report["plumb"]["alive"], true, "{report:#}");
    assert_eq!(report["plumb"]["fds_ok"], true, "{report:#}");
    assert_eq!(report["plumb"]["rss_ok"], true, "{report:#}");
    assert_eq!(report["admin_abuse_violations"], 0, "{report:#}");
    assert!(
        !report["notes"].to_string().contains("skipped")
            && !report["notes"].to_string().contains("refused"),
        "a fault did not run: {:#}",
        report["notes"]
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    report
}

#[test]
fn fault_matrix_then_a_three_minute_soak_loses_nothing_silently() {
    let Some(lab) = Lab::new("fault_matrix") else {
        return;
    };
    if plumb().is_none() {
        eprintln!("SKIPPED: fault_matrix: the plumb binary is not built (cargo build -p plumb)");
        return;
    }
    let matrix = run(
        &lab,
        "matrix",
        &[
            "--per-fault",
            "4s",
            "--slowloris",
            "5000",
            "--idle",
            "10000",
        ],
        Duration::from_secs(240),
    );
    // The faults did something: drains refused requests, resets were seen, and
    // every slow or idle connection was closed by plumb.
    let by_fault = &matrix["by_fault"];
    assert!(
        by_fault["drain_all"]["http error no_healthy_backend"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{by_fault:#}"
    );
    assert!(
        by_fault["combined"]["tcp error reset"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{by_fault:#}"
    );
    assert!(
        by_fault["slowloris"]["abuser ok"].as_u64() == Some(1),
        "{by_fault:#}"
    );
    assert!(
        by_fault["idle_clients"]["abuser ok"].as_u64() == Some(1),
        "{by_fault:#}"
    );

    run(
        &lab,
        "soak",
        &[
            "--soak",
            "3m",
            "--slowloris",
            "1000",
            "--idle",
            "2000",
            "--base-port",
            "22000",
        ],
        Duration::from_secs(400),
    );
}
