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
use futures::StreamExt;
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
    /// With `--allow-redis-loss`: a file where the fault injector wrote when
    /// Redis lost its state, as `FROM_MS [TO_MS]` (Unix milliseconds). Only
    /// redis-lua answers received from `--loss-window-ms` before FROM to
    /// 250 ms after TO may then be lost (write-behind exposure); any other
    /// answer that changed is a violation. Without the file every redis-lua
    /// answer is exposed.
    #[arg(long)]
    pub loss_at_file: Option<PathBuf>,
    /// The write-behind window of redis-lua, in milliseconds (see
    /// `--loss-at-file`): at least this, and at least twice the largest
    /// flush lag (`firstcome_flush_lag_seconds`, bucket bound) seen during
    /// the run at the `--metrics-url` processes.
    #[arg(long, default_value_t = 1000)]
    pub loss_window_ms: u64,
    /// More processes whose /metrics the bench reads (comma-separated),
    /// e.g. a `--role worker` process: where the flush lag is measured.
    #[arg(long, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// Give up on a request after this many seconds (counted as a transport
    /// error, retried on the next URL with `--retry-secs`); 0 = wait forever.
    /// A process stopped with SIGSTOP answers nothing: without a timeout the
    /// bench would wait for it.
    #[arg(long, default_value_t = 0.0)]
    pub request_timeout_secs: f64,
    /// Fraction (0..=1) of users who, once granted, cancel their claim
    /// (DELETE) during the rush (redis-queue: after polling until granted,
    /// at most 3 s). Their final state must then be `cancelled`. After the
    /// rush new users claim until `sold_out`, so a cancelled slot that did
    /// not return to stock shows as undersold.
    #[arg(long, default_value_t = 0.0)]
    pub cancel_frac: f64,
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

/// What a user was told (or what a status GET showed), in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
enum SeenKind {
    /// Not asked (the rush ended first), or not checked.
    #[default]
    None,
    /// 200 `granted`.
    Granted,
    /// 202 `queued` (redis-queue).
    Queued,
    /// `rejected`, reason `sold_out`.
    SoldOut,
    /// `rejected`, reason `not_open` or `closed`.
    Refused,
    /// `cancelled`: the user's own DELETE answered 200, or a status GET.
    Cancelled,
    /// 5xx or no answer.
    Error,
    /// redis-queue: queued, then the entry vanished with Redis' state
    /// (documented exposure).
    QueueLost,
    /// The user's DELETE got no answer: granted or cancelled are both right.
    CancelInDoubt,
    /// A status GET answered 404: the service forgot the user.
    Missing,
}

impl SeenKind {
    /// A user answered this asked and got an answer (not an error).
    fn asked(self) -> bool {
        matches!(
            self,
            Self::Granted | Self::Queued | Self::SoldOut | Self::Cancelled | Self::CancelInDoubt
        )
    }

    /// The bench cancelled (or tried to cancel) this user's grant.
    fn cancelled(self) -> bool {
        matches!(self, Self::Cancelled | Self::CancelInDoubt)
    }
}

/// What one user was told, compactly (a million of these must fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    /// What the answer was.
    kind: SeenKind,
    /// Pool index asked for.
    pool: u8,
    /// Slot, when granted (or cancelled).
    slot: i32,
    /// Arrival number (-1 when the answer had none).
    seq: i64,
    /// Code, when granted (or cancelled).
    code: [u8; 16],
    /// When the answer was received, in ms since the run started.
    at: u32,
}

fn seen_from(status: u16, v: &Value, pool: u8) -> Seen {
    let mut s = Seen {
        pool,
        seq: v["seq"].as_i64().unwrap_or(-1),
        ..Default::default()
    };
    s.kind = match (status, v["status"].as_str(), v["reason"].as_str()) {
        (200, Some("granted"), _) => SeenKind::Granted,
        (202 | 200, Some("queued"), _) => SeenKind::Queued,
        (_, Some("rejected"), Some("sold_out")) => SeenKind::SoldOut,
        (_, Some("rejected"), _) => SeenKind::Refused,
        (_, Some("cancelled"), _) => SeenKind::Cancelled,
        _ => SeenKind::Error,
    };
    if matches!(s.kind, SeenKind::Granted | SeenKind::Cancelled) {
        s.slot = v["slot"].as_i64().unwrap_or(0) as i32;
        if let Some(c) = v["code"].as_str() {
            let b = c.as_bytes();
            let n = b.len().min(16);
            s.code[..n].copy_from_slice(&b[..n]);
        }
    }
    s
}

/// The same grant: pool, slot, code and arrival number.
fn same_grant(a: &Seen, b: &Seen) -> bool {
    a.pool == b.pool && a.slot == b.slot && a.code == b.code && (a.seq < 0 || a.seq == b.seq)
}

/// Whether `now`, a user's state after the drain, contradicts the final
/// answer the user was `told` (DESIGN.md, "A final answer once given is
/// never later replaced"). Only final answers (granted, sold_out) and the
/// user's own cancellation are compared; anything else is `false`.
fn changed(told: &Seen, now: &Seen) -> bool {
    match told.kind {
        SeenKind::Granted => !(now.kind == SeenKind::Granted && same_grant(told, now)),
        SeenKind::SoldOut => {
            !(now.kind == SeenKind::SoldOut && (told.seq < 0 || told.seq == now.seq))
        }
        SeenKind::Cancelled => now.kind != SeenKind::Cancelled,
        SeenKind::CancelInDoubt => {
            !(now.kind == SeenKind::Cancelled
                || (now.kind == SeenKind::Granted && same_grant(told, now)))
        }
        _ => false,
    }
}

/// Whether a user's state is compared after the drain.
fn checked(kind: SeenKind) -> bool {
    matches!(
        kind,
        SeenKind::Granted | SeenKind::SoldOut | SeenKind::Cancelled | SeenKind::CancelInDoubt
    )
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
    /// Final answers (granted, sold_out) or own cancellations that the
    /// user's status GET contradicts once the rush drained: 404, another
    /// status, another slot, code or seq.
    pub changed: usize,
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
    /// redis-lua: final answers (granted or sold_out) received within the
    /// write-behind window of the loss whose state changed since.
    pub lua_changed: usize,
    /// redis-lua: the write-behind window used, ms (0 when not applied).
    pub loss_window_ms: u64,
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
            + self.changed
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
            ("changed", self.changed),
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
    for u in &args.metrics_url {
        ensure_loopback("--metrics-url", u)?;
    }
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
                crate::modes::redis_queue::drainer::INSERT_CHUNK,
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

/// The service's API processes, with the bench's request timeout.
#[derive(Clone)]
struct Api {
    clients: Arc<Vec<Client>>,
    /// `--request-timeout-secs`, if any.
    timeout: Option<Duration>,
}

impl Api {
    /// One call on client `k` (modulo their number); no answer within the
    /// timeout is an error, like a refused connection.
    async fn call(
        &self,
        k: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        admin: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let c = &self.clients[k % self.clients.len()];
        match self.timeout {
            Some(t) => tokio::time::timeout(t, c.call(method, path, body, admin))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {t:?}"))?,
            None => c.call(method, path, body, admin).await,
        }
    }

    /// Calls `path` on the clients in turn (from `from`), until one answers
    /// without a 5xx or `secs` have passed; the last answer or error
    /// otherwise.
    async fn call_any(
        &self,
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
            let r = self.call(k, method.clone(), path, body, admin).await;
            let ok = matches!(&r, Ok((s, _)) if *s < 500);
            if ok || Instant::now() > deadline {
                return r;
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every grant of a campaign, from whichever client answers.
    async fn all_grants(&self, id: i64, secs: f64) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut k = 0;
        loop {
            let c = &self.clients[k % self.clients.len()];
            // The whole export (paged) within a few timeouts.
            let r = match self.timeout {
                Some(t) => tokio::time::timeout(t * 4, c.all_grants(id))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("export: no answer"))),
                None => c.all_grants(id).await,
            };
            match r {
                Ok(g) => return Ok(g),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// /metrics of every process that answers, one after the other.
    async fn scrape_all(&self) -> String {
        let mut all = String::new();
        for c in self.clients.iter() {
            let t = self.timeout.unwrap_or(Duration::from_secs(2));
            if let Ok(Ok(text)) = tokio::time::timeout(t, c.text("/metrics")).await {
                all.push_str(&text);
                all.push('\n');
            }
        }
        all
    }

    /// /metrics of the first process that answers (within 2 s each).
    async fn scrape(&self) -> String {
        for c in self.clients.iter() {
            let t = self.timeout.unwrap_or(Duration::from_secs(2));
            if let Ok(Ok(t)) = tokio::time::timeout(t, c.text("/metrics")).await {
                return t;
            }
        }
        String::new()
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

impl WorkerOut {
    fn new() -> Self {
        Self {
            hist: new_hist(),
            seen: Vec::new(),
            unstable: 0,
            behind: 0,
            errors: ErrorCounts::default(),
        }
    }
}

/// What every user of a rush shares.
struct Rush {
    api: Api,
    /// Campaign id.
    id: i64,
    /// Repeats per user (retry-storm).
    repeats: usize,
    /// `--retry-secs`.
    retry: Duration,
    /// `--cancel-frac`.
    cancel_frac: f64,
    /// Start of the run: `Seen::at` counts from here.
    t0: Instant,
}

impl Rush {
    fn now_ms(&self) -> u32 {
        self.t0.elapsed().as_millis().min(u32::MAX as u128) as u32
    }

    fn status_path(&self, i: usize) -> String {
        format!("/v1/campaigns/{}/claims/u{i}", self.id)
    }
}

/// Whether user `i` cancels once granted: a fixed pseudo-random draw, so a
/// rerun picks the same users.
fn cancels(i: usize, frac: f64) -> bool {
    let h = (i as u64 ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 11) as f64 / (1u64 << 53) as f64) < frac
}

/// The same answer, whenever it was received.
fn same_answer(a: &Seen, b: &Seen) -> bool {
    Seen { at: 0, ..*a } == Seen { at: 0, ..*b }
}

/// User `i`'s claim on pool `p`, retried on the next URL (with backoff)
/// while it errs (5xx, or no answer: the process died or stopped) until
/// `--retry-secs` have passed: the user must still get an answer.
async fn claim_with_retry(
    rush: &Rush,
    k: usize,
    i: usize,
    pool: (usize, &str),
    errors: &mut ErrorCounts,
) -> Seen {
    let (p, pool_name) = pool;
    let body = json!({"user_id": format!("u{i}"), "pool": pool_name});
    let path = format!("/v1/campaigns/{}/claims", rush.id);
    let retry_deadline = Instant::now() + rush.retry;
    let mut attempt = 0usize;
    loop {
        let r = rush
            .api
            .call(k + attempt, Method::POST, &path, Some(&body), false)
            .await;
        let mut seen = match &r {
            Ok((s, v)) => {
                if *s >= 500 {
                    errors.http_5xx += 1;
                }
                seen_from(*s, v, p as u8)
            }
            Err(_) => {
                errors.transport += 1;
                Seen {
                    kind: SeenKind::Error,
                    pool: p as u8,
                    ..Default::default()
                }
            }
        };
        seen.at = rush.now_ms();
        let retryable = r.is_err() || matches!(&r, Ok((s, _)) if *s >= 500);
        let backoff = Duration::from_millis((20u64 << attempt.min(5)).min(500));
        if !retryable || Instant::now() + backoff > retry_deadline {
            return seen;
        }
        errors.retries += 1;
        attempt += 1;
        tokio::time::sleep(backoff).await;
    }
}

/// `--cancel-frac`: user `i`, told `told`, cancels its grant (redis-queue:
/// polls until granted first, at most 3 s). Returns what the user now
/// holds: `Cancelled` (DELETE answered 200), `CancelInDoubt` (no answer
/// after the retries), or `told` unchanged (not granted, or the service
/// refused the DELETE: the check after the drain judges that).
async fn cancel_own(rush: &Rush, k: usize, i: usize, told: Seen, errors: &mut ErrorCounts) -> Seen {
    let mut told = told;
    let path = rush.status_path(i);
    if told.kind == SeenKind::Queued {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok((200, v)) = rush.api.call(k, Method::GET, &path, None, false).await {
                let mut a = seen_from(200, &v, told.pool);
                a.at = rush.now_ms();
                match a.kind {
                    SeenKind::Queued => {}
                    // A final answer received by polling is one the user
                    // was given.
                    SeenKind::Granted | SeenKind::SoldOut => {
                        told = a;
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
    if told.kind != SeenKind::Granted {
        return told;
    }
    let deadline = Instant::now() + rush.retry.max(Duration::from_secs(1));
    let mut attempt = 0usize;
    loop {
        let r = rush
            .api
            .call(k + attempt, Method::DELETE, &path, None, false)
            .await;
        match &r {
            Ok((200, v)) if v["status"] == "cancelled" => {
                return Seen {
                    kind: SeenKind::Cancelled,
                    at: rush.now_ms(),
                    ..told
                };
            }
            Ok((s, _)) if *s < 500 => return told,
            Ok(_) => errors.http_5xx += 1,
            Err(_) => errors.transport += 1,
        }
        let backoff = Duration::from_millis((20u64 << attempt.min(5)).min(500));
        if Instant::now() + backoff > deadline {
            return Seen {
                kind: SeenKind::CancelInDoubt,
                at: rush.now_ms(),
                ..told
            };
        }
        errors.retries += 1;
        attempt += 1;
        tokio::time::sleep(backoff).await;
    }
}

/// Sends user `i`'s claim (and, in retry-storm, repeats and polls; with
/// `--cancel-frac`, maybe a cancellation); returns the last final answer
/// the user was given (or the first answer) and how many later answers
/// contradicted the first.
async fn one_user(
    rush: &Rush,
    k: usize,
    i: usize,
    pool: (usize, &str),
    out: &mut WorkerOut,
    t_start: Instant,
) -> (Seen, usize) {
    let (p, pool_name) = pool;
    let first = claim_with_retry(rush, k, i, pool, &mut out.errors).await;
    // The latency is the time to the final answer, retries included.
    out.hist
        .saturating_record(t_start.elapsed().as_micros() as u64);
    let mut told = first;
    let body = json!({"user_id": format!("u{i}"), "pool": pool_name});
    let path = format!("/v1/campaigns/{}/claims", rush.id);
    let mut unstable = 0;
    for _ in 0..rush.repeats {
        let t0 = Instant::now();
        let again = rush
            .api
            .call(k, Method::POST, &path, Some(&body), false)
            .await;
        out.hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((s, v)) = again {
            let mut a = seen_from(s, &v, p as u8);
            a.at = rush.now_ms();
            // Queued may legitimately have become granted.
            let moved_on = first.kind == SeenKind::Queued
                && matches!(a.kind, SeenKind::Granted | SeenKind::Queued);
            if !same_answer(&a, &first) && !moved_on && a.kind != SeenKind::Error {
                unstable += 1;
            }
            if told.kind == SeenKind::Queued && a.kind == SeenKind::Granted {
                told = a;
            }
        }
        let t0 = Instant::now();
        let poll = rush
            .api
            .call(k, Method::GET, &rush.status_path(i), None, false)
            .await;
        out.hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((200, v)) = poll {
            let mut a = seen_from(200, &v, p as u8);
            a.at = rush.now_ms();
            if a.kind != first.kind
                && !(first.kind == SeenKind::Queued && a.kind == SeenKind::Granted)
            {
                unstable += 1;
            }
            if told.kind == SeenKind::Queued
                && matches!(a.kind, SeenKind::Granted | SeenKind::SoldOut)
            {
                told = a;
            }
        }
    }
    if rush.cancel_frac > 0.0 && cancels(i, rush.cancel_frac) {
        told = cancel_own(rush, k, i, told, &mut out.errors).await;
    }
    (told, unstable)
}

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
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

async fn run_one(args: &BenchArgs, mode: &str, conc: usize) -> anyhow::Result<RunResult> {
    let api = Api {
        clients: Arc::new(
            urls(&args.url)
                .iter()
                .map(|u| Client::new(u, Some(args.admin_token.clone()), conc))
                .collect(),
        ),
        timeout: (args.request_timeout_secs > 0.0)
            .then(|| Duration::from_secs_f64(args.request_timeout_secs)),
    };
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
    let metrics_before = api.scrape().await;
    let extra = Api {
        clients: Arc::new(
            args.metrics_url
                .iter()
                .map(|u| Client::new(u, None, 1))
                .collect(),
        ),
        timeout: api.timeout,
    };
    let extra_before = extra.scrape_all().await;
    let redis_before = redis_used_memory(&args.redis_url).await;
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
    let id = campaign["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id in {campaign}"))?;
    let names: Arc<Vec<String>> = Arc::new(pools.iter().map(|p| p.0.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let users = args.users;
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
    for k in 0..conc {
        let (rush, next, names, cum, progress) = (
            rush.clone(),
            next.clone(),
            names.clone(),
            cum.clone(),
            progress.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut::new();
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
                let (told, u) = one_user(&rush, k, i, (p, &names[p]), &mut out, t_start).await;
                out.unstable += u;
                out.seen.push((i as u32, told));
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
    // Cancelled stock must return to stock: new users claim each pool that
    // had cancellations until one is told sold_out (at most stock + 1
    // claims), so stranded stock shows as undersold.
    let cancelled = seen.iter().filter(|s| s.kind.cancelled()).count();
    let mut topup_users = 0;
    if cancelled > 0 {
        for (p, (name, stock, _)) in pools.iter().enumerate() {
            if !seen
                .iter()
                .any(|s| s.pool as usize == p && s.kind.cancelled())
            {
                continue;
            }
            for _ in 0..=*stock {
                let i = seen.len();
                let s = claim_with_retry(&rush, i, i, (p, name), &mut errors).await;
                seen.push(s);
                topup_users += 1;
                if !matches!(s.kind, SeenKind::Granted | SeenKind::Queued) {
                    break;
                }
            }
        }
    }
    // Drain: wait until no claim is queued and every granted answer is in
    // PostgreSQL (redis-lua flushes behind).
    let drain_start = Instant::now();
    let want_granted = seen.iter().filter(|s| s.kind == SeenKind::Granted).count() as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    let demand_total: i64 = pools
        .iter()
        .map(|p| p.1)
        .sum::<i64>()
        .min(seen.iter().filter(|s| s.kind.asked()).count() as i64);
    loop {
        let asked = Instant::now();
        let v = match api
            .call_any(
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
        if s.kind == SeenKind::Queued {
            let (st, v) = api
                .call_any(
                    i,
                    Method::GET,
                    &rush.status_path(i),
                    None,
                    false,
                    admin_secs,
                )
                .await?;
            let (pool, seq) = (s.pool, s.seq);
            *s = seen_from(st, &v, pool);
            s.at = rush.now_ms();
            if args.allow_redis_loss && (st == 404 || s.kind == SeenKind::Queued) {
                // The queue entry went with Redis' state: the user lost its
                // place (documented exposure), neither granted nor refused.
                exposure.queue_lost += 1;
                s.kind = SeenKind::QueueLost;
                continue;
            }
            if s.seq != seq {
                unstable += 1;
            }
        }
    }
    // Every final answer a user was given (and every own cancellation)
    // against the user's state now: a final answer is never replaced.
    let idx: HashMap<&str, u8> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();
    let to_check: Vec<usize> = (0..seen.len()).filter(|&i| checked(seen[i].kind)).collect();
    let lookups = futures::stream::iter(to_check.iter().copied().map(|i| {
        let (api, path, pool) = (&api, rush.status_path(i), seen[i].pool);
        let idx = &idx;
        async move {
            let now = match api
                .call_any(i, Method::GET, &path, None, false, admin_secs)
                .await
            {
                Ok((404, _)) => Seen {
                    kind: SeenKind::Missing,
                    pool,
                    ..Default::default()
                },
                Ok((s, v)) => {
                    let p = v["pool"]
                        .as_str()
                        .and_then(|n| idx.get(n).copied())
                        .unwrap_or(pool);
                    seen_from(s, &v, p)
                }
                Err(_) => Seen {
                    kind: SeenKind::Error,
                    pool,
                    ..Default::default()
                },
            };
            (i, now)
        }
    }))
    .buffer_unordered(conc.clamp(1, 32))
    .collect::<Vec<_>>()
    .await;
    let mut finals = vec![Seen::default(); seen.len()];
    for (i, now) in lookups {
        finals[i] = now;
    }
    let grants = api.all_grants(id, admin_secs).await?;
    // Redis lost its state: which redis-lua answers the write-behind may
    // have lost (received from the window before the loss to just after).
    let lag_ms = quantile_between(
        &buckets(&extra_before, "firstcome_flush_lag_seconds"),
        &buckets(&extra.scrape_all().await, "firstcome_flush_lag_seconds"),
        1.0,
    )
    // Beyond the last bucket (10 s): take 20 s.
    .map(|s| if s.is_finite() { s } else { 20.0 })
    .map(|s| (s * 2000.0) as u64)
    .unwrap_or(0);
    let window_ms = args.loss_window_ms.max(lag_ms);
    let lua_loss = (args.allow_redis_loss && mode == "redis-lua").then(|| {
        exposure.loss_window_ms = window_ms;
        match args.loss_at_file.as_deref().and_then(read_loss_at) {
            Some((from, to)) => (from - window_ms as i64 - t0_unix_ms, to + 250 - t0_unix_ms),
            None => (i64::MIN, i64::MAX),
        }
    });
    let check = Check {
        // Cancelled stock goes to later arrivals: arrival order no longer
        // decides alone.
        fairness: mode == "redis-queue" && cancelled == 0,
        lua_loss,
    };
    let (mut v, lua) = verify(&pools, &names, &seen, &finals, &grants, &check);
    exposure.lua_unflushed_lost = lua.lua_unflushed_lost;
    exposure.lua_changed = lua.lua_changed;
    v.unstable += unstable;
    if args.retry_secs > 0.0 {
        v.unanswered = seen.iter().filter(|s| s.kind == SeenKind::Error).count();
    }
    let metrics_after = api.scrape().await;
    let redis_after = redis_used_memory(&args.redis_url).await;
    let asked = seen
        .iter()
        .filter(|s| s.kind != SeenKind::None)
        .count()
        .max(1);
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
        errors: seen.iter().filter(|s| s.kind == SeenKind::Error).count(),
        cancelled,
        topup_users,
        final_checked: to_check.len(),
        error_counts: errors,
        exposure,
        violations: v,
        service,
    })
}

/// What the verifier is told about the run.
struct Check {
    /// redis-queue: every granted seq must be below every sold_out one.
    fairness: bool,
    /// redis-lua with Redis' state lost: answers received in this range
    /// (ms since the run started, inclusive) may have been lost with the
    /// write-behind, and are counted as exposure, not violations.
    lua_loss: Option<(i64, i64)>,
}

/// Checks every invariant from the grants export, the answers users were
/// given (`seen`) and their state after the drain (`finals`, `None` kinds
/// not checked); returns the violations and the redis-lua exposure.
fn verify(
    pools: &[(String, i64, f64)],
    names: &[String],
    seen: &[Seen],
    finals: &[Seen],
    grants: &[Value],
    check: &Check,
) -> (Violations, Exposure) {
    let mut v = Violations::default();
    let mut e = Exposure::default();
    let exposed = |s: &Seen| {
        check
            .lua_loss
            .is_some_and(|(from, to)| (from..=to).contains(&(s.at as i64)))
    };
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
    for (p, (_, stock, _)) in pools.iter().enumerate() {
        v.oversold += (per_pool[p] - stock).max(0) as usize;
        // Only users that got an answer count as asking; errors may have
        // been refused before any reservation. A user who cancelled asked
        // too: the bench then claims the pool again until sold_out, so the
        // returned stock is asked for.
        let asked = seen
            .iter()
            .filter(|s| s.pool as usize == p && s.kind.asked())
            .count() as i64;
        if asked >= *stock && per_pool[p] < *stock {
            v.undersold += (stock - per_pool[p]) as usize;
        }
    }
    for s in seen.iter().filter(|s| s.kind == SeenKind::Granted) {
        let code = String::from_utf8_lossy(&s.code)
            .trim_end_matches('\0')
            .to_string();
        if !codes.contains(&code) {
            if exposed(s) {
                e.lua_unflushed_lost += 1;
            } else {
                v.lost += 1;
            }
        }
    }
    for (s, now) in seen.iter().zip(finals) {
        if now.kind != SeenKind::None && changed(s, now) {
            if exposed(s) && matches!(s.kind, SeenKind::Granted | SeenKind::SoldOut) {
                e.lua_changed += 1;
            } else {
                v.changed += 1;
            }
        }
    }
    if check.fairness {
        for s in seen.iter().filter(|s| s.kind == SeenKind::SoldOut) {
            if s.seq >= 0 && s.seq < max_granted_seq[s.pool as usize] {
                v.unfair += 1;
            }
        }
    }
    (v, e)
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

    fn at(s: Seen, ms: u32) -> Seen {
        Seen { at: ms, ..s }
    }

    const PLAIN: Check = Check {
        fairness: true,
        lua_loss: None,
    };

    fn check(
        seen: &[Seen],
        finals: &[Seen],
        grants: &[Value],
        c: &Check,
    ) -> (Violations, Exposure) {
        let pools = vec![("main".to_string(), 2, 1.0)];
        let names = vec!["main".to_string()];
        verify(&pools, &names, seen, finals, grants, c)
    }

    /// One pool of 2: a clean run, then each kind of damage on its own.
    #[test]
    fn the_verifier_counts_each_violation() {
        let seen = [
            granted(0, 1, 1, "CODEA"),
            granted(0, 2, 2, "CODEB"),
            sold_out(0, 3),
        ];
        let good = [grant("a", 1, 1, "CODEA"), grant("b", 2, 2, "CODEB")];
        let v = |grants: &[Value], fairness: bool| {
            check(
                &seen,
                &seen,
                grants,
                &Check {
                    fairness,
                    lua_loss: None,
                },
            )
            .0
        };
        assert_eq!(v(&good, true).total(), 0);

        let r = v(
            &[good[0].clone(), good[1].clone(), grant("c", 3, 3, "CODEC")],
            true,
        );
        assert_eq!((r.oversold, r.double_booked), (1, 1), "{r:?}");

        let r = v(&[good[0].clone(), grant("a", 2, 2, "CODEB")], true);
        assert_eq!(r.duplicates, 1, "{r:?}");

        let r = v(&[good[0].clone()], true);
        assert_eq!((r.undersold, r.lost), (1, 1), "{r:?}");

        let r = v(&[good[0].clone(), grant("b", 1, 2, "CODEB")], true);
        assert_eq!(r.double_booked, 1, "{r:?}");

        // A sold_out answer before the last grant's arrival: unfair in
        // redis-queue (checked only where arrival order is promised).
        let late = [good[0].clone(), grant("b", 2, 4, "CODEB")];
        assert_eq!(v(&late, true).unfair, 1);
        assert_eq!(v(&late, false).unfair, 0);
    }

    /// A final answer (granted, sold_out) later contradicted by the user's
    /// status: 404, another status, slot, code or seq; an own cancellation
    /// must stay cancelled and is not a change.
    #[test]
    fn the_verifier_counts_changed_answers() {
        let seen = [
            granted(0, 1, 1, "CODEA"),
            granted(0, 2, 2, "CODEB"),
            sold_out(0, 3),
        ];
        let good = [grant("a", 1, 1, "CODEA"), grant("b", 2, 2, "CODEB")];
        let missing = Seen {
            kind: SeenKind::Missing,
            ..Default::default()
        };
        let changed = |finals: &[Seen]| check(&seen, finals, &good, &PLAIN).0.changed;
        assert_eq!(changed(&seen), 0);
        // Not checked (kind None): nothing to compare.
        assert_eq!(changed(&[]), 0);
        // sold_out forgotten (the FLUSHDB bug), or granted after all.
        assert_eq!(changed(&[seen[0], seen[1], missing]), 1);
        assert_eq!(changed(&[seen[0], seen[1], granted(0, 2, 3, "CODEC")]), 1);
        // sold_out with another seq.
        assert_eq!(changed(&[seen[0], seen[1], sold_out(0, 9)]), 1);
        // Granted: now 404, another slot, another code, another seq,
        // refused, or cancelled without asking.
        for now in [
            missing,
            granted(0, 2, 1, "CODEA"),
            granted(0, 1, 1, "CODEZ"),
            granted(0, 1, 7, "CODEA"),
            sold_out(0, 1),
            Seen {
                kind: SeenKind::Cancelled,
                ..seen[0]
            },
        ] {
            assert_eq!(changed(&[now, seen[1], seen[2]]), 1, "{now:?}");
        }
        // The time an answer was received is not part of it.
        assert_eq!(changed(&[at(seen[0], 99), seen[1], seen[2]]), 0);

        // Own cancellations: user b cancelled (slot 2 back in stock, the
        // bench's later user c took it); user a's DELETE got no answer.
        let cancelled = Seen {
            kind: SeenKind::Cancelled,
            ..seen[1]
        };
        let in_doubt = Seen {
            kind: SeenKind::CancelInDoubt,
            ..seen[0]
        };
        let told = [in_doubt, cancelled, granted(0, 2, 3, "CODEC")];
        let grants = [grant("a", 1, 1, "CODEA"), grant("c", 2, 3, "CODEC")];
        let r = check(&told, &[seen[0], cancelled, told[2]], &grants, &PLAIN).0;
        assert_eq!(r.total(), 0, "{r:?}");
        // In doubt, then found cancelled: fine too (and no grant is lost).
        let r = check(
            &told,
            &[cancelled, cancelled, told[2]],
            &grants[1..],
            &PLAIN,
        )
        .0;
        assert_eq!((r.changed, r.lost), (0, 0), "{r:?}");
        // A cancellation answered 200 but the user is granted again.
        let r = check(&told, &[seen[0], seen[1], told[2]], &grants, &PLAIN).0;
        assert_eq!(r.changed, 1, "{r:?}");
        // A cancelled user asked: 1 grant for a stock of 2 is undersold.
        let r = check(&told, &[], &grants[..1], &PLAIN).0;
        assert_eq!(r.undersold, 1, "{r:?}");
    }

    /// redis-lua after a Redis loss: answers received inside the
    /// write-behind window are exposure, older ones still violations.
    #[test]
    fn the_verifier_splits_lua_exposure_by_time() {
        let seen = [
            at(granted(0, 1, 1, "CODEA"), 100),
            at(granted(0, 2, 2, "CODEB"), 1_000),
            at(sold_out(0, 3), 120),
            at(sold_out(0, 4), 10),
        ];
        let missing = Seen {
            kind: SeenKind::Missing,
            ..Default::default()
        };
        // Both grants and both sold_out answers gone; a later user holds
        // slot 1 (the state was rebuilt).
        let finals = [missing; 4];
        let grants = [grant("e", 1, 9, "CODEE"), grant("f", 2, 10, "CODEF")];
        let window = Check {
            fairness: false,
            lua_loss: Some((50, 200)),
        };
        let (v, e) = check(&seen, &finals, &grants, &window);
        assert_eq!((e.lua_unflushed_lost, e.lua_changed), (1, 2), "{e:?}");
        assert_eq!((v.lost, v.changed), (1, 2), "{v:?}");
        // Loss time unknown: everything is exposure.
        let all = Check {
            fairness: false,
            lua_loss: Some((i64::MIN, i64::MAX)),
        };
        let (v, e) = check(&seen, &finals, &grants, &all);
        assert_eq!((e.lua_unflushed_lost, e.lua_changed), (2, 4), "{e:?}");
        assert_eq!(v.total(), 0, "{v:?}");
        // Not redis-lua: all violations.
        let (v, e) = check(&seen, &finals, &grants, &PLAIN);
        assert_eq!((v.lost, v.changed), (2, 4), "{v:?}");
        assert_eq!((e.lua_unflushed_lost, e.lua_changed), (0, 0));
    }

    #[test]
    fn cancels_draws_about_the_fraction() {
        let n = (0..10_000).filter(|&i| cancels(i, 0.2)).count();
        assert!((1_800..2_200).contains(&n), "{n}");
        assert_eq!((0..1000).filter(|&i| cancels(i, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&i| cancels(i, 1.0)).count(), 1000);
    }
}
