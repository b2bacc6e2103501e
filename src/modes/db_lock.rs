//! `db-lock`: both seeds' baseline. One transaction takes the pool row with
//! `SELECT ... FOR UPDATE`, checks stock, allocates a slot and inserts the
//! grant ([`DbMode`] runs the transaction; this is the step it takes the
//! unit with). Correct and simple; every claim on a pool waits for that
//! row, so a pool admits one claim per transaction round trip (seed 004's
//! ~60 TPS on InnoDB; see docs/BENCHMARKS.md for PostgreSQL here).

use super::db_common::{DbMode, TakeUnit};
use crate::storage::{StoreError, StoreTx};

/// The `SELECT ... FOR UPDATE` mode.
pub type DbLock = DbMode<ForUpdate>;

/// Reads the pool row under `FOR UPDATE`, then counts the grant if stock
/// is left.
pub struct ForUpdate;

impl TakeUnit for ForUpdate {
    async fn take(tx: &mut StoreTx<'_>, pool_id: i64) -> Result<bool, StoreError> {
        let (stock, granted) = tx.lock_pool(pool_id).await?;
        if granted >= stock {
            return Ok(false);
        }
        tx.count_grant(pool_id).await?;
        Ok(true)
    }
}
