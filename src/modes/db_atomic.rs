//! `db-atomic`: what a database-only team picks. A conditional
//! `UPDATE pools SET granted = granted + 1 WHERE id = $1 AND granted < stock`
//! decides and locks in one statement; the grant is inserted in the same
//! transaction ([`DbMode`] runs it). One round trip less under the row lock
//! than `db-lock`.

use sqlx::{Postgres, Transaction};

use super::db_common::{DbMode, TakeUnit};
use crate::storage::pg::{db_modes, PgError};

/// The conditional-update mode.
pub type DbAtomic = DbMode<ConditionalUpdate>;

/// Takes the unit with one conditional `UPDATE ... RETURNING`.
pub struct ConditionalUpdate;

impl TakeUnit for ConditionalUpdate {
    async fn take(tx: &mut Transaction<'_, Postgres>, pool_id: i64) -> Result<bool, PgError> {
        db_modes::take_unit(tx, pool_id).await
    }
}
