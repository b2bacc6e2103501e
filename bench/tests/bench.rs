//! `firstcome-bench` end to end against a spawned service: every scenario
//! runs every mode without a violation, and its JSON report says so.

// The service's own test support (spawn_app), shared rather than copied.
#[path = "../../tests/it/common/mod.rs"]
mod common;

use clap::Parser;
use firstcome_bench::BenchArgs;
use serde_json::Value;

/// `firstcome-bench`'s options parsed as the CLI would.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// Runs the bench against `app` with `extra` (whitespace-separated
/// arguments, as on a command line).
async fn run(app: &common::TestApp, extra: &str) -> Value {
    let out = std::env::temp_dir().join(common::unique("bench"));
    let (json, html) = (out.with_extension("json"), out.with_extension("html"));
    let mut argv = vec![
        "firstcome-bench".to_string(),
        "--url".into(),
        app.base.clone(),
        "--admin-token".into(),
        common::TOKEN.into(),
        "--redis-url".into(),
        common::redis_url(),
        "--database-url".into(),
        app.db_url.clone(),
        "--json".into(),
        json.display().to_string(),
        "--html".into(),
        html.display().to_string(),
    ];
    argv.extend(extra.split_whitespace().map(str::to_string));
    let args = Cli::try_parse_from(&argv).expect("bench arguments").bench;
    firstcome_bench::run(args)
        .await
        .expect("bench run without violations");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // The report opens offline: its plots are inline SVG.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.matches("<svg").count() >= 2, "{extra}: {page:.200}");
    for f in [json, html] {
        std::fs::remove_file(f).ok();
    }
    v
}

/// Runs the bench against `app` with `extra`; asserts one result per
/// mode, every user's request made, no violation and some throughput;
/// returns the results.
async fn run_clean(app: &common::TestApp, extra: &str, modes: usize, users: u64) -> Vec<Value> {
    let v = run(app, extra).await;
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), modes, "{v}");
    for r in results {
        assert_eq!(r["requests"].as_u64(), Some(users), "{r}");
        let bad: u64 = r["violations"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_u64().unwrap())
            .sum();
        assert_eq!(bad, 0, "{r}");
        assert!(r["rps"].as_f64().unwrap() > 0.0, "{r}");
    }
    results.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coupon_and_exam_run_every_mode_clean() {
    let app = common::spawn_app().await;
    let coupon = "--scenario coupon --stock 20 --users 300 --concurrency 16 --limit-secs 0";
    for r in run_clean(&app, coupon, 5, 300).await {
        assert_eq!(r["grants"].as_u64(), Some(20), "{r}");
    }
    let exam = "--scenario exam --users 2400 --concurrency 32 --limit-secs 0";
    run_clean(&app, exam, 5, 2400).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_and_open_loop_run_clean() {
    let app = common::spawn_app().await;
    let drain = "--scenario drain --modes gate,redis-queue,redis-lua --users 500 --concurrency 16 --rate 2000 --limit-secs 0";
    for r in run_clean(&app, drain, 3, 500).await {
        assert_eq!(r["grants"].as_u64(), Some(500), "stock = users: {r}");
        assert_eq!(r["offered_rate"].as_u64(), Some(2000), "{r}");
    }
    app.stop().await;
}

/// `--limits-only`: every limit the machine is compared with is measured
/// and does work (a limit that fails is only warned about by the bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_is_measured() {
    let app = common::spawn_app().await;
    let short = "--limits-only --limit-secs 0.3";
    let coupon = run(&app, &format!("--scenario coupon --concurrency 4 {short}")).await;
    let drain = run(&app, &format!("--scenario drain {short}")).await;
    let limits: Vec<&Value> = [&coupon, &drain]
        .iter()
        .flat_map(|v| v["limits"].as_array().unwrap())
        .collect();
    for kind in [
        "claim.lua straight at Redis, pipeline 1",
        "SELECT ... FOR UPDATE",
        "grant INSERT straight at PostgreSQL",
    ] {
        let found: Vec<&&Value> = limits
            .iter()
            .filter(|l| l["name"].as_str().unwrap().starts_with(kind))
            .collect();
        assert!(!found.is_empty(), "no {kind} limit in {limits:?}");
        for l in found {
            assert!(l["per_sec"].as_f64().unwrap() > 0.0, "{l}");
        }
    }
    app.stop().await;
}

/// `--cancel-frac`: granted users cancel during the rush; each one's final
/// state is `cancelled` (not counted as changed), the returned stock is
/// claimed again by new users until sold_out (no undersell), and every
/// final answer still holds after the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_storm_runs_every_mode_clean() {
    let app = common::spawn_app().await;
    let storm =
        "--scenario coupon --stock 20 --users 200 --concurrency 8 --limit-secs 0 --cancel-frac 0.3";
    for r in run_clean(&app, storm, 5, 200).await {
        assert!(r["cancelled"].as_u64().unwrap() > 0, "{r}");
        assert!(r["topup_users"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["grants"].as_u64(), Some(20), "stock back in use: {r}");
        assert!(r["final_checked"].as_u64().unwrap() >= 200, "{r}");
    }
    app.stop().await;
}
