//! What the three Redis modes share: answers as Redis stores them, the claim
//! script call, rebuilding a campaign's state from PostgreSQL, and the
//! durable cancellation used by `gate` and `redis-queue`.

mod answer;
mod cancel;
mod claim;
pub mod committer;
pub mod settings;
mod settle;
mod shards;
mod state;

pub use answer::{pool_index, Stored, Truth};

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use super::error::{AdmissionError, CancelOutcome};
use crate::{
    domain::{shard::home_shard, Campaign, ClaimOutcome, RejectReason, UserId},
    storage::{
        redis::{
            stream::{self, Entry, Handler, TaskEnv},
            CampaignKeys, RedisStore, ScriptMode,
        },
        Store,
    },
};
use tokio::task::JoinHandle;

/// How a compensating release leaves the pool (`release.lua`).
#[derive(Debug, Clone, Default)]
pub struct Release<'a> {
    /// The user's answer afterwards; `None` deletes it (the user may claim
    /// again).
    pub replacement: Option<&'a Stored>,
    /// The reservation's slot to free, when PostgreSQL holds it for no one.
    pub free_slot: Option<i32>,
    /// Whether the reservation's unit of stock goes back to the door.
    pub give_back: bool,
    /// A slot PostgreSQL says is held (by the replacement), to mark taken.
    pub mark_taken: Option<i32>,
    /// Change of the queued counter.
    pub queued_delta: i64,
}

impl<'a> Release<'a> {
    /// A reservation that never became durable: its stock and slot go back.
    pub fn back(slot: Option<i32>) -> Self {
        Release {
            free_slot: slot,
            give_back: true,
            ..Default::default()
        }
    }

    /// The user's durable answer `to` (read from PostgreSQL) replaces the
    /// reservation of `slot`: the reservation goes back, and a slot `to`
    /// holds is marked taken (it may not be the reserved one).
    pub fn replaced_by(to: &'a Stored, slot: Option<i32>) -> Self {
        Release {
            replacement: Some(to),
            mark_taken: match to {
                Stored::Granted { slot, .. } => Some(*slot),
                _ => None,
            },
            ..Release::back(slot)
        }
    }
}

/// What a campaign's stream consumer does with each batch (the flusher,
/// the drainer). Idempotent, as [`Handler::handle`].
pub trait Batches: Send + Sync + 'static {
    /// Processes entries in stream order; `Err` leaves them pending.
    fn handle(&mut self, entries: &[Entry]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A campaign's stream consumer: `batches` handles the entries; the
/// campaign's key lifetime says when it is finished, and a lost stream or
/// state is recovered here, the same for every mode.
struct Consumer<B> {
    /// Redis and PostgreSQL.
    common: RedisCommon,
    /// The campaign.
    campaign: Campaign,
    /// The shard whose stream it reads.
    keys: Arc<CampaignKeys>,
    /// Whose stream: the outbox (write-behind) or the queue (enqueue).
    mode: ScriptMode,
    /// What handles the entries.
    batches: B,
}

impl<B: Batches> Handler for Consumer<B> {
    async fn handle(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        self.batches.handle(entries).await
    }

    fn finished(&self) -> bool {
        RedisCommon::keys_expired(&self.campaign, Utc::now())
    }

    /// The stream may have been created again without its group (a write
    /// racing a partial expiry) while the state lives: give it one; then
    /// rebuild the state from PostgreSQL if it is lost.
    async fn recover(&mut self) -> anyhow::Result<()> {
        let (c, common) = (&self.campaign, &self.common);
        common.ensure_group(self.mode.stream(&self.keys)).await?;
        Ok(common.rebuild(c).await?)
    }
}

/// The answer to a claim outside the campaign's window (never remembered).
pub fn window_rejection(user: &UserId, reason: RejectReason) -> ClaimOutcome {
    ClaimOutcome::Rejected {
        user_id: user.clone(),
        reason,
        seq: None,
    }
}

/// What the claim script decided; the number is the generation of the
/// state that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptReply {
    /// A fresh decision.
    New(Stored, i64),
    /// The user had already claimed: the first answer.
    Dup(Stored, i64),
    /// Outside the window.
    Window(RejectReason),
}

/// Shared state of the Redis modes.
#[derive(Clone)]
pub struct RedisCommon {
    /// Source of truth.
    pub db: Store,
    /// Redis.
    pub redis: RedisStore,
    /// How long a repeated claim waits for a pending reservation to settle.
    pub pending_wait: Duration,
    /// Age (Redis clock, ms) after which a pending reservation whose request
    /// never answered is settled from PostgreSQL.
    pub orphan_after_ms: i64,
    /// Rebuilds in progress in this process: claims that find a state
    /// missing together wait for one rebuild instead of polling.
    pub rebuilds: crate::flights::Flights<crate::domain::CampaignId>,
}

/// Spread of key expiry across campaigns, so that campaigns closing at the
/// same time do not all expire at once (seed 004's stampede).
pub const EXPIRY_JITTER_SECS: i64 = 600;

/// A reservation older than this (by Redis' clock) whose request never
/// answered is settled from PostgreSQL: granted if its row is there, else
/// voided and released ([`Store::void_reservation`] makes sure its commit can
/// no longer land, so this bound is about liveness, not safety). Above the
/// usual longest commit: the pool's acquire timeout (3 s) plus the
/// statement timeout ([`crate::storage::error::STATEMENT_TIMEOUT_MS`]).
pub const ORPHAN_PENDING_MS: i64 = 20_000;

impl RedisCommon {
    /// Shared state over the connections.
    pub fn new(db: Store, redis: RedisStore, pending_wait: Duration) -> Self {
        Self {
            db,
            redis,
            pending_wait,
            orphan_after_ms: ORPHAN_PENDING_MS,
            rebuilds: Default::default(),
        }
    }

    /// Settles orphaned reservations after `d` instead.
    pub fn with_orphan_after(mut self, d: Duration) -> Self {
        self.orphan_after_ms = d.as_millis() as i64;
        self
    }

    /// The key names of the campaign's first shard, home of the
    /// campaign-wide keys (rebuild lock, queue, dead letters); the only
    /// shard of an unsharded campaign.
    pub fn keys(&self, c: &Campaign) -> Arc<CampaignKeys> {
        self.shards(c)[0].clone()
    }

    /// The key names of every shard of the campaign (index = shard).
    pub fn shards(&self, c: &Campaign) -> Arc<Vec<Arc<CampaignKeys>>> {
        self.redis.keys(c.id, c.pools.len(), c.shards)
    }

    /// The key names of the shard holding `user`'s answer.
    pub fn keys_for(&self, c: &Campaign, user: &UserId) -> Arc<CampaignKeys> {
        self.shards(c)[usize::from(home_shard(user, c.shards))].clone()
    }

    /// When the campaign's keys expire, jitter included (ms since epoch).
    /// Deterministic per closed campaign, so a rebuild sets the same
    /// instant; an open-ended campaign's slides from `now`.
    pub fn expire_at_ms(c: &Campaign, now: DateTime<Utc>) -> i64 {
        let jitter = (c.id.0.wrapping_mul(7919)).rem_euclid(EXPIRY_JITTER_SECS);
        let end = c.keys_expire_at().unwrap_or_else(|| {
            now + chrono::Duration::seconds(crate::domain::OPEN_ENDED_KEY_LIFETIME_SECS)
        });
        (end + chrono::Duration::seconds(jitter)).timestamp_millis()
    }

    /// The campaign's stream consumers, one per shard: each a `batches()`
    /// (the flusher, the drainer) over that shard's stream of `mode`'s
    /// claims feed, under that shard's lease; when they end and how they
    /// recover is the campaign's ([`Consumer`]). The handle ends when all
    /// of them have.
    pub fn spawn_consumer<B: Batches>(
        &self,
        c: &Campaign,
        mode: ScriptMode,
        env: TaskEnv,
        batches: impl Fn() -> B,
    ) -> JoinHandle<()> {
        let handles: Vec<JoinHandle<()>> = self
            .shards(c)
            .iter()
            .map(|k| {
                let consumer = Consumer {
                    common: self.clone(),
                    campaign: c.clone(),
                    keys: k.clone(),
                    mode,
                    batches: batches(),
                };
                stream::spawn(&self.redis, mode.stream(k), &k.lease, env.clone(), consumer)
            })
            .collect();
        tokio::spawn(async move {
            for h in handles {
                let _ = h.await;
            }
        })
    }

    /// Whether the campaign's keys are past their life: Redis no longer
    /// serves it and answers come from PostgreSQL. Never for an open-ended
    /// campaign.
    pub fn keys_expired(c: &Campaign, now: DateTime<Utc>) -> bool {
        c.closes_at.is_some() && Self::expire_at_ms(c, now) <= now.timestamp_millis()
    }

    /// Redis' clock (ms since epoch) on the node holding the campaign:
    /// reservations carry it, so their age is measured on it too (an app
    /// host's clock may be skewed, and so may another cluster node's).
    pub async fn redis_now_ms(&self, c: &Campaign) -> Result<i64, AdmissionError> {
        Ok(self.redis.now_ms(&self.keys(c)).await?)
    }

    /// Redis' clock on the node holding `user`'s home shard, the clock its
    /// reservation was stamped with.
    pub async fn redis_now_ms_for(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<i64, AdmissionError> {
        Ok(self.redis.now_ms(&self.keys_for(c, user)).await?)
    }
}
