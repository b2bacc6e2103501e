//! `firstcome bench`: a closed-loop load generator and invariant verifier.
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
    /// Service URL (loopback).
    #[arg(long, env = "FIRSTCOME_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
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
    /// Distinct users.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Stock of the coupon pool.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Concurrent connections; a comma-separated list runs each.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub concurrency: Vec<usize>,
    /// Repeats per user in retry-storm (each a claim and a status poll).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Longest a rush may run, in seconds; users not reached are skipped.
    #[arg(long, default_value_t = 120)]
    pub max_secs: u64,
    /// Longest to wait for queued/outboxed grants to become durable.
    #[arg(long, default_value_t = 120)]
    pub drain_secs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    }
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
    /// Claim requests answered (repeats and polls included).
    pub requests: u64,
    /// Requests per second over the rush.
    pub rps: f64,
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
    /// Grants in PostgreSQL after draining.
    pub grants: usize,
    /// Seconds from the end of the rush until every grant was durable.
    pub drain_secs: f64,
    /// Answers that were errors (5xx, transport).
    pub errors: usize,
    /// Invariant violations.
    pub violations: Violations,
}

/// Runs the benchmark and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &conc in &args.concurrency {
        for mode in &args.modes {
            let r = run_one(&args, mode, conc).await?;
            eprintln!(
                "{:<12} c={:<5} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  grants {:>7}  violations {}",
                r.mode,
                r.concurrency,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.grants,
                r.violations.total()
            );
            results.push(r);
        }
    }
    print_table(&results);
    if let Some(p) = &args.json {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(
            p,
            serde_json::to_vec_pretty(&json!({ "results": results }))?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    let bad: usize = results.iter().map(|r| r.violations.total()).sum();
    anyhow::ensure!(bad == 0, "{bad} invariant violations");
    Ok(())
}

fn print_table(results: &[RunResult]) {
    let base: HashMap<usize, f64> = results
        .iter()
        .filter(|r| r.mode == "db-lock")
        .map(|r| (r.concurrency, r.rps))
        .collect();
    println!(
        "| mode | conc | requests | req/s | x db-lock | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | grants | drain s | errors | violations |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let ratio = base
            .get(&r.concurrency)
            .filter(|b| **b > 0.0)
            .map(|b| format!("{:.1}", r.rps / b))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} | {} |",
            r.mode,
            r.concurrency,
            r.requests,
            r.rps,
            ratio,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.grants,
            r.drain_secs,
            r.errors,
            r.violations.total()
        );
    }
    println!("Little's law check: concurrency ~= req/s x mean latency (p50 used as a proxy):");
    for r in results {
        println!(
            "  {:<12} c={:<5} req/s x p50 = {:.1}",
            r.mode,
            r.concurrency,
            r.rps * r.p50_ms / 1000.0
        );
    }
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

async fn run_one(args: &BenchArgs, mode: &str, conc: usize) -> anyhow::Result<RunResult> {
    let client = Client::new(&args.url, Some(args.admin_token.clone()), conc);
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
    let campaign = client.create_campaign(&spec).await?;
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
    let start = Instant::now();
    let mut handles = Vec::with_capacity(conc);
    for _ in 0..conc {
        let (client, next, names, cum) = (client.clone(), next.clone(), names.clone(), cum.clone());
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut seen: Vec<(u32, Seen)> = Vec::new();
            let mut unstable = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users || Instant::now() > deadline {
                    break;
                }
                let p = pool_of(i, &cum);
                let body = json!({"user_id": format!("u{i}"), "pool": names[p]});
                let path = format!("/v1/campaigns/{id}/claims");
                let t0 = Instant::now();
                let r = client.call(Method::POST, &path, Some(&body), false).await;
                hist.saturating_record(t0.elapsed().as_micros() as u64);
                let first = match &r {
                    Ok((s, v)) => seen_from(*s, v, p as u8),
                    Err(_) => Seen {
                        kind: 6,
                        pool: p as u8,
                        ..Default::default()
                    },
                };
                for _ in 0..repeats {
                    let t0 = Instant::now();
                    let again = client.call(Method::POST, &path, Some(&body), false).await;
                    hist.saturating_record(t0.elapsed().as_micros() as u64);
                    if let Ok((s, v)) = again {
                        let a = seen_from(s, &v, p as u8);
                        // Queued may legitimately have become granted.
                        if a != first
                            && !(first.kind == 2 && matches!(a.kind, 1 | 2))
                            && a.kind != 6
                        {
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
                seen.push((i as u32, first));
            }
            (hist, seen, unstable)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut seen = vec![Seen::default(); users];
    let mut unstable = 0;
    for h in handles {
        let (hh, s, u) = h.await?;
        hist.add(hh)?;
        for (i, a) in s {
            seen[i as usize] = a;
        }
        unstable += u;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Drain: wait until no claim is queued and every granted answer is in
    // PostgreSQL (redis-lua flushes behind).
    let drain_start = Instant::now();
    let want_granted = seen.iter().filter(|s| s.kind == 1).count() as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    loop {
        let (_, v) = client
            .call(Method::GET, &format!("/v1/campaigns/{id}"), None, false)
            .await?;
        let queued = v["queued"].as_i64().unwrap_or(0);
        let granted: i64 = v["pools"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p["granted"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if (queued == 0 && granted >= want_granted) || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    // Final answers of queued users.
    for (i, s) in seen.iter_mut().enumerate() {
        if s.kind == 2 {
            let (st, v) = client
                .call(
                    Method::GET,
                    &format!("/v1/campaigns/{id}/claims/u{i}"),
                    None,
                    false,
                )
                .await?;
            let pool = s.pool;
            let seq = s.seq;
            *s = seen_from(st, &v, pool);
            if v["status"] == "queued" {
                s.kind = 2;
            }
            if s.seq != seq {
                unstable += 1;
            }
        }
    }
    let grants = client.all_grants(id).await?;
    let mut v = verify(&pools, &names, &seen, &grants, mode == "redis-queue");
    v.unstable += unstable;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(RunResult {
        mode: mode.to_string(),
        scenario: args.scenario,
        concurrency: conc,
        requests: hist.len(),
        rps: hist.len() as f64 / elapsed,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        grants: grants.len(),
        drain_secs,
        errors: seen.iter().filter(|s| s.kind == 6).count(),
        violations: v,
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
