//! PostgreSQL: connection, migrations, and the queries every mode shares.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{postgres::PgPoolOptions, PgPool, Postgres, Row, Transaction};

use crate::domain::{
    Campaign, CampaignId, ClaimOutcome, Mode, NewCampaign, Pool, PoolName, RejectReason, UserId,
};

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

/// Inserts a campaign and its pools in one transaction.
pub async fn create_campaign(db: &PgPool, new: &NewCampaign) -> Result<Campaign, PgError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "INSERT INTO campaigns (name, mode, per_user_limit, opens_at, closes_at, hold_secs, confirm_within_secs)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&new.name)
    .bind(new.mode.as_str())
    .bind(new.per_user_limit)
    .bind(new.opens_at)
    .bind(new.closes_at)
    .bind(new.hold_secs)
    .bind(new.confirm_within_secs)
    .fetch_one(&mut *tx)
    .await?;
    let id: i64 = row.get(0);
    let names: Vec<String> = new.pools.iter().map(|p| p.name.as_str().into()).collect();
    let stocks: Vec<i32> = new.pools.iter().map(|p| p.stock).collect();
    let idxs: Vec<i32> = (0..new.pools.len() as i32).collect();
    sqlx::query(
        "INSERT INTO pools (campaign_id, idx, name, stock)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::int[])",
    )
    .bind(id)
    .bind(&idxs)
    .bind(&names)
    .bind(&stocks)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    load_campaign(db, CampaignId(id))
        .await?
        .ok_or_else(|| PgError::Corrupt("campaign vanished after insert".into()))
}

/// Loads a campaign with its pools; `None` when it does not exist.
pub async fn load_campaign(db: &PgPool, id: CampaignId) -> Result<Option<Campaign>, PgError> {
    let Some(row) = sqlx::query(
        "SELECT id, name, mode, per_user_limit, opens_at, closes_at, hold_secs, created_at, confirm_within_secs
         FROM campaigns WHERE id = $1",
    )
    .bind(id.0)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let pools =
        sqlx::query("SELECT id, idx, name, stock FROM pools WHERE campaign_id = $1 ORDER BY idx")
            .bind(id.0)
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Pool {
                    id: r.get("id"),
                    idx: r.get("idx"),
                    name: PoolName::parse(r.get::<String, _>("name"))
                        .map_err(|e| PgError::Corrupt(e.to_string()))?,
                    stock: r.get("stock"),
                })
            })
            .collect::<Result<Vec<_>, PgError>>()?;
    let mode: String = row.get("mode");
    Ok(Some(Campaign {
        id,
        name: row.get("name"),
        mode: mode.parse().map_err(PgError::Corrupt)?,
        per_user_limit: row.get("per_user_limit"),
        opens_at: row.get("opens_at"),
        closes_at: row.get("closes_at"),
        hold_secs: row.get("hold_secs"),
        created_at: row.get("created_at"),
        confirm_within_secs: row.get("confirm_within_secs"),
        pools,
    }))
}

/// Campaigns of the given modes whose keys may still be live: the worker
/// runs flushers and drainers for these.
pub async fn live_campaigns(db: &PgPool, modes: &[Mode]) -> Result<Vec<CampaignId>, PgError> {
    let modes: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    let rows = sqlx::query(
        "SELECT id FROM campaigns
         WHERE mode = ANY($1)
           AND (closes_at IS NULL
                OR closes_at + make_interval(secs => hold_secs)
                   + make_interval(secs => $2) > now())
         ORDER BY id",
    )
    .bind(&modes)
    .bind(crate::domain::KEY_GRACE_SECS as f64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| CampaignId(r.get(0))).collect())
}

/// A grant row as exported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
) -> Result<Vec<GrantRow>, PgError> {
    let rows = sqlx::query(
        "SELECT g.id, g.user_id, p.name AS pool, g.slot, g.code, g.seq
         FROM grants g JOIN pools p ON p.id = g.pool_id
         WHERE g.campaign_id = $1 AND g.state = 'active' AND g.id > $2
         ORDER BY g.id LIMIT $3",
    )
    .bind(campaign.0)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| GrantRow {
            id: r.get("id"),
            user_id: r.get("user_id"),
            pool: r.get("pool"),
            slot: r.get("slot"),
            code: r.get("code"),
            seq: r.get("seq"),
        })
        .collect())
}

/// Active grants per pool id.
pub async fn active_counts(db: &PgPool, campaign: CampaignId) -> Result<Vec<(i64, i64)>, PgError> {
    let rows = sqlx::query(
        "SELECT pool_id, count(*) FROM grants
         WHERE campaign_id = $1 AND state = 'active' GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The user's latest grant in the campaign (active first), as an answer.
pub async fn grant_answer<'e, E>(
    exec: E,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, PgError>
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
    let pool_id: i64 = r.get("pool_id");
    let pool = campaign
        .pools
        .iter()
        .find(|p| p.id == pool_id)
        .ok_or_else(|| PgError::Corrupt(format!("grant in unknown pool {pool_id}")))?;
    let state: String = r.get("state");
    let (slot, code, seq) = (r.get("slot"), r.get("code"), r.get("seq"));
    Ok(Some(if state == "active" {
        ClaimOutcome::Granted {
            user_id: user.clone(),
            pool: pool.name.clone(),
            slot,
            code,
            seq,
        }
    } else {
        ClaimOutcome::Cancelled {
            user_id: user.clone(),
            pool: pool.name.clone(),
            slot,
            code,
            seq,
        }
    }))
}

/// The user's remembered refusal, as an answer.
pub async fn rejection_answer<'e, E>(
    exec: E,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, PgError>
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
) -> Result<Option<(i64, i32)>, PgError> {
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
pub async fn insert_grants<'e, E>(exec: E, grants: &[NewGrant]) -> Result<Vec<String>, PgError>
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
async fn insert_grants_gen<'e, E>(
    exec: E,
    grants: &[NewGrant],
    gens: &[i64],
) -> Result<Vec<String>, PgError>
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
async fn insert_rejections_gen<'e, E>(
    exec: E,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, PgError>
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
) -> Result<Vec<String>, PgError> {
    insert_grants_gen(&mut **tx, grants, gens).await
}

/// [`insert_rejections_gen`] inside a transaction (the flusher's).
pub async fn insert_rejections_in(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, PgError> {
    insert_rejections_gen(&mut **tx, rows, gens).await
}

/// What a fenced insert stored.
#[derive(Debug, Default)]
pub struct Fenced {
    /// Codes of the grants inserted.
    pub codes: std::collections::HashSet<String>,
    /// (campaign, user) of the refusals inserted.
    pub refusals: std::collections::HashSet<(i64, String)>,
}

/// Inserts grants and refusals decided in Redis, each under the generation
/// of the state that decided it (`grant_gens[i]` for `grants[i]`). The
/// fence is the campaign row: each insert takes it `FOR SHARE` and joins on
/// its generation, so a rebuild's bump (an `UPDATE` of that row) waits for
/// the inserts in flight, and an insert that meets a bump re-reads the row
/// (READ COMMITTED re-checks a locked row's condition against its newest
/// version) and drops rows of the older generation. One statement (both
/// inserts as CTEs): one round trip and one fsync per group commit.
pub async fn insert_fenced(
    db: &PgPool,
    grants: &[NewGrant],
    grant_gens: &[i64],
    refusals: &[NewRejection],
    refusal_gens: &[i64],
) -> Result<Fenced, PgError> {
    if refusals.is_empty() {
        let codes = insert_grants_gen(db, grants, grant_gens).await?;
        return Ok(Fenced {
            codes: codes.into_iter().collect(),
            refusals: Default::default(),
        });
    }
    if grants.is_empty() {
        let refused = insert_rejections_gen(db, refusals, refusal_gens).await?;
        return Ok(Fenced {
            codes: Default::default(),
            refusals: refused.into_iter().collect(),
        });
    }
    // Both: one transaction, so one fsync.
    let mut tx = db.begin().await?;
    let codes = insert_grants_gen(&mut *tx, grants, grant_gens).await?;
    let refused = insert_rejections_gen(&mut *tx, refusals, refusal_gens).await?;
    tx.commit().await?;
    Ok(Fenced {
        codes: codes.into_iter().collect(),
        refusals: refused.into_iter().collect(),
    })
}

/// Takes the campaign rows `FOR SHARE` for the rest of the transaction and
/// returns their generations: a rebuild's bump waits until it ends, so the
/// inserts of the transaction are all seen by the rebuild, or refused.
pub async fn lock_generations(
    tx: &mut Transaction<'_, Postgres>,
    campaign_ids: &[i64],
) -> Result<Vec<(i64, i64)>, PgError> {
    Ok(sqlx::query_as(
        "SELECT id, redis_gen FROM campaigns WHERE id = ANY($1) ORDER BY id FOR SHARE",
    )
    .bind(campaign_ids)
    .fetch_all(&mut **tx)
    .await?)
}

/// Starts a new generation of the campaign's Redis state. The `UPDATE`
/// waits for every fenced insert holding the row; whatever the rebuild
/// reads after this includes every write of older generations, and none of
/// them can land any more.
pub async fn bump_generation(db: &PgPool, campaign: CampaignId) -> Result<i64, PgError> {
    Ok(sqlx::query_scalar(
        "UPDATE campaigns SET redis_gen = redis_gen + 1 WHERE id = $1 RETURNING redis_gen",
    )
    .bind(campaign.0)
    .fetch_one(db)
    .await?)
}

/// The campaign's current Redis generation.
pub async fn generation<'e, E>(exec: E, campaign: CampaignId) -> Result<i64, PgError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    Ok(
        sqlx::query_scalar("SELECT redis_gen FROM campaigns WHERE id = $1")
            .bind(campaign.0)
            .fetch_one(exec)
            .await?,
    )
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
pub async fn void_reservation(db: &PgPool, g: &NewGrant) -> Result<CodeFate, PgError> {
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
pub async fn code_state(db: &PgPool, code: &str) -> Result<Option<String>, PgError> {
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
) -> Result<Option<ClaimOutcome>, PgError> {
    if let Some(a @ ClaimOutcome::Granted { .. }) = grant_answer(db, campaign, user).await? {
        return Ok(Some(a));
    }
    rejection_answer(db, campaign.id, user).await
}

/// Active grants per pool id of a campaign.
pub async fn active_per_pool(
    db: &PgPool,
    campaign: CampaignId,
) -> Result<std::collections::HashMap<i64, i64>, PgError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT pool_id, count(*) FROM grants
         WHERE campaign_id = $1 AND state = 'active' GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Codes among `codes` that PostgreSQL holds as grants (any state but void).
pub async fn existing_codes(db: &PgPool, codes: &[String]) -> Result<Vec<String>, PgError> {
    let rows = sqlx::query("SELECT code FROM grants WHERE code = ANY($1) AND state <> 'void'")
        .bind(codes)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Checks the database answers.
pub async fn ping(db: &PgPool) -> Result<(), PgError> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// Where a held grant stands (campaigns with `confirm_within_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Waiting for confirmation until the instant given.
    Held(DateTime<Utc>),
    /// Confirmed: the grant is final.
    Confirmed,
    /// Not confirmed in time: released, slot back to stock.
    Expired,
}

/// The hold state of the user's latest grant, if it has one.
pub async fn hold_state(
    db: &PgPool,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<Hold>, PgError> {
    let row = sqlx::query(
        "SELECT state, confirm_by, confirmed_at FROM grants
         WHERE campaign_id = $1 AND user_id = $2 AND state <> 'void'
         ORDER BY (state = 'active') DESC, id DESC LIMIT 1",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state: String = r.get("state");
    let by: Option<DateTime<Utc>> = r.get("confirm_by");
    let at: Option<DateTime<Utc>> = r.get("confirmed_at");
    Ok(match (state.as_str(), by, at) {
        ("expired", _, _) => Some(Hold::Expired),
        ("active", Some(_), Some(_)) => Some(Hold::Confirmed),
        ("active", Some(by), None) => Some(Hold::Held(by)),
        _ => None,
    })
}

/// Confirms the user's held grant; `true` when this call confirmed it.
pub async fn confirm(db: &PgPool, campaign: CampaignId, user: &UserId) -> Result<bool, PgError> {
    let r = sqlx::query(
        "UPDATE grants SET confirmed_at = now()
         WHERE campaign_id = $1 AND user_id = $2 AND state = 'active'
           AND confirmed_at IS NULL AND confirm_by > now()",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A hold the sweeper released.
#[derive(Debug, Clone)]
pub struct Expired {
    /// Campaign.
    pub campaign_id: i64,
    /// Campaign mode.
    pub mode: Mode,
    /// Pool.
    pub pool_id: i64,
    /// User.
    pub user_id: String,
    /// Released slot.
    pub slot: i32,
    /// Released code.
    pub code: String,
}

/// Expires up to `limit` holds past their deadline, in one transaction.
/// For the db-* modes the pool counter and free slots are fixed in the same
/// transaction; the Redis modes mirror the release afterwards.
pub async fn expire_due(db: &PgPool, limit: i64) -> Result<Vec<Expired>, PgError> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query(
        "WITH due AS (
             SELECT id FROM grants
             WHERE state = 'active' AND confirmed_at IS NULL AND confirm_by < now()
             ORDER BY confirm_by LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE grants g SET state = 'expired', released_at = now()
         FROM due, campaigns c
         WHERE g.id = due.id AND c.id = g.campaign_id
         RETURNING g.campaign_id, c.mode, g.pool_id, g.user_id, g.slot, g.code",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mode: String = r.get("mode");
        let e = Expired {
            campaign_id: r.get("campaign_id"),
            mode: mode.parse().map_err(PgError::Corrupt)?,
            pool_id: r.get("pool_id"),
            user_id: r.get("user_id"),
            slot: r.get("slot"),
            code: r.get("code"),
        };
        if !e.mode.uses_redis() {
            sqlx::query("UPDATE pools SET granted = granted - 1 WHERE id = $1")
                .bind(e.pool_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO free_slots (pool_id, slot) VALUES ($1, $2)")
                .bind(e.pool_id)
                .bind(e.slot)
                .execute(&mut *tx)
                .await?;
        }
        out.push(e);
    }
    tx.commit().await?;
    Ok(out)
}
