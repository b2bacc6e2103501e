//! The machine's own limits, measured in the same run as the modes: the
//! claim Lua script driven straight at Redis (one request in flight per
//! connection, and pipelined; by this crate's client and by
//! `redis-benchmark` when it is installed), the `SELECT ... FOR UPDATE`
//! transaction driven straight at PostgreSQL, and the grant insert of the
//! durable write path. The modes' throughput is reported as a ratio to
//! these.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

use crate::{
    domain::CampaignId,
    storage::{
        pg::{self, NewGrant},
        redis::{CampaignKeys, InitState, PoolState, RedisStore},
    },
};

/// Name of the `redis-benchmark` limit (the report's ratio column finds it).
pub const REDIS_BENCHMARK: &str = "claim.lua by redis-benchmark, unpipelined";

/// One limit measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    /// What was driven.
    pub name: String,
    /// Connections.
    pub concurrency: usize,
    /// Calls (or transactions) per second.
    pub per_sec: f64,
    /// Median latency of one call (or pipeline), ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// The loop of every limit this crate drives: `conc` workers call
/// `op(worker, i)` back to back (i = 0, 1, ... per worker) until `secs`
/// have passed. Each call is timed and counts the units it returns (calls
/// of a pipeline, rows of a batch); a failed call ends its worker.
async fn drive<F, Fut>(conc: usize, secs: f64, op: F) -> anyhow::Result<Driven>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..conc)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut h, mut units) = (hist(), 0u64);
                let mut i = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let Ok(n) = op(t, i).await else { break };
                    h.saturating_record(t0.elapsed().as_micros() as u64);
                    units += n;
                    i += 1;
                }
                (h, units)
            })
        })
        .collect();
    let (mut h, mut units) = (hist(), 0);
    for w in workers {
        let (wh, n) = w.await?;
        h.add(wh)?;
        units += n;
    }
    Ok(Driven {
        units,
        secs: start.elapsed().as_secs_f64(),
        latency: h,
    })
}

/// What [`drive`] measured.
struct Driven {
    /// Units done by the calls that succeeded.
    units: u64,
    /// Wall time, first call to last worker's end.
    secs: f64,
    /// Latency of each successful call, microseconds.
    latency: Histogram<u64>,
}

impl Driven {
    /// The limit this measures.
    fn limit(&self, name: String, concurrency: usize) -> Limit {
        Limit {
            name,
            concurrency,
            per_sec: self.units as f64 / self.secs,
            p50_ms: self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: self.latency.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}

/// Loads a one-pool campaign state of `stock` under a throwaway prefix.
async fn scratch_state(
    redis_url: &str,
    stock: i64,
) -> anyhow::Result<(RedisStore, std::sync::Arc<CampaignKeys>, String)> {
    let prefix = format!("fcbench-{}", crate::domain::generate_code().to_lowercase());
    let store = RedisStore::connect(redis_url, &prefix, Duration::from_secs(5)).await?;
    let k = store.keys(CampaignId(1), 1);
    let st = InitState {
        expire_at_ms: (chrono::Utc::now() + chrono::Duration::minutes(30)).timestamp_millis(),
        opens_ms: None,
        closes_ms: None,
        mode: "gate".into(),
        seq: 0,
        queued: 0,
        gen: 0,
        pools: vec![PoolState {
            left: stock,
            ..Default::default()
        }],
        answers: Vec::new(),
    };
    store.init_state(&k, &st).await?;
    Ok((store, k, prefix))
}

async fn drop_prefix(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut c).await?;
    }
    Ok(())
}

/// Drives `claim.lua` (gate reservation path) at Redis for `secs` seconds
/// from `conc` connections, `pipeline` calls per round trip, with a fresh
/// user each call against a pool of `stock` (so most calls sell out, as in
/// a rush).
pub async fn redis_lua(
    redis_url: &str,
    conc: usize,
    pipeline: usize,
    stock: i64,
    secs: f64,
) -> anyhow::Result<Limit> {
    let (store, k, prefix) = scratch_state(redis_url, stock).await?;
    let client = redis::Client::open(redis_url)?;
    let sha = store.scripts().claim.script.get_hash().to_string();
    // Make sure the script is cached before timing.
    let mut c0 = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(store.scripts().claim.src)
        .query_async(&mut c0)
        .await?;
    // One connection per worker: one request (or pipeline) in flight on
    // each, like redis-benchmark -c conc -P pipeline.
    let mut conns = Vec::with_capacity(conc);
    for _ in 0..conc {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let conns = Arc::new(conns);
    let d = drive(conc, secs, move |t, i| {
        let (mut conn, k, sha) = (conns[t].clone(), k.clone(), sha.clone());
        async move {
            let p = &k.pools[0];
            let mut pipe = redis::pipe();
            for j in 0..pipeline {
                pipe.cmd("EVALSHA")
                    .arg(&sha)
                    .arg(9)
                    .arg(&k.meta)
                    .arg(&k.ans)
                    .arg(&k.seq)
                    .arg(&p.left)
                    .arg(&p.hw)
                    .arg(&p.free)
                    .arg(&k.outbox)
                    .arg(&k.queued)
                    .arg(&k.pending)
                    .arg(format!("lim-{t}-{i}-{j}"))
                    .arg("0")
                    .arg("LIMITCODE0000000")
                    .arg("gate")
                    .arg("10000000");
            }
            let _: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            Ok(pipeline as u64)
        }
    })
    .await?;
    drop_prefix(redis_url, &prefix).await?;
    Ok(d.limit(
        format!("claim.lua straight at Redis, pipeline {pipeline}"),
        conc,
    ))
}

/// Name of the lock limit over `rows` hot rows.
pub fn pg_for_update_name(rows: i32) -> String {
    format!("SELECT ... FOR UPDATE tx straight at PostgreSQL, {rows} row(s)")
}

/// Drives the db-lock transaction (`SELECT ... FOR UPDATE` on a pool row,
/// `UPDATE`, `COMMIT`) straight at PostgreSQL over `rows` hot rows.
pub async fn pg_for_update(
    database_url: &str,
    conc: usize,
    rows: i32,
    secs: f64,
) -> anyhow::Result<Limit> {
    let table = format!(
        "fc_bench_limit_{}",
        crate::domain::generate_code().to_lowercase()
    );
    let db = PgPoolOptions::new()
        .max_connections(conc as u32)
        .connect(database_url)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, stock int NOT NULL, issued int NOT NULL DEFAULT 0)"
    ))
    .execute(&db)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {table} (id, stock) SELECT g, 1000000000 FROM generate_series(1, $1) g"
    ))
    .bind(rows)
    .execute(&db)
    .await?;
    let select: Arc<str> =
        format!("SELECT stock, issued FROM {table} WHERE id = $1 FOR UPDATE").into();
    let update: Arc<str> = format!("UPDATE {table} SET issued = issued + 1 WHERE id = $1").into();
    let pool = db.clone();
    let d = drive(conc, secs, move |t, i| {
        let (db, select, update) = (pool.clone(), select.clone(), update.clone());
        // Workers start on different rows and walk them in turn.
        let row = ((t as u64 + i) % rows as u64) as i32 + 1;
        async move {
            let mut tx = db.begin().await?;
            sqlx::query(&select).bind(row).fetch_one(&mut *tx).await?;
            sqlx::query(&update).bind(row).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(1)
        }
    })
    .await?;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&db)
        .await?;
    Ok(d.limit(pg_for_update_name(rows), conc))
}

/// `redis-benchmark -c conc -P 1` running `EVALSHA claim.lua` with a fresh
/// user per call (the issue's yardstick); `Ok(None)` when redis-benchmark
/// is not installed. Sized to take about `secs` at 40,000 calls/s.
pub async fn redis_benchmark(
    redis_url: &str,
    conc: usize,
    stock: i64,
    secs: f64,
) -> anyhow::Result<Option<Limit>> {
    let info = redis::Client::open(redis_url)?
        .get_connection_info()
        .clone();
    let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        anyhow::bail!("redis-benchmark needs a TCP redis url, not {redis_url}");
    };
    let (store, k, prefix) = scratch_state(redis_url, stock).await?;
    let sha = store.scripts().claim.script.get_hash().to_string();
    let mut c0 = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(store.scripts().claim.src)
        .query_async(&mut c0)
        .await?;
    let p = &k.pools[0];
    let n = ((40_000.0 * secs) as u64).max(10_000);
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port.to_string()])
        .args([
            "-q",
            "-c",
            &conc.to_string(),
            "-P",
            "1",
            "-n",
            &n.to_string(),
        ])
        .args(["-r", "1000000000", "EVALSHA", &sha, "9"])
        .args([
            &k.meta, &k.ans, &k.seq, &p.left, &p.hw, &p.free, &k.outbox, &k.queued, &k.pending,
        ])
        .args([
            "u:__rand_int__",
            "0",
            "LIMITCODE0000000",
            "gate",
            "10000000",
        ])
        .output()
        .await;
    drop_prefix(redis_url, &prefix).await?;
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark failed: {:?}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (per_sec, p50_ms) = parse_redis_benchmark(&text)
        .ok_or_else(|| anyhow::anyhow!("redis-benchmark printed no rate: {text}"))?;
    Ok(Some(Limit {
        name: REDIS_BENCHMARK.into(),
        concurrency: conc,
        per_sec,
        p50_ms: p50_ms.unwrap_or(f64::NAN),
        p99_ms: f64::NAN,
    }))
}

/// The rate and p50 (ms) of `redis-benchmark -q` output: its last line
/// reads `EVALSHA ...: 37860.11 requests per second, p50=1.215 msec`, after
/// progress lines separated by carriage returns.
fn parse_redis_benchmark(text: &str) -> Option<(f64, Option<f64>)> {
    let text = text.replace('\r', "\n");
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let num_after = |tag: &str| -> Option<f64> {
        let rest = &line[line.rfind(tag)? + tag.len()..];
        rest.trim_start()
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    };
    let rate = line.split("requests per second").next()?;
    let rate = rate.rsplit(':').next()?.trim().parse().ok()?;
    Some((rate, num_after("p50=")))
}

/// Inserts grant rows with the service's own statement
/// ([`pg::insert_grants`]) into a scratch campaign for `secs`, `chunk`
/// rows per transaction from `conns` connections: the ceiling of the
/// durable write path (drain) on this machine. Reported per row.
pub async fn pg_insert_grants(
    database_url: &str,
    conns: usize,
    chunk: usize,
    secs: f64,
) -> anyhow::Result<Limit> {
    let db = PgPoolOptions::new()
        .max_connections(conns as u32)
        .connect(database_url)
        .await?;
    // A db-* mode, so that no worker drains or reconciles it should the
    // bench die before deleting it.
    let campaign: i64 = sqlx::query_scalar(
        "INSERT INTO campaigns (name, mode) VALUES ('bench-limit-insert', 'db-atomic') RETURNING id",
    )
    .fetch_one(&db)
    .await?;
    let pool: i64 = sqlx::query_scalar(
        "INSERT INTO pools (campaign_id, idx, name, stock) VALUES ($1, 0, 'main', 2000000000) RETURNING id",
    )
    .bind(campaign)
    .fetch_one(&db)
    .await?;
    let next = Arc::new(AtomicU64::new(1));
    let pool_db = db.clone();
    let d = drive(conns, secs, move |_, _| {
        let db = pool_db.clone();
        let first = next.fetch_add(chunk as u64, Ordering::Relaxed);
        let batch: Vec<NewGrant> = (first..first + chunk as u64)
            .map(|i| NewGrant {
                campaign_id: campaign,
                pool_id: pool,
                user_id: format!("limit-{i}"),
                slot: i as i32,
                code: crate::domain::generate_code(),
                seq: i as i64,
            })
            .collect();
        async move {
            pg::insert_grants(&db, &batch).await?;
            Ok(chunk as u64)
        }
    })
    .await?;
    sqlx::query("DELETE FROM campaigns WHERE id = $1")
        .bind(campaign)
        .execute(&db)
        .await?;
    Ok(d.limit(
        format!("grant INSERT straight at PostgreSQL, {chunk} rows per tx (per s = rows)"),
        conns,
    ))
}

#[cfg(test)]
mod tests {
    use super::{drive, parse_redis_benchmark};

    #[tokio::test]
    async fn drive_counts_units_and_a_failure_ends_only_its_worker() {
        use std::sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        };
        // Worker 0 fails on its third call; worker 1 waits for that, then
        // makes three more calls and fails on its fifth. The deadline is
        // far: the failures, not time, end the run.
        let failed = Arc::new(AtomicBool::new(false));
        let d = drive(2, 60.0, move |t, i| {
            let failed = failed.clone();
            async move {
                match (t, i) {
                    (0, 2) => {
                        failed.store(true, Ordering::SeqCst);
                        anyhow::bail!("worker 0 gone")
                    }
                    (1, 0) => {
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(10);
                        while !failed.load(Ordering::SeqCst) {
                            anyhow::ensure!(
                                std::time::Instant::now() < deadline,
                                "worker 0 never failed"
                            );
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                    (1, 4) => anyhow::bail!("worker 1 gone"),
                    _ => {}
                }
                Ok(3)
            }
        })
        .await
        .unwrap();
        // Worker 0: calls 0 and 1; worker 1: calls 0 to 3.
        assert_eq!(d.latency.len(), 6);
        assert_eq!(d.units, 18);
        assert!(d.secs < 60.0);
    }

    #[test]
    fn redis_benchmark_output_is_parsed() {
        let out = "EVALSHA abc 9 k1: rps=0.0 (overall: nan) avg_msec=nan\rEVALSHA abc 9 k1 u:__rand_int__ 0 C gate: 37860.11 requests per second, p50=1.215 msec\n";
        assert_eq!(parse_redis_benchmark(out), Some((37860.11, Some(1.215))));
        // Older versions print no percentile.
        assert_eq!(
            parse_redis_benchmark("EVALSHA x: 1200.50 requests per second\n"),
            Some((1200.5, None))
        );
        assert_eq!(parse_redis_benchmark("Could not connect\n"), None);
    }
}
