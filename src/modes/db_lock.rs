//! `db-lock`: both seeds' baseline. One transaction takes the pool row with
//! `SELECT ... FOR UPDATE`, checks stock, allocates a slot and inserts the
//! grant. Correct and simple; every claim on a pool waits for that row.

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

/// The `SELECT ... FOR UPDATE` mode.
#[derive(Clone)]
pub struct DbLock {
    /// The source of truth, and here the only store.
    db: PgPool,
}

impl DbLock {
    async fn attempt(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, PgError> {
        let mut tx = self.db.begin().await?;
        // The user's lock first, then the pool's: one order for everyone.
        if let Some(a) = db_common::lock_user(&mut tx, campaign, user).await? {
            return Ok(a);
        }
        let (stock, granted) = db_modes::lock_pool(&mut tx, pool.id).await?;
        let seq = db_modes::next_seq(&mut tx).await?;
        let answer = if granted >= stock {
            db_common::reject_sold_out(&mut tx, campaign, user, seq).await?
        } else {
            let slot = db_modes::take_slot(&mut tx, pool.id).await?;
            let a = db_common::insert_grant(&mut tx, campaign, pool, user, slot, seq).await?;
            db_modes::count_grant(&mut tx, pool.id).await?;
            a
        };
        tx.commit().await?;
        Ok(answer)
    }
}

impl Admission for DbLock {
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
