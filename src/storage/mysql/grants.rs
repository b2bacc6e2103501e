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

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};

use super::generation::lock_campaigns;
use super::{opt_text, text};
use crate::domain::{Campaign, CampaignId, ClaimOutcome, RejectReason, UserId};
use crate::storage::pg::{CodeFate, GrantRow, LatestGrant, NewGrant, NewRejection};
use crate::storage::StoreError;

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
    let pool_id: i64 = r.try_get(0)?;
    let pool = campaign
        .pools
        .iter()
        .find(|p| p.id == pool_id)
        .ok_or_else(|| StoreError::Corrupt(format!("grant in unknown pool {pool_id}")))?;
    let state = text(&r, 4)?;
    let (slot, code, seq) = (r.try_get(1)?, text(&r, 2)?, r.try_get(3)?);
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

/// A generation that matches any (unfenced inserts).
const ANY_GEN: i64 = -1;

/// Longest user id the tables hold (`VARCHAR(255)`, in characters).
const USER_ID_MAX: usize = 255;

/// Longest code `grants.code` holds (`VARCHAR(64)`).
const CODE_MAX: usize = 64;

/// Rows per multi-row `INSERT`: 7 placeholders each stays under MariaDB's
/// 65,535 per statement.
const INSERT_ROWS: usize = 8_192;

/// Values per `IN (?, ...)` list, under the same limit.
pub(super) const IN_LIST: usize = 10_000;

/// Refuses a batch holding a user id or code longer than its column: the
/// one kind of bad value `INSERT IGNORE` would store adjusted (cut short)
/// rather than refuse, and which `JSON_TABLE` would cut short too. Strict
/// mode refuses it without `IGNORE`; so does this, for the whole batch.
fn check_grants(grants: &[NewGrant]) -> Result<(), StoreError> {
    match grants
        .iter()
        .find(|g| g.user_id.chars().count() > USER_ID_MAX || g.code.chars().count() > CODE_MAX)
    {
        Some(g) => Err(StoreError::Failed(format!(
            "grant of seq {}: user id over {USER_ID_MAX} or code over {CODE_MAX} characters",
            g.seq
        ))),
        None => Ok(()),
    }
}

/// A batch as the JSON text `JSON_TABLE` reads.
fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Failed(format!("encoding a batch: {e}")))
}

/// Inserts many grants in one statement, unfenced (tests and the bench's
/// insert limit; the Redis modes use [`super::insert_fenced`]). Skips what
/// [`insert_grants_gen`] skips; returns the codes that were inserted. One
/// statement, as the generic executor allows: an `INSERT ... SELECT`, which
/// takes no campaign lock (PostgreSQL's takes the campaign rows `FOR
/// SHARE` even unfenced) and holds InnoDB's table-wide AUTO-INC lock for
/// the statement (`innodb_autoinc_lock_mode` 1), so it is not the hot path.
pub async fn insert_grants<'e, E>(exec: E, grants: &[NewGrant]) -> Result<Vec<String>, StoreError>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    check_grants(grants)?;
    let batch: Vec<_> = grants
        .iter()
        .map(|g| {
            (
                g.campaign_id,
                g.pool_id,
                g.user_id.as_str(),
                g.slot,
                g.code.as_str(),
                g.seq,
            )
        })
        .collect();
    // LEFT JOIN ... IS NULL: the anti-join on the refusals' key (a NOT
    // EXISTS here was planned as a scan of all refusals).
    let rows = sqlx::query(
        "INSERT IGNORE INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by)
         SELECT u.c, u.p, u.u, u.s, u.k, u.q,
                DATE_ADD(UTC_TIMESTAMP(6), INTERVAL cp.confirm_within_secs SECOND)
         FROM JSON_TABLE(?, '$[*]' COLUMNS (
                  n FOR ORDINALITY,
                  c BIGINT PATH '$[0]',
                  p BIGINT PATH '$[1]',
                  u VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[2]',
                  s INT PATH '$[3]',
                  k VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[4]',
                  q BIGINT PATH '$[5]')) AS u
         JOIN pools p ON p.id = u.p AND p.campaign_id = u.c AND u.s BETWEEN 1 AND p.stock
         JOIN campaigns cp ON cp.id = u.c
         LEFT JOIN rejections r ON r.campaign_id = u.c AND r.user_id = u.u
         WHERE r.campaign_id IS NULL
         ORDER BY u.n
         RETURNING code",
    )
    .bind(to_json(&batch)?)
    .fetch_all(exec)
    .await?;
    rows.iter().map(|r| text(r, 0)).collect()
}

/// Inserts grants decided under the given generations (one per row,
/// [`ANY_GEN`] for none) inside `tx`. Skipped: rows that collide with an
/// existing grant (same code: a redelivery or a voided reservation; or a
/// unique key), rows naming a pool that is not their campaign's, a slot
/// outside 1..=stock (the database never stores an oversold pool, whatever
/// Redis says), a user the db-* modes already refused, and rows whose
/// generation is no longer the campaign's. Within the batch the earlier row
/// wins a collision. Returns the codes inserted, in batch order.
///
/// Three statements where PostgreSQL has one: the campaign rows locked in
/// share mode ([`lock_campaigns`]: a lock clause on an `INSERT ... SELECT`
/// would lock the pool rows too, and every campaign row a scan passes),
/// then which rows pass the pool and refusal checks, then a multi-row
/// `INSERT IGNORE ... VALUES` (an `INSERT ... SELECT` holds the table's
/// AUTO-INC lock while it waits on a row lock, stalling every other grant
/// insert; a multi-row `VALUES` does not).
pub(super) async fn insert_grants_gen(
    tx: &mut Transaction<'_, MySql>,
    grants: &[NewGrant],
    gens: &[i64],
) -> Result<Vec<String>, StoreError> {
    if grants.is_empty() {
        return Ok(Vec::new());
    }
    check_grants(grants)?;
    let ids: Vec<i64> = grants.iter().map(|g| g.campaign_id).collect();
    // (generation, confirm_within_secs) of each campaign, read under the
    // lock: the newest committed version, as PostgreSQL's re-check of a
    // locked row reads it. A rebuild's bump waits for this transaction.
    let campaigns: BTreeMap<i64, (i64, Option<i64>)> = lock_campaigns(tx, &ids)
        .await?
        .into_iter()
        .map(|(id, gen, confirm)| (id, (gen, confirm)))
        .collect();
    // The fence (PostgreSQL joins on the locked row's generation). A row
    // without a generation is skipped, as PostgreSQL's NULL one is.
    let fresh: Vec<(usize, i64, i64, &str, i32)> = grants
        .iter()
        .enumerate()
        .filter(
            |(i, g)| match (campaigns.get(&g.campaign_id), gens.get(*i)) {
                (Some(&(gen, _)), Some(&want)) => want == ANY_GEN || want == gen,
                _ => false,
            },
        )
        .map(|(i, g)| (i, g.campaign_id, g.pool_id, g.user_id.as_str(), g.slot))
        .collect();
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    // The pool and refusal checks, as PostgreSQL's joins: a plain read
    // that locks nothing, as there (pools and refusals are read, not
    // locked, by PostgreSQL's statement too). In batch order, so the
    // earlier row of a collision inside the batch is the one inserted.
    let keep: Vec<i64> = sqlx::query_scalar(
        "SELECT u.i
         FROM JSON_TABLE(?, '$[*]' COLUMNS (
                  i BIGINT PATH '$[0]',
                  c BIGINT PATH '$[1]',
                  p BIGINT PATH '$[2]',
                  u VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PATH '$[3]',
                  s INT PATH '$[4]')) AS u
         JOIN pools p ON p.id = u.p AND p.campaign_id = u.c AND u.s BETWEEN 1 AND p.stock
         LEFT JOIN rejections r ON r.campaign_id = u.c AND r.user_id = u.u
         WHERE r.campaign_id IS NULL
         ORDER BY u.i",
    )
    .bind(to_json(&fresh)?)
    .fetch_all(&mut **tx)
    .await?;
    let mut codes = Vec::with_capacity(keep.len());
    for chunk in keep.chunks(INSERT_ROWS) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by) ",
        );
        let mut bad = None;
        q.push_values(chunk, |mut b, &i| {
            let Some(g) = usize::try_from(i).ok().and_then(|i| grants.get(i)) else {
                bad = Some(i);
                return;
            };
            let confirm = campaigns.get(&g.campaign_id).and_then(|c| c.1);
            b.push_bind(g.campaign_id)
                .push_bind(g.pool_id)
                .push_bind(g.user_id.as_str())
                .push_bind(g.slot)
                .push_bind(g.code.as_str())
                .push_bind(g.seq)
                // PostgreSQL: now() + make_interval(secs => ...); NULL stays NULL.
                .push("DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ")
                .push_bind_unseparated(confirm)
                .push_unseparated(" SECOND)");
        });
        if let Some(i) = bad {
            return Err(StoreError::Corrupt(format!("batch row {i} out of range")));
        }
        q.push(" RETURNING code");
        for r in q.build().fetch_all(&mut **tx).await? {
            codes.push(text(&r, 0)?);
        }
    }
    Ok(codes)
}

/// Inserts refusals decided under the given generations inside `tx`, one
/// `refusal_batches` row per campaign (users and seqs as JSON arrays,
/// ordered by seq then user); rows whose generation is no longer the
/// campaign's are skipped. A refusal stored twice (a read made it durable
/// while its commit was in flight) is the same refusal. Returns (campaign,
/// user) of the rows stored. The campaign rows are locked in share mode
/// first and the generations compared here, as for grants; the arrays are
/// built here too (MariaDB's `JSON_ARRAYAGG` is cut at
/// `group_concat_max_len`).
pub(super) async fn insert_rejections_gen(
    tx: &mut Transaction<'_, MySql>,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // No stored user id is longer than the tables' VARCHAR(255) (strict
    // mode refuses one in `rejections`): `answer_signatures` relies on it.
    if let Some(r) = rows
        .iter()
        .find(|r| r.user_id.chars().count() > USER_ID_MAX)
    {
        return Err(StoreError::Failed(format!(
            "refusal of seq {}: user id over {USER_ID_MAX} characters",
            r.seq
        )));
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.campaign_id).collect();
    let gen_of: BTreeMap<i64, i64> = lock_campaigns(tx, &ids)
        .await?
        .into_iter()
        .map(|(id, gen, _)| (id, gen))
        .collect();
    let mut batches: BTreeMap<i64, Vec<(i64, &str)>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let (Some(&gen), Some(&want)) = (gen_of.get(&r.campaign_id), gens.get(i)) {
            if want == ANY_GEN || want == gen {
                batches
                    .entry(r.campaign_id)
                    .or_default()
                    .push((r.seq, r.user_id.as_str()));
            }
        }
    }
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let mut values = Vec::with_capacity(batches.len());
    for (c, b) in &mut batches {
        b.sort_unstable();
        let users: Vec<&str> = b.iter().map(|x| x.1).collect();
        let seqs: Vec<i64> = b.iter().map(|x| x.0).collect();
        values.push((*c, to_json(&users)?, to_json(&seqs)?));
    }
    for chunk in values.chunks(INSERT_ROWS) {
        let mut q =
            QueryBuilder::<MySql>::new("INSERT INTO refusal_batches (campaign_id, users, seqs) ");
        q.push_values(chunk, |mut b, (c, users, seqs)| {
            b.push_bind(*c)
                .push_bind(users.as_str())
                .push_bind(seqs.as_str());
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(batches
        .into_iter()
        .flat_map(|(c, b)| b.into_iter().map(move |(_, u)| (c, u.to_string())))
        .collect())
}

/// [`insert_grants_gen`] inside a transaction (the flusher's).
pub async fn insert_grants_in(
    tx: &mut Transaction<'_, MySql>,
    grants: &[NewGrant],
    gens: &[i64],
) -> Result<Vec<String>, StoreError> {
    insert_grants_gen(tx, grants, gens).await
}

/// [`insert_rejections_gen`] inside a transaction (the flusher's).
pub async fn insert_rejections_in(
    tx: &mut Transaction<'_, MySql>,
    rows: &[NewRejection],
    gens: &[i64],
) -> Result<Vec<(i64, String)>, StoreError> {
    insert_rejections_gen(tx, rows, gens).await
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
