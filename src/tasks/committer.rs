//! Group commit for `gate`: winners from concurrent requests are inserted in
//! one transaction (one fsync for many grants). No fixed tick: while every
//! committing connection is busy, new winners queue up and go together in
//! the next batch; an optional linger trades a little latency for larger
//! batches. After the transaction, the batch's Redis answers go from
//! pending to granted in one `promote.lua` call per campaign rather than one
//! call per winner.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::storage::{
    pg::{self, NewGrant, PgError},
    redis::{AnswerSwap, CampaignKeys, RedisStore},
};

/// Why a commit gave no verdict on a row.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The batch's transaction failed; nothing of it was written.
    #[error(transparent)]
    Database(#[from] PgError),
    /// The committer has stopped (shutdown).
    #[error("committer stopped")]
    Closed,
}

/// The Redis answer to replace once a row is durable.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The campaign's keys.
    pub keys: Arc<CampaignKeys>,
    /// The answer expected in Redis (the pending reservation).
    pub from: String,
    /// The answer to store (granted).
    pub to: String,
}

/// One winner waiting for its commit.
struct Job {
    /// The row.
    grant: NewGrant,
    /// Applied in Redis if the row was inserted.
    promote: Option<Promotion>,
    /// `Ok(true)` inserted; `Ok(false)` refused by a unique index.
    reply: oneshot::Sender<Result<bool, CommitError>>,
}

/// Tuning of the group committer.
#[derive(Debug, Clone, Copy)]
pub struct CommitterConfig {
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// Transactions in flight at once (connections used).
    pub max_inflight: usize,
    /// How long a batch waits for company after its first row.
    pub linger: Duration,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_inflight: 4,
            linger: Duration::from_micros(500),
        }
    }
}

/// Hands winners to the committer.
#[derive(Clone)]
pub struct CommitterHandle {
    /// Queue of waiting winners.
    tx: mpsc::Sender<Job>,
}

impl CommitterHandle {
    /// Waits until `grant` is committed (or refused, or its batch failed).
    /// When inserted, `promote` is applied in Redis (best effort: the row is
    /// durable either way, and a later read settles a missed promotion)
    /// before the answer.
    pub async fn commit(
        &self,
        grant: NewGrant,
        promote: Option<Promotion>,
    ) -> Result<bool, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                grant,
                promote,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        rx.await.map_err(|_| CommitError::Closed)?
    }
}

/// Starts the committer; it stops when every handle is dropped.
pub fn spawn(db: PgPool, redis: RedisStore, cfg: CommitterConfig) -> CommitterHandle {
    let (tx, mut rx) = mpsc::channel::<Job>(cfg.max_batch * cfg.max_inflight * 4);
    let slots = Arc::new(Semaphore::new(cfg.max_inflight));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Waiting for a free connection is what forms the batch.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut batch = vec![first];
            if !cfg.linger.is_zero() {
                let deadline = tokio::time::Instant::now() + cfg.linger;
                while batch.len() < cfg.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(j)) => batch.push(j),
                        _ => break,
                    }
                }
            }
            while batch.len() < cfg.max_batch {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let (db, redis) = (db.clone(), redis.clone());
            tokio::spawn(async move {
                run_batch(&db, &redis, batch, permit).await;
            });
        }
    });
    CommitterHandle { tx }
}

/// Inserts the batch, gives its connection slot back, then promotes and
/// answers: a slow Redis must not hold a PostgreSQL slot.
async fn run_batch(
    db: &PgPool,
    redis: &RedisStore,
    batch: Vec<Job>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let rows: Vec<NewGrant> = batch.iter().map(|j| j.grant.clone()).collect();
    metrics::histogram!("firstcome_group_commit_rows").record(rows.len() as f64);
    let result = pg::insert_grants(db, &rows).await;
    drop(permit);
    match result {
        Ok(inserted) => {
            let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
            promote(redis, &batch, &inserted).await;
            for j in batch {
                let ok = inserted.contains(&j.grant.code);
                let _ = j.reply.send(Ok(ok));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = rows.len(), "group commit failed");
            for j in batch {
                let _ = j
                    .reply
                    .send(Err(CommitError::Database(PgError::Failed(e.to_string()))));
            }
        }
    }
}

/// One `promote.lua` call per campaign for the batch's inserted rows.
async fn promote(redis: &RedisStore, batch: &[Job], inserted: &std::collections::HashSet<String>) {
    let mut by_campaign: HashMap<i64, (Arc<CampaignKeys>, Vec<AnswerSwap>)> = HashMap::new();
    for j in batch {
        let Some(p) = &j.promote else { continue };
        if !inserted.contains(&j.grant.code) {
            continue;
        }
        by_campaign
            .entry(j.grant.campaign_id)
            .or_insert_with(|| (p.keys.clone(), Vec::new()))
            .1
            .push((j.grant.user_id.clone(), p.from.clone(), p.to.clone()));
    }
    for (keys, triples) in by_campaign.into_values() {
        if let Err(e) = redis.promote(&keys, &triples, false).await {
            // Durable already: a later read or the orphan sweeper settles it.
            tracing::warn!(error = %e, rows = triples.len(), "promote after commit failed");
        }
    }
}
