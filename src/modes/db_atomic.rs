//! `db-atomic`: what a database-only team picks. A conditional
//! `UPDATE pools SET granted = granted + 1 WHERE id = $1 AND granted < stock`
//! decides and locks in one statement; the grant is inserted in the same
//! transaction. One round trip less under the row lock than `db-lock`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{
    admission::{Admission, Deps},
    db_common,
    error::{AdmissionError, CancelOutcome},
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    storage::pg::{db_modes, PgError},
};

/// The conditional-update mode.
#[derive(Clone)]
pub struct DbAtomic {
    /// The source of truth, and here the only store.
    db: PgPool,
}

impl DbAtomic {
    async fn attempt(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, PgError> {
        let mut tx = self.db.begin().await?;
        if let Some(a) = db_common::lock_user(&mut tx, campaign, user).await? {
            return Ok(a);
        }
        let won = db_modes::take_unit(&mut tx, pool.id).await?;
        let seq = db_modes::next_seq(&mut tx).await?;
        let answer = if won {
            // The row lock taken by the UPDATE serialises slot allocation.
            let slot = db_modes::take_slot(&mut tx, pool.id).await?;
            db_common::insert_grant(&mut tx, campaign, pool, user, slot, seq).await?
        } else {
            db_common::reject_sold_out(&mut tx, campaign, user, seq).await?
        };
        tx.commit().await?;
        Ok(answer)
    }
}

impl Admission for DbAtomic {
    fn build(deps: &Deps) -> Self {
        Self {
            db: deps.db.clone(),
        }
    }

    async fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        db_common::claim_with_retry(&self.db, campaign, user, || {
            self.attempt(campaign, pool, user)
        })
        .await
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        Ok(db_common::stored_answer(&self.db, campaign, user).await?)
    }

    async fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, AdmissionError> {
        db_common::cancel(&self.db, campaign, user, now).await
    }
}
