//! Positions and waits of queued claims (redis-queue): a queued answer's
//! `position` is its arrival number minus the last one the drainer
//! answered, and `eta_secs` that position over the measured drain rate.
//!
//! One Redis read (`HGET meta done`) per campaign per process per
//! [`PROGRESS_TTL`], whatever the number of users asking or streaming: a
//! million waiting users cost a campaign one read a second per process,
//! and each computes its position from its own stored arrival number.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    domain::{Campaign, CampaignId},
    modes::redis_common::RedisCommon,
};

/// How long a campaign's progress is reused before it is read again.
pub const PROGRESS_TTL: Duration = Duration::from_secs(1);

/// Weight of the newest measurement in the drain rate's moving average.
const RATE_WEIGHT: f64 = 0.3;

/// Where a campaign's queue stands, as last read.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Last arrival number answered.
    done: i64,
    /// When it was read.
    at: Instant,
    /// Answers per second, smoothed; 0 until measured.
    rate: f64,
}

/// The progress of every campaign this process answered queued claims of.
#[derive(Clone, Default)]
pub struct QueueProgress {
    /// Per campaign.
    seen: Arc<Mutex<HashMap<CampaignId, Seen>>>,
}

/// A queued claim's place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// Claims ahead, plus one (1 = next).
    pub position: i64,
    /// Seconds to wait at the measured rate; `None` until a rate is known.
    pub eta_secs: Option<i64>,
}

impl QueueProgress {
    /// The campaign's last answered arrival number and drain rate, read
    /// from Redis at most once per [`PROGRESS_TTL`] (concurrent askers use
    /// the previous value meanwhile). `None` when it could not be read.
    pub async fn get(&self, redis: &RedisCommon, c: &Campaign) -> Option<(i64, f64)> {
        let now = Instant::now();
        let prev = {
            let mut seen = self.seen.lock().expect("progress lock");
            match seen.get_mut(&c.id) {
                Some(s) if now.duration_since(s.at) < PROGRESS_TTL => {
                    return Some((s.done, s.rate))
                }
                Some(s) => {
                    // Claimed for this reader: the others keep the old value.
                    let old = *s;
                    s.at = now;
                    Some(old)
                }
                None => None,
            }
        };
        let done = match redis.redis.progress(&redis.keys(c)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, campaign = %c.id, "could not read the queue's progress");
                return prev.map(|p| (p.done, p.rate));
            }
        };
        let rate = match prev {
            Some(p) => {
                let dt = now.duration_since(p.at).as_secs_f64().max(1e-3);
                let inst = (done - p.done).max(0) as f64 / dt;
                if p.rate == 0.0 {
                    inst
                } else {
                    RATE_WEIGHT * inst + (1.0 - RATE_WEIGHT) * p.rate
                }
            }
            None => 0.0,
        };
        let s = Seen {
            done,
            at: now,
            rate,
        };
        self.seen.lock().expect("progress lock").insert(c.id, s);
        Some((done, rate))
    }

    /// The place of arrival number `seq` given the progress.
    pub fn place(seq: i64, done: i64, rate: f64) -> Place {
        let position = (seq - done).max(1);
        Place {
            position,
            eta_secs: (rate > 0.0).then(|| (position as f64 / rate).ceil() as i64),
        }
    }
}

/// Positions change by many at once; a stream is told when the position's
/// two leading digits change (4,312 -> 4,300 -> 4,200 ...; every change
/// below 100), so a long wait costs it about a hundred events per decade.
pub fn bucket(position: i64) -> i64 {
    let mut scale = 1;
    while position / scale >= 100 {
        scale *= 10;
    }
    position / scale * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_and_buckets() {
        assert_eq!(QueueProgress::place(10, 4, 0.0).position, 6);
        assert_eq!(QueueProgress::place(10, 4, 0.0).eta_secs, None);
        assert_eq!(QueueProgress::place(10, 4, 2.0).eta_secs, Some(3));
        // A claim the drainer passed but has not answered yet stays first.
        assert_eq!(QueueProgress::place(3, 9, 1.0).position, 1);
        assert_eq!(bucket(4_312), 4_300);
        assert_eq!(bucket(99), 99);
        assert_eq!(bucket(100), 100);
        assert_eq!(bucket(1_000_001), 1_000_000);
    }
}
