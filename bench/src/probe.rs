//! Reading the service's state around a rush: its /metrics (sample values,
//! histogram buckets, quantiles between two scrapes), Redis' memory, the
//! wait for the drain, the final answers of queued users, and every
//! checked user's state after the drain. Reads only: nothing here claims,
//! and nothing here judges an answer (that is `verify`'s).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use hyper::Method;
use serde::Serialize;

use crate::{
    api::Api,
    rush::Rush,
    verify::{checked, seen_from, Seen, SeenKind},
};

/// Shortest pause between two polls of a campaign while waiting for its
/// drain: the precision of `drain s`.
const DRAIN_POLL: Duration = Duration::from_millis(50);

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

/// Redis' `used_memory`, `None` when Redis does not answer.
pub(crate) async fn redis_used_memory(url: &str) -> Option<i64> {
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

/// The service's figures before a run, to subtract from those after it.
pub(crate) struct Before {
    /// /metrics of the first API process that answers.
    metrics: String,
    /// /metrics of every `--metrics-url` process.
    extra: String,
    /// Redis' `used_memory`.
    redis: Option<i64>,
}

impl Before {
    pub(crate) async fn take(api: &Api, extra: &Api, redis_url: &str) -> Self {
        let metrics = api.scrape().await;
        let extra = extra.scrape_all().await;
        let redis = redis_used_memory(redis_url).await;
        Self {
            metrics,
            extra,
            redis,
        }
    }
}

/// Waits until no claim of campaign `id` is queued and every granted answer
/// in `seen` is in PostgreSQL (redis-lua flushes behind), or `drain_secs`
/// passed; returns the seconds waited.
pub(crate) async fn wait_drain(
    api: &Api,
    id: i64,
    mode: &str,
    pools: &[(String, i64, f64)],
    seen: &[Seen],
    drain_secs: u64,
) -> f64 {
    let drain_start = Instant::now();
    let want_granted = seen.iter().filter(|s| s.kind == SeenKind::Granted).count() as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(drain_secs);
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
                // The admin's read skips the one-second cache: the drain
                // is timed on fresh counts.
                true,
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
    drain_start.elapsed().as_secs_f64()
}

/// What reading back the queued users found.
pub(crate) struct Requeued {
    /// With `--allow-redis-loss`: queued users whose entry went with
    /// Redis' state (exposure).
    pub(crate) queue_lost: usize,
    /// Final answers whose arrival number differs from the queued one.
    pub(crate) unstable: usize,
}

/// Replaces every `queued` answer in `seen` with the user's final answer,
/// read from the service after the drain.
pub(crate) async fn resolve_queued(
    api: &Api,
    rush: &Rush,
    seen: &mut [Seen],
    allow_redis_loss: bool,
    admin_secs: f64,
) -> anyhow::Result<Requeued> {
    let mut out = Requeued {
        queue_lost: 0,
        unstable: 0,
    };
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
            if allow_redis_loss && (st == 404 || s.kind == SeenKind::Queued) {
                // The queue entry went with Redis' state: the user lost its
                // place (documented exposure), neither granted nor refused.
                out.queue_lost += 1;
                s.kind = SeenKind::QueueLost;
                continue;
            }
            // A pre-queued claim has no number until the draw gives it one.
            if seq >= 0 && s.seq != seq {
                out.unstable += 1;
            }
        }
    }
    Ok(out)
}

/// Every final answer a user was given (and every own cancellation) read
/// back as the user's state now, `conc` lookups at a time (at most 32).
/// Returns the states by user (`None` kind: not checked) and how many
/// users were checked.
pub(crate) async fn final_states(
    api: &Api,
    rush: &Rush,
    names: &[String],
    seen: &[Seen],
    conc: usize,
    admin_secs: f64,
) -> (Vec<Seen>, usize) {
    let idx: HashMap<&str, u8> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();
    // Read back one by one into a table allocated once (40 B per user):
    // no list of the users to check, no list of pairs beside the table.
    let to_check = (0..seen.len()).filter(|&i| checked(seen[i].kind));
    let mut finals = vec![Seen::default(); seen.len()];
    let mut n = 0;
    let mut lookups = futures::stream::iter(to_check.map(|i| {
        let (path, pool) = (rush.status_path(i), seen[i].pool);
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
    .buffer_unordered(conc.clamp(1, 32));
    while let Some((i, now)) = lookups.next().await {
        finals[i] = now;
        n += 1;
    }
    (finals, n)
}

/// Twice the largest redis-lua flush lag between two scrapes of the
/// `--metrics-url` processes, ms (0 when none was recorded): how far back
/// a Redis state loss may reach into acknowledged answers.
pub(crate) fn flush_lag_window_ms(before: &Before, extra_after: &str) -> u64 {
    quantile_between(
        &buckets(&before.extra, "firstcome_flush_lag_seconds"),
        &buckets(extra_after, "firstcome_flush_lag_seconds"),
        1.0,
    )
    // Beyond the last bucket (10 s): take 20 s.
    .map(|s| if s.is_finite() { s } else { 20.0 })
    .map(|s| (s * 2000.0) as u64)
    .unwrap_or(0)
}

/// The service's figures over a run (`None` when its /metrics did not
/// answer afterwards); `asked` is the number of users who asked.
pub(crate) fn service_side(
    mode: &str,
    before: &Before,
    metrics_after: &str,
    redis_after: Option<i64>,
    asked: usize,
) -> Option<ServiceSide> {
    let metrics_before = &before.metrics;
    (!metrics_after.is_empty()).then(|| {
        let durable_metric = match mode {
            "redis-queue" => Some("firstcome_queue_to_durable_seconds"),
            "redis-lua" => Some("firstcome_flush_lag_seconds"),
            _ => None,
        };
        let rows_sum = metric_value(metrics_after, "firstcome_group_commit_rows_sum")
            .unwrap_or(0.0)
            - metric_value(metrics_before, "firstcome_group_commit_rows_sum").unwrap_or(0.0);
        let rows_n = metric_value(metrics_after, "firstcome_group_commit_rows_count")
            .unwrap_or(0.0)
            - metric_value(metrics_before, "firstcome_group_commit_rows_count").unwrap_or(0.0);
        let delta = redis_after
            .zip(before.redis)
            .map(|(a, b)| a - b)
            .unwrap_or(0);
        ServiceSide {
            peak_rss_bytes: metric_value(metrics_after, "firstcome_process_peak_resident_bytes")
                .unwrap_or(0.0) as u64,
            redis_memory_delta: delta,
            redis_bytes_per_claimant: delta as f64 / asked as f64,
            durable_p99_ms: durable_metric.and_then(|m| {
                quantile_between(
                    &buckets(metrics_before, m),
                    &buckets(metrics_after, m),
                    0.99,
                )
                .map(|s| s * 1000.0)
            }),
            group_commit_mean_rows: (mode == "gate" && rows_n > 0.0).then(|| rows_sum / rows_n),
        }
    })
}
