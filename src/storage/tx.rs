//! An open transaction at the source of truth: a leaf the storage modules
//! of both databases can name (the db-* modes' steps and an open PATCH run
//! in one); `storage::store` gives it the operations.

use super::error::StoreError;

/// An open transaction at the source of truth, whichever database it is.
pub enum StoreTx<'c> {
    /// PostgreSQL's.
    Pg(sqlx::Transaction<'c, sqlx::Postgres>),
    /// MySQL/MariaDB's.
    MySql(sqlx::Transaction<'c, sqlx::MySql>),
}

impl StoreTx<'_> {
    /// Commits.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            StoreTx::Pg(tx) => tx.commit().await?,
            StoreTx::MySql(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            StoreTx::Pg(tx) => tx.rollback().await?,
            StoreTx::MySql(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}
