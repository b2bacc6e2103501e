//! The event streams' change feed: one watcher per campaign per process
//! reads the answers of every user with an open stream in one store call a
//! tick, and wakes a stream only when its user's answer changed (issue 19,
//! item 1). A stream then reads its claim once, the usual way
//! (`Admissions::status`), so the answers it sends keep the semantics of a
//! status read; the watcher only says *when* to read.
//!
//! The Redis modes are watched in Redis (`answers.lua`: the state's
//! generation and an HMGET of the answers hash), every [`SSE_POLL`]. The
//! PostgreSQL modes, a Redis campaign whose state is not loaded, and a
//! campaign with holds (a confirmation is written to PostgreSQL only) are
//! watched in PostgreSQL too (one query for all users), every
//! [`PG_WATCH_POLL`]. A watcher starts with its campaign's first stream and
//! stops at the first tick after its last stream ended.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use super::progress::{bucket, QueueProgress};
use crate::{
    domain::{shard::home_shard, Campaign, CampaignId, Mode, UserId},
    modes::{redis_common::RedisCommon, Admissions},
};

/// How often a campaign's watcher reads Redis: a change is seen within this.
pub const SSE_POLL: Duration = Duration::from_millis(250);

/// How often a campaign's watcher reads PostgreSQL (modes that decide
/// there, or a Redis campaign without a loaded state): slower, because
/// those reads share the pool with the commits.
pub const PG_WATCH_POLL: Duration = Duration::from_secs(1);

/// The watchers of one process; clones share them.
#[derive(Clone)]
pub struct Fanout {
    /// Where answers are read.
    admissions: Arc<Admissions>,
    /// Queue progress (redis-queue): a queued user's stream is woken when
    /// their position changes materially ([`bucket`]).
    progress: QueueProgress,
    /// The watched campaigns and their subscribers.
    watched: Arc<Mutex<HashMap<CampaignId, Subscribers>>>,
}

/// One signature per user of `users`, read from Redis in one call:
/// `Ok(None)` when Redis holds no whole state for the campaign (PostgreSQL
/// answers then), `Err` when Redis failed (the tick is skipped).
async fn read_redis(
    r: &RedisCommon,
    campaign: &Campaign,
    users: &[String],
) -> Result<Option<Vec<String>>, ()> {
    // Each answer lives on its user's home shard: one call per shard.
    let shards = r.shards(campaign);
    let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); shards.len()];
    for (i, u) in users.iter().enumerate() {
        let h = UserId::parse(u.clone())
            .map(|u| home_shard(&u, campaign.shards))
            .unwrap_or(0);
        by_shard[usize::from(h)].push(i);
    }
    let mut out = vec![String::new(); users.len()];
    for (keys, idx) in shards.iter().zip(by_shard) {
        if idx.is_empty() {
            continue;
        }
        let names: Vec<&str> = idx.iter().map(|&i| users[i].as_str()).collect();
        metrics::counter!("firstcome_stream_polls_total", "store" => "redis").increment(1);
        match r.redis.read_answers(keys, &names).await {
            Ok((Some(gen), answers)) => {
                for (&i, a) in idx.iter().zip(answers) {
                    out[i] = format!("{gen}|{}", a.unwrap_or_default());
                }
            }
            Ok((None, _)) => return Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, campaign = %campaign.id, "stream watcher: redis read failed");
                return Err(());
            }
        }
    }
    Ok(Some(out))
}

/// The arrival number of a queued answer without a slot yet, from its
/// watcher signature (`gen|Q|pidx|seq`).
fn queued_seq(sig: &str) -> Option<i64> {
    let mut f = sig.split('|').skip(1);
    match (f.next(), f.next(), f.next(), f.next()) {
        (Some("Q"), Some(_), Some(seq), None) => seq.parse().ok(),
        _ => None,
    }
}

/// The users of one campaign with an open stream here.
type Subscribers = HashMap<String, Sub>;

/// One user's streams: a change counter they all follow.
struct Sub {
    /// Bumped when the user's answer changed.
    tx: watch::Sender<u64>,
    /// Open streams of this user (at most the per-user cap).
    streams: usize,
}

/// A stream's place in the feed; leaves it when dropped.
pub struct Subscription {
    /// Whose feed.
    fanout: Fanout,
    /// Which campaign.
    campaign: CampaignId,
    /// Which user.
    user: String,
    /// Wakes when the user's answer changed.
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits until the user's answer changed (since the last call, or since
    /// subscribing).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender lives as long as this subscription: unreachable,
            // but never spin on it.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.fanout.watched.lock().expect("fanout lock");
        if let Some(subs) = watched.get_mut(&self.campaign) {
            if let Some(s) = subs.get_mut(&self.user) {
                s.streams -= 1;
                if s.streams == 0 {
                    subs.remove(&self.user);
                }
            }
        }
        // An empty campaign is removed by its watcher, under the same lock,
        // so a new subscriber never joins a watcher that is leaving.
    }
}

impl Fanout {
    /// No watchers yet.
    pub fn new(admissions: Arc<Admissions>, progress: QueueProgress) -> Self {
        Self {
            admissions,
            progress,
            watched: Arc::default(),
        }
    }

    /// Joins the feed of `user` in `campaign`, starting the campaign's
    /// watcher if it has none. Subscribe before reading the claim: a change
    /// after the read is then always announced (the watcher announces every
    /// user once when it first sees them).
    pub fn subscribe(&self, campaign: &Arc<Campaign>, user: &UserId) -> Subscription {
        let mut watched = self.watched.lock().expect("fanout lock");
        let subs = watched.entry(campaign.id).or_insert_with(|| {
            tokio::spawn(self.clone().watch(campaign.clone()));
            HashMap::new()
        });
        let sub = subs
            .entry(user.as_str().to_string())
            .or_insert_with(|| Sub {
                tx: watch::channel(0).0,
                streams: 0,
            });
        sub.streams += 1;
        Subscription {
            fanout: self.clone(),
            campaign: campaign.id,
            user: user.as_str().to_string(),
            rx: sub.tx.subscribe(),
        }
    }

    /// The watcher of `campaign`: until its last subscriber left.
    async fn watch(self, campaign: Arc<Campaign>) {
        metrics::gauge!("firstcome_stream_watchers").increment(1.0);
        let redis = self.admissions.redis_of(campaign.mode).cloned();
        // A hold's confirmation is written to PostgreSQL only: campaigns
        // with holds are also read there, whatever the mode.
        let holds = campaign.confirm_within_secs.is_some();
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut pg_sigs: HashMap<String, String> = HashMap::new();
        let mut pg_read_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(SSE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(users) = self.users_or_leave(campaign.id) else {
                break;
            };
            let redis_sigs = match &redis {
                Some(r) => match read_redis(r, &campaign, &users).await {
                    Ok(s) => s,
                    Err(()) => continue,
                },
                None => None,
            };
            let pg_due = pg_read_at.is_none_or(|at| at.elapsed() >= PG_WATCH_POLL);
            if redis_sigs.is_none() || holds {
                if pg_due {
                    pg_read_at = Some(tokio::time::Instant::now());
                    metrics::counter!("firstcome_stream_polls_total", "store" => "postgres")
                        .increment(1);
                    match self.db().answer_signatures(campaign.id, &users).await {
                        Ok(s) => pg_sigs = users.iter().cloned().zip(s).collect(),
                        Err(e) => {
                            tracing::debug!(error = %e, campaign = %campaign.id, "stream watcher: postgres read failed");
                            continue;
                        }
                    }
                } else if redis_sigs.is_none() {
                    // Nothing new to compare before PostgreSQL is due.
                    continue;
                }
            }
            // Queued answers (redis-queue) also change with the queue's
            // progress: one cached read per tick for the whole campaign.
            let done = match (&redis, campaign.mode) {
                (Some(r), Mode::RedisQueue) => self.progress.get(r, &campaign).await.map(|p| p.0),
                _ => None,
            };
            let watched = self.watched.lock().expect("fanout lock");
            let Some(subs) = watched.get(&campaign.id) else {
                continue;
            };
            for (i, user) in users.into_iter().enumerate() {
                let r = redis_sigs.as_ref().map_or("-", |s| s[i].as_str());
                let p = pg_sigs.get(&user).map_or("-", String::as_str);
                let place = done.and_then(|d| queued_seq(r).map(|s| bucket((s - d).max(1))));
                let sig = format!("{r}#{p}#{}", place.unwrap_or(0));
                if seen.get(&user) == Some(&sig) {
                    continue;
                }
                if let Some(s) = subs.get(&user) {
                    s.tx.send_modify(|n| *n = n.wrapping_add(1));
                }
                seen.insert(user, sig);
            }
            // Forget the users who left, so a returning one is announced.
            seen.retain(|u, _| subs.contains_key(u));
            pg_sigs.retain(|u, _| subs.contains_key(u));
        }
        metrics::gauge!("firstcome_stream_watchers").decrement(1.0);
    }

    /// The users with an open stream on `campaign`; `None` (and the
    /// campaign forgotten, under the lock subscribers take) when none is
    /// left.
    fn users_or_leave(&self, campaign: CampaignId) -> Option<Vec<String>> {
        let mut watched = self.watched.lock().expect("fanout lock");
        match watched.get(&campaign) {
            Some(subs) if !subs.is_empty() => Some(subs.keys().cloned().collect()),
            _ => {
                watched.remove(&campaign);
                None
            }
        }
    }

    /// The PostgreSQL pool the modes read.
    fn db(&self) -> crate::storage::Store {
        self.admissions.redis().db.clone()
    }
}
