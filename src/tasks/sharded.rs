//! The reconciler's look at a sharded campaign. Its shards' counters cannot
//! be compared one by one with PostgreSQL (stock moves between shards), so
//! the check is the pool's sum: units at every shard's door, given back and
//! in flight between shards, plus PostgreSQL's active grants, is the stock.
//! Drift is repaired by starting every shard again from PostgreSQL.

use crate::{
    domain::{Campaign, UserId},
    modes::{
        redis_common::{RedisCommon, Stored},
        AdmissionError,
    },
};

use super::report::Report;

/// Redis' side of a sharded campaign: whether nothing is in flight (no
/// outbox entry, no gate reservation), and the units per pool.
#[derive(Debug, PartialEq, Eq)]
struct Units {
    quiet: bool,
    per_pool: Vec<i64>,
}

/// Reads every shard; `None` when one has no state.
async fn units(common: &RedisCommon, c: &Campaign) -> Result<Option<Units>, AdmissionError> {
    let mut u = Units {
        quiet: true,
        per_pool: vec![0; c.pools.len()],
    };
    for k in common.shards(c).iter().cloned() {
        type Row = (bool, i64, i64, Vec<(Option<i64>, Option<i64>, Vec<String>)>);
        let (exists, outbox, pending, pools): Row = common
            .redis
            .run(|mut conn| async move {
                let (head, pools) = (
                    redis::pipe()
                        .exists(&k.meta)
                        .cmd("XLEN")
                        .arg(&k.outbox)
                        .zcard(&k.pending)
                        .query_async::<(bool, i64, i64)>(&mut conn)
                        .await?,
                    {
                        let mut p = redis::pipe();
                        for x in &k.pools {
                            p.get(&x.left).hget(&x.sx, "retn").hvals(&x.xf);
                        }
                        p.query_async::<Vec<(Option<i64>, Option<i64>, Vec<String>)>>(&mut conn)
                            .await?
                    },
                );
                Ok((head.0, head.1, head.2, pools))
            })
            .await?;
        if !exists {
            return Ok(None);
        }
        u.quiet &= outbox == 0 && pending == 0;
        for (t, (left, retn, xf)) in u.per_pool.iter_mut().zip(pools) {
            let moving: usize = xf
                .iter()
                .map(|v| v.split_once('|').map_or(0, |(_, s)| s.split(',').count()))
                .sum();
            *t += left.unwrap_or(0).max(0) + retn.unwrap_or(0) + moving as i64;
        }
    }
    Ok(Some(u))
}

/// Every refusal still `X` (not yet durable) on every shard: (user, seq,
/// the generation of its shard's state), read without blocking (HSCAN).
async fn refusals_in_redis(
    common: &RedisCommon,
    c: &Campaign,
) -> Result<Vec<(UserId, i64, i64)>, AdmissionError> {
    let mut out = Vec::new();
    for k in common.shards(c).iter() {
        let Some(gen) = common.redis.state_generation(k).await? else {
            continue;
        };
        for (u, a) in common.redis.scan_answers(k).await? {
            if let (Ok(Stored::Refusing { seq }), Ok(user)) = (Stored::parse(&a), UserId::parse(u))
            {
                out.push((user, seq, gen));
            }
        }
    }
    Ok(out)
}

/// Units per pool PostgreSQL says should be in Redis: stock less active.
async fn expected(common: &RedisCommon, c: &Campaign) -> Result<Vec<i64>, AdmissionError> {
    let active = common.db.active_per_pool(c.id).await?;
    Ok(c.pools
        .iter()
        .map(|p| i64::from(p.stock) - active.get(&p.id).copied().unwrap_or(0))
        .collect())
}

/// The cheap look: quiet, and every pool's sum agrees.
pub async fn counters_agree(common: &RedisCommon, c: &Campaign) -> Result<bool, AdmissionError> {
    let Some(u) = units(common, c).await? else {
        return Ok(false);
    };
    Ok(u.quiet && u.per_pool == expected(common, c).await?)
}

/// The pass: rebuilds lost shards, and starts every shard again from
/// PostgreSQL when a pool's sum disagrees while nothing is in flight (read
/// twice around PostgreSQL's count, so a claim in between is not drift).
pub async fn reconcile(
    common: &RedisCommon,
    c: &Campaign,
    repair: bool,
    mut r: Report,
) -> Result<Report, AdmissionError> {
    // A transfer left half done would be counted on both shards.
    common.heal_shards(c).await?;
    // Work in flight: skipped before any answer is read, as the unsharded
    // pass does (reading them costs memory and Redis time in the number of
    // claimants, every interval of a rush); gate's orphaned reservations
    // are settled from each shard's pending set meanwhile.
    if matches!(units(common, c).await?, Some(u) if !u.quiet) {
        if repair {
            r.settle_gate_orphans(common, c).await;
        }
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    // Refusals whose request died before they were made durable: made so
    // now (fenced and idempotent).
    let refusing = refusals_in_redis(common, c).await?;
    for (user, seq, gen) in &refusing {
        if repair && common.resolve_refusal(c, user, *seq, *gen).await.is_ok() {
            r.answers_repaired += 1;
        }
    }
    if !refusing.is_empty() {
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    let Some(before) = units(common, c).await? else {
        if repair {
            common.rebuild(c).await?;
            r.rebuilt = true;
        }
        return Ok(r);
    };
    let want = expected(common, c).await?;
    let after = units(common, c).await?;
    if !before.quiet || after.as_ref() != Some(&before) {
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    r.remaining = want.clone();
    let drifted = before
        .per_pool
        .iter()
        .zip(&want)
        .filter(|(h, w)| h != w)
        .count();
    if drifted == 0 {
        return Ok(r);
    }
    r.stock_delta = want.iter().sum::<i64>() - before.per_pool.iter().sum::<i64>();
    tracing::warn!(campaign = %c.id, have = ?before.per_pool, want = ?want, "sharded pools' sums drifted");
    if repair {
        let gen = common.db.generation(c.id).await?;
        common.drop_all(c, gen).await?;
        common.rebuild(c).await?;
        r.pools_repaired = drifted;
        metrics::counter!("firstcome_reconcile_repairs_total", "kind" => "shards").increment(1);
    }
    Ok(r)
}
