//! Group commit for `gate` (and the door refusals of `redis-queue`): the
//! decisions of concurrent requests, winners and refusals, are inserted in
//! one transaction (one fsync for many). No fixed tick: while every
//! committing connection is busy, new decisions queue up and go together in
//! the next batch; an optional linger trades a little latency for larger
//! batches. The transaction is fenced by the Redis state's generation
//! (`pg::insert_fenced`). After it, the batch's answers are told, then its
//! Redis answers go from pending to final in one `promote.lua` call per
//! campaign rather than one call per decision.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    domain::CampaignId,
    storage::{
        pg::{self, NewGrant, NewRejection},
        redis::{AnswerSwap, CampaignKeys, RedisStore},
        Store, StoreError,
    },
};

/// Why a commit gave no verdict on a row.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The batch's transaction failed; it may or may not have committed
    /// (a connection lost after COMMIT): PostgreSQL must be asked.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// The committer has stopped (shutdown).
    #[error("committer stopped")]
    Closed,
}

/// What a commit did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (and its promotion applied in Redis, best effort).
    Stored,
    /// Refused by PostgreSQL: a unique index (the user already has a grant,
    /// or a refusal; the slot is held; the code was voided), or a slot
    /// outside the stock.
    Refused,
    /// The campaign's Redis state was rebuilt since the decision: nothing
    /// decided in the old state may land.
    Stale,
}

/// A row to make durable.
#[derive(Debug, Clone)]
pub enum Row {
    /// A winner.
    Grant(NewGrant),
    /// A `sold_out` refusal.
    Refusal(NewRejection),
}

impl Row {
    fn campaign_id(&self) -> i64 {
        match self {
            Row::Grant(g) => g.campaign_id,
            Row::Refusal(r) => r.campaign_id,
        }
    }

    fn user_id(&self) -> &str {
        match self {
            Row::Grant(g) => &g.user_id,
            Row::Refusal(r) => &r.user_id,
        }
    }
}

/// The Redis answer to replace once a row is durable.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The campaign's keys.
    pub keys: Arc<CampaignKeys>,
    /// The answer expected in Redis (the pending reservation or refusal).
    pub from: String,
    /// The answer to store (granted or rejected).
    pub to: String,
}

/// One decision waiting for its commit.
struct Job {
    /// The row.
    row: Row,
    /// Generation of the Redis state that decided it.
    gen: i64,
    /// Applied in Redis if the row was stored.
    promote: Option<Promotion>,
    /// The verdict.
    reply: oneshot::Sender<Result<Verdict, CommitError>>,
}

/// Tuning of the group committer.
#[derive(Debug, Clone, Copy)]
pub struct CommitterConfig {
    /// Most rows in one transaction.
    pub max_batch: usize,
    /// Transactions in flight at once (connections used).
    pub max_inflight: usize,
    /// How long a batch waits for company after its first row, and only
    /// while another batch is in flight (0: never).
    pub linger: Duration,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_inflight: 4,
            linger: Duration::ZERO,
        }
    }
}

/// Hands decisions to the committer.
#[derive(Clone)]
pub struct CommitterHandle {
    /// Queue of waiting decisions.
    tx: mpsc::Sender<Job>,
}

impl CommitterHandle {
    /// Waits until `row`, decided in a state of generation `gen`, is
    /// committed (or refused, or found stale, or its batch failed). When
    /// stored, `promote` is applied in Redis right after the answer (best
    /// effort: the row is durable either way, and whoever reads the answer
    /// still pending settles it from PostgreSQL).
    pub async fn commit(
        &self,
        row: Row,
        gen: i64,
        promote: Option<Promotion>,
    ) -> Result<Verdict, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                row,
                gen,
                promote,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        rx.await.map_err(|_| CommitError::Closed)?
    }
}

/// Starts the committer; it stops when every handle is dropped.
pub fn spawn(db: Store, redis: RedisStore, cfg: CommitterConfig) -> CommitterHandle {
    let (tx, mut rx) = mpsc::channel::<Job>(cfg.max_batch * cfg.max_inflight * 4);
    let slots = Arc::new(Semaphore::new(cfg.max_inflight));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Waiting for a free connection is what forms the batch.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut batch = vec![first];
            // Linger only behind another batch in flight: under light load
            // a decision is committed at once (the timer's granularity made
            // a 500 µs linger cost 1-2 ms), under load the batch forms while
            // the others commit and the linger only tops it up.
            let others_in_flight = slots.available_permits() + 1 < cfg.max_inflight;
            if !cfg.linger.is_zero() && others_in_flight {
                let deadline = tokio::time::Instant::now() + cfg.linger;
                while batch.len() < cfg.max_batch {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(j)) => batch.push(j),
                        _ => break,
                    }
                }
            }
            // Whatever is ready now goes too: requests already running
            // hand their decisions in before this task runs again.
            tokio::task::yield_now().await;
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

/// Inserts the batch (fenced by generation), gives its connection slot
/// back, then promotes and answers: a slow Redis must not hold a
/// PostgreSQL slot.
async fn run_batch(
    db: &Store,
    redis: &RedisStore,
    batch: Vec<Job>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut grants = Vec::new();
    let mut grant_gens = Vec::new();
    let mut refusals = Vec::new();
    let mut refusal_gens = Vec::new();
    for j in &batch {
        match &j.row {
            Row::Grant(g) => {
                grants.push(g.clone());
                grant_gens.push(j.gen);
            }
            Row::Refusal(r) => {
                refusals.push(r.clone());
                refusal_gens.push(j.gen);
            }
        }
    }
    metrics::histogram!("firstcome_group_commit_rows").record(batch.len() as f64);
    let result = db
        .insert_fenced(&grants, &grant_gens, &refusals, &refusal_gens)
        .await;
    let result = match result {
        Ok(f) => stale_generations(db, &batch, &f).await.map(|g| (f, g)),
        Err(e) => Err(e),
    };
    drop(permit);
    match result {
        Ok((fenced, current)) => {
            let stored: Vec<bool> = batch
                .iter()
                .map(|j| match &j.row {
                    Row::Grant(g) => fenced.codes.contains(&g.code),
                    Row::Refusal(r) => fenced
                        .refusals
                        .contains(&(r.campaign_id, r.user_id.clone())),
                })
                .collect();
            // Answered before the promotion: the rows are durable, and an
            // answer still pending in Redis is settled from PostgreSQL by
            // whoever reads it next (as when the promotion fails), so the
            // promotion's round trip is not in the answer's wait.
            let mut promotions = Vec::new();
            for (j, stored) in batch.into_iter().zip(stored) {
                let v = if stored {
                    Verdict::Stored
                } else if current.get(&j.row.campaign_id()) != Some(&j.gen) {
                    Verdict::Stale
                } else {
                    Verdict::Refused
                };
                if stored {
                    if let Some(p) = j.promote {
                        promotions.push((j.row.user_id().to_string(), p));
                    }
                }
                let _ = j.reply.send(Ok(v));
            }
            promote(redis, promotions).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = batch.len(), "group commit failed");
            for j in batch {
                let _ = j.reply.send(Err(CommitError::Database(StoreError::Failed(
                    e.to_string(),
                ))));
            }
        }
    }
}

/// The current generation of each campaign that has a row the batch did not
/// store (generations only grow: equal now means equal at the insert).
async fn stale_generations(
    db: &Store,
    batch: &[Job],
    f: &pg::Fenced,
) -> Result<HashMap<i64, i64>, StoreError> {
    let mut out = HashMap::new();
    for j in batch {
        let cid = j.row.campaign_id();
        let stored = match &j.row {
            Row::Grant(g) => f.codes.contains(&g.code),
            Row::Refusal(r) => f.refusals.contains(&(cid, r.user_id.clone())),
        };
        if !stored && !out.contains_key(&cid) {
            out.insert(cid, db.generation(CampaignId(cid)).await?);
        }
    }
    Ok(out)
}

/// One `promote.lua` call per campaign shard for the batch's stored rows
/// (each answer lives on its user's home shard: the promotion's keys).
async fn promote(redis: &RedisStore, promotions: Vec<(String, Promotion)>) {
    // Keyed by the shard's cached key names (one `Arc` per shard): no
    // string built per decision.
    let mut by_shard: HashMap<usize, (Arc<CampaignKeys>, Vec<AnswerSwap>)> = HashMap::new();
    for (user, p) in promotions {
        by_shard
            .entry(Arc::as_ptr(&p.keys) as usize)
            .or_insert_with(|| (p.keys.clone(), Vec::new()))
            .1
            .push((user, p.from, p.to));
    }
    for (keys, triples) in by_shard.into_values() {
        if let Err(e) = redis.promote(&keys, &triples, false).await {
            // Durable already: a later read or the orphan sweeper settles it.
            tracing::warn!(error = %e, rows = triples.len(), "promote after commit failed");
        }
    }
}
