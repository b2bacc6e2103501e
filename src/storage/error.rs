//! The source of truth's error (PostgreSQL or MySQL/MariaDB: both speak
//! through sqlx), and the statement timeout every connection runs under.

use sqlx::error::ErrorKind;

/// Errors of the source-of-truth boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the query failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A shared operation (a group-commit batch) failed; the text says why.
    #[error("database: {0}")]
    Failed(String),
    /// Stored data did not parse (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether this is a unique-constraint violation (PostgreSQL's SQLSTATE
    /// 23505, MySQL's error 1062: sqlx classifies both).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlx(sqlx::Error::Database(e)) if e.kind() == ErrorKind::UniqueViolation)
    }

    /// Whether the database gave up on the statement because of other
    /// transactions (a deadlock victim, a lock wait or statement timeout):
    /// nothing was written, and the same request may succeed if retried.
    /// PostgreSQL: 40P01 deadlock, 40001 serialization, 55P03 lock
    /// timeout, 57014 statement timeout. MySQL/MariaDB: 1213 deadlock,
    /// 1205 lock wait timeout, 3024 (MySQL) and 1969 (MariaDB) statement
    /// time exceeded.
    pub fn is_contention(&self) -> bool {
        let StoreError::Sqlx(sqlx::Error::Database(e)) = self else {
            return false;
        };
        if let Some(my) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return matches!(my.number(), 1213 | 1205 | 3024 | 1969);
        }
        matches!(
            e.code().as_deref(),
            Some("40P01" | "40001" | "55P03" | "57014")
        )
    }
}

/// No statement runs longer than this: a claim waiting on a lock queue or a
/// stalled database fails with 503 instead of hanging, and a gate commit
/// ends (committed or not) well before its reservation counts as orphaned.
pub const STATEMENT_TIMEOUT_MS: u64 = 10_000;
