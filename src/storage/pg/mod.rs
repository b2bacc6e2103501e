//! PostgreSQL, the source of truth: connection, migrations, and every SQL
//! statement of the service, by concern. Nothing outside `storage::pg`
//! writes SQL.

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

mod campaigns;
pub mod db_modes;
mod generation;
mod grants;
mod holds;

pub use campaigns::*;
pub use generation::*;
pub use grants::*;
pub use holds::*;

/// Errors of the PostgreSQL boundary.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database could not be reached or the query failed.
    #[error("postgres: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A shared operation (a group-commit batch) failed; the text says why.
    #[error("postgres: {0}")]
    Failed(String),
    /// Stored data did not parse (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl PgError {
    /// Whether this is a unique-constraint violation (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, PgError::Sqlx(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505"))
    }
}

/// No statement runs longer than this: a claim waiting on a lock queue or a
/// stalled database fails with 503 instead of hanging, and a gate commit
/// ends (committed or not) well before its reservation counts as orphaned.
pub const STATEMENT_TIMEOUT_MS: u64 = 10_000;

/// Opens a pool and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let opts = opts.options([("statement_timeout", STATEMENT_TIMEOUT_MS.to_string())]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A claim must fail fast with 503 rather than queue forever when the
        // database is down or saturated.
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(opts)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Checks the database answers.
pub async fn ping(db: &PgPool) -> Result<(), PgError> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}
