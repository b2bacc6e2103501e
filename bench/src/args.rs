//! The command line of `firstcome-bench` (clap, with the same environment
//! fallbacks as the service) and what follows from it alone: the URLs to
//! load, the loopback-only guard, and the pools of each scenario. Nothing
//! here talks to the service or the stores.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

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

/// Options of `firstcome-bench`.
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
    /// Redis shards each campaign's pools are spread over (`"shards"`;
    /// gate and redis-lua only; worth it on a Redis Cluster).
    #[arg(long, default_value_t = 1)]
    pub shards: u16,
    /// redis-queue: a fair start. The campaign opens this many seconds
    /// after its creation, with its pre-queue open from creation; claims
    /// before the opening are pre-queued and admitted in the order drawn
    /// from the committed seed, which the verifier recomputes (0: off;
    /// the other modes run without it).
    #[arg(long, default_value_t = 0.0)]
    pub prequeue_secs: f64,
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
    /// The service's database (PostgreSQL, or MySQL: then it is measured
    /// as `--mysql-url` is), for the FOR UPDATE and insert limits.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/firstcome"
    )]
    pub database_url: String,
    /// A MySQL/MariaDB server to measure the same store limits at (the
    /// `FOR UPDATE` transaction and the batched grant insert, in scratch
    /// tables), beside PostgreSQL's: seed 004's figures are InnoDB's.
    #[arg(long, env = "MYSQL_URL")]
    pub mysql_url: Option<String>,
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

impl BenchArgs {
    /// PostgreSQL's URL for its limits: `--database-url`, unless that names
    /// MySQL (the service's store may be either).
    pub(crate) fn pg_url(&self) -> Option<&str> {
        (!firstcome::storage::store::is_mysql_url(&self.database_url))
            .then_some(self.database_url.as_str())
    }

    /// MariaDB's URL for its limits: `--mysql-url`, else `--database-url`
    /// when that names MySQL.
    pub(crate) fn my_url(&self) -> Option<&str> {
        self.mysql_url.as_deref().or_else(|| {
            firstcome::storage::store::is_mysql_url(&self.database_url)
                .then_some(self.database_url.as_str())
        })
    }

    /// Refuses what the bench must not run with: a target off this machine
    /// or a mode the service does not know.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for u in urls(&self.url) {
            ensure_loopback("--url", &u)?;
        }
        anyhow::ensure!(!urls(&self.url).is_empty(), "--url is empty");
        for u in &self.metrics_url {
            ensure_loopback("--metrics-url", u)?;
        }
        ensure_loopback("--redis-url", &self.redis_url)?;
        ensure_loopback("--database-url", &self.database_url)?;
        if let Some(u) = &self.mysql_url {
            ensure_loopback("--mysql-url", u)?;
        }
        for m in &self.modes {
            anyhow::ensure!(
                m.parse::<firstcome::domain::Mode>().is_ok(),
                "unknown mode {m:?}"
            );
        }
        Ok(())
    }
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
        "{what} {url} is not a loopback address: firstcome-bench only loads this machine"
    );
    Ok(())
}

/// The comma-separated URLs of `--url`.
pub(crate) fn urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Pools of the scenario: (name, stock, share of users).
pub(crate) fn pools(args: &BenchArgs) -> Vec<(String, i64, f64)> {
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

pub(crate) fn pool_of(i: usize, cum: &[f64]) -> usize {
    // Deterministic spread: user i falls at (i * golden ratio) mod 1.
    let x = (i as f64 * 0.618_033_988_749_894_9).fract();
    cum.iter().position(|c| x < *c).unwrap_or(cum.len() - 1)
}
