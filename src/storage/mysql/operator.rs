//! Operator controls in MySQL/MariaDB (InnoDB), the twin of
//! `storage::pg::operator`: the pause flag, a campaign's window and stock
//! changed while it runs, and the log of every operator action. Each
//! change and its log row commit together, under the campaign row's lock.
//!
//! The lock. PostgreSQL takes the campaign row `FOR NO KEY UPDATE` (operator
//! against operator, and against a rebuild's generation bump) and, apart,
//! an advisory *gate* lock (exclusive for a change, shared for each db-*
//! claim). InnoDB has no advisory lock with a shared mode (`GET_LOCK` is
//! exclusive and lives with the session, not the transaction) and no row
//! lock between S and X, so the campaign row is both: a change takes it
//! `FOR UPDATE` (X), a claim `LOCK IN SHARE MODE` (S) ([`claim_gate`]). X
//! conflicts with every S, so the change waits for the claims in flight and
//! the claims after it wait for its commit, as with the gate; it also
//! conflicts with the generation fence's S and a bump's X, as `FOR NO KEY
//! UPDATE` does. PostgreSQL's deadlock (a claim's second pool update
//! re-checking the pool's foreign key with `FOR KEY SHARE` of the campaign
//! row) cannot happen here: InnoDB checks a child's foreign key only when
//! the key column changes, and a claim's own inserts under a foreign key
//! to the campaign (`rejections`) ask for the S lock it already holds.
//! What X blocks beyond PostgreSQL's lock: inserts under a foreign key to
//! the campaign (S on its row, where PostgreSQL's `FOR KEY SHARE` passes
//! `FOR NO KEY UPDATE`), and grant inserts by `INSERT ... VALUES`, whose
//! webhook trigger reads the campaign row with an S lock (at READ
//! COMMITTED, reads inside `INSERT ... SELECT` and `UPDATE` do not lock;
//! checked on MariaDB 10.11). A db-* claim and a fenced insert hold that S
//! already; any other such writer waits for the change, and cannot
//! deadlock with it as long as it takes no pool row before.

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, Row, Transaction};

use super::text::{opt_text, text};
use crate::domain::CampaignId;
use crate::storage::error::StoreError;
use crate::storage::pg::{Action, ActionRow, ClaimGate, OpenPatch, PatchError, PatchLog, Restock};
use crate::storage::tx::StoreTx;

/// Logs an action inside `tx` (which holds the change it describes). The
/// JSON is stored as the text serde_json writes (PostgreSQL's jsonb
/// re-orders keys and drops spaces; both read back as the same value).
pub async fn record_action(
    tx: &mut Transaction<'_, MySql>,
    campaign: CampaignId,
    actor: &str,
    action: Action,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    // `before` is a reserved word in MySQL: quoted.
    sqlx::query(
        "INSERT INTO operator_actions (campaign_id, actor, action, `before`, `after`)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(campaign.0)
    .bind(actor)
    .bind(action.as_str())
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The campaign's last `limit` actions, newest first.
pub async fn list_actions(
    db: &MySqlPool,
    campaign: CampaignId,
    limit: i64,
) -> Result<Vec<ActionRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, actor, action, `before`, `after`, at FROM operator_actions
         WHERE campaign_id = ? ORDER BY id DESC LIMIT ?",
    )
    .bind(campaign.0)
    .bind(limit)
    .fetch_all(db)
    .await?;
    // JSON is LONGTEXT in MariaDB: read as text (binary-collated: as bytes)
    // and parsed here.
    let json = |s: Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
        s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    };
    rows.into_iter()
        .map(|r| -> Result<ActionRow, StoreError> {
            Ok(ActionRow {
                id: r.try_get(0)?,
                actor: text(&r, 1)?,
                action: text(&r, 2)?,
                before: json(opt_text(&r, 3)?)?,
                after: json(opt_text(&r, 4)?)?,
                at: r.try_get(5)?,
            })
        })
        .collect()
}

/// Sets the pause flag and logs the action; the flag it had before, or
/// `None` when no campaign has this id. Under the campaign row's X lock,
/// which is also the gate: it waits for the db-* claims in flight, and the
/// claims after it read what it committed (see [`claim_gate`]).
pub async fn set_paused(
    db: &MySqlPool,
    campaign: CampaignId,
    paused: bool,
    actor: &str,
) -> Result<Option<bool>, StoreError> {
    let mut tx = db.begin().await?;
    // No FOR NO KEY UPDATE in InnoDB: FOR UPDATE, which closes the gate too
    // (PostgreSQL's separate close_gate).
    let Some(before): Option<bool> =
        sqlx::query_scalar("SELECT paused FROM campaigns WHERE id = ? FOR UPDATE")
            .bind(campaign.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    sqlx::query("UPDATE campaigns SET paused = ? WHERE id = ?")
        .bind(paused)
        .bind(campaign.0)
        .execute(&mut *tx)
        .await?;
    let action = if paused {
        Action::Pause
    } else {
        Action::Resume
    };
    record_action(
        &mut tx,
        campaign,
        actor,
        action,
        Some(&serde_json::json!({ "paused": before })),
        Some(&serde_json::json!({ "paused": paused })),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(before))
}

/// The campaign's pause flag and window, read inside a claim's
/// transaction holding the campaign row's S lock until it ends: an
/// operator's change (made holding the row's X lock) either waited for
/// this claim to end, or committed before this read, and is seen. One
/// statement, where PostgreSQL needs two: an InnoDB locking read returns
/// the newest committed version once the lock is granted, never an older
/// snapshot. The clock is the statement's start (PostgreSQL's `now()` is
/// the transaction's).
pub async fn claim_gate(
    tx: &mut Transaction<'_, MySql>,
    campaign: CampaignId,
) -> Result<ClaimGate, StoreError> {
    // No advisory lock with a shared mode: the campaign row's S lock.
    let r = sqlx::query(
        "SELECT paused, opens_at IS NOT NULL AND UTC_TIMESTAMP(6) < opens_at,
                closes_at IS NOT NULL AND UTC_TIMESTAMP(6) >= closes_at
         FROM campaigns WHERE id = ? LOCK IN SHARE MODE",
    )
    .bind(campaign.0)
    .fetch_one(&mut **tx)
    .await?;
    Ok(ClaimGate {
        paused: r.try_get(0)?,
        not_open: r.try_get(1)?,
        closed: r.try_get(2)?,
    })
}

/// The operator's PATCH (`Store::patch_campaign`) up to its commit. The units taken are the larger of
/// the pool's `granted` counter (the db-* modes) and its active grants (the
/// Redis modes write grants without the counter; what Redis holds and
/// the database does not yet is checked in Redis).
///
/// A change waits for the claims' row locks 5 s at most, then fails
/// (error 1205: 503, retried by the operator) rather than hold the rebuild
/// lock (Redis modes) and the gate while a rush queues behind it.
/// PostgreSQL's `SET LOCAL lock_timeout` is MariaDB's `SET STATEMENT
/// innodb_lock_wait_timeout = 5 FOR ...` on each statement: the value ends
/// with the statement, so a pooled connection never keeps it, whatever
/// path (an error, a dropped future) leaves this function.
pub async fn begin_patch(
    db: &MySqlPool,
    campaign: CampaignId,
    closes_at: Option<DateTime<Utc>>,
    stocks: &[Restock],
    actor: &str,
) -> Result<OpenPatch, PatchError> {
    let mut tx = db.begin().await?;
    // FOR UPDATE: the row lock and the gate at once (see set_paused).
    let Some(old_closes): Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SET STATEMENT innodb_lock_wait_timeout = 5 FOR
         SELECT closes_at FROM campaigns WHERE id = ? FOR UPDATE",
    )
    .bind(campaign.0)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Err(PatchError::NotFound);
    };
    let mut log = PatchLog::default();
    if let Some(t) = closes_at {
        sqlx::query(
            "SET STATEMENT innodb_lock_wait_timeout = 5 FOR
             UPDATE campaigns SET closes_at = ? WHERE id = ?",
        )
        .bind(t.naive_utc())
        .bind(campaign.0)
        .execute(&mut *tx)
        .await?;
        log.closes(old_closes, t);
    }
    let mut changed = Vec::with_capacity(stocks.len());
    for r in stocks {
        // Active grants through the generated column `active_slot` (NULL
        // unless active): PostgreSQL's partial index is the unique key
        // (pool_id, active_slot) here, read alone. The subqueries are
        // plain reads: InnoDB locks only the pools row.
        let row = sqlx::query(
            "SET STATEMENT innodb_lock_wait_timeout = 5 FOR
             SELECT stock,
                    CAST(GREATEST(granted, (SELECT COUNT(*) FROM grants
                                            WHERE pool_id = ? AND active_slot IS NOT NULL)) AS SIGNED),
                    (SELECT MAX(active_slot) FROM grants WHERE pool_id = ? AND active_slot IS NOT NULL)
             FROM pools WHERE id = ? AND campaign_id = ? FOR UPDATE",
        )
        .bind(r.pool_id)
        .bind(r.pool_id)
        .bind(r.pool_id)
        .bind(campaign.0)
        .fetch_one(&mut *tx)
        .await?;
        let old: i32 = row.try_get(0)?;
        // CAST AS SIGNED is BIGINT (PostgreSQL's ::int): narrowed here.
        let granted = i32::try_from(row.try_get::<i64, _>(1)?)
            .map_err(|e| StoreError::Corrupt(format!("units taken: {e}")))?;
        let top: Option<i32> = row.try_get(2)?;
        r.check(granted, top)?;
        // Released slots above the new stock are never handed out again.
        sqlx::query(
            "SET STATEMENT innodb_lock_wait_timeout = 5 FOR
             DELETE FROM free_slots WHERE pool_id = ? AND slot > ?",
        )
        .bind(r.pool_id)
        .bind(r.stock)
        .execute(&mut *tx)
        .await?;
        // MySQL assigns left to right with the new values; `next_slot`'s
        // expression reads only itself, so the order does not matter.
        sqlx::query(
            "SET STATEMENT innodb_lock_wait_timeout = 5 FOR
             UPDATE pools SET stock = ?, next_slot = LEAST(next_slot, ? + 1) WHERE id = ?",
        )
        .bind(r.stock)
        .bind(r.stock)
        .bind(r.pool_id)
        .execute(&mut *tx)
        .await?;
        log.pool(&r.name, old, r.stock);
        changed.push((r.pool_id, old, r.stock));
    }
    let (before, after) = log.finish();
    // Its foreign key's S lock on the campaign row is covered by the X
    // this transaction holds: it never waits, so no timeout is needed.
    record_action(
        &mut tx,
        campaign,
        actor,
        Action::Patch,
        Some(&before),
        Some(&after),
    )
    .await?;
    Ok(OpenPatch {
        tx: StoreTx::MySql(tx),
        stocks: changed,
    })
}
