//! `firstcome-bench`: a load generator (closed or open loop) and invariant
//! verifier for a running firstcome service, with the machine's limits
//! measured in the same run.
//!
//! For each mode it creates a campaign on a running service, rushes it with
//! `--concurrency` keep-alive connections (one claim per user, plus repeats
//! and polls in `retry-storm`), waits for the write-behind modes to drain,
//! then checks every invariant (docs/ARCHITECTURE.md) from the grants export and the
//! answers it saw, and prints claims/s and latency percentiles.
//!
//! Layout: [`args`] (the command line) → `run.rs` (one mode at one
//! concurrency, as steps) over `rush` (the load), `probe` (the service's
//! state) and `verify` (the invariants); [`limits`] (raw Redis and
//! PostgreSQL ceilings) and [`report`] (text, JSON, HTML, SVG) beside them.
//! This file only runs the whole sweep and writes its files.
#![warn(missing_docs)]

mod api;
pub mod args;
pub mod limits;
mod probe;
pub mod report;
mod run;
mod rush;
mod verify;

pub use args::{BenchArgs, Scenario};
pub use probe::ServiceSide;
pub use run::RunResult;
pub use rush::ErrorCounts;
pub use verify::{Exposure, Violations};

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let mut results = Vec::new();
    let mut limits = Vec::new();
    if args.limit_secs > 0.0 && matches!(args.scenario, Scenario::Drain) {
        limits::measure_drain(&args, &mut limits).await;
    }
    for &conc in &args.concurrency {
        // The drain is bound by the insert, measured above, not the door.
        if args.limit_secs > 0.0 && !matches!(args.scenario, Scenario::Drain) {
            limits::measure_door(&args, conc, &mut limits).await;
        }
        let modes: &[String] = if args.limits_only { &[] } else { &args.modes };
        for mode in modes {
            let r = run::run_one(&args, mode, conc).await?;
            eprintln!(
                "{:<12} c={:<5} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  grants {:>7}  violations {}",
                r.mode,
                r.concurrency,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.grants,
                r.violations.summary()
            );
            let stalls: Vec<String> = r
                .slowest_windows
                .iter()
                .map(|(at, ms)| format!("{ms:.1} ms at {at:.1} s"))
                .collect();
            eprintln!(
                "{:<12} slowest 100 ms windows: {} (median window {:.1} ms)",
                "",
                stalls.join(", "),
                r.median_window_max_ms
            );
            results.push(r);
        }
    }
    println!("{}", report::table(&results, &limits));
    if let (false, Some((_, peak))) = (args.limits_only, firstcome::telemetry::memory()) {
        // The load generator keeps one answer per user: it must scale too.
        println!(
            "Load generator peak RSS: {:.1} MiB for up to {} users per run",
            peak / 1048576.0,
            args.users
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(p) = &args.json {
        write_file(p, &report::json(&results, &limits, &command)?)?;
    }
    if let Some(p) = &args.html {
        write_file(p, report::html(&results, &limits, &command)?.as_bytes())?;
    }
    let bad: usize = results.iter().map(|r| r.violations.total()).sum();
    anyhow::ensure!(bad == 0, "{bad} invariant violations");
    Ok(())
}

fn write_file(p: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(p, bytes)?;
    eprintln!("wrote {}", p.display());
    Ok(())
}
