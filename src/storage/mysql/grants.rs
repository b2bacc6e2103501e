//! Grants and refusals on MySQL/MariaDB, as `storage::pg::grants` does them
//! on PostgreSQL: the batched, idempotent inserts of the Redis modes,
//! answers read back, cancellation, the void arbitration of a reservation.
//!
//! What MariaDB lacks, and what stands in for it here:
//! - arrays (`UNNEST`, `= ANY`): a batch travels as one JSON parameter read
//!   by `JSON_TABLE` (a table-value constructor `VALUES (?, ...)` reads its
//!   placeholders as empty strings under the binary protocol sqlx speaks, on
//!   MariaDB 10.11), or as an `IN (?, ?, ...)` list;
//! - `ON CONFLICT DO NOTHING ... RETURNING`: `INSERT IGNORE ... RETURNING`,
//!   which returns only the rows that landed (`ON DUPLICATE KEY UPDATE`'s
//!   `RETURNING` also returns the row it collided with, and sqlx's
//!   `CLIENT_FOUND_ROWS` counts that row as affected). `IGNORE` also turns
//!   bad values into warnings; every value it could adjust is checked
//!   before (see [`check_grants`]), so what it skips is a duplicate key and
//!   nothing else (an error in the webhook trigger still fails the
//!   statement: `IGNORE` does not reach a trigger's statements);
//! - `UPDATE ... RETURNING`: a locking read of the row, then the update;
//! - `DISTINCT ON`: `ROW_NUMBER()`.
//!
//! Text columns are `utf8mb4_nopad_bin`, which sqlx reads as bytes
//! ([`super::text`]) unless cast; every text a statement derives from a
//! parameter is given that collation too, so it compares byte by byte
//! (MariaDB's subquery cache otherwise matched `Refused` with `refused`
//! under the connection's case-insensitive collation).

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};

use super::inserts::IN_LIST;
use super::text::{opt_text, text};
use crate::domain::{Campaign, CampaignId, ClaimOutcome, RejectReason, UserId};
use crate::storage::error::StoreError;
use crate::storage::pg::{grant_outcome, CodeFate, GrantRow, LatestGrant, NewGrant};

/// One page of active grants with id greater than `after`.
pub async fn grants_page(
    db: &MySqlPool,
    campaign: CampaignId,
    after: i64,
    limit: i64,
) -> Result<Vec<GrantRow>, StoreError> {
    // CAST: sqlx decodes binary-collated text as bytes only (sqlx#3387).
    Ok(sqlx::query_as(
        "SELECT g.id, CAST(g.user_id AS CHAR) AS user_id, CAST(p.name AS CHAR) AS pool,
                g.slot, CAST(g.code AS CHAR) AS code, g.seq
         FROM grants g JOIN pools p ON p.id = g.pool_id
         WHERE g.campaign_id = ? AND g.state = 'active' AND g.id > ?
         ORDER BY g.id LIMIT ?",
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
    E: sqlx::Executor<'e, Database = MySql>,
{
    let row = sqlx::query(
        "SELECT pool_id, slot, code, seq, state FROM grants
         WHERE campaign_id = ? AND user_id = ? AND state <> 'void'
         ORDER BY state = 'active' DESC, id DESC LIMIT 1",
    )
    .bind(campaign.id.0)
    .bind(user.as_str())
    .fetch_optional(exec)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state = text(&r, 4)?;
    grant_outcome(
        campaign,
        user,
        r.try_get(0)?,
        r.try_get(1)?,
        text(&r, 2)?,
        r.try_get(3)?,
        state == "active",
    )
    .map(Some)
}

/// The user's remembered refusal, as an answer: a db-* mode's row, else
/// the user's place in a Redis mode's refusal batch.
pub async fn rejection_answer<'e, E>(
    exec: E,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    // No unnest of two arrays side by side: JSON_TABLE numbers the users,
    // and the seq at the same place is read by index.
    let row = sqlx::query(
        "SELECT seq FROM rejections WHERE campaign_id = ? AND user_id = ?
         UNION ALL
         SELECT CAST(JSON_VALUE(b.seqs, CONCAT('$[', x.n - 1, ']')) AS SIGNED)
         FROM refusal_batches b,
              JSON_TABLE(b.users, '$[*]' COLUMNS (
                  n FOR ORDINALITY,
                  u TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$')) AS x
         WHERE b.campaign_id = ? AND x.u = ?
         LIMIT 1",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(exec)
    .await?;
    Ok(match row {
        Some(r) => Some(ClaimOutcome::Rejected {
            user_id: user.clone(),
            reason: RejectReason::SoldOut,
            seq: Some(r.try_get(0)?),
        }),
        None => None,
    })
}

/// Cancels the user's active grant inside `tx`; returns its pool id and
/// slot, or `None` when there was none.
pub async fn cancel_grant(
    tx: &mut Transaction<'_, MySql>,
    campaign: CampaignId,
    user: &UserId,
    now: DateTime<Utc>,
) -> Result<Option<(i64, i32)>, StoreError> {
    // No UPDATE ... RETURNING: lock the active grant (`active_user` is the
    // user while active, NULL otherwise: its unique key finds the one row),
    // then update it by id. A concurrent cancel waits on the lock and then
    // reads the row no longer active (READ COMMITTED), as PostgreSQL's
    // UPDATE re-checks it.
    let row = sqlx::query(
        "SELECT id, pool_id, slot FROM grants
         WHERE campaign_id = ? AND active_user = ? FOR UPDATE",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let (id, pool_id, slot): (i64, i64, i32) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
    sqlx::query("UPDATE grants SET state = 'cancelled', released_at = ? WHERE id = ?")
        .bind(now.naive_utc())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(Some((pool_id, slot)))
}

/// Decides a gate reservation whose commit may still be in flight: inserts
/// a `void` row under its code unless the grant is there. The unique key
/// on code lets exactly one of the two land, so a reservation is released
/// only when its commit can no longer happen.
pub async fn void_reservation(db: &MySqlPool, g: &NewGrant) -> Result<CodeFate, StoreError> {
    // No ON CONFLICT (code) DO NOTHING: a plain INSERT, whose duplicate-key
    // error (after waiting for a commit in flight, as PostgreSQL waits) is
    // the "nothing". A void row's active_user and active_slot are NULL, so
    // only the code can collide. Not ON DUPLICATE KEY UPDATE: with sqlx's
    // CLIENT_FOUND_ROWS it reports 1 row whether it inserted or not.
    let inserted = sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, state, released_at)
         VALUES (?, ?, ?, ?, ?, ?, 'void', UTC_TIMESTAMP(6))",
    )
    .bind(g.campaign_id)
    .bind(g.pool_id)
    .bind(&g.user_id)
    .bind(g.slot.max(1))
    .bind(&g.code)
    .bind(g.seq)
    .execute(db)
    .await;
    let duplicate = match inserted {
        Ok(_) => return Ok(CodeFate::Voided),
        Err(e) => StoreError::from(e),
    };
    if !duplicate.is_unique_violation() {
        return Err(duplicate);
    }
    // No row under the code: the duplicate was another key's, an error
    // PostgreSQL's ON CONFLICT (code) would raise too.
    let Some(state) = code_state(db, &g.code).await? else {
        return Err(duplicate);
    };
    Ok(match state.as_str() {
        "void" => CodeFate::Void,
        "active" => CodeFate::Active,
        _ => CodeFate::Released,
    })
}

/// The state of the row holding `code` (`active`, `cancelled`, `expired`,
/// `void`), if any.
pub async fn code_state(db: &MySqlPool, code: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM grants WHERE code = ?")
            .bind(code)
            .fetch_optional(db)
            .await?,
    )
}

/// The user's durable final answer: an active grant, else a refusal.
pub async fn durable_answer(
    db: &MySqlPool,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError> {
    if let Some(a @ ClaimOutcome::Granted { .. }) = grant_answer(db, campaign, user).await? {
        return Ok(Some(a));
    }
    rejection_answer(db, campaign.id, user).await
}

/// Codes among `codes` that the database holds as grants (any state but
/// void).
pub async fn existing_codes(db: &MySqlPool, codes: &[String]) -> Result<Vec<String>, StoreError> {
    // No arrays: IN lists of at most IN_LIST codes, each code asked once.
    // A code present and not void stays so, so one snapshot per list
    // answers as one for all would.
    let mut codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    codes.sort_unstable();
    codes.dedup();
    let mut out = Vec::new();
    for chunk in codes.chunks(IN_LIST) {
        let mut q =
            QueryBuilder::<MySql>::new("SELECT CAST(code AS CHAR) FROM grants WHERE code IN (");
        let mut list = q.separated(", ");
        for c in chunk {
            list.push_bind(*c);
        }
        list.push_unseparated(") AND state <> 'void'");
        let found: Vec<String> = q.build_query_scalar().fetch_all(db).await?;
        out.extend(found);
    }
    Ok(out)
}

/// Every user's latest grant in the campaign (void rows are not grants),
/// by user.
pub async fn latest_grants(
    db: &MySqlPool,
    campaign: CampaignId,
) -> Result<Vec<LatestGrant>, StoreError> {
    // No DISTINCT ON: the first row of each user's window.
    Ok(sqlx::query_as(
        "SELECT CAST(g.user_id AS CHAR) AS user_id, g.pool_id, g.slot,
                CAST(g.code AS CHAR) AS code, g.seq, g.active
         FROM (SELECT user_id, pool_id, slot, code, seq, state = 'active' AS active,
                      ROW_NUMBER() OVER (PARTITION BY user_id
                                         ORDER BY state = 'active' DESC, id DESC) AS n
               FROM grants WHERE campaign_id = ? AND state <> 'void') AS g
         WHERE g.n = 1
         ORDER BY g.user_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?)
}

/// Every durable refusal of the campaign as (user, seq): the db-* modes'
/// rows and the Redis modes' batches.
pub async fn refusals(
    db: &MySqlPool,
    campaign: CampaignId,
) -> Result<Vec<(String, i64)>, StoreError> {
    // One statement (one snapshot); a batch's two JSON arrays are zipped
    // here, as PostgreSQL's unnest(users, seqs) zips them.
    let rows = sqlx::query(
        "SELECT user_id, seq, NULL AS users, NULL AS seqs FROM rejections WHERE campaign_id = ?
         UNION ALL
         SELECT NULL, NULL, users, seqs FROM refusal_batches WHERE campaign_id = ?",
    )
    .bind(campaign.0)
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        if let Some(user) = opt_text(r, 0)? {
            out.push((user, r.try_get(1)?));
            continue;
        }
        let (users, seqs) = (opt_text(r, 2)?, opt_text(r, 3)?);
        let parse = |what: &str, s: Option<String>| {
            StoreError::Corrupt(format!(
                "refusal batch of campaign {campaign}: {what} {s:?}"
            ))
        };
        let users: Vec<String> = match users {
            Some(u) => serde_json::from_str(&u).map_err(|_| parse("users", Some(u)))?,
            None => return Err(parse("users", None)),
        };
        let seqs: Vec<i64> = match seqs {
            Some(s) => serde_json::from_str(&s).map_err(|_| parse("seqs", Some(s)))?,
            None => return Err(parse("seqs", None)),
        };
        if users.len() != seqs.len() {
            return Err(StoreError::Corrupt(format!(
                "refusal batch of campaign {campaign}: {} users, {} seqs",
                users.len(),
                seqs.len()
            )));
        }
        out.extend(users.into_iter().zip(seqs));
    }
    Ok(out)
}

/// Marks the active grant under `code` cancelled (redis-lua's outbox
/// replays a cancel this way); no-op if it is not active.
pub async fn cancel_by_code(tx: &mut Transaction<'_, MySql>, code: &str) -> Result<(), StoreError> {
    // UTC_TIMESTAMP(6) is the statement's time; PostgreSQL's now() is the
    // transaction's start.
    sqlx::query(
        "UPDATE grants SET state = 'cancelled', released_at = UTC_TIMESTAMP(6)
         WHERE code = ? AND state = 'active'",
    )
    .bind(code)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
