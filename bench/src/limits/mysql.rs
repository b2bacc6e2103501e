//! The MySQL/MariaDB limits (issue 17), measured when `--mysql-url` is
//! given: seed 004 ran its seat reservation on InnoDB, so its `SELECT ...
//! FOR UPDATE` figure is reproduced on its own kind of database, beside
//! PostgreSQL's in the same run; and the batched grant insert into a
//! table shaped as a MySQL grants table must be (InnoDB has no partial
//! indexes: a generated column that holds the user, or the slot, only
//! while the grant is active, under a unique index that ignores NULLs).
//! Scratch tables, dropped afterwards.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use sqlx::mysql::MySqlPoolOptions;

use super::{drive, Limit};

/// Name of the InnoDB lock limit over `rows` hot rows.
pub fn mysql_for_update_name(rows: i32) -> String {
    format!("SELECT ... FOR UPDATE tx straight at MariaDB (InnoDB), {rows} row(s)")
}

/// A scratch table name of its own.
fn scratch(tag: &str) -> String {
    format!(
        "fc_bench_{tag}_{}",
        firstcome::domain::generate_code().to_lowercase()
    )
}

/// Drives the db-lock transaction (`SELECT ... FOR UPDATE` on a row,
/// `UPDATE`, `COMMIT`) straight at MariaDB over `rows` hot rows, as
/// [`super::pg_for_update`] does at PostgreSQL.
pub async fn mysql_for_update(
    mysql_url: &str,
    conc: usize,
    rows: i32,
    secs: f64,
) -> anyhow::Result<Limit> {
    let table = scratch("lock");
    let db = MySqlPoolOptions::new()
        .max_connections(conc as u32)
        .connect(mysql_url)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, stock INT NOT NULL, issued INT NOT NULL DEFAULT 0) ENGINE=InnoDB"
    ))
    .execute(&db)
    .await?;
    for id in 1..=rows {
        sqlx::query(&format!(
            "INSERT INTO {table} (id, stock) VALUES (?, 1000000000)"
        ))
        .bind(id)
        .execute(&db)
        .await?;
    }
    let select: Arc<str> =
        format!("SELECT stock, issued FROM {table} WHERE id = ? FOR UPDATE").into();
    let update: Arc<str> = format!("UPDATE {table} SET issued = issued + 1 WHERE id = ?").into();
    let pool = db.clone();
    let d = drive(conc, secs, move |t, i| {
        let (db, select, update) = (pool.clone(), select.clone(), update.clone());
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
    Ok(d.limit(mysql_for_update_name(rows), conc))
}

/// Inserts grant rows, `chunk` per transaction in one multi-row `INSERT
/// IGNORE ... RETURNING code` (a duplicate code or an active user or slot
/// taken is skipped, as `ON CONFLICT DO NOTHING` is at PostgreSQL) after a
/// locking read of a campaign row (the generation fence), from `conns`
/// connections for `secs`, into a scratch table with the grants table's
/// indexes. Reported per row. Not done here, and done by the service's
/// PostgreSQL statement: the join to pools (slot range), the rejections
/// anti-join and the webhook trigger.
pub async fn mysql_insert_grants(
    mysql_url: &str,
    conns: usize,
    chunk: usize,
    secs: f64,
) -> anyhow::Result<Limit> {
    let table = scratch("grants");
    let db = MySqlPoolOptions::new()
        .max_connections(conns as u32)
        .connect(mysql_url)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {table} (
            id          BIGINT AUTO_INCREMENT PRIMARY KEY,
            campaign_id BIGINT       NOT NULL,
            pool_id     BIGINT       NOT NULL,
            user_id     VARCHAR(128) NOT NULL,
            slot        INT          NOT NULL,
            code        VARCHAR(32)  NOT NULL,
            seq         BIGINT       NOT NULL,
            state       VARCHAR(16)  NOT NULL DEFAULT 'active',
            created_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            active_user VARCHAR(128) AS (IF(state = 'active', user_id, NULL)) STORED,
            active_slot INT          AS (IF(state = 'active', slot, NULL)) STORED,
            UNIQUE KEY one_active_per_user (campaign_id, active_user),
            UNIQUE KEY one_active_per_slot (pool_id, active_slot),
            UNIQUE KEY code (code),
            KEY campaign_id (campaign_id, id),
            KEY campaign_user (campaign_id, user_id)
        ) ENGINE=InnoDB"
    ))
    .execute(&db)
    .await?;
    // The generation fence the service's insert takes (PostgreSQL: the
    // campaign row FOR SHARE, joined): here a locking read of a campaign
    // row first in the transaction.
    sqlx::query(&format!(
        "CREATE TABLE {table}_c (id BIGINT PRIMARY KEY, redis_gen BIGINT NOT NULL) ENGINE=InnoDB"
    ))
    .execute(&db)
    .await?;
    sqlx::query(&format!("INSERT INTO {table}_c VALUES (1, 0)"))
        .execute(&db)
        .await?;
    let fence: Arc<str> =
        format!("SELECT redis_gen FROM {table}_c WHERE id = 1 LOCK IN SHARE MODE").into();
    let values = vec!["(1, 1, ?, ?, ?, ?)"; chunk].join(", ");
    // RETURNING (MariaDB >= 10.5): the codes that landed, as PostgreSQL's
    // ON CONFLICT DO NOTHING RETURNING code tells the service.
    let insert: Arc<str> = format!(
        "INSERT IGNORE INTO {table} (campaign_id, pool_id, user_id, slot, code, seq) VALUES {values} RETURNING code"
    )
    .into();
    let next = Arc::new(AtomicU64::new(1));
    let pool = db.clone();
    let d = drive(conns, secs, move |_, _| {
        let (db, insert, fence) = (pool.clone(), insert.clone(), fence.clone());
        let first = next.fetch_add(chunk as u64, Ordering::Relaxed);
        async move {
            let mut q = sqlx::query(&insert);
            for i in first..first + chunk as u64 {
                q = q
                    .bind(format!("limit-{i}"))
                    .bind(i as i32)
                    .bind(firstcome::domain::generate_code())
                    .bind(i as i64);
            }
            let mut tx = db.begin().await?;
            sqlx::query(&fence).fetch_one(&mut *tx).await?;
            let done = q.fetch_all(&mut *tx).await?.len() as u64;
            tx.commit().await?;
            anyhow::ensure!(done == chunk as u64, "{done} of {chunk} rows inserted");
            Ok(done)
        }
    })
    .await?;
    sqlx::query(&format!("DROP TABLE {table}, {table}_c"))
        .execute(&db)
        .await?;
    Ok(d.limit(
        format!(
            "grant INSERT IGNORE ... RETURNING, fenced, straight at MariaDB (InnoDB), {chunk} rows per tx (per s = rows)"
        ),
        conns,
    ))
}
