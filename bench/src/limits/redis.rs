//! The Redis limits: `claim.lua` driven straight at Redis by this crate's
//! client (pipelined or not) and by `redis-benchmark`, on a throwaway key
//! prefix that is dropped afterwards. No PostgreSQL here.

use std::{sync::Arc, time::Duration};

use firstcome::{
    domain::CampaignId,
    storage::redis::{CampaignKeys, InitState, PoolState, RedisStore, ScriptMode},
};

use super::{drive, Limit};

/// Name of the `redis-benchmark` limit (the report's ratio column finds it).
pub const REDIS_BENCHMARK: &str = "claim.lua by redis-benchmark, unpipelined";

/// Loads a one-pool campaign state of `stock` under a throwaway prefix.
async fn scratch_state(
    redis_url: &str,
    stock: i64,
) -> anyhow::Result<(RedisStore, std::sync::Arc<CampaignKeys>, String)> {
    let prefix = format!(
        "fcbench-{}",
        firstcome::domain::generate_code().to_lowercase()
    );
    let store = RedisStore::connect(redis_url, &prefix, Duration::from_secs(5)).await?;
    let k = store.keys(CampaignId(1), 1, 1)[0].clone();
    let st = InitState {
        expire_at_ms: (chrono::Utc::now() + chrono::Duration::minutes(30)).timestamp_millis(),
        opens_ms: None,
        closes_ms: None,
        prequeue_ms: None,
        mode: "gate".into(),
        seq: 0,
        queued: 0,
        gen: 0,
        paused: false,
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
                    .arg(ScriptMode::Reserve.as_arg())
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
            ScriptMode::Reserve.as_arg(),
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

#[cfg(test)]
mod tests {
    use super::parse_redis_benchmark;

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
