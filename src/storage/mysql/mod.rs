//! MySQL/MariaDB (InnoDB) as the source of truth: the same operations as
//! `storage::pg`, one function for one, in InnoDB's dialect, over the
//! schema in `migrations-mysql/` (the same tables and invariants as
//! PostgreSQL's). docs/ARCHITECTURE.md, "MySQL and MariaDB", says how each
//! PostgreSQL mechanism maps here (partial unique indexes as generated
//! columns under unique keys, advisory locks as row locks, `RETURNING` of
//! an `UPDATE` as affected rows or a locked read).
//!
//! Times are bound as naive UTC (`DateTime::naive_utc`), never as chrono's
//! `DateTime<Utc>`: sqlx sends that as a MySQL TIMESTAMP, whose range ends
//! in 2038, and MariaDB stores a later one as NULL (a campaign opening in
//! 2099 would open at once). tests/it/mysql.rs holds the case.

use std::time::Duration;

use sqlx::{mysql::MySqlPoolOptions, Executor, MySqlPool};

use crate::storage::pool::{ping_if_idle, WARM_CONNECTIONS};

use super::error::{StoreError, STATEMENT_TIMEOUT_MS};

mod campaigns;
mod confirmations;
pub mod db_modes;
mod draws;
mod generation;
mod grants;
mod inserts;
mod operator;
mod signatures;
mod text;
mod webhooks;

pub use campaigns::*;
pub use confirmations::*;
pub use draws::*;
pub use generation::*;
pub use grants::*;
pub use inserts::{insert_grants, insert_grants_in, insert_rejections_in};
pub use operator::*;
pub use signatures::*;
pub use webhooks::*;

/// Opens a pool whose sessions run at UTC, in strict SQL mode and at
/// READ COMMITTED (a locking read sees the newest committed version, as
/// PostgreSQL's re-check of a locked row does), and applies the
/// migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections)
        // As PostgreSQL's: fail fast with 503 rather than queue forever.
        .acquire_timeout(Duration::from_secs(3))
        // As PostgreSQL's: warm at start, a ping only after idling.
        .min_connections(WARM_CONNECTIONS.min(max_connections))
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET time_zone = '+00:00'").await?;
                // Strict: a value that does not fit is an error, never a
                // silent adjustment. (`INSERT IGNORE` still turns errors
                // into warnings: the store must check they are only the
                // duplicates it meant to skip.)
                conn.execute(
                    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,\
                     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
                )
                .await?;
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                // PostgreSQL's statement_timeout, in InnoDB's two halves: no
                // lock wait and (MariaDB) no statement runs past it; a
                // claim stuck behind a lock fails 503 `database_busy`.
                let secs = STATEMENT_TIMEOUT_MS / 1000;
                conn.execute(format!("SET SESSION innodb_lock_wait_timeout = {secs}").as_str())
                    .await?;
                if conn
                    .execute(format!("SET SESSION max_statement_time = {secs}").as_str())
                    .await
                    .is_err()
                {
                    // MySQL names it max_execution_time (ms, SELECTs only).
                    conn.execute(
                        format!("SET SESSION max_execution_time = {STATEMENT_TIMEOUT_MS}").as_str(),
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    sqlx::migrate!("./migrations-mysql").run(&pool).await?;
    Ok(pool)
}

/// Checks the database answers, with its tables: a MySQL session outlives
/// its database being dropped, where `SELECT 1` would still answer.
pub async fn ping(db: &MySqlPool) -> Result<(), StoreError> {
    sqlx::query("SELECT COUNT(*) FROM campaigns WHERE id = 0")
        .execute(db)
        .await?;
    Ok(())
}
