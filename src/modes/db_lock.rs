//! `db-lock`: both seeds' baseline. One transaction takes the pool row with
//! `SELECT ... FOR UPDATE`, checks stock, allocates a slot and inserts the
//! grant ([`DbMode`] runs the transaction; this is the step it takes the
//! unit with). Correct and simple; every claim on a pool waits for that
//! row, so a pool admits one claim per transaction round trip (seed 004's
//! ~60 TPS on InnoDB; see docs/BENCHMARKS.md for PostgreSQL here).

use sqlx::{Postgres, Transaction};

use super::db_common::{DbMode, TakeUnit};
use crate::storage::pg::{db_modes, PgError};

/// The `SELECT ... FOR UPDATE` mode.
pub type DbLock = DbMode<ForUpdate>;

/// Reads the pool row under `FOR UPDATE`, then counts the grant if stock
/// is left.
pub struct ForUpdate;

impl TakeUnit for ForUpdate {
    async fn take(tx: &mut Transaction<'_, Postgres>, pool_id: i64) -> Result<bool, PgError> {
        let (stock, granted) = db_modes::lock_pool(tx, pool_id).await?;
        if granted >= stock {
            return Ok(false);
        }
        db_modes::count_grant(tx, pool_id).await?;
        Ok(true)
    }
}
