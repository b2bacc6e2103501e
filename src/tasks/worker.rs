//! The worker role: keeps each live campaign's mode task running (the mode
//! says which: gate's orphan sweeper, redis-lua's flusher, redis-queue's
//! drainer), keeps open-ended campaigns' keys alive and checks that each
//! state was loaded by the Redis server holding it. Several workers may
//! run; a lease in Redis makes sure one of them at a time works a stream.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use crate::{
    domain::{Campaign, CampaignId, Mode},
    modes::{redis_common::RedisCommon, Admissions, TaskEnv},
    storage::redis::stream::StreamConfig,
};

/// How often the worker looks for new campaigns.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_millis(250);

/// How often the worker pushes open-ended campaigns' key expiry forward
/// (each push happens only once less than half the lifetime is left).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// How often the worker asks Redis whether each campaign's state was loaded
/// by the server now holding it (a restart or failover may have lost its
/// last writes; see lua/same_server.lua). One short script per campaign.
pub const SERVER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true, then waits for its tasks to stop.
pub async fn run(
    admissions: Arc<Admissions>,
    cfg: StreamConfig,
    wakeup: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = format!(
        "w-{}-{}",
        std::process::id(),
        crate::domain::generate_code()
    );
    let common = admissions.redis().clone();
    let db = common.db.clone();
    let mut tasks: HashMap<CampaignId, JoinHandle<()>> = HashMap::new();
    // The live campaigns this worker has loaded (their keys do not change).
    let mut known: HashMap<CampaignId, Campaign> = HashMap::new();
    let mut next_refresh = tokio::time::Instant::now();
    // The server check runs on its own, over the campaigns known so far:
    // whether PostgreSQL answers, hangs or fails, a state the server did
    // not load must stop deciding within the interval.
    let (known_tx, known_rx) = watch::channel(Vec::new());
    let checks = tokio::spawn(server_checks(common.clone(), known_rx, shutdown.clone()));
    while !*shutdown.borrow() {
        tasks.retain(|_, h| !h.is_finished());
        match db.live_campaigns(&Mode::redis_modes()).await {
            Ok(ids) => {
                if tokio::time::Instant::now() >= next_refresh {
                    next_refresh = tokio::time::Instant::now() + REFRESH_INTERVAL;
                    refresh_lifetimes(&common, &ids).await;
                }
                let before = known.len();
                known.retain(|id, _| ids.contains(id));
                let mut changed = known.len() != before;
                for id in &ids {
                    if !known.contains_key(id) {
                        if let Ok(Some(c)) = db.load_campaign(*id).await {
                            known.insert(*id, c);
                            changed = true;
                        }
                    }
                }
                if changed {
                    known_tx.send_replace(known.values().cloned().collect());
                }
                let ids: Vec<CampaignId> = known.keys().copied().collect();
                for id in &ids {
                    if tasks.contains_key(id) {
                        continue;
                    }
                    // An operator may have moved the window since it was
                    // loaded (a task that ended by the old window starts
                    // again with the new one).
                    if let Ok(Some(c)) = db.load_campaign(*id).await {
                        known.insert(*id, c);
                    }
                    let Some(c) = known.get(id) else { continue };
                    let env = TaskEnv {
                        worker: me.clone(),
                        stream: cfg,
                        shutdown: shutdown.clone(),
                    };
                    if let Some(h) = admissions.background(c.clone(), env) {
                        tasks.insert(*id, h);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "worker: cannot list campaigns"),
        }
        // A campaign created in this process wakes the worker at once, so
        // its first grants are not held up by the discovery interval.
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = wakeup.notified() => {}
            _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
        }
    }
    let _ = checks.await;
    for (_, h) in tasks {
        let _ = h.await;
    }
}

/// Every [`SERVER_CHECK_INTERVAL`], checks the campaigns `known` holds
/// (the worker's list) with [`check_servers`], until shutdown.
async fn server_checks(
    common: RedisCommon,
    known: watch::Receiver<Vec<Campaign>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let campaigns = known.borrow().clone();
        check_servers(&common, campaigns.iter()).await;
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(SERVER_CHECK_INTERVAL) => {}
        }
    }
}

/// Drops every state the Redis server now holding it did not load (all of
/// them first: one short script each), then rebuilds those in the
/// background rather than waiting for the next claim; one campaign's slow
/// rebuild must not delay another's drop.
async fn check_servers<'a>(common: &RedisCommon, campaigns: impl Iterator<Item = &'a Campaign>) {
    let mut dropped = Vec::new();
    let mut healthy = Vec::new();
    for c in campaigns {
        match common.forget_if_server_changed(c).await {
            Ok(true) => dropped.push(c.clone()),
            Ok(false) if c.shards > 1 || c.prequeue_secs.is_some() => healthy.push(c),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, campaign = %c.id, "could not check the redis server")
            }
        }
    }
    // After every check: a sharded campaign's units given back but not
    // published, and its transfers left half done (RedisCommon::heal_shards).
    // A fair start's pre-queue closes at opening even if no claim comes
    // (freeze.lua, idempotent), so the drainer admits it in drawn order.
    let now = chrono::Utc::now();
    for c in healthy {
        if c.shards > 1 {
            if let Err(e) = common.heal_shards(c).await {
                tracing::debug!(error = %e, campaign = %c.id, "could not look after the shards");
            }
        }
        if c.prequeue_secs.is_some() && c.opens_at.is_some_and(|o| o <= now) {
            if let Err(e) = common.redis.freeze(&common.shards(c)[0]).await {
                tracing::debug!(error = %e, campaign = %c.id, "could not close the pre-queue");
            }
        }
    }
    for c in dropped {
        let common = common.clone();
        tokio::spawn(async move {
            if let Err(e) = common.rebuild(&c).await {
                tracing::info!(error = %e, campaign = %c.id, "rebuild after a server change deferred to the next claim");
            }
        });
    }
}

/// Keeps open-ended campaigns' keys alive: they live as long as the
/// campaign exists.
async fn refresh_lifetimes(common: &RedisCommon, ids: &[CampaignId]) {
    for id in ids {
        let Ok(Some(c)) = common.db.load_campaign(*id).await else {
            continue;
        };
        if c.closes_at.is_some() {
            continue;
        }
        match common.refresh_lifetime(&c).await {
            Ok(true) => {
                tracing::info!(campaign = %c.id, "pushed an open-ended campaign's key expiry forward")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, campaign = %c.id, "could not refresh key expiry"),
        }
    }
}
