//! Grants and refusals: the batched, idempotent inserts of the Redis modes,
//! answers read back, cancellation, the void arbitration of a reservation.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::domain::{Campaign, CampaignId, ClaimOutcome, RejectReason, UserId};
use crate::storage::error::StoreError;

/// A grant row as exported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct GrantRow {
    /// Export cursor: the grant's id.
    #[serde(skip)]
    pub id: i64,
    /// Who holds it.
    pub user_id: String,
    /// Pool name.
    pub pool: String,
    /// Seat number.
    pub slot: i32,
    /// Coupon code.
    pub code: String,
    /// Arrival sequence number.
    pub seq: i64,
}

/// One page of active grants with id greater than `after`.
pub async fn grants_page(
    db: &PgPool,
    campaign: CampaignId,
    after: i64,
    limit: i64,
) -> Result<Vec<GrantRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT g.id, g.user_id, p.name AS pool, g.slot, g.code, g.seq
         FROM grants g JOIN pools p ON p.id = g.pool_id
         WHERE g.campaign_id = $1 AND g.state = 'active' AND g.id > $2
         ORDER BY g.id LIMIT $3",
    )
    .bind(campaign.0)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// The user's latest grant in the campaign (active first), as an answer.
pub async fn grant_answer<'e, E>(
    exec: E,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query(
        "SELECT pool_id, slot, code, seq, state FROM grants
         WHERE campaign_id = $1 AND user_id = $2 AND state <> 'void'
         ORDER BY (state = 'active') DESC, id DESC LIMIT 1",
    )
    .bind(campaign.id.0)
    .bind(user.as_str())
    .fetch_optional(exec)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state: String = r.get("state");
    grant_outcome(
        campaign,
        user,
        r.get("pool_id"),
        r.get("slot"),
        r.get("code"),
        r.get("seq"),
        state == "active",
    )
    .map(Some)
}

/// A stored grant as the answer it gives: granted while active,
/// cancelled otherwise (cancelled or expired). Both stores' reads end here.
pub fn grant_outcome(
    campaign: &Campaign,
    user: &UserId,
    pool_id: i64,
    slot: i32,
    code: String,
    seq: i64,
    active: bool,
) -> Result<ClaimOutcome, StoreError> {
    let pool = campaign
        .pools
        .iter()
        .find(|p| p.id == pool_id)
        .ok_or_else(|| StoreError::Corrupt(format!("grant in unknown pool {pool_id}")))?;
    let (user_id, pool) = (user.clone(), pool.name.clone());
    Ok(if active {
        ClaimOutcome::Granted {
            user_id,
            pool,
            slot,
            code,
            seq,
        }
    } else {
        ClaimOutcome::Cancelled {
            user_id,
            pool,
            slot,
            code,
            seq,
        }
    })
}

/// The user's remembered refusal, as an answer.
pub async fn rejection_answer<'e, E>(
    exec: E,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let row = sqlx::query(
        "SELECT seq FROM rejections WHERE campaign_id = $1 AND user_id = $2
         UNION ALL
         SELECT x.s FROM refusal_batches b, unnest(b.users, b.seqs) AS x(u, s)
         WHERE b.campaign_id = $1 AND x.u = $2
         LIMIT 1",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(exec)
    .await?;
    Ok(row.map(|r| ClaimOutcome::Rejected {
        user_id: user.clone(),
        reason: RejectReason::SoldOut,
        seq: Some(r.get(0)),
    }))
}

/// Cancels the user's active grant inside `tx`; returns its pool id and
/// slot, or `None` when there was none.
pub async fn cancel_grant(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
    user: &UserId,
    now: DateTime<Utc>,
) -> Result<Option<(i64, i32)>, StoreError> {
    let row = sqlx::query(
        "UPDATE grants SET state = 'cancelled', released_at = $3
         WHERE campaign_id = $1 AND user_id = $2 AND state = 'active'
         RETURNING pool_id, slot",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// A winner to insert: what the Redis modes hand to PostgreSQL in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    /// Campaign id.
    pub campaign_id: i64,
    /// Pool id.
    pub pool_id: i64,
    /// User.
    pub user_id: String,
    /// Slot.
    pub slot: i32,
    /// Coupon code: the idempotency key.
    pub code: String,
    /// Arrival sequence number.
    pub seq: i64,
}

/// Inserts many grants in one statement, unfenced (tests and the bench's
/// insert limit; the Redis modes use [`insert_fenced`]). See
/// [`insert_fenced`] for which rows are skipped; returns the codes that
/// were inserted.
pub async fn insert_grants<'e, E>(exec: E, grants: &[NewGrant]) -> Result<Vec<String>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    insert_grants_gen(exec, grants, &vec![ANY_GEN; grants.len()]).await
}

/// A generation that matches any (unfenced inserts).
const ANY_GEN: i64 = -1;

/// Inserts grants decided under the given generations (one per row,
/// [`ANY_GEN`] for none). Skipped: rows that collide with an existing grant
/// (same code: a redelivery or a voided reservation; or a unique index),
/// rows naming a pool that is not their campaign's, a slot outside
/// 1..=stock (PostgreSQL never stores an oversold pool, whatever Redis
/// says), a user the db-* modes already refused, and rows whose generation
/// is no longer the campaign's.
pub(super) async fn insert_grants_gen<'e, E>(
    exec: E,
    grants: &[NewGrant],
    gens: &[i64],
) -> Result<Vec<String>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Vec::with_capacity(grants.len());
    let mut p = Vec::with_capacity(grants.len());
    let mut u = Vec::with_capacity(grants.len());
    let mut s = Vec::with_capacity(grants.len());
    let mut k = Vec::with_capacity(grants.len());
    let mut q = Vec::with_capacity(grants.len());
    for g in grants {
        c.push(g.campaign_id);
        p.push(g.pool_id);
        u.push(g.user_id.as_str());
        s.push(g.slot);
        k.push(g.code.as_str());
        q.push(g.seq);
    }
    let rows = sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by)
         SELECT u.c, u.p, u.u, u.s, u.k, u.q, now() + make_interval(secs => cp.confirm_within_secs)
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::bigint[],
                     $7::bigint[])
              AS u(c, p, u, s, k, q, g)
         JOIN pools p ON p.id = u.p AND p.campaign_id = u.c AND u.s BETWEEN 1 AND p.stock
         JOIN campaigns cp ON cp.id = u.c AND (u.g < 0 OR cp.redis_gen = u.g)
         WHERE NOT EXISTS (SELECT 1 FROM rejections r
                           WHERE r.campaign_id = u.c AND r.user_id = u.u)
         FOR SHARE OF cp
         ON CONFLICT DO NOTHING
         RETURNING code",
    )
    .bind(&c)
    .bind(&p)
    .bind(&u)
    .bind(&s)
    .bind(&k)
    .bind(&q)
    .bind(gens)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// A refusal to remember: the Redis modes' `sold_out` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRejection {
    /// Campaign id.
    pub campaign_id: i64,
    /// User.
    pub user_id: String,
    /// Arrival sequence number.
    pub seq: i64,
}

/// Inserts refusals decided under the given generations, one
/// `refusal_batches` row per campaign; rows whose generation is no longer
/// the campaign's are skipped. A refusal stored twice (a read made it
/// durable while its commit was in flight) is the same refusal. Returns
/// (campaign, user) of the rows stored.
pub(super) async fn insert_rejections_gen<'e, E>(
    exec: E,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, StoreError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let c: Vec<i64> = rows.iter().map(|r| r.campaign_id).collect();
    let u: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let q: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let out: Vec<(i64, Vec<String>)> = sqlx::query_as(
        "INSERT INTO refusal_batches (campaign_id, users, seqs)
         SELECT x.c, array_agg(x.u ORDER BY x.q, x.u), array_agg(x.q ORDER BY x.q, x.u)
         FROM (SELECT u.c, u.u, u.q
               FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS u(c, u, q, g)
               JOIN campaigns cp ON cp.id = u.c AND (u.g < 0 OR cp.redis_gen = u.g)
               FOR SHARE OF cp) AS x
         GROUP BY x.c
         RETURNING campaign_id, users",
    )
    .bind(&c)
    .bind(&u)
    .bind(&q)
    .bind(gens)
    .fetch_all(exec)
    .await?;
    Ok(out
        .into_iter()
        .flat_map(|(c, users)| users.into_iter().map(move |u| (c, u)))
        .collect())
}

/// [`insert_grants_gen`] inside a transaction (the flusher's).
pub async fn insert_grants_in(
    tx: &mut Transaction<'_, Postgres>,
    grants: &[NewGrant],
    gens: &[i64],
) -> Result<Vec<String>, StoreError> {
    insert_grants_gen(&mut **tx, grants, gens).await
}

/// [`insert_rejections_gen`] inside a transaction (the flusher's).
pub async fn insert_rejections_in(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, StoreError> {
    insert_rejections_gen(&mut **tx, rows, gens).await
}

/// Where a reservation's code stands in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFate {
    /// This call voided it: its commit can never land.
    Voided,
    /// Voided earlier.
    Void,
    /// Committed, still active.
    Active,
    /// Committed, then cancelled or expired.
    Released,
}

/// Decides a gate reservation whose commit may still be in flight: inserts
/// a `void` row under its code unless the grant is there. The unique index
/// on code lets exactly one of the two land, so a reservation is released
/// only when its commit can no longer happen.
pub async fn void_reservation(db: &PgPool, g: &NewGrant) -> Result<CodeFate, StoreError> {
    let voided = sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, state, released_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'void', now())
         ON CONFLICT (code) DO NOTHING RETURNING id",
    )
    .bind(g.campaign_id)
    .bind(g.pool_id)
    .bind(&g.user_id)
    .bind(g.slot.max(1))
    .bind(&g.code)
    .bind(g.seq)
    .fetch_optional(db)
    .await?;
    if voided.is_some() {
        return Ok(CodeFate::Voided);
    }
    let state: String = sqlx::query_scalar("SELECT state FROM grants WHERE code = $1")
        .bind(&g.code)
        .fetch_one(db)
        .await?;
    Ok(match state.as_str() {
        "void" => CodeFate::Void,
        "active" => CodeFate::Active,
        _ => CodeFate::Released,
    })
}

/// The state of the row holding `code` (`active`, `cancelled`, `expired`,
/// `void`), if any.
pub async fn code_state(db: &PgPool, code: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT state FROM grants WHERE code = $1")
            .bind(code)
            .fetch_optional(db)
            .await?,
    )
}

/// The user's durable final answer: an active grant, else a refusal.
pub async fn durable_answer(
    db: &PgPool,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError> {
    if let Some(a @ ClaimOutcome::Granted { .. }) = grant_answer(db, campaign, user).await? {
        return Ok(Some(a));
    }
    rejection_answer(db, campaign.id, user).await
}

/// Codes among `codes` that PostgreSQL holds as grants (any state but void).
pub async fn existing_codes(db: &PgPool, codes: &[String]) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT code FROM grants WHERE code = ANY($1) AND state <> 'void'")
        .bind(codes)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// A user's latest grant (active first, else the newest), as a rebuild
/// loads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LatestGrant {
    /// User.
    pub user_id: String,
    /// Pool id.
    pub pool_id: i64,
    /// Slot.
    pub slot: i32,
    /// Coupon code.
    pub code: String,
    /// Arrival number.
    pub seq: i64,
    /// Active (else cancelled or expired).
    pub active: bool,
}

/// Every user's latest grant in the campaign (void rows are not grants).
pub async fn latest_grants(
    db: &PgPool,
    campaign: CampaignId,
) -> Result<Vec<LatestGrant>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (user_id) user_id, pool_id, slot, code, seq, state = 'active' AS active
         FROM grants WHERE campaign_id = $1 AND state <> 'void'
         ORDER BY user_id, (state = 'active') DESC, id DESC",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?)
}

/// Every durable refusal of the campaign as (user, seq): the db-* modes'
/// rows and the Redis modes' batches.
pub async fn refusals(db: &PgPool, campaign: CampaignId) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT user_id, seq FROM rejections WHERE campaign_id = $1
         UNION ALL
         SELECT x.u, x.s FROM refusal_batches b, unnest(b.users, b.seqs) AS x(u, s)
         WHERE b.campaign_id = $1",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?)
}

/// Marks the active grant under `code` cancelled (redis-lua's outbox
/// replays a cancel this way); no-op if it is not active.
pub async fn cancel_by_code(
    tx: &mut Transaction<'_, Postgres>,
    code: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE grants SET state = 'cancelled', released_at = now()
         WHERE code = $1 AND state = 'active'",
    )
    .bind(code)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
