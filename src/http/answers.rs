//! The bodies of the claim endpoints: the request ([`ClaimRequest`]) and
//! the answer ([`ClaimAnswer`]) every claim endpoint and SSE event carries,
//! built from a domain [`ClaimOutcome`].
//!
//! No handler and no route here: `claims` uses these, nothing here uses
//! `claims`.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{error::ApiError, progress::QueueProgress, AppState};
use crate::{
    domain::{Campaign, ClaimOutcome, ClaimStatus, Mode, RejectReason, UserId},
    storage::pg::Confirmation,
};

/// Body of `POST /v1/campaigns/{id}/claims`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// 1..=128 characters of `[A-Za-z0-9_.:@-]`; the JWT's `sub` when
    /// JWTs are configured.
    #[schema(
        pattern = "^[A-Za-z0-9_.:@-]{1,128}$",
        min_length = 1,
        max_length = 128
    )]
    pub user_id: String,
    /// Pool name; may be left out when the campaign has one pool.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:@-]{1,64}$", min_length = 1, max_length = 64)]
    pub pool: Option<String>,
}

/// A claim's state: the body of every claim endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone)]
pub struct ClaimAnswer {
    /// granted, queued, rejected or cancelled.
    pub status: ClaimStatus,
    /// Who.
    pub user_id: String,
    /// Pool (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pool: Option<String>,
    /// Seat number 1..=stock (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slot: Option<i32>,
    /// Coupon code (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    /// Why (rejected): sold_out, not_open or closed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>)]
    pub reason: Option<RejectReason>,
    /// Arrival sequence number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<i64>,
    /// Campaigns with `confirm_within_secs`: `held` (confirm before
    /// `confirm_by`), `confirmed`, or `expired` (released unconfirmed; the
    /// status is then `cancelled`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hold: Option<String>,
    /// Deadline of a held grant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confirm_by: Option<chrono::DateTime<Utc>>,
    /// Queued: place among those still waiting (1 = next); `null` while
    /// unknown (pre-queued before the draw).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<i64>)]
    pub position: Option<Option<i64>>,
    /// Queued: estimated seconds to wait at the measured drain rate; `null`
    /// while unknown.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<i64>)]
    pub eta_secs: Option<Option<i64>>,
}

/// The answer's body, with the hold state of campaigns that require a
/// confirmation (read from PostgreSQL, where holds live).
pub(super) async fn answer(
    state: &AppState,
    c: &Campaign,
    o: &ClaimOutcome,
) -> Result<ClaimAnswer, ApiError> {
    let mut a = ClaimAnswer::from(o);
    // Present (maybe null) on every answer queued in redis-queue (gate's
    // reservation in flight is shown as queued too, but waits for no one).
    if let (ClaimOutcome::Queued { seq, .. }, Mode::RedisQueue) = (o, c.mode) {
        let place = match (seq, state.admissions.redis_of(c.mode)) {
            (Some(seq), Some(r)) => state
                .progress
                .get(r, c)
                .await
                .map(|(done, rate)| QueueProgress::place(*seq, done, rate)),
            _ => None,
        };
        a.position = Some(place.map(|p| p.position));
        a.eta_secs = Some(place.and_then(|p| p.eta_secs));
    }
    if c.confirm_within_secs.is_some()
        && matches!(
            o,
            ClaimOutcome::Granted { .. } | ClaimOutcome::Cancelled { .. }
        )
    {
        let user = UserId::parse(a.user_id.clone())?;
        match state.db.confirmation_state(c.id, &user).await? {
            Some(Confirmation::Pending(by)) if a.status == ClaimStatus::Granted => {
                a.hold = Some("held".into());
                a.confirm_by = Some(by);
            }
            Some(Confirmation::Confirmed) if a.status == ClaimStatus::Granted => {
                a.hold = Some("confirmed".into())
            }
            Some(Confirmation::Expired) if a.status == ClaimStatus::Cancelled => {
                a.hold = Some("expired".into())
            }
            _ => {}
        }
    }
    Ok(a)
}

/// Whether no further change will come by itself: a held grant may still
/// be confirmed or expire.
pub(super) fn settled(a: &ClaimAnswer) -> bool {
    a.status != ClaimStatus::Queued && a.hold.as_deref() != Some("held")
}

impl From<&ClaimOutcome> for ClaimAnswer {
    fn from(o: &ClaimOutcome) -> Self {
        // (pool, slot, code) of a seat held or released.
        let (user, seat, reason, seq) = match o {
            ClaimOutcome::Granted {
                user_id: user,
                pool,
                slot,
                code,
                seq,
            }
            | ClaimOutcome::Cancelled {
                user_id: user,
                pool,
                slot,
                code,
                seq,
            } => (user, Some((pool, *slot, code)), None, Some(*seq)),
            ClaimOutcome::Queued { user_id, seq } | ClaimOutcome::Left { user_id, seq } => {
                (user_id, None, None, *seq)
            }
            ClaimOutcome::Rejected {
                user_id,
                reason,
                seq,
            } => (user_id, None, Some(*reason), *seq),
        };
        ClaimAnswer {
            status: o.status(),
            user_id: user.to_string(),
            pool: seat.map(|(p, _, _)| p.to_string()),
            slot: seat.map(|(_, s, _)| s),
            code: seat.map(|(_, _, c)| c.clone()),
            reason,
            seq,
            hold: None,
            confirm_by: None,
            position: None,
            eta_secs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RejectReason, UserId};

    #[test]
    fn rejected_without_seq_omits_it() {
        let o = ClaimOutcome::Rejected {
            user_id: UserId::parse("u").unwrap(),
            reason: RejectReason::NotOpen,
            seq: None,
        };
        assert_eq!(
            serde_json::to_value(ClaimAnswer::from(&o)).unwrap(),
            serde_json::json!({"status":"rejected","user_id":"u","reason":"not_open"})
        );
    }
}
