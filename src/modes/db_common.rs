//! What the two database-only modes share: slot reuse, remembered
//! refusals, status and cancellation.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{AdmissionError, CancelOutcome};
use crate::{
    domain::{generate_code, Campaign, ClaimOutcome, Pool, RejectReason, UserId},
    storage::pg::{self, PgError},
};

/// Takes the lowest released slot of the pool, else the next new one. The
/// caller holds the pool row's lock, so nothing else allocates meanwhile.
pub async fn take_slot(tx: &mut Transaction<'_, Postgres>, pool_id: i64) -> Result<i32, PgError> {
    let reused = sqlx::query(
        "DELETE FROM free_slots WHERE pool_id = $1
           AND slot = (SELECT min(slot) FROM free_slots WHERE pool_id = $1)
         RETURNING slot",
    )
    .bind(pool_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = reused {
        return Ok(r.get(0));
    }
    let r = sqlx::query(
        "UPDATE pools SET next_slot = next_slot + 1 WHERE id = $1 RETURNING next_slot - 1",
    )
    .bind(pool_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(r.get(0))
}

/// Serialises the claims of one user in one campaign (advisory lock until
/// the transaction ends), then returns the user's answer if a concurrent
/// claim stored one meanwhile. Without it, two claims of the same user at
/// the sold-out boundary could store a grant and a refusal, and answer both.
pub async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, PgError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(USER_LOCK_CLASS)
        .bind(format!("{}:{}", campaign.id, user.as_str()))
        .execute(&mut **tx)
        .await?;
    if let Some(a) = pg::grant_answer(&mut **tx, campaign, user).await? {
        return Ok(Some(a));
    }
    pg::rejection_answer(&mut **tx, campaign.id, user).await
}

/// Advisory lock class of a user's claims (db-* modes).
const USER_LOCK_CLASS: i32 = 1718;

/// Draws an arrival number.
pub async fn next_seq(tx: &mut Transaction<'_, Postgres>) -> Result<i64, PgError> {
    Ok(sqlx::query("SELECT nextval('claim_seq')")
        .fetch_one(&mut **tx)
        .await?
        .get(0))
}

/// Inserts the winner's grant; the caller updates the pool counter.
pub async fn insert_grant(
    tx: &mut Transaction<'_, Postgres>,
    campaign: &Campaign,
    pool: &Pool,
    user: &UserId,
    slot: i32,
    seq: i64,
) -> Result<ClaimOutcome, PgError> {
    let code = generate_code();
    sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::double precision))",
    )
    .bind(campaign.id.0)
    .bind(pool.id)
    .bind(user.as_str())
    .bind(slot)
    .bind(&code)
    .bind(seq)
    .bind(campaign.confirm_within_secs.map(|s| s as f64))
    .execute(&mut **tx)
    .await?;
    Ok(ClaimOutcome::Granted {
        user_id: user.clone(),
        pool: pool.name.clone(),
        slot,
        code,
        seq,
    })
}

/// Remembers a sold_out refusal so the user gets it again; returns the
/// stored answer (the first one, if a concurrent claim stored it first).
pub async fn reject_sold_out(
    tx: &mut Transaction<'_, Postgres>,
    campaign: &Campaign,
    user: &UserId,
    seq: i64,
) -> Result<ClaimOutcome, PgError> {
    // A concurrent claim of the same user may have won meanwhile: its grant
    // is the answer, never a contradicting refusal.
    if let Some(a) = pg::grant_answer(&mut **tx, campaign, user).await? {
        return Ok(a);
    }
    sqlx::query(
        "INSERT INTO rejections (campaign_id, user_id, reason, seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(campaign.id.0)
    .bind(user.as_str())
    .bind(RejectReason::SoldOut.as_str())
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(pg::rejection_answer(&mut **tx, campaign.id, user)
        .await?
        .unwrap_or(ClaimOutcome::Rejected {
            user_id: user.clone(),
            reason: RejectReason::SoldOut,
            seq: Some(seq),
        }))
}

/// The user's stored answer: a grant (active or cancelled) or a refusal.
pub async fn stored_answer<'e, E>(
    exec: E,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, PgError>
where
    E: sqlx::Executor<'e, Database = Postgres> + Copy,
{
    if let Some(a) = pg::grant_answer(exec, campaign, user).await? {
        return Ok(Some(a));
    }
    pg::rejection_answer(exec, campaign.id, user).await
}

/// Runs a claim transaction; when it trips a unique index (the same user
/// claiming two pools at once), answers with what the winner stored.
pub async fn claim_with_retry<F, Fut>(
    db: &PgPool,
    campaign: &Campaign,
    user: &UserId,
    attempt: F,
) -> Result<ClaimOutcome, AdmissionError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ClaimOutcome, PgError>>,
{
    // Fast path for repeats: no lock taken.
    if let Some(a) = stored_answer(db, campaign, user).await? {
        return Ok(a);
    }
    match attempt().await {
        Ok(a) => Ok(a),
        Err(e) if e.is_unique_violation() => Ok(stored_answer(db, campaign, user)
            .await?
            .ok_or(AdmissionError::Database(e))?),
        Err(e) => Err(e.into()),
    }
}

/// Cancels in one transaction: the grant, the pool counter, the free slot.
pub async fn cancel(
    db: &PgPool,
    campaign: &Campaign,
    user: &UserId,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, AdmissionError> {
    let mut tx = db.begin().await.map_err(PgError::from)?;
    if let Some((pool_id, slot)) = pg::cancel_grant(&mut tx, campaign.id, user, now).await? {
        sqlx::query("UPDATE pools SET granted = granted - 1 WHERE id = $1")
            .bind(pool_id)
            .execute(&mut *tx)
            .await
            .map_err(PgError::from)?;
        sqlx::query("INSERT INTO free_slots (pool_id, slot) VALUES ($1, $2)")
            .bind(pool_id)
            .bind(slot)
            .execute(&mut *tx)
            .await
            .map_err(PgError::from)?;
    }
    let answer = match pg::grant_answer(&mut *tx, campaign, user).await? {
        Some(a) => Some(a),
        None => pg::rejection_answer(&mut *tx, campaign.id, user).await?,
    };
    tx.commit().await.map_err(PgError::from)?;
    Ok(match answer {
        None => CancelOutcome::NotFound,
        Some(a @ ClaimOutcome::Cancelled { .. }) => CancelOutcome::Cancelled(a),
        Some(a) => CancelOutcome::NotGranted(a),
    })
}
