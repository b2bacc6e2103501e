//! `db-atomic`: what a database-only team picks. A conditional
//! `UPDATE pools SET granted = granted + 1 WHERE id = $1 AND granted < stock`
//! decides and locks in one statement; the grant is inserted in the same
//! transaction ([`DbMode`] runs it). One round trip less under the row lock
//! than `db-lock`.

use super::db_common::{DbMode, TakeUnit};
use crate::storage::{StoreError, StoreTx};

/// The conditional-update mode.
pub type DbAtomic = DbMode<ConditionalUpdate>;

/// Takes the unit with one conditional `UPDATE` (PostgreSQL reads its
/// `RETURNING`, MySQL its affected-row count).
pub struct ConditionalUpdate;

impl TakeUnit for ConditionalUpdate {
    async fn take(tx: &mut StoreTx<'_>, pool_id: i64) -> Result<bool, StoreError> {
        tx.take_unit(pool_id).await
    }
}
