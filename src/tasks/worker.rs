//! The worker role: keeps one flusher (redis-lua) or drainer (redis-queue)
//! running per live campaign. Several workers may run; a lease in Redis
//! makes sure one of them at a time works a given campaign.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use crate::modes::{gate::orphans, redis_lua::flusher::Flusher, redis_queue::drainer::Drainer};
use crate::storage::redis::stream;
use crate::{
    domain::{Campaign, CampaignId, Mode},
    modes::redis_common::RedisCommon,
    storage::pg,
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
    common: RedisCommon,
    db: PgPool,
    cfg: stream::StreamConfig,
    wakeup: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = format!(
        "w-{}-{}",
        std::process::id(),
        crate::domain::generate_code()
    );
    let mut tasks: HashMap<CampaignId, JoinHandle<()>> = HashMap::new();
    // The live campaigns this worker has loaded (their keys do not change).
    let mut known: HashMap<CampaignId, Campaign> = HashMap::new();
    let mut next_refresh = tokio::time::Instant::now();
    let mut next_server_check = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        tasks.retain(|_, h| !h.is_finished());
        match pg::live_campaigns(&db, &[Mode::RedisLua, Mode::RedisQueue, Mode::Gate]).await {
            Ok(ids) => {
                if tokio::time::Instant::now() >= next_refresh {
                    next_refresh = tokio::time::Instant::now() + REFRESH_INTERVAL;
                    refresh_lifetimes(&common, &ids).await;
                }
                known.retain(|id, _| ids.contains(id));
                for id in &ids {
                    if !known.contains_key(id) {
                        if let Ok(Some(c)) = pg::load_campaign(&db, *id).await {
                            known.insert(*id, c);
                        }
                    }
                }
                if tokio::time::Instant::now() >= next_server_check {
                    next_server_check = tokio::time::Instant::now() + SERVER_CHECK_INTERVAL;
                    check_servers(&common, known.values()).await;
                }
                for id in ids {
                    if tasks.contains_key(&id) {
                        continue;
                    }
                    let Some(c) = known.get(&id).cloned() else {
                        continue;
                    };
                    let keys = common.keys(&c);
                    let rx = shutdown.clone();
                    let store = common.redis.clone();
                    let h = match c.mode {
                        Mode::RedisLua => tokio::spawn(stream::run(
                            store,
                            keys.outbox.clone(),
                            keys.lease.clone(),
                            me.clone(),
                            cfg,
                            Flusher {
                                db: db.clone(),
                                campaign: c,
                                common: common.clone(),
                            },
                            rx,
                        )),
                        Mode::RedisQueue => tokio::spawn(stream::run(
                            store,
                            keys.queue.clone(),
                            keys.lease.clone(),
                            me.clone(),
                            cfg,
                            Drainer {
                                common: common.clone(),
                                db: db.clone(),
                                campaign: c,
                                attempts: HashMap::new(),
                            },
                            rx,
                        )),
                        Mode::Gate => tokio::spawn(orphans::run(common.clone(), c, rx)),
                        _ => continue,
                    };
                    tasks.insert(id, h);
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
    for (_, h) in tasks {
        let _ = h.await;
    }
}

/// Drops every state the Redis server now holding it did not load, and
/// rebuilds it at once rather than on the next claim.
async fn check_servers<'a>(common: &RedisCommon, campaigns: impl Iterator<Item = &'a Campaign>) {
    for c in campaigns {
        match common.forget_if_server_changed(c).await {
            Ok(true) => {
                if let Err(e) = common.rebuild(c).await {
                    tracing::info!(error = %e, campaign = %c.id, "rebuild after a server change deferred to the next claim");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, campaign = %c.id, "could not check the redis server")
            }
        }
    }
}

/// Keeps open-ended campaigns' keys alive: they live as long as the
/// campaign exists.
async fn refresh_lifetimes(common: &RedisCommon, ids: &[CampaignId]) {
    for id in ids {
        let Ok(Some(c)) = pg::load_campaign(&common.db, *id).await else {
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
