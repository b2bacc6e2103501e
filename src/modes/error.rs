//! What a mode answers besides a claim outcome: why it could not answer
//! (every variant retryable, 5xx-class), and what a cancellation found.

use crate::{
    domain::ClaimOutcome,
    storage::{redis::RedisStoreError, StoreError},
};

/// Why a mode could not give an answer. Every variant is a condition the
/// client may retry (5xx-class, or an operator's pause); refusals are
/// answers, not errors.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// PostgreSQL failed or is unreachable.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// Redis failed or is unreachable.
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    /// The campaign's Redis state is being rebuilt from PostgreSQL.
    #[error("campaign state is being rebuilt; retry shortly")]
    Rebuilding,
    /// The answer did not settle in time (a commit in flight elsewhere).
    #[error("the claim is still being processed; retry shortly")]
    Pending,
    /// An operator paused the campaign: a user without an answer is not
    /// admitted (nothing is remembered for them) until it is resumed.
    #[error("the campaign is paused; retry later")]
    Paused,
}

/// What a cancellation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The grant is (now, or already) cancelled; its slot is back in stock.
    Cancelled(ClaimOutcome),
    /// The user never claimed.
    NotFound,
    /// The user's claim is not a grant (rejected or still queued).
    NotGranted(ClaimOutcome),
    /// Past closes_at + hold_secs: grants are final.
    HoldOver,
}
