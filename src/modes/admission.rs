//! The [`Admission`] trait every mode implements, and what modes are built
//! from ([`Deps`]) and run their background tasks with ([`TaskEnv`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::{
    error::{AdmissionError, CancelOutcome},
    redis_common::{committer::CommitterHandle, RedisCommon},
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    storage::redis::{stream::TaskEnv, ScriptMode},
};

/// A claim's answer, or why there is none yet.
pub type Answer = Result<ClaimOutcome, AdmissionError>;
/// A user's current answer (`None`: never claimed), or why it is unknown.
pub type Status = Result<Option<ClaimOutcome>, AdmissionError>;
/// What a cancellation found, or why it could not run.
pub type Cancel = Result<CancelOutcome, AdmissionError>;

/// What every mode is built from: the shared connections and settings.
#[derive(Clone)]
pub struct Deps {
    /// PostgreSQL, the source of truth.
    pub db: crate::storage::Store,
    /// The Redis side shared by the Redis modes (Redis, settling, rebuilds).
    pub common: RedisCommon,
    /// The group committer (gate's decisions, redis-queue's refusals).
    pub committer: CommitterHandle,
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
        c: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> impl Future<Output = Answer> + Send;

    /// The user's current answer; `None` if the user never claimed.
    fn status(&self, c: &Campaign, user: &UserId) -> impl Future<Output = Status> + Send;

    /// Cancels the user's grant and returns its slot to stock. Idempotent.
    fn cancel(
        &self,
        c: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Cancel> + Send;

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
