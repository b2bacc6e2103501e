//! The reconciler (seed 004's scheduler, made safe to run any time):
//! recomputes each pool's grants, users and slots from PostgreSQL, compares
//! them with Redis, repairs the drift, and reports what it repaired.
//!
//! Repairs never race the rush: answers are replaced only if they are still
//! what was read, and counters with a compare-and-set script guarded by the
//! arrival counter. A campaign with work in flight (an outbox or queue not
//! yet drained, a gate commit pending) is skipped and retried later.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::Utc;
use tokio::sync::watch;

use crate::{
    domain::{Campaign, CampaignId, Mode},
    modes::{
        redis_common::{RedisCommon, Stored},
        script_mode, AdmissionError,
    },
    storage::redis::CampaignKeys,
};

pub use super::report::Report;

/// Reconciles one campaign. With `repair` false it only reports.
pub async fn reconcile(
    common: &RedisCommon,
    c: &Campaign,
    repair: bool,
) -> Result<Report, AdmissionError> {
    let mut r = Report {
        campaign: c.id.0,
        mode: c.mode.as_str().into(),
        ..Default::default()
    };
    if !c.mode.uses_redis() {
        r.skipped = Some("not a redis mode".into());
        return Ok(r);
    }
    if RedisCommon::keys_expired(c, Utc::now()) {
        r.skipped = Some("expired".into());
        return Ok(r);
    }
    // An operator's change that committed in PostgreSQL but whose Redis
    // half did not run (the lock lost, Redis down): the pause flag and the
    // window are brought to what PostgreSQL holds before anything else.
    if !settings_agree(common, c).await? {
        if repair {
            common.apply_settings(c).await?;
            metrics::counter!("firstcome_reconcile_repairs_total", "kind" => "settings")
                .increment(1);
        }
        r.skipped = Some("settings changed".into());
        return Ok(r);
    }
    if c.shards > 1 {
        return super::sharded::reconcile(common, c, repair, r).await;
    }
    let k = common.keys(c);
    // Work in flight (an outbox or queue not yet written, a reservation not
    // yet committed): Redis is legitimately ahead of PostgreSQL and the pass
    // would skip. Found before the answers are read: reading them costs
    // memory and Redis time in the number of claimants (a 10 M-user rush
    // held gigabytes every interval, docs/BENCHMARKS.md). Only gate's
    // orphans are settled meanwhile; a refusal whose request died (never
    // told) waits for a quiet pass or the user's next read.
    if state_loaded(common, &k).await? && !quiet(common, c).await? {
        if repair {
            r.settle_gate_orphans(common, c).await;
        }
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    let snapshot = read_redis(common, c).await?;
    let Some(snap) = snapshot else {
        if repair {
            common.rebuild(c).await?;
            r.rebuilt = true;
            metrics::counter!("firstcome_reconcile_repairs_total", "kind" => "rebuild")
                .increment(1);
        }
        return Ok(r);
    };
    // Work in flight means Redis is legitimately ahead of PostgreSQL.
    let mut busy = snap.stream_len > 0 || snap.queued > 0;
    let now_ms = common.redis_now_ms(c).await?;
    for (user, s) in &snap.answers {
        match s {
            Stored::Pending { at_ms, .. } if now_ms - at_ms > common.orphan_after_ms => {
                if repair {
                    let u = crate::domain::UserId::parse(user.clone()).map_err(|e| {
                        crate::storage::redis::RedisStoreError::Protocol(e.to_string())
                    })?;
                    common.resolve_orphan(c, &u, s).await?;
                    r.orphans_settled += 1;
                }
                busy = true;
            }
            Stored::Refusing { seq } => {
                // A refusal whose request died before it was made durable:
                // make it so now (fenced and idempotent).
                if repair {
                    let u = crate::domain::UserId::parse(user.clone()).map_err(|e| {
                        crate::storage::redis::RedisStoreError::Protocol(e.to_string())
                    })?;
                    if common.resolve_refusal(c, &u, *seq, snap.gen).await.is_ok() {
                        r.answers_repaired += 1;
                    }
                }
                busy = true;
            }
            Stored::Pending { .. } | Stored::Queued { .. } => busy = true,
            _ => {}
        }
    }
    if busy {
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    let truth = common.truth(c).await?;
    // Quiet again after reading both sides: a cancellation (or a claim)
    // between the first look and the answers' scan would otherwise be read
    // from Redis but not yet from PostgreSQL, and "repaired" back.
    if !quiet(common, c).await? {
        r.skipped = Some("busy".into());
        return Ok(r);
    }
    r.users = snap.answers.len();
    // Answers: PostgreSQL's grants win.
    let pg_codes: HashSet<&str> = truth
        .answers
        .iter()
        .filter_map(|(_, s)| match s {
            Stored::Granted { code, .. } | Stored::Cancelled { code, .. } => Some(code.as_str()),
            _ => None,
        })
        .collect();
    let mut fixes = Vec::new();
    for (user, want) in &truth.answers {
        let have = snap.answers.get(user);
        if have != Some(want) {
            fixes.push((
                user.clone(),
                have.map(Stored::encode).unwrap_or_default(),
                want.encode(),
            ));
        }
    }
    // Redis-only grants: their slots stay taken, they are reported.
    let mut taken: Vec<HashSet<i32>> = truth
        .active
        .iter()
        .map(|a| a.iter().copied().collect())
        .collect();
    for s in snap.answers.values() {
        if let Stored::Granted {
            pidx, slot, code, ..
        } = s
        {
            // PostgreSQL knows the grant (active, or cancelled: the answer
            // fix above follows it); otherwise Redis alone holds it.
            if !pg_codes.contains(code.as_str()) {
                r.unbacked_grants += 1;
                if let Some(t) = taken.get_mut(*pidx as usize) {
                    t.insert(*slot);
                }
            }
        }
    }
    if repair && !fixes.is_empty() {
        r.answers_repaired = common.promote(c, &fixes, false).await? as usize;
        metrics::counter!("firstcome_reconcile_repairs_total", "kind" => "answer")
            .increment(r.answers_repaired as u64);
    }
    // Counters and free slots per pool.
    for (i, pool) in c.pools.iter().enumerate() {
        let hw = snap.hw[i];
        let want_left = pool.stock as i64 - taken[i].len() as i64;
        let want_free: Vec<i32> = (1..=hw).filter(|s| !taken[i].contains(s)).collect();
        let mut have_free = snap.free[i].clone();
        have_free.sort_unstable();
        if snap.left[i] == want_left && have_free == want_free {
            r.remaining.push(want_left);
            continue;
        }
        r.stock_delta += want_left - snap.left[i];
        if repair {
            let seen = (snap.seq, snap.left[i], snap.free[i].len());
            let done = common
                .redis
                .repair(&k, i, seen, (pool.stock, want_left), &want_free)
                .await?;
            if done {
                r.pools_repaired += 1;
                metrics::counter!("firstcome_reconcile_repairs_total", "kind" => "counters")
                    .increment(1);
            } else {
                r.skipped = Some("busy".into());
            }
        }
        r.remaining.push(want_left);
    }
    if r.answers_repaired + r.pools_repaired + r.unbacked_grants > 0 {
        tracing::warn!(report = ?r, "reconciler found drift");
    }
    Ok(r)
}

/// Whether every shard's loaded state holds what PostgreSQL says of the
/// operator's settings: the pause flag and window end (`meta` `paused`,
/// `closes`) and, unsharded, each pool's stock bound (`last:<pool>`: a
/// restock cut off between the stores leaves it below PostgreSQL's). A
/// shard with no state agrees (whoever loads it reads PostgreSQL). Checked
/// before anything else: `apply_settings` mends all three at once.
pub async fn settings_agree(common: &RedisCommon, c: &Campaign) -> Result<bool, AdmissionError> {
    let mut want = vec![
        ("paused", (if c.paused { "1" } else { "0" }).to_string()),
        (
            "closes",
            c.closes_at
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default(),
        ),
    ];
    let lasts: Vec<(String, String)> = if c.shards <= 1 {
        c.pools
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("last:{i}"), p.stock.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    want.extend(lasts.iter().map(|(f, v)| (f.as_str(), v.clone())));
    let fields: Vec<String> = want.iter().map(|(f, _)| f.to_string()).collect();
    for k in common.shards(c).iter() {
        let (meta, fields) = (k.meta.clone(), fields.clone());
        let have: Vec<Option<String>> = common
            .redis
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&meta)
                    .arg(&fields)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // No state (no `paused`): nothing to compare. A state loaded before
        // restocks has no `last:<pool>`: bounded by the stock it was loaded
        // with, which the counters' check compares.
        if have.first().is_none_or(Option::is_none) {
            continue;
        }
        let differs = want
            .iter()
            .zip(&have)
            .any(|((_, w), h)| h.as_ref().is_some_and(|h| h != w));
        if differs {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The periodic pass's cheap look, O(pools) rather than O(users): `true`
/// when the campaign is quiet (nothing queued, outboxed or pending) and
/// every pool's counters agree with PostgreSQL's active grants (stock left
/// plus active is the stock, slots handed out less slots free is active). Any drift
/// that matters moves a counter (a lost grant, a cancel Redis missed, a
/// slot taken twice), so only then does the full pass read every answer.
pub async fn counters_agree(common: &RedisCommon, c: &Campaign) -> Result<bool, AdmissionError> {
    if c.shards > 1 {
        return super::sharded::counters_agree(common, c).await;
    }
    let k = common.keys(c);
    let stream = work_stream(c, &k);
    // One round trip: whether the state exists and the campaign is quiet
    // (stream, queued, pending), then per pool: left, hw, free.
    let v: Vec<Option<i64>> = common
        .redis
        .run(|mut conn| async move {
            let mut p = redis::pipe();
            p.exists(&k.meta)
                .cmd("XLEN")
                .arg(&stream)
                .get(&k.queued)
                .zcard(&k.pending);
            for x in &k.pools {
                p.get(&x.left).get(&x.hw).zcard(&x.free);
            }
            p.query_async(&mut conn).await
        })
        .await?;
    let n = |x: Option<&Option<i64>>| x.copied().flatten().unwrap_or(0);
    let (head, counts) = v.split_at(4.min(v.len()));
    let [exists, stream_len, queued, pending] = [0, 1, 2, 3].map(|i| n(head.get(i)));
    if exists == 0 || stream_len > 0 || queued > 0 || pending > 0 {
        return Ok(false);
    }
    let active = common.db.active_per_pool(c.id).await?;
    Ok(c.pools.iter().zip(counts.chunks(3)).all(|(pool, lhf)| {
        let a = active.get(&pool.id).copied().unwrap_or(0);
        let [l, h, f] = [0, 1, 2].map(|j| n(lhf.get(j)));
        l == pool.stock as i64 - a && h - f == a
    }))
}

/// The stream the campaign's claims feed (redis-lua's outbox, redis-queue's
/// queue; gate's outbox stays empty).
fn work_stream(c: &Campaign, k: &CampaignKeys) -> String {
    script_mode(c.mode)
        .map(|m| m.stream(k).to_string())
        .unwrap_or_else(|| k.outbox.clone())
}

/// Whether the campaign's state is loaded whole enough to compare: its
/// generation and its answers hash (see [`read_redis`]).
async fn state_loaded(common: &RedisCommon, k: &CampaignKeys) -> Result<bool, AdmissionError> {
    let (meta, ans) = (k.meta.clone(), k.ans.clone());
    let (gen, whole): (Option<i64>, bool) = common
        .redis
        .run(|mut conn| async move {
            redis::pipe()
                .hget(&meta, "gen")
                .hexists(&ans, "#")
                .query_async(&mut conn)
                .await
        })
        .await?;
    Ok(gen.is_some() && whole)
}

/// Whether nothing is in flight: the outbox or queue empty, nothing queued,
/// no gate reservation pending.
async fn quiet(common: &RedisCommon, c: &Campaign) -> Result<bool, AdmissionError> {
    let k = common.keys(c);
    let stream = work_stream(c, &k);
    let (len, queued, pending): (i64, Option<i64>, i64) = common
        .redis
        .run(|mut conn| async move {
            redis::pipe()
                .cmd("XLEN")
                .arg(&stream)
                .get(&k.queued)
                .zcard(&k.pending)
                .query_async(&mut conn)
                .await
        })
        .await?;
    Ok(len == 0 && queued.unwrap_or(0) == 0 && pending == 0)
}

/// Redis' side of a campaign, read without blocking the rush (HSCAN).
struct Snapshot {
    gen: i64,
    answers: HashMap<String, Stored>,
    seq: i64,
    queued: i64,
    stream_len: i64,
    left: Vec<i64>,
    hw: Vec<i32>,
    free: Vec<Vec<i32>>,
}

async fn read_redis(
    common: &RedisCommon,
    c: &Campaign,
) -> Result<Option<Snapshot>, AdmissionError> {
    let k = common.keys(c);
    let stream = work_stream(c, &k);
    let k2 = k.clone();
    let (gen, seq, queued, stream_len, whole): (Option<i64>, Option<i64>, Option<i64>, i64, bool) =
        common
            .redis
            .run(|mut conn| async move {
                redis::pipe()
                    .hget(&k2.meta, "gen")
                    .get(&k2.seq)
                    .get(&k2.queued)
                    .cmd("XLEN")
                    .arg(&stream)
                    .hexists(&k2.ans, "#")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
    // A state without its answers hash (keys expiring one by one) is a lost
    // one: comparing it would "repair" answers into a hash with no expiry.
    let Some(gen) = gen.filter(|_| whole) else {
        return Ok(None);
    };
    let mut left = Vec::new();
    let mut hw = Vec::new();
    let mut free = Vec::new();
    for pk in &k.pools {
        let pk = pk.clone();
        let (l, h, f): (Option<i64>, Option<i32>, Vec<i32>) = common
            .redis
            .run(|mut conn| async move {
                redis::pipe()
                    .get(&pk.left)
                    .get(&pk.hw)
                    .zrange(&pk.free, 0, -1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        left.push(l.unwrap_or(0));
        hw.push(h.unwrap_or(0));
        free.push(f);
    }
    let mut answers = HashMap::new();
    for (u, a) in common.redis.scan_answers(&k).await? {
        let s = Stored::parse(&a)?;
        answers.insert(u, s);
    }
    Ok(Some(Snapshot {
        gen,
        answers,
        seq: seq.unwrap_or(0),
        queued: queued.unwrap_or(0),
        stream_len,
        left,
        hw,
        free,
    }))
}

/// Runs the reconciler over every live Redis-mode campaign every
/// `interval`, and once more (the final correction pass) after a campaign
/// closes, logging what is left over.
pub async fn run(common: RedisCommon, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut final_done: HashSet<CampaignId> = HashSet::new();
    while !*shutdown.borrow() {
        let _ = tokio::time::timeout(interval, shutdown.changed()).await;
        if *shutdown.borrow() {
            break;
        }
        let ids = match common.db.live_campaigns(&Mode::redis_modes()).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "reconciler: cannot list campaigns");
                continue;
            }
        };
        for id in ids {
            let Ok(Some(c)) = common.db.load_campaign(id).await else {
                continue;
            };
            let closed = c.closes_at.is_some_and(|t| t <= Utc::now());
            if closed && final_done.contains(&id) {
                continue;
            }
            // While open, the full pass runs only when the cheap look finds
            // drift (or cannot tell); the final pass after closing is full.
            if !closed
                && matches!(settings_agree(&common, &c).await, Ok(true))
                && matches!(counters_agree(&common, &c).await, Ok(true))
            {
                continue;
            }
            match reconcile(&common, &c, true).await {
                Ok(r) if closed && r.skipped.is_none() => {
                    tracing::info!(campaign = %id, leftovers = ?r.remaining, unbacked = r.unbacked_grants,
                        repaired = r.answers_repaired + r.pools_repaired, "final correction pass after closing");
                    final_done.insert(id);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, campaign = %id, "reconciler failed"),
            }
        }
    }
}
