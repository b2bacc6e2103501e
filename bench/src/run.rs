//! One mode at one concurrency, as named steps: create the campaign,
//! rush it, top up cancelled stock, wait for the drain, read every answer
//! back, verify, and gather the service's figures into a [`RunResult`].
//! The steps live in `rush`, `probe` and `verify`; this file sequences
//! them and holds only the small ones that belong nowhere else (the
//! campaign's creation, the redis-lua loss window, the latency CDF).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;
use serde_json::json;

use crate::{
    api::Api,
    args::{pools, BenchArgs, Scenario},
    probe::{self, ServiceSide},
    rush::{self, ErrorCounts, Load, Rush, RushOut},
    verify::{draw, verify, Check, Exposure, SeenKind, Violations},
};

/// One mode at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Mode.
    pub mode: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Connections.
    pub concurrency: usize,
    /// Offered rate in open loop, 0 in closed loop.
    pub offered_rate: u64,
    /// Open loop: requests that started more than 1 ms behind schedule.
    pub behind_schedule: u64,
    /// Requests answered (repeats and polls included).
    pub requests: u64,
    /// Requests per second over the rush.
    pub rps: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// p90.
    pub p90_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// max.
    pub max_ms: f64,
    /// (latency ms, fraction) points of the latency CDF.
    pub cdf: Vec<(f64, f64)>,
    /// The five slowest 100 ms windows of the rush: (start s, slowest
    /// first answer ms among the users due in it), slowest first.
    pub slowest_windows: Vec<(f64, f64)>,
    /// The median window's slowest first answer, ms.
    pub median_window_max_ms: f64,
    /// Grants in PostgreSQL after draining.
    pub grants: usize,
    /// Grants made durable per second, rush and drain included.
    pub durable_per_sec: f64,
    /// Seconds from the end of the rush until every grant was durable.
    pub drain_secs: f64,
    /// Users whose final answer was an error (5xx, transport).
    pub errors: usize,
    /// Users who cancelled their grant (`--cancel-frac`), in doubt included.
    pub cancelled: usize,
    /// Users added after the rush to claim the cancelled stock back.
    pub topup_users: usize,
    /// Users whose state was read back after the drain and compared.
    pub final_checked: usize,
    /// Every error answer, retries included.
    pub error_counts: ErrorCounts,
    /// Documented exposures (with `--allow-redis-loss`).
    pub exposure: Exposure,
    /// Invariant violations.
    pub violations: Violations,
    /// Service-side figures, when its /metrics and Redis were reachable.
    pub service: Option<ServiceSide>,
}

/// Reads `--loss-at-file`: `FROM_MS [TO_MS]`, Unix milliseconds.
fn read_loss_at(path: &std::path::Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<i64>());
    let from = it.next()?.ok()?;
    let to = it.next().and_then(|x| x.ok()).unwrap_or(from);
    Some((from, to.max(from)))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One mode at one concurrency: the steps of the run, in order.
pub async fn run_one(args: &BenchArgs, mode: &str, conc: usize) -> anyhow::Result<RunResult> {
    let api = Api::service(args, conc);
    // Calls outside the rush (create, drain, export) ride out a fault too.
    let admin_secs = args.retry_secs.max(1.0) + 10.0;
    let pools = pools(args);
    let extra = Api::metrics_only(&args.metrics_url, api.timeout);
    let before = probe::Before::take(&api, &extra, &args.redis_url).await;
    let prequeue = (args.prequeue_secs > 0.0 && mode == "redis-queue").then(|| {
        chrono::Utc::now() + chrono::Duration::milliseconds((args.prequeue_secs * 1000.0) as i64)
    });
    let id = create_campaign(&api, args, mode, conc, &pools, admin_secs, prequeue).await?;
    let names: Arc<Vec<String>> = Arc::new(pools.iter().map(|p| p.0.clone()).collect());
    let rush = Arc::new(Rush {
        api: api.clone(),
        id,
        repeats: if args.scenario == Scenario::RetryStorm {
            args.repeats
        } else {
            0
        },
        retry: Duration::from_secs_f64(args.retry_secs.max(0.0)),
        cancel_frac: args.cancel_frac.clamp(0.0, 1.0),
        t0: Instant::now(),
    });
    let t0_unix_ms = unix_ms();
    let load = Load {
        users: args.users,
        conc,
        rate: args.rate,
        max_secs: args.max_secs,
        names: names.clone(),
        cum: Arc::new(cumulative_shares(&pools)),
    };
    let RushOut {
        hist,
        worst,
        mut seen,
        mut unstable,
        behind,
        mut errors,
        elapsed,
    } = rush::drive(&rush, mode, &load).await?;
    let cancelled = seen.iter().filter(|s| s.kind.cancelled()).count();
    let topup_users = if cancelled > 0 {
        rush::top_up(&rush, &pools, &mut seen, &mut errors).await
    } else {
        0
    };
    if let Some(opens) = prequeue {
        // Nothing of the pre-queue drains before the opening and its draw.
        wait_for_draw(&api, id, opens, admin_secs).await?;
    }
    let drain_secs = probe::wait_drain(&api, id, mode, &pools, &seen, args.drain_secs).await;
    let requeued =
        probe::resolve_queued(&api, &rush, &mut seen, args.allow_redis_loss, admin_secs).await?;
    unstable += requeued.unstable;
    let mut exposure = Exposure {
        queue_lost: requeued.queue_lost,
        ..Default::default()
    };
    let (finals, final_checked) =
        probe::final_states(&api, &rush, &names, &seen, conc, admin_secs).await;
    let grants = api.all_grants(id, admin_secs).await?;
    // Redis lost its state: which redis-lua answers the write-behind may
    // have lost (received from the window before the loss to just after).
    let window_ms = args.loss_window_ms.max(probe::flush_lag_window_ms(
        &before,
        &extra.scrape_all().await,
    ));
    let lua_loss = (args.allow_redis_loss && mode == "redis-lua").then(|| {
        exposure.loss_window_ms = window_ms;
        lua_loss_range(args, window_ms, t0_unix_ms)
    });
    let check = Check {
        // Cancelled stock goes to later arrivals: arrival order no longer
        // decides alone.
        fairness: mode == "redis-queue" && cancelled == 0,
        lua_loss,
    };
    let (mut v, lua) = verify(&pools, &names, &seen, &finals, &grants, &check);
    if prequeue.is_some() {
        let (seed, commitment, places) = draw::fetch(&api, id, admin_secs)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the draw is not recorded"))?;
        draw::check(&seed, &commitment, &places, &finals, &mut v);
    }
    exposure.lua_unflushed_lost = lua.lua_unflushed_lost;
    exposure.lua_changed = lua.lua_changed;
    v.unstable += unstable;
    if args.retry_secs > 0.0 {
        v.unanswered = seen.iter().filter(|s| s.kind == SeenKind::Error).count();
    }
    let metrics_after = api.scrape().await;
    let redis_after = probe::redis_used_memory(&args.redis_url).await;
    let asked = seen
        .iter()
        .filter(|s| s.kind != SeenKind::None)
        .count()
        .max(1);
    let service = probe::service_side(mode, &before, &metrics_after, redis_after, asked);
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(RunResult {
        mode: mode.to_string(),
        scenario: args.scenario,
        concurrency: conc,
        offered_rate: args.rate,
        behind_schedule: behind,
        requests: hist.len(),
        rps: hist.len() as f64 / elapsed,
        mean_ms: hist.mean() / 1000.0,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        cdf: latency_cdf(&hist),
        slowest_windows: worst.slowest(5),
        median_window_max_ms: worst.median(),
        grants: grants.len(),
        durable_per_sec: grants.len() as f64 / (elapsed + drain_secs),
        drain_secs,
        errors: seen.iter().filter(|s| s.kind == SeenKind::Error).count(),
        cancelled,
        topup_users,
        final_checked,
        error_counts: errors,
        exposure,
        violations: v,
        service,
    })
}

/// Creates the run's campaign (retried over the API processes for up to
/// `admin_secs`); returns its id.
async fn create_campaign(
    api: &Api,
    args: &BenchArgs,
    mode: &str,
    conc: usize,
    pools: &[(String, i64, f64)],
    admin_secs: f64,
    prequeue: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<i64> {
    let mut spec = json!({
        "name": format!("bench {mode} {:?} c{conc}", args.scenario),
        "mode": mode,
        "pools": pools.iter().map(|(n, s, _)| json!({"name": n, "stock": s})).collect::<Vec<_>>(),
    });
    if args.shards > 1 {
        spec["shards"] = json!(args.shards);
    }
    if let Some(opens) = prequeue {
        // The pre-queue is open from now until the opening.
        spec["opens_at"] = json!(opens.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        spec["prequeue_secs"] = json!(args.prequeue_secs.ceil() as i64 + 60);
    }
    let (s, campaign) = api
        .call_any(
            0,
            Method::POST,
            "/v1/campaigns",
            Some(&spec),
            true,
            admin_secs,
        )
        .await?;
    anyhow::ensure!(s == 201, "create campaign answered {s}: {campaign}");
    campaign["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id in {campaign}"))
}

/// Waits until `opens` and then until the campaign's draw is recorded
/// (the drainer meets the draw marker within a second of the opening).
async fn wait_for_draw(
    api: &Api,
    id: i64,
    opens: chrono::DateTime<chrono::Utc>,
    admin_secs: f64,
) -> anyhow::Result<()> {
    if let Ok(d) = (opens - chrono::Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(admin_secs + 30.0);
    while draw::fetch(api, id, admin_secs).await?.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the draw was not recorded in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The running sums of the pools' shares of users (see `args::pool_of`).
fn cumulative_shares(pools: &[(String, i64, f64)]) -> Vec<f64> {
    let mut acc = 0.0;
    pools
        .iter()
        .map(|p| {
            acc += p.2;
            acc
        })
        .collect()
}

/// The redis-lua answers a Redis state loss may have taken, as a range of
/// `Seen::at` (ms since the run started): from `window_ms` before the loss
/// in `--loss-at-file` to 250 ms after it, or everything when the loss
/// time is unknown.
fn lua_loss_range(args: &BenchArgs, window_ms: u64, t0_unix_ms: i64) -> (i64, i64) {
    match args.loss_at_file.as_deref().and_then(read_loss_at) {
        Some((from, to)) => (from - window_ms as i64 - t0_unix_ms, to + 250 - t0_unix_ms),
        None => (i64::MIN, i64::MAX),
    }
}

/// (latency ms, fraction) points of the latency CDF: every half percent,
/// the tail's nines, and the maximum.
fn latency_cdf(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let mut cdf = Vec::new();
    for k in 0..=200 {
        let p = k as f64 / 200.0;
        cdf.push((q(p.min(0.9999)), p));
    }
    for p in [0.999, 0.9999] {
        cdf.push((q(p), p));
    }
    cdf.push((hist.max() as f64 / 1000.0, 1.0));
    cdf.sort_by(|a, b| a.1.total_cmp(&b.1));
    cdf
}
