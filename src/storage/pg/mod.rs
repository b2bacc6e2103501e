//! PostgreSQL, the source of truth: connection, migrations, and every SQL
//! statement of the service, by concern. Nothing outside `storage::pg`
//! writes SQL.

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::storage::pool::{ping_if_idle, WARM_CONNECTIONS};

mod campaigns;
mod confirmations;
pub mod db_modes;
mod draws;

mod generation;
mod grants;
mod operator;
mod signatures;
mod webhooks;

pub use crate::storage::error::{StoreError, STATEMENT_TIMEOUT_MS};
pub use campaigns::*;
pub use confirmations::*;
pub use draws::*;
pub use generation::*;
pub use grants::*;
pub use operator::*;
pub use signatures::*;
pub use webhooks::*;

/// Opens a pool and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let opts = opts.options([("statement_timeout", STATEMENT_TIMEOUT_MS.to_string())]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A claim must fail fast with 503 rather than queue forever when the
        // database is down or saturated.
        .acquire_timeout(Duration::from_secs(3))
        // Opened at start and kept open: a rush's first commits must not
        // wait for connections to be opened.
        .min_connections(WARM_CONNECTIONS.min(max_connections))
        // A ping before each use was one more round trip per transaction:
        // only a connection idle for a while is pinged (one that sat
        // through a database restart is dropped, not handed to a commit),
        // and one in steady use goes straight to its statement.
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Checks the database answers.
pub async fn ping(db: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}
