//! `firstcome bench`: a load generator (closed or open loop) and invariant
//! verifier, with the machine's limits measured in the same run.
//!
//! For each mode it creates a campaign on a running service, rushes it with
//! `--concurrency` keep-alive connections (one claim per user, plus repeats
//! and polls in `retry-storm`), waits for the write-behind modes to drain,
//! then checks every invariant of DESIGN.md from the grants export and the
//! answers it saw, and prints claims/s and latency percentiles.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::Client;

pub mod limits;
pub mod report;

/// Shortest pause between two polls of a campaign while waiting for its
/// drain: the precision of `drain s`.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One pool of `--stock`, `--users` claimants.
    Coupon,
    /// Six pools of 200 seats, applicants spread unevenly (seed 004).
    Exam,
    /// Like coupon, but every user repeats the claim and polls its status.
    RetryStorm,
    /// Stock equals users: the durable write path dominates.
    Drain,
}

/// Options of `firstcome bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Service URL (loopback only); several, comma-separated, spread the
    /// connections round-robin over API processes (a claim that fails on one
    /// is retried on the next, see `--retry-secs`).
    #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Retry a claim answered 5xx or not answered (transport error) on the
    /// next URL, with backoff, for up to this many seconds; 0 = no retry.
    /// With retries on, a user left without an answer is a liveness
    /// violation (`unanswered`).
    #[arg(long, default_value_t = 0.0)]
    pub retry_secs: f64,
    /// Redis lost its state during the run (chaos): count the documented
    /// exposures (redis-lua grants acknowledged but not flushed, redis-queue
    /// claims queued but not drained) under `exposure` instead of as
    /// violations.
    #[arg(long)]
    pub allow_redis_loss: bool,
    /// Admin token of the service.
    #[arg(long, env = "FIRSTCOME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Modes to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "db-lock,db-atomic,redis-lua,gate,redis-queue"
    )]
    pub modes: Vec<String>,
    /// Scenario.
    #[arg(long, value_enum, default_value_t = Scenario::Coupon)]
    pub scenario: Scenario,
    /// Distinct users (up to 1,000,000 and more: answers are kept compactly).
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Stock of the coupon pool.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Concurrent connections; a comma-separated list runs each.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub concurrency: Vec<usize>,
    /// Open loop: offered claims per second (0 = closed loop). Reports how
    /// far the service fell behind the schedule.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Repeats per user in retry-storm (each a claim and a status poll).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Longest a rush may run, in seconds; users not reached are skipped.
    #[arg(long, default_value_t = 120)]
    pub max_secs: u64,
    /// Longest to wait for queued/outboxed grants to become durable.
    #[arg(long, default_value_t = 120)]
    pub drain_secs: u64,
    /// Redis of the service, for the Lua limit and memory per claimant.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PostgreSQL of the service, for the FOR UPDATE limit.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/firstcome"
    )]
    pub database_url: String,
    /// Seconds each limit is measured (0 skips the limits).
    #[arg(long, default_value_t = 3.0)]
    pub limit_secs: f64,
    /// Measure the limits only, no mode (for comparing another client, e.g.
    /// `scripts/wrk.sh`, with them).
    #[arg(long)]
    pub limits_only: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HTML report (with plots) here.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// What one user was told, compactly (a million of these must fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    /// 0 none, 1 granted, 2 queued, 3 sold_out, 4 not_open/closed,
    /// 5 cancelled, 6 error (5xx or transport).
    kind: u8,
    /// Pool index asked for.
    pool: u8,
    /// Slot, when granted.
    slot: i32,
    /// Arrival number.
    seq: i64,
    /// Code, when granted.
    code: [u8; 16],
}

fn seen_from(status: u16, v: &Value, pool: u8) -> Seen {
    let mut s = Seen {
        pool,
        seq: v["seq"].as_i64().unwrap_or(-1),
        ..Default::default()
    };
    s.kind = match (status, v["status"].as_str(), v["reason"].as_str()) {
        (200, Some("granted"), _) => 1,
        (202, Some("queued"), _) | (200, Some("queued"), _) => 2,
        (_, Some("rejected"), Some("sold_out")) => 3,
        (_, Some("rejected"), _) => 4,
        (_, Some("cancelled"), _) => 5,
        _ => 6,
    };
    if s.kind == 1 {
        s.slot = v["slot"].as_i64().unwrap_or(0) as i32;
        if let Some(c) = v["code"].as_str() {
            let b = c.as_bytes();
            let n = b.len().min(16);
            s.code[..n].copy_from_slice(&b[..n]);
        }
    }
    s
}

/// Counts that must all be zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Violations {
    /// Pools with more active grants than stock (sum of the excess).
    pub oversold: usize,
    /// Users with more than one active grant.
    pub duplicates: usize,
    /// Active grants sharing a (pool, slot), or a slot outside 1..=stock.
    pub double_booked: usize,
    /// Stock left unclaimed although enough users asked.
    pub undersold: usize,
    /// Answers `granted` with no matching grant in PostgreSQL.
    pub lost: usize,
    /// redis-queue: sold_out answers with a lower seq than some grant.
    pub unfair: usize,
    /// Repeated claims or polls that contradicted the first answer.
    pub unstable: usize,
    /// With `--retry-secs`: users who never got an answer (liveness).
    pub unanswered: usize,
}

/// Documented losses when Redis loses its state (`--allow-redis-loss`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exposure {
    /// redis-lua: answers `granted` never flushed to PostgreSQL.
    pub lua_unflushed_lost: usize,
    /// redis-queue: users answered `queued` whose entry vanished (404 or
    /// still queued after the drain).
    pub queue_lost: usize,
}

/// Error answers seen during a run (every attempt counted).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErrorCounts {
    /// 5xx answers (503 during a fault).
    pub http_5xx: usize,
    /// Requests that got no HTTP answer (refused, reset).
    pub transport: usize,
    /// Claims retried on another URL after an error.
    pub retries: usize,
}

impl Violations {
    fn total(&self) -> usize {
        self.oversold
            + self.duplicates
            + self.double_booked
            + self.undersold
            + self.lost
            + self.unfair
            + self.unstable
            + self.unanswered
    }

    /// `0`, or the non-zero counts by name.
    pub fn summary(&self) -> String {
        if self.total() == 0 {
            return "0".into();
        }
        let parts = [
            ("oversold", self.oversold),
            ("duplicates", self.duplicates),
            ("double_booked", self.double_booked),
            ("undersold", self.undersold),
            ("lost", self.lost),
            ("unfair", self.unfair),
            ("unstable", self.unstable),
            ("unanswered", self.unanswered),
        ];
        parts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the service reported about itself around one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServiceSide {
    /// Peak resident memory of the service process so far.
    pub peak_rss_bytes: u64,
    /// Change of Redis' `used_memory` over the run.
    pub redis_memory_delta: i64,
    /// That change per user who asked.
    pub redis_bytes_per_claimant: f64,
    /// Upper bound of the p99 time from arrival to durable grant
    /// (redis-queue: queue to commit; redis-lua: answer to flush), ms.
    pub durable_p99_ms: Option<f64>,
    /// Mean rows per group commit (gate).
    pub group_commit_mean_rows: Option<f64>,
}

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
    /// Grants in PostgreSQL after draining.
    pub grants: usize,
    /// Grants made durable per second, rush and drain included.
    pub durable_per_sec: f64,
    /// Seconds from the end of the rush until every grant was durable.
    pub drain_secs: f64,
    /// Users whose final answer was an error (5xx, transport).
    pub errors: usize,
    /// Every error answer, retries included.
    pub error_counts: ErrorCounts,
    /// Documented exposures (with `--allow-redis-loss`).
    pub exposure: Exposure,
    /// Invariant violations.
    pub violations: Violations,
    /// Service-side figures, when its /metrics and Redis were reachable.
    pub service: Option<ServiceSide>,
}

/// Refuses targets off this machine: load goes to loopback only.
fn ensure_loopback(what: &str, url: &str) -> anyhow::Result<()> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    anyhow::ensure!(
        ok,
        "{what} {url} is not a loopback address: firstcome bench only loads this machine"
    );
    Ok(())
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    for u in urls(&args.url) {
        ensure_loopback("--url", &u)?;
    }
    anyhow::ensure!(!urls(&args.url).is_empty(), "--url is empty");
    ensure_loopback("--redis-url", &args.redis_url)?;
    ensure_loopback("--database-url", &args.database_url)?;
    for m in &args.modes {
        anyhow::ensure!(
            m.parse::<crate::domain::Mode>().is_ok(),
            "unknown mode {m:?}"
        );
    }
    let mut results = Vec::new();
    let mut limits = Vec::new();
    if args.limit_secs > 0.0 && matches!(args.scenario, Scenario::Drain) {
        for conns in [1, 2, 4] {
            match limits::pg_insert_grants(
                &args.database_url,
                conns,
                crate::tasks::drainer::INSERT_CHUNK,
                args.limit_secs,
            )
            .await
            {
                Ok(l) => limits.push(l),
                Err(e) => eprintln!("postgres insert limit not measured: {e}"),
            }
        }
    }
    for &conc in &args.concurrency {
        // The drain is bound by the insert, measured above, not the door.
        if args.limit_secs > 0.0 && !matches!(args.scenario, Scenario::Drain) {
            let stock = pools(&args).iter().map(|p| p.1).sum::<i64>();
            for pipeline in [1, 16] {
                match limits::redis_lua(&args.redis_url, conc, pipeline, stock, args.limit_secs)
                    .await
                {
                    Ok(l) => limits.push(l),
                    Err(e) => eprintln!("redis limit not measured: {e}"),
                }
            }
            match limits::redis_benchmark(&args.redis_url, conc, stock, args.limit_secs).await {
                Ok(Some(l)) => limits.push(l),
                Ok(None) => eprintln!("redis-benchmark not installed: its limit is not measured"),
                Err(e) => eprintln!("redis-benchmark limit not measured: {e}"),
            }
            // The lock limit is driven from at most 64 connections (more
            // only queue on the row): measured once per such concurrency.
            let pg_conc = conc.min(64);
            let measured = |rows: i32| {
                limits.iter().any(|l: &limits::Limit| {
                    l.concurrency == pg_conc && l.name == limits::pg_for_update_name(rows)
                })
            };
            for rows in [1, 6]
                .into_iter()
                .filter(|r| !measured(*r))
                .collect::<Vec<_>>()
            {
                match limits::pg_for_update(&args.database_url, pg_conc, rows, args.limit_secs)
                    .await
                {
                    Ok(l) => limits.push(l),
                    Err(e) => eprintln!("postgres limit not measured: {e}"),
                }
            }
        }
        let modes: &[String] = if args.limits_only { &[] } else { &args.modes };
        for mode in modes {
            let r = run_one(&args, mode, conc).await?;
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
            results.push(r);
        }
    }
    println!("{}", report::table(&results, &limits));
    if let (false, Some((_, peak))) = (args.limits_only, crate::telemetry::memory()) {
        // The load generator keeps one answer per user: it must scale too.
        println!(
            "Load generator peak RSS: {:.1} MiB for up to {} users per run",
            peak / 1048576.0,
            args.users
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(p) = &args.json {
        write_file(
            p,
            &serde_json::to_vec_pretty(
                &json!({ "command": command, "results": results, "limits": limits }),
            )?,
        )?;
    }
    if let Some(p) = &args.html {
        write_file(p, report::html(&results, &limits, &command)?.as_bytes())?;
    }
    let bad: usize = results.iter().map(|r| r.violations.total()).sum();
    anyhow::ensure!(bad == 0, "{bad} invariant violations");
    Ok(())
}

/// The comma-separated URLs of `--url`.
fn urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Calls `path` on the clients in turn (from `from`), until one answers
/// without a 5xx or `secs` have passed; the last answer or error otherwise.
async fn call_any(
    clients: &[Client],
    from: usize,
    method: Method,
    path: &str,
    body: Option<&Value>,
    admin: bool,
    secs: f64,
) -> anyhow::Result<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut k = from;
    loop {
        let r = clients[k % clients.len()]
            .call(method.clone(), path, body, admin)
            .await;
        let ok = matches!(&r, Ok((s, _)) if *s < 500);
        if ok || Instant::now() > deadline {
            return r;
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every grant of a campaign, from whichever client answers.
async fn all_grants_any(clients: &[Client], id: i64, secs: f64) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut k = 0;
    loop {
        match clients[k % clients.len()].all_grants(id).await {
            Ok(g) => return Ok(g),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_file(p: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(p, bytes)?;
    eprintln!("wrote {}", p.display());
    Ok(())
}

/// Pools of the scenario: (name, stock, share of users).
fn pools(args: &BenchArgs) -> Vec<(String, i64, f64)> {
    match args.scenario {
        Scenario::Exam => {
            // Uneven demand, as seed 004 expected 400+ applicants per school.
            let shares = [0.26, 0.22, 0.16, 0.14, 0.12, 0.10];
            shares
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("school-{}", i + 1), 200, *s))
                .collect()
        }
        Scenario::Drain => vec![("main".into(), args.users as i64, 1.0)],
        _ => vec![("main".into(), args.stock, 1.0)],
    }
}

fn pool_of(i: usize, cum: &[f64]) -> usize {
    // Deterministic spread: user i falls at (i * golden ratio) mod 1.
    let x = (i as f64 * 0.618_033_988_749_894_9).fract();
    cum.iter().position(|c| x < *c).unwrap_or(cum.len() - 1)
}

/// Prometheus text -> the value of a plain sample line `name value`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Cumulative buckets `(le, count)` of a histogram, summed over labels.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut by_le: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|x| x.split('"').next()) else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += v;
    }
    let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Upper bound (bucket edge) of quantile `q` of the samples added between
/// two scrapes.
fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|x| x.0 == *le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            (*le, c - b)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

async fn scrape(clients: &[Client]) -> String {
    for c in clients {
        if let Ok(t) = c.text("/metrics").await {
            return t;
        }
    }
    String::new()
}

async fn redis_used_memory(url: &str) -> Option<i64> {
    let mut c = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What one worker of the load loop collected.
struct WorkerOut {
    hist: Histogram<u64>,
    seen: Vec<(u32, Seen)>,
    unstable: usize,
    behind: u64,
    errors: ErrorCounts,
}

/// Sends user `i`'s claim (and, in retry-storm, repeats and polls);
/// returns the first answer and how many later answers contradicted it.
#[allow(clippy::too_many_arguments)]
async fn one_user(
    clients: &[Client],
    k: usize,
    id: i64,
    i: usize,
    pool: (usize, &str),
    repeats: usize,
    retry: Duration,
    out: &mut WorkerOut,
    t_start: Instant,
) -> (Seen, usize) {
    let (p, pool_name) = pool;
    let body = json!({"user_id": format!("u{i}"), "pool": pool_name});
    let path = format!("/v1/campaigns/{id}/claims");
    let client = &clients[k % clients.len()];
    // A claim that errs (5xx, or no answer: the process died) is retried on
    // the next URL with backoff until `retry` has passed: the user must
    // still get an answer. The latency is the time to the final answer.
    let retry_deadline = Instant::now() + retry;
    let mut attempt = 0usize;
    let first = loop {
        let c = &clients[(k + attempt) % clients.len()];
        let r = c.call(Method::POST, &path, Some(&body), false).await;
        let seen = match &r {
            Ok((s, v)) => {
                if *s >= 500 {
                    out.errors.http_5xx += 1;
                }
                seen_from(*s, v, p as u8)
            }
            Err(_) => {
                out.errors.transport += 1;
                Seen {
                    kind: 6,
                    pool: p as u8,
                    ..Default::default()
                }
            }
        };
        let retryable = r.is_err() || matches!(&r, Ok((s, _)) if *s >= 500);
        let backoff = Duration::from_millis((20u64 << attempt.min(5)).min(500));
        if !retryable || Instant::now() + backoff > retry_deadline {
            break seen;
        }
        out.errors.retries += 1;
        attempt += 1;
        tokio::time::sleep(backoff).await;
    };
    let hist = &mut out.hist;
    hist.saturating_record(t_start.elapsed().as_micros() as u64);
    let mut unstable = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let again = client.call(Method::POST, &path, Some(&body), false).await;
        hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((s, v)) = again {
            let a = seen_from(s, &v, p as u8);
            // Queued may legitimately have become granted.
            if a != first && !(first.kind == 2 && matches!(a.kind, 1 | 2)) && a.kind != 6 {
                unstable += 1;
            }
        }
        let t0 = Instant::now();
        let poll = client
            .call(
                Method::GET,
                &format!("/v1/campaigns/{id}/claims/u{i}"),
                None,
                false,
            )
            .await;
        hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((200, v)) = poll {
            let mut a = seen_from(200, &v, p as u8);
            if v["status"] == "queued" {
                a.kind = 2;
            }
            if a.kind != first.kind && !(first.kind == 2 && a.kind == 1) {
                unstable += 1;
            }
        }
    }
    (first, unstable)
}

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn run_one(args: &BenchArgs, mode: &str, conc: usize) -> anyhow::Result<RunResult> {
    let clients: Arc<Vec<Client>> = Arc::new(
        urls(&args.url)
            .iter()
            .map(|u| Client::new(u, Some(args.admin_token.clone()), conc))
            .collect(),
    );
    // Calls outside the rush (create, drain, export) ride out a fault too.
    let admin_secs = args.retry_secs.max(1.0) + 10.0;
    let pools = pools(args);
    let mut acc = 0.0;
    let cum: Arc<Vec<f64>> = Arc::new(
        pools
            .iter()
            .map(|p| {
                acc += p.2;
                acc
            })
            .collect(),
    );
    let spec = json!({
        "name": format!("bench {mode} {:?} c{conc}", args.scenario),
        "mode": mode,
        "pools": pools.iter().map(|(n, s, _)| json!({"name": n, "stock": s})).collect::<Vec<_>>(),
    });
    let metrics_before = scrape(&clients).await;
    let redis_before = redis_used_memory(&args.redis_url).await;
    let (s, campaign) = call_any(
        &clients,
        0,
        Method::POST,
        "/v1/campaigns",
        Some(&spec),
        true,
        admin_secs,
    )
    .await?;
    anyhow::ensure!(s == 201, "create campaign answered {s}: {campaign}");
    let id = campaign["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id in {campaign}"))?;
    let names: Arc<Vec<String>> = Arc::new(pools.iter().map(|p| p.0.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let users = args.users;
    let repeats = if args.scenario == Scenario::RetryStorm {
        args.repeats
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let progress = indicatif::ProgressBar::new(users as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} users {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_prefix(mode.to_string());
    let start = Instant::now();
    let mut handles = Vec::with_capacity(conc);
    let rate = args.rate;
    let retry = Duration::from_secs_f64(args.retry_secs.max(0.0));
    for k in 0..conc {
        let (clients, next, names, cum, progress) = (
            clients.clone(),
            next.clone(),
            names.clone(),
            cum.clone(),
            progress.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut {
                hist: new_hist(),
                seen: Vec::new(),
                unstable: 0,
                behind: 0,
                errors: ErrorCounts::default(),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users || Instant::now() > deadline {
                    break;
                }
                // Open loop: user i is due at start + i / rate. Latency is
                // counted from when it was due, so a service that falls
                // behind is charged for the wait (no coordinated omission).
                let t_start = if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep_until(due.into()).await;
                    } else if now - due > Duration::from_millis(1) {
                        out.behind += 1;
                    }
                    due
                } else {
                    Instant::now()
                };
                let p = pool_of(i, &cum);
                let (first, u) = one_user(
                    &clients,
                    k,
                    id,
                    i,
                    (p, &names[p]),
                    repeats,
                    retry,
                    &mut out,
                    t_start,
                )
                .await;
                out.unstable += u;
                out.seen.push((i as u32, first));
                progress.inc(1);
            }
            out
        }));
    }
    let mut hist = new_hist();
    let mut seen = vec![Seen::default(); users];
    let mut unstable = 0;
    let mut behind = 0;
    let mut errors = ErrorCounts::default();
    for h in handles {
        let o = h.await?;
        hist.add(o.hist)?;
        for (i, a) in o.seen {
            seen[i as usize] = a;
        }
        unstable += o.unstable;
        behind += o.behind;
        errors.http_5xx += o.errors.http_5xx;
        errors.transport += o.errors.transport;
        errors.retries += o.errors.retries;
    }
    progress.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    // Drain: wait until no claim is queued and every granted answer is in
    // PostgreSQL (redis-lua flushes behind).
    let drain_start = Instant::now();
    let want_granted = seen.iter().filter(|s| s.kind == 1).count() as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    let demand_total: i64 = pools
        .iter()
        .map(|p| p.1)
        .sum::<i64>()
        .min(seen.iter().filter(|s| s.kind != 0).count() as i64);
    loop {
        let asked = Instant::now();
        let v = match call_any(
            &clients,
            0,
            Method::GET,
            &format!("/v1/campaigns/{id}"),
            None,
            false,
            0.0,
        )
        .await
        {
            Ok((200, v)) => v,
            _ if Instant::now() > drain_deadline => break,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let queued = v["queued"].as_i64().unwrap_or(0);
        let granted: i64 = v["pools"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p["granted"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        let done = queued == 0
            && granted >= want_granted
            && (mode != "redis-queue" || granted >= demand_total);
        if done || Instant::now() > drain_deadline {
            break;
        }
        // The campaign's counts are a count over its grants in PostgreSQL
        // (~45 ms at 100,000 rows): polled back to back they would take a
        // core from the drain being measured. Poll at most a quarter of
        // the time.
        tokio::time::sleep(DRAIN_POLL.max(asked.elapsed() * 3)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    // Final answers of queued users.
    let mut exposure = Exposure::default();
    for (i, s) in seen.iter_mut().enumerate() {
        if s.kind == 2 {
            let (st, v) = call_any(
                &clients,
                i,
                Method::GET,
                &format!("/v1/campaigns/{id}/claims/u{i}"),
                None,
                false,
                admin_secs,
            )
            .await?;
            let (pool, seq) = (s.pool, s.seq);
            *s = seen_from(st, &v, pool);
            if v["status"] == "queued" {
                s.kind = 2;
            }
            if args.allow_redis_loss && (st == 404 || s.kind == 2) {
                // The queue entry went with Redis' state: the user lost its
                // place (documented exposure), neither granted nor refused.
                exposure.queue_lost += 1;
                s.kind = 7;
                continue;
            }
            if s.seq != seq {
                unstable += 1;
            }
        }
    }
    let grants = all_grants_any(&clients, id, admin_secs).await?;
    let mut v = verify(&pools, &names, &seen, &grants, mode == "redis-queue");
    v.unstable += unstable;
    if args.retry_secs > 0.0 {
        v.unanswered = seen.iter().filter(|s| s.kind == 6).count();
    }
    if args.allow_redis_loss && mode == "redis-lua" {
        exposure.lua_unflushed_lost = std::mem::take(&mut v.lost);
    }
    let metrics_after = scrape(&clients).await;
    let redis_after = redis_used_memory(&args.redis_url).await;
    let asked = seen.iter().filter(|s| s.kind != 0).count().max(1);
    let service = (!metrics_after.is_empty()).then(|| {
        let durable_metric = match mode {
            "redis-queue" => Some("firstcome_queue_to_durable_seconds"),
            "redis-lua" => Some("firstcome_flush_lag_seconds"),
            _ => None,
        };
        let rows_sum = metric_value(&metrics_after, "firstcome_group_commit_rows_sum")
            .unwrap_or(0.0)
            - metric_value(&metrics_before, "firstcome_group_commit_rows_sum").unwrap_or(0.0);
        let rows_n = metric_value(&metrics_after, "firstcome_group_commit_rows_count")
            .unwrap_or(0.0)
            - metric_value(&metrics_before, "firstcome_group_commit_rows_count").unwrap_or(0.0);
        let delta = redis_after
            .zip(redis_before)
            .map(|(a, b)| a - b)
            .unwrap_or(0);
        ServiceSide {
            peak_rss_bytes: metric_value(&metrics_after, "firstcome_process_peak_resident_bytes")
                .unwrap_or(0.0) as u64,
            redis_memory_delta: delta,
            redis_bytes_per_claimant: delta as f64 / asked as f64,
            durable_p99_ms: durable_metric.and_then(|m| {
                quantile_between(
                    &buckets(&metrics_before, m),
                    &buckets(&metrics_after, m),
                    0.99,
                )
                .map(|s| s * 1000.0)
            }),
            group_commit_mean_rows: (mode == "gate" && rows_n > 0.0).then(|| rows_sum / rows_n),
        }
    });
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
    Ok(RunResult {
        mode: mode.to_string(),
        scenario: args.scenario,
        concurrency: conc,
        offered_rate: rate,
        behind_schedule: behind,
        requests: hist.len(),
        rps: hist.len() as f64 / elapsed,
        mean_ms: hist.mean() / 1000.0,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        cdf,
        grants: grants.len(),
        durable_per_sec: grants.len() as f64 / (elapsed + drain_secs),
        drain_secs,
        errors: seen.iter().filter(|s| s.kind == 6).count(),
        error_counts: errors,
        exposure,
        violations: v,
        service,
    })
}

fn verify(
    pools: &[(String, i64, f64)],
    names: &[String],
    seen: &[Seen],
    grants: &[Value],
    fairness: bool,
) -> Violations {
    let mut v = Violations::default();
    let idx: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut per_pool = vec![0i64; pools.len()];
    let mut users = HashSet::new();
    let mut slots = HashSet::new();
    let mut codes = HashSet::new();
    let mut max_granted_seq = vec![i64::MIN; pools.len()];
    for g in grants {
        let p = idx
            .get(g["pool"].as_str().unwrap_or(""))
            .copied()
            .unwrap_or(0);
        per_pool[p] += 1;
        if !users.insert(g["user_id"].as_str().unwrap_or("").to_string()) {
            v.duplicates += 1;
        }
        let slot = g["slot"].as_i64().unwrap_or(0);
        if !slots.insert((p, slot)) || slot < 1 || slot > pools[p].1 {
            v.double_booked += 1;
        }
        codes.insert(g["code"].as_str().unwrap_or("").to_string());
        max_granted_seq[p] = max_granted_seq[p].max(g["seq"].as_i64().unwrap_or(0));
    }
    let mut demand = vec![0i64; pools.len()];
    for s in seen.iter().filter(|s| s.kind != 0) {
        demand[s.pool as usize] += 1;
    }
    for (p, (_, stock, _)) in pools.iter().enumerate() {
        v.oversold += (per_pool[p] - stock).max(0) as usize;
        // Only users that got an answer count as asking; errors may have
        // been refused before any reservation.
        let asked = seen
            .iter()
            .filter(|s| s.pool as usize == p && (1..=3).contains(&s.kind))
            .count() as i64;
        if asked >= *stock && per_pool[p] < *stock {
            v.undersold += (stock - per_pool[p]) as usize;
        }
    }
    for s in seen.iter().filter(|s| s.kind == 1) {
        let code = String::from_utf8_lossy(&s.code)
            .trim_end_matches('\0')
            .to_string();
        if !codes.contains(&code) {
            v.lost += 1;
        }
    }
    if fairness {
        for s in seen.iter().filter(|s| s.kind == 3) {
            if s.seq >= 0 && s.seq < max_granted_seq[s.pool as usize] {
                v.unfair += 1;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn granted(pool: u8, slot: i32, seq: i64, code: &str) -> Seen {
        seen_from(
            200,
            &json!({"status": "granted", "slot": slot, "seq": seq, "code": code}),
            pool,
        )
    }

    fn sold_out(pool: u8, seq: i64) -> Seen {
        seen_from(
            409,
            &json!({"status": "rejected", "reason": "sold_out", "seq": seq}),
            pool,
        )
    }

    fn grant(user: &str, slot: i64, seq: i64, code: &str) -> Value {
        json!({"pool": "main", "user_id": user, "slot": slot, "seq": seq, "code": code})
    }

    /// One pool of 2: a clean run, then each kind of damage on its own.
    #[test]
    fn the_verifier_counts_each_violation() {
        let pools = vec![("main".to_string(), 2, 1.0)];
        let names = vec!["main".to_string()];
        let seen = [
            granted(0, 1, 1, "CODEA"),
            granted(0, 2, 2, "CODEB"),
            sold_out(0, 3),
        ];
        let good = [grant("a", 1, 1, "CODEA"), grant("b", 2, 2, "CODEB")];
        assert_eq!(verify(&pools, &names, &seen, &good, true).total(), 0);

        let v = verify(
            &pools,
            &names,
            &seen,
            &[good[0].clone(), good[1].clone(), grant("c", 3, 3, "CODEC")],
            true,
        );
        assert_eq!((v.oversold, v.double_booked), (1, 1), "{v:?}");

        let v = verify(
            &pools,
            &names,
            &seen,
            &[good[0].clone(), grant("a", 2, 2, "CODEB")],
            true,
        );
        assert_eq!(v.duplicates, 1, "{v:?}");

        let v = verify(&pools, &names, &seen, &[good[0].clone()], true);
        assert_eq!((v.undersold, v.lost), (1, 1), "{v:?}");

        let v = verify(
            &pools,
            &names,
            &seen,
            &[good[0].clone(), grant("b", 1, 2, "CODEB")],
            true,
        );
        assert_eq!(v.double_booked, 1, "{v:?}");

        // A sold_out answer before the last grant's arrival: unfair in
        // redis-queue (checked only where arrival order is promised).
        let late = [good[0].clone(), grant("b", 2, 4, "CODEB")];
        assert_eq!(verify(&pools, &names, &seen, &late, true).unfair, 1);
        assert_eq!(verify(&pools, &names, &seen, &late, false).unfair, 0);
    }
}
