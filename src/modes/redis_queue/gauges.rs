//! The queue's gauges for dashboards and alerts: how many claims wait
//! (`firstcome_queue_length`) and how long the oldest has waited
//! (`firstcome_queue_oldest_wait_seconds`), per campaign, sampled by every
//! worker once a second (one pipelined read of the campaign's keys).

use std::time::Duration;

use tokio::sync::watch;

use crate::{domain::Campaign, modes::redis_common::RedisCommon};

/// How often the gauges are read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples `c`'s queue until `shutdown`, or until the caller aborts it;
/// the caller zeroes the gauges with [`clear`] when the campaign ends.
pub(super) async fn sample(common: RedisCommon, c: Campaign, mut shutdown: watch::Receiver<bool>) {
    let id = c.id.0.to_string();
    while !*shutdown.borrow() {
        match read(&common, &c).await {
            Ok((queued, oldest_s)) => {
                metrics::gauge!("firstcome_queue_length", "campaign" => id.clone())
                    .set(queued as f64);
                metrics::gauge!("firstcome_queue_oldest_wait_seconds", "campaign" => id.clone())
                    .set(oldest_s);
            }
            Err(e) => tracing::debug!(campaign = %c.id, error = %e, "queue gauges: read failed"),
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Zeroes the campaign's gauges (its queue task ended).
pub(super) fn clear(c: &Campaign) {
    let id = c.id.0.to_string();
    metrics::gauge!("firstcome_queue_length", "campaign" => id.clone()).set(0.0);
    metrics::gauge!("firstcome_queue_oldest_wait_seconds", "campaign" => id).set(0.0);
}

/// Claims waiting (the `queued` counter: given an arrival number, not yet
/// decided by the drainer) and the age in seconds of the queue's oldest
/// entry (its stream id is its arrival time on Redis' clock, read with
/// Redis' `TIME`; entries leave the stream once decided durably).
async fn read(common: &RedisCommon, c: &Campaign) -> anyhow::Result<(i64, f64)> {
    let k = common.keys(c);
    let (queued, oldest, time): (Option<i64>, redis::streams::StreamRangeReply, Vec<String>) =
        common
            .redis
            .run(|mut conn| async move {
                redis::pipe()
                    .get(&k.queued)
                    .cmd("XRANGE")
                    .arg(&k.queue)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("TIME")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
    let now_ms = match time.as_slice() {
        [s, us] => s.parse::<i64>()? * 1000 + us.parse::<i64>()? / 1000,
        _ => anyhow::bail!("TIME answered {time:?}"),
    };
    let oldest_s = oldest
        .ids
        .first()
        .and_then(|e| e.id.split('-').next()?.parse::<i64>().ok())
        .map_or(0.0, |ms| (now_ms - ms).max(0) as f64 / 1000.0);
    Ok((queued.unwrap_or(0).max(0), oldest_s))
}
