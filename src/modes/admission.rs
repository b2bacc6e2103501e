//! The [`Admission`] trait every mode implements, and what modes are built
//! from ([`Deps`]) and run their background tasks with ([`TaskEnv`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    error::{AdmissionError, CancelOutcome},
    redis_common::{committer::CommitterHandle, RedisCommon},
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    storage::redis::{stream::StreamConfig, ScriptMode},
};

/// What every mode is built from: the shared connections and settings.
#[derive(Clone)]
pub struct Deps {
    /// PostgreSQL, the source of truth.
    pub db: PgPool,
    /// The Redis side shared by the Redis modes (Redis, settling, rebuilds).
    pub common: RedisCommon,
    /// The group committer (gate's decisions, redis-queue's refusals).
    pub committer: CommitterHandle,
}

/// What a mode's background task for one campaign runs with.
#[derive(Clone)]
pub struct TaskEnv {
    /// This worker's name (lease holder).
    pub worker: String,
    /// How stream consumers read (batch, lease, block).
    pub stream: StreamConfig,
    /// Turns true when the task must stop.
    pub shutdown: watch::Receiver<bool>,
}

/// One admission mode.
pub trait Admission: Send + Sync + Sized {
    /// How the claim script decides, for a mode that decides in Redis;
    /// `None` for one that decides in PostgreSQL.
    const SCRIPT: Option<ScriptMode> = None;

    /// Builds the mode over the shared connections.
    fn build(deps: &Deps) -> Self;

    /// Admits or refuses `user` for `pool`. A repeated claim returns the
    /// first answer. The window has been checked by the caller.
    fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> impl Future<Output = Result<ClaimOutcome, AdmissionError>> + Send;

    /// The user's current answer; `None` if the user never claimed.
    fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<ClaimOutcome>, AdmissionError>> + Send;

    /// Cancels the user's grant and returns its slot to stock. Idempotent.
    fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<CancelOutcome, AdmissionError>> + Send;

    /// The Redis side, for a mode that decides in Redis (its campaigns get
    /// a Redis state at creation and counters from Redis).
    fn redis(&self) -> Option<&RedisCommon> {
        None
    }

    /// Starts the mode's background task for one live campaign, if it has
    /// one; the worker runs it while the campaign lives.
    fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
        let _ = (campaign, env);
        None
    }
}
