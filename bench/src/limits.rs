//! The machine's own limits, measured in the same run as the modes: the
//! claim Lua script driven straight at Redis (one request in flight per
//! connection, and pipelined; by this crate's client and by
//! `redis-benchmark` when it is installed), the `SELECT ... FOR UPDATE`
//! transaction driven straight at PostgreSQL, and the grant insert of the
//! durable write path. The modes' throughput is reported as a ratio to
//! these.
//!
//! Here: the [`Limit`] record, the timed loop every limit runs in, and
//! which limits a run measures. The Redis ones are in `limits/redis.rs`,
//! the PostgreSQL ones in `limits/pg.rs`, the MariaDB ones (with
//! `--mysql-url`) in `limits/mysql.rs`. Limits never go through the
//! service's HTTP API: that is what they are compared with.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{pools, BenchArgs};

mod mysql;
mod pg;
mod redis;

pub use self::{
    mysql::{mysql_for_update, mysql_for_update_name, mysql_insert_grants},
    pg::{pg_for_update, pg_for_update_name, pg_insert_grants},
    redis::{redis_benchmark, redis_lua, REDIS_BENCHMARK},
};

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

/// The limits of the durable write path (drain scenario): the grant
/// insert from 1, 2 and 4 connections (and at MariaDB with
/// `--mysql-url`). A limit that fails is only warned about.
pub async fn measure_drain(args: &BenchArgs, limits: &mut Vec<Limit>) {
    let chunk = firstcome::modes::redis_queue::drainer::INSERT_CHUNK;
    for conns in [1, 2, 4] {
        if let Some(url) = args.pg_url() {
            match pg_insert_grants(url, conns, chunk, args.limit_secs).await {
                Ok(l) => limits.push(l),
                Err(e) => eprintln!("postgres insert limit not measured: {e}"),
            }
        }
        if let Some(url) = args.my_url() {
            match mysql_insert_grants(url, conns, chunk, args.limit_secs).await {
                Ok(l) => limits.push(l),
                Err(e) => eprintln!("mariadb insert limit not measured: {e}"),
            }
        }
    }
}

/// The limits of the door at `conc` connections: claim.lua straight at
/// Redis (pipelined 1 and 16, and by redis-benchmark) and the lock
/// transaction straight at PostgreSQL. A limit that fails is only warned
/// about.
pub async fn measure_door(args: &BenchArgs, conc: usize, limits: &mut Vec<Limit>) {
    let stock = pools(args).iter().map(|p| p.1).sum::<i64>();
    for pipeline in [1, 16] {
        match redis_lua(&args.redis_url, conc, pipeline, stock, args.limit_secs).await {
            Ok(l) => limits.push(l),
            Err(e) => eprintln!("redis limit not measured: {e}"),
        }
    }
    match redis_benchmark(&args.redis_url, conc, stock, args.limit_secs).await {
        Ok(Some(l)) => limits.push(l),
        Ok(None) => eprintln!("redis-benchmark not installed: its limit is not measured"),
        Err(e) => eprintln!("redis-benchmark limit not measured: {e}"),
    }
    // The lock limit is driven from at most 64 connections (more
    // only queue on the row): measured once per such concurrency.
    let pg_conc = conc.min(64);
    let measured = |rows: i32| {
        limits
            .iter()
            .any(|l: &Limit| l.concurrency == pg_conc && l.name == pg_for_update_name(rows))
    };
    for rows in [1, 6]
        .into_iter()
        .filter(|r| !measured(*r))
        .collect::<Vec<_>>()
    {
        if let Some(url) = args.pg_url() {
            match pg_for_update(url, pg_conc, rows, args.limit_secs).await {
                Ok(l) => limits.push(l),
                Err(e) => eprintln!("postgres limit not measured: {e}"),
            }
        }
        if let Some(url) = args.my_url() {
            match mysql_for_update(url, pg_conc, rows, args.limit_secs).await {
                Ok(l) => limits.push(l),
                Err(e) => eprintln!("mariadb limit not measured: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::drive;

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
}
