//! The PostgreSQL limits: the db-lock transaction (`SELECT ... FOR UPDATE`)
//! on a scratch table, and the service's own grant insert on a scratch
//! campaign; both are removed afterwards. No Redis here.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use firstcome::storage::pg::{self, NewGrant};
use sqlx::postgres::PgPoolOptions;

use super::{drive, Limit};

/// Name of the lock limit over `rows` hot rows.
pub fn pg_for_update_name(rows: i32) -> String {
    format!("SELECT ... FOR UPDATE tx straight at PostgreSQL, {rows} row(s)")
}

/// Drives the db-lock transaction (`SELECT ... FOR UPDATE` on a pool row,
/// `UPDATE`, `COMMIT`) straight at PostgreSQL over `rows` hot rows.
pub async fn pg_for_update(
    database_url: &str,
    conc: usize,
    rows: i32,
    secs: f64,
) -> anyhow::Result<Limit> {
    let table = format!(
        "fc_bench_limit_{}",
        firstcome::domain::generate_code().to_lowercase()
    );
    let db = PgPoolOptions::new()
        .max_connections(conc as u32)
        .connect(database_url)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, stock int NOT NULL, issued int NOT NULL DEFAULT 0)"
    ))
    .execute(&db)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {table} (id, stock) SELECT g, 1000000000 FROM generate_series(1, $1) g"
    ))
    .bind(rows)
    .execute(&db)
    .await?;
    let select: Arc<str> =
        format!("SELECT stock, issued FROM {table} WHERE id = $1 FOR UPDATE").into();
    let update: Arc<str> = format!("UPDATE {table} SET issued = issued + 1 WHERE id = $1").into();
    let pool = db.clone();
    let d = drive(conc, secs, move |t, i| {
        let (db, select, update) = (pool.clone(), select.clone(), update.clone());
        // Workers start on different rows and walk them in turn.
        let row = ((t as u64 + i) % rows as u64) as i32 + 1;
        async move {
            let mut tx = db.begin().await?;
            sqlx::query(&select).bind(row).fetch_one(&mut *tx).await?;
            sqlx::query(&update).bind(row).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(1)
        }
    })
    .await?;
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&db)
        .await?;
    Ok(d.limit(pg_for_update_name(rows), conc))
}

/// Inserts grant rows with the service's own statement
/// ([`pg::insert_grants`]) into a scratch campaign for `secs`, `chunk`
/// rows per transaction from `conns` connections: the ceiling of the
/// durable write path (drain) on this machine. Reported per row.
pub async fn pg_insert_grants(
    database_url: &str,
    conns: usize,
    chunk: usize,
    secs: f64,
) -> anyhow::Result<Limit> {
    // The service's own connect: the schema is migrated if it is not yet.
    let db = pg::connect(database_url, conns as u32).await?;
    // A db-* mode, so that no worker drains or reconciles it should the
    // bench die before deleting it.
    let campaign: i64 = sqlx::query_scalar(
        "INSERT INTO campaigns (name, mode) VALUES ('bench-limit-insert', 'db-atomic') RETURNING id",
    )
    .fetch_one(&db)
    .await?;
    let pool: i64 = sqlx::query_scalar(
        "INSERT INTO pools (campaign_id, idx, name, stock) VALUES ($1, 0, 'main', 2000000000) RETURNING id",
    )
    .bind(campaign)
    .fetch_one(&db)
    .await?;
    let next = Arc::new(AtomicU64::new(1));
    let pool_db = db.clone();
    let d = drive(conns, secs, move |_, _| {
        let db = pool_db.clone();
        let first = next.fetch_add(chunk as u64, Ordering::Relaxed);
        let batch: Vec<NewGrant> = (first..first + chunk as u64)
            .map(|i| NewGrant {
                campaign_id: campaign,
                pool_id: pool,
                user_id: format!("limit-{i}"),
                slot: i as i32,
                code: firstcome::domain::generate_code(),
                seq: i as i64,
            })
            .collect();
        async move {
            pg::insert_grants(&db, &batch).await?;
            Ok(chunk as u64)
        }
    })
    .await?;
    sqlx::query("DELETE FROM campaigns WHERE id = $1")
        .bind(campaign)
        .execute(&db)
        .await?;
    Ok(d.limit(
        format!("grant INSERT straight at PostgreSQL, {chunk} rows per tx (per s = rows)"),
        conns,
    ))
}
