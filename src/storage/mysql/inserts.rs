//! The batched, idempotent inserts of the Redis modes on MySQL/MariaDB
//! (grants and refusals decided in Redis, fenced by the campaign's
//! generation), and the fence itself. See `grants.rs` for what stands in
//! for PostgreSQL's arrays and `ON CONFLICT ... RETURNING`.

use std::collections::BTreeMap;

use sqlx::{MySql, QueryBuilder, Transaction};

use super::text::text;

use crate::storage::error::StoreError;
use crate::storage::pg::{NewGrant, NewRejection};

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

/// Takes the campaign rows in share mode for the rest of the transaction
/// and returns (id, generation, confirm_within_secs) of those that exist,
/// by id. Ids are locked in ascending order (one `IN` list per
/// [`IN_LIST`] ids, in order), and only those rows: the list is read by
/// primary key, and at READ COMMITTED InnoDB takes no gap locks and
/// releases a scanned row that does not match. (A lock clause on the
/// insert's own `SELECT` locks every table it reads, and every campaign
/// row a join buffer scans: tried on MariaDB 10.11.)
pub(super) async fn lock_campaigns(
    tx: &mut Transaction<'_, MySql>,
    campaign_ids: &[i64],
) -> Result<Vec<(i64, i64, Option<i64>)>, StoreError> {
    let mut ids = campaign_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IN_LIST) {
        // No arrays (= ANY): an IN list. No FOR SHARE: LOCK IN SHARE MODE.
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT id, redis_gen, confirm_within_secs FROM campaigns WHERE id IN (",
        );
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        list.push_unseparated(") ORDER BY id LOCK IN SHARE MODE");
        let rows: Vec<(i64, i64, Option<i64>)> = q.build_query_as().fetch_all(&mut **tx).await?;
        out.extend(rows);
    }
    Ok(out)
}
