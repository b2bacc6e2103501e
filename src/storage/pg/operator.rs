//! Operator controls in PostgreSQL: the pause flag, a campaign's window
//! and stock changed while it runs, and the log of every operator action.
//! Each change and its log row commit together, under the campaign row's
//! lock (so two operators' changes of one campaign are ordered, and a
//! rebuild's generation bump waits for them). The row is taken `FOR NO
//! KEY UPDATE`, never `FOR UPDATE`: a db-* claim updating its pool row
//! twice re-checks the pool's foreign key (`FOR KEY SHARE` of the campaign
//! row), which `FOR UPDATE` blocks — a deadlock with the claims the change
//! waits for (found by the restock rush test).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::domain::CampaignId;
use crate::storage::error::StoreError;
use crate::storage::tx::StoreTx;

/// What an operator did (the `action` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/campaigns`.
    Create,
    /// `POST .../publish`.
    Publish,
    /// `POST .../pause`.
    Pause,
    /// `POST .../resume`.
    Resume,
    /// `PATCH /v1/campaigns/{id}`.
    Patch,
}

impl Action {
    /// The action's name, as stored and listed.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Publish => "publish",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Patch => "patch",
        }
    }
}

/// One logged operator action.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionRow {
    /// Its id (newer actions have larger ids).
    pub id: i64,
    /// Who: the `X-Firstcome-Actor` header of the call, else `admin`.
    pub actor: String,
    /// `create`, `publish`, `pause`, `resume` or `patch`.
    pub action: String,
    /// The values it changed, before (`null` for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The same values after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
    /// When it committed.
    pub at: DateTime<Utc>,
}

/// Logs an action inside `tx` (which holds the change it describes).
pub async fn record_action(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
    actor: &str,
    action: Action,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO operator_actions (campaign_id, actor, action, before, after)
         VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb)",
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
    db: &PgPool,
    campaign: CampaignId,
    limit: i64,
) -> Result<Vec<ActionRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, actor, action, before::text, after::text, at FROM operator_actions
         WHERE campaign_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(campaign.0)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let json = |s: Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
        s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    };
    rows.into_iter()
        .map(|r| {
            Ok(ActionRow {
                id: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                before: json(r.get(3))?,
                after: json(r.get(4))?,
                at: r.get(5),
            })
        })
        .collect()
}

/// Advisory lock class of a campaign's operator changes against its db-*
/// claims: each claim holds it shared for its transaction, a change
/// exclusively.
const GATE_LOCK_CLASS: i32 = 1719;

/// Takes the campaign's gate lock exclusively: waits for the db-* claims
/// in flight to end; the claims after it wait for this transaction, then
/// read what it committed (see [`claim_gate`]).
async fn close_gate(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(GATE_LOCK_CLASS)
        .bind(campaign.0.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sets the pause flag and logs the action; the flag it had before, or
/// `None` when no campaign has this id. Under the campaign row's lock and
/// the gate lock (see [`close_gate`]).
pub async fn set_paused(
    db: &PgPool,
    campaign: CampaignId,
    paused: bool,
    actor: &str,
) -> Result<Option<bool>, StoreError> {
    let mut tx = db.begin().await?;
    let Some(before): Option<bool> =
        sqlx::query_scalar("SELECT paused FROM campaigns WHERE id = $1 FOR NO KEY UPDATE")
            .bind(campaign.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    close_gate(&mut tx, campaign).await?;
    sqlx::query("UPDATE campaigns SET paused = $2 WHERE id = $1")
        .bind(campaign.0)
        .bind(paused)
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

/// What a db-* claim reads of its campaign inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimGate {
    /// Paused by an operator.
    pub paused: bool,
    /// Before `opens_at` (PostgreSQL's clock).
    pub not_open: bool,
    /// At or after `closes_at` (PostgreSQL's clock).
    pub closed: bool,
}

/// The campaign's pause flag and window, read inside a claim's
/// transaction under the campaign's gate lock held shared: an operator's
/// change (made holding it exclusively) either waited for this claim to
/// end, or committed before this read began (READ COMMITTED: a statement
/// sees what committed before it), so it is seen. An advisory lock, not a
/// `FOR SHARE` of the campaign row: that made a MultiXact per concurrent
/// claim and starved a rush of connections (503s in the rush tests).
pub async fn claim_gate(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
) -> Result<ClaimGate, StoreError> {
    // A statement of its own: a statement's snapshot is taken before it
    // runs, so a read in the same statement could predate the change it
    // waited for.
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
        .bind(GATE_LOCK_CLASS)
        .bind(campaign.0.to_string())
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query(
        "SELECT paused, opens_at IS NOT NULL AND now() < opens_at,
                closes_at IS NOT NULL AND now() >= closes_at
         FROM campaigns WHERE id = $1",
    )
    .bind(campaign.0)
    .fetch_one(&mut **tx)
    .await?;
    Ok(ClaimGate {
        paused: r.get(0),
        not_open: r.get(1),
        closed: r.get(2),
    })
}

/// A pool's new stock, asked by a PATCH.
#[derive(Debug, Clone)]
pub struct Restock {
    /// The pool's id.
    pub pool_id: i64,
    /// Its name (for the log and the refusal).
    pub name: String,
    /// The stock asked for.
    pub stock: i32,
}

impl Restock {
    /// Whether the pool can take the new stock: at or above the units it
    /// has given out, and no active grant on a slot above it.
    pub fn check(&self, taken: i32, top_held_slot: Option<i32>) -> Result<(), PatchError> {
        if self.stock < taken {
            return Err(PatchError::BelowTaken {
                pool: self.name.clone(),
                stock: self.stock,
                taken,
            });
        }
        match top_held_slot.filter(|t| *t > self.stock) {
            Some(slot) => Err(PatchError::SlotAbove {
                pool: self.name.clone(),
                stock: self.stock,
                slot,
            }),
            None => Ok(()),
        }
    }
}

/// A PATCH's before and after, as the actions log records them.
#[derive(Default)]
pub struct PatchLog {
    /// Fields before the change.
    before: serde_json::Map<String, serde_json::Value>,
    /// Fields after it.
    after: serde_json::Map<String, serde_json::Value>,
    /// Restocked pools' (name, stock) before.
    pools_before: Vec<serde_json::Value>,
    /// And after.
    pools_after: Vec<serde_json::Value>,
}

impl PatchLog {
    /// The window's end moved.
    pub fn closes(&mut self, old: Option<DateTime<Utc>>, new: DateTime<Utc>) {
        self.before
            .insert("closes_at".into(), serde_json::json!(old));
        self.after
            .insert("closes_at".into(), serde_json::json!(new));
    }

    /// A pool restocked.
    pub fn pool(&mut self, name: &str, old: i32, new: i32) {
        self.pools_before
            .push(serde_json::json!({ "name": name, "stock": old }));
        self.pools_after
            .push(serde_json::json!({ "name": name, "stock": new }));
    }

    /// (before, after) for the log row.
    pub fn finish(mut self) -> (serde_json::Value, serde_json::Value) {
        if !self.pools_before.is_empty() {
            self.before.insert("pools".into(), self.pools_before.into());
            self.after.insert("pools".into(), self.pools_after.into());
        }
        (self.before.into(), self.after.into())
    }
}

/// Why a PATCH was refused by what PostgreSQL holds.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// No campaign has this id.
    #[error("no such campaign")]
    NotFound,
    /// The new stock is below what the pool has given out.
    #[error("pool {pool}: stock {stock} is below the {taken} units taken")]
    BelowTaken {
        /// Pool name.
        pool: String,
        /// Stock asked for.
        stock: i32,
        /// Units granted.
        taken: i32,
    },
    /// An active grant holds a slot above the new stock.
    #[error("pool {pool}: slot {slot} is held, above the stock {stock} asked for")]
    SlotAbove {
        /// Pool name.
        pool: String,
        /// Stock asked for.
        stock: i32,
        /// The highest held slot.
        slot: i32,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Pg(#[from] StoreError),
}

impl From<sqlx::Error> for PatchError {
    fn from(e: sqlx::Error) -> Self {
        PatchError::Pg(e.into())
    }
}

/// A PATCH written in an open transaction, holding the campaign row's
/// lock, the gate lock and each restocked pool row's lock: the Redis modes
/// lower their Redis stock while it is open, then commit it (a lower cut
/// off between the two leaves Redis below PostgreSQL, never above).
pub struct OpenPatch {
    /// The transaction.
    pub(crate) tx: StoreTx<'static>,
    /// Per restocked pool: (pool id, stock before, stock after).
    pub stocks: Vec<(i64, i32, i32)>,
}

impl OpenPatch {
    /// Commits the change and its log row.
    pub async fn commit(self) -> Result<(), PatchError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls the change back.
    pub async fn rollback(self) -> Result<(), PatchError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// The operator's PATCH (`Store::patch_campaign`) up to its commit. The units taken are the larger of
/// the pool's `granted` counter (the db-* modes) and its active grants (the
/// Redis modes write grants without the counter; what Redis holds and
/// PostgreSQL does not yet is checked in Redis).
pub async fn begin_patch(
    db: &PgPool,
    campaign: CampaignId,
    closes_at: Option<DateTime<Utc>>,
    stocks: &[Restock],
    actor: &str,
) -> Result<OpenPatch, PatchError> {
    let mut tx = db.begin().await?;
    // A change waits for the claims' row locks a few seconds at most, then
    // fails (503, retried by the operator) rather than hold the rebuild
    // lock (Redis modes) and the gate lock while a rush queues behind it.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    let Some(old_closes): Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT closes_at FROM campaigns WHERE id = $1 FOR NO KEY UPDATE")
            .bind(campaign.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Err(PatchError::NotFound);
    };
    close_gate(&mut tx, campaign).await?;
    let mut log = PatchLog::default();
    if let Some(t) = closes_at {
        sqlx::query("UPDATE campaigns SET closes_at = $2 WHERE id = $1")
            .bind(campaign.0)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        log.closes(old_closes, t);
    }
    let mut changed = Vec::with_capacity(stocks.len());
    for r in stocks {
        let row = sqlx::query(
            "SELECT stock,
                    greatest(granted, (SELECT count(*) FROM grants
                                       WHERE pool_id = $1 AND state = 'active'))::int,
                    (SELECT max(slot) FROM grants WHERE pool_id = $1 AND state = 'active')
             FROM pools WHERE id = $1 AND campaign_id = $2 FOR UPDATE",
        )
        .bind(r.pool_id)
        .bind(campaign.0)
        .fetch_one(&mut *tx)
        .await?;
        let (old, granted, top): (i32, i32, Option<i32>) = (row.get(0), row.get(1), row.get(2));
        r.check(granted, top)?;
        // Released slots above the new stock are never handed out again.
        sqlx::query("DELETE FROM free_slots WHERE pool_id = $1 AND slot > $2")
            .bind(r.pool_id)
            .bind(r.stock)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE pools SET stock = $2, next_slot = least(next_slot, $2 + 1) WHERE id = $1",
        )
        .bind(r.pool_id)
        .bind(r.stock)
        .execute(&mut *tx)
        .await?;
        log.pool(&r.name, old, r.stock);
        changed.push((r.pool_id, old, r.stock));
    }
    let (before, after) = log.finish();
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
        tx: StoreTx::Pg(tx),
        stocks: changed,
    })
}
