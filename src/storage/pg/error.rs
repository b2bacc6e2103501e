//! The PostgreSQL boundary's error, and the statement timeout every
//! connection runs under.

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
