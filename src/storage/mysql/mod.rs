//! MySQL/MariaDB (InnoDB), issue 17, begun: the schema
//! (`migrations-mysql/`, the same tables and invariants as PostgreSQL's)
//! and the connection. No mode writes here yet: a `mysql://`
//! `DATABASE_URL` is refused at start (`ConfigError::UnsupportedDatabase`)
//! until the store behind the modes exists. The schema's invariants are
//! tested against a real MariaDB (tests/it/mysql.rs); docs/ARCHITECTURE.md,
//! "MySQL and MariaDB", says how each PostgreSQL mechanism maps here.

use std::time::Duration;

use sqlx::{mysql::MySqlPoolOptions, Executor, MySqlPool};

/// Opens a pool whose sessions run at UTC, in strict SQL mode and at
/// READ COMMITTED (a locking read sees the newest committed version, as
/// PostgreSQL's re-check of a locked row does), and applies the
/// migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    let pool = MySqlPoolOptions::new()
        .max_connections(max_connections)
        // As PostgreSQL's: fail fast with 503 rather than queue forever.
        .acquire_timeout(Duration::from_secs(3))
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
                Ok(())
            })
        })
        .connect(url)
        .await?;
    sqlx::migrate!("./migrations-mysql").run(&pool).await?;
    Ok(pool)
}
