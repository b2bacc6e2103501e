//! The operations run inside a transaction (the db-* modes' claim steps,
//! the redis-lua flusher's writes, cancellation), dispatched as
//! [`Store`](super::Store)'s are.

use chrono::{DateTime, Utc};

use super::{mysql, pg, StoreError, StoreTx};
use crate::domain::{Campaign, CampaignId, ClaimOutcome, UserId};
use pg::{db_modes::GrantInsert, Action, ClaimGate, NewGrant, NewRejection};

impl StoreTx<'_> {
    /// The user's grant answer, inside this transaction.
    pub async fn grant_answer(
        &mut self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, StoreError> {
        dispatch_exec!(self, grant_answer(campaign, user))
    }

    /// The user's refusal, inside this transaction.
    pub async fn rejection_answer(
        &mut self,
        campaign: CampaignId,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, StoreError> {
        dispatch_exec!(self, rejection_answer(campaign, user))
    }

    /// Cancels the user's active grant: its (pool id, slot), if any.
    pub async fn cancel_grant(
        &mut self,
        campaign: CampaignId,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<(i64, i32)>, StoreError> {
        dispatch_tx!(self, cancel_grant(campaign, user, now))
    }

    /// Cancels a grant by its code.
    pub async fn cancel_by_code(&mut self, code: &str) -> Result<(), StoreError> {
        dispatch_tx!(self, cancel_by_code(code))
    }

    /// Inserts grants whose campaign generation is still `gens`'.
    pub async fn insert_grants_in(
        &mut self,
        grants: &[NewGrant],
        gens: &[i64],
    ) -> Result<Vec<String>, StoreError> {
        dispatch_tx!(self, insert_grants_in(grants, gens))
    }

    /// Inserts refusals whose campaign generation is still `gens`'.
    pub async fn insert_rejections_in(
        &mut self,
        rows: &[NewRejection],
        gens: &[i64],
    ) -> Result<Vec<(i64, String)>, StoreError> {
        dispatch_tx!(self, insert_rejections_in(rows, gens))
    }

    /// Locks campaigns' generations until the transaction ends.
    pub async fn lock_generations(
        &mut self,
        campaign_ids: &[i64],
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        dispatch_tx!(self, lock_generations(campaign_ids))
    }

    /// Logs an operator's action in this transaction.
    pub async fn record_action(
        &mut self,
        campaign: CampaignId,
        actor: &str,
        action: Action,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        dispatch_tx!(self, record_action(campaign, actor, action, before, after))
    }

    /// The campaign's pause and window, ordered with an operator's change.
    pub async fn claim_gate(&mut self, campaign: CampaignId) -> Result<ClaimGate, StoreError> {
        dispatch_tx!(self, claim_gate(campaign))
    }

    /// `db-lock`: the pool row under `FOR UPDATE`: (stock, granted).
    pub async fn lock_pool(&mut self, pool_id: i64) -> Result<(i32, i32), StoreError> {
        dispatch_tx!(self, db_modes::lock_pool(pool_id))
    }

    /// `db-lock`: counts a grant on the locked pool row.
    pub async fn count_grant(&mut self, pool_id: i64) -> Result<(), StoreError> {
        dispatch_tx!(self, db_modes::count_grant(pool_id))
    }

    /// `db-atomic`: takes a unit with a conditional update.
    pub async fn take_unit(&mut self, pool_id: i64) -> Result<bool, StoreError> {
        dispatch_tx!(self, db_modes::take_unit(pool_id))
    }

    /// The lowest released slot, else the next new one.
    pub async fn take_slot(&mut self, pool_id: i64) -> Result<i32, StoreError> {
        dispatch_tx!(self, db_modes::take_slot(pool_id))
    }

    /// Gives a cancelled grant's unit and slot back (db-* modes).
    pub async fn give_back(&mut self, pool_id: i64, slot: i32) -> Result<(), StoreError> {
        dispatch_tx!(self, db_modes::give_back(pool_id, slot))
    }

    /// Serialises one user's claims until the transaction ends.
    pub async fn lock_user(
        &mut self,
        campaign: CampaignId,
        user: &UserId,
    ) -> Result<(), StoreError> {
        dispatch_tx!(self, db_modes::lock_user(campaign, user))
    }

    /// Draws an arrival number.
    pub async fn next_seq(&mut self) -> Result<i64, StoreError> {
        dispatch_tx!(self, db_modes::next_seq())
    }

    /// Inserts a winner's grant (db-* modes).
    pub async fn insert_grant(&mut self, g: &GrantInsert<'_>) -> Result<(), StoreError> {
        dispatch_tx!(self, db_modes::insert_grant(g))
    }

    /// Stores a sold_out refusal (the first stays).
    pub async fn insert_sold_out(
        &mut self,
        campaign: CampaignId,
        user: &UserId,
        seq: i64,
    ) -> Result<(), StoreError> {
        dispatch_tx!(self, db_modes::insert_sold_out(campaign, user, seq))
    }
}
