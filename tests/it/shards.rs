//! Issue 13: a campaign's pools spread over several Redis shards
//! (`"shards": n`). Skewed demand (most users at home on one shard) still
//! grants exactly the stock; nobody is told `sold_out` while a unit is
//! claimable anywhere (a cancel after the sell-out is claimable from every
//! shard); a transfer left half done is completed; a lost shard starts all
//! of them again from PostgreSQL without losing a grant. On one Redis and
//! on the local cluster.

use std::{collections::HashMap, sync::Arc};

use serde_json::{json, Value};

use crate::common::{self, cluster_url, spawn_app, spawn_app_on, TestApp};
use firstcome::domain::{shard::home_shard, UserId};

/// Users named `{tag}{i}` whose home is shard `want` of `n` (`None`: any),
/// `count` of them.
fn users_on(tag: &str, n: u16, want: Option<u16>, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .filter(|u| want.is_none_or(|w| home_shard(&UserId::parse(u.clone()).unwrap(), n) == w))
        .take(count)
        .collect()
}

/// A sharded campaign; returns its id.
async fn sharded(app: &TestApp, mode: &str, shards: i64, pools: &[(&str, i64)]) -> i64 {
    let pools: Vec<Value> = pools
        .iter()
        .map(|(n, s)| json!({"name": n, "stock": s}))
        .collect();
    let v = app
        .create_campaign(json!({"name": "sharded", "mode": mode, "pools": pools, "shards": shards}))
        .await;
    assert_eq!(v["shards"], json!(shards), "{v}");
    v["id"].as_i64().unwrap()
}

/// Every user claims pool `pool_of(i)` at once (64 in flight); the answers.
async fn rush(
    app: &Arc<TestApp>,
    id: i64,
    users: &[String],
    pool_of: impl Fn(usize) -> &'static str,
) -> Vec<(String, &'static str, u16, Value)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (app, gate, u, p) = (app.clone(), gate.clone(), u.clone(), pool_of(i));
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let (s, v) = app.claim(id, &u, Some(p)).await;
                (u, p, s, v)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The skewed rush and its checks: exactly the stock granted per pool (no
/// oversell, no undersell), distinct slots, every `granted` durable, every
/// answer stable on repeat and on read.
async fn skewed_rush(app: Arc<TestApp>, mode: &str) {
    let pools = [("a", 30_i64), ("b", 17)];
    let id = sharded(&app, mode, 4, &pools).await;
    // 85% of the crowd lives on shard 0: it runs dry first and must find
    // the rest of the stock on the other three. The rest, spread over every shard, interleaved with them: group
    // commits mix users of several shards.
    let hot = users_on("hot", 4, Some(0), 255);
    let mut cold = users_on("cold", 4, None, 45).into_iter();
    let mut users = Vec::new();
    for (i, u) in hot.into_iter().enumerate() {
        if i % 6 == 0 {
            users.extend(cold.next());
        }
        users.push(u);
    }
    users.extend(cold);
    let pool_of = |i: usize| if i.is_multiple_of(3) { "b" } else { "a" };
    let answers = rush(&app, id, &users, pool_of).await;
    let mut granted: HashMap<&str, i64> = HashMap::new();
    for (u, p, s, v) in &answers {
        match (s, v["status"].as_str()) {
            (200, Some("granted")) => *granted.entry(p).or_default() += 1,
            (409, Some("rejected")) => assert_eq!(v["reason"], "sold_out", "{mode}: {u} {v}"),
            _ => panic!("{mode}: {u} got {s} {v}"),
        }
    }
    for (p, stock) in pools {
        assert_eq!(
            granted.get(p).copied().unwrap_or(0),
            stock,
            "{mode}: pool {p}"
        );
    }
    app.wait_durable(id, 47).await;
    assert_eq!(app.assert_db_invariants(id).await, 47, "{mode}");
    // Before any read settles them: every winner's answer was promoted on
    // its own shard before it was told (a promotion sent to another
    // shard's hash would leave it pending there, for the orphan sweeper).
    let (rc, c, _) = app.redis_side(id).await;
    for (u, _, s, _) in &answers {
        if *s == 200 {
            let user = UserId::parse(u.clone()).unwrap();
            let (_, raw, _) = rc
                .redis
                .read_answer(&rc.keys_for(&c, &user), u)
                .await
                .unwrap();
            assert!(
                raw.as_deref().is_some_and(|a| a.starts_with("G|")),
                "{mode}: {u}: {raw:?}"
            );
        }
    }

    let codes: Vec<String> = app
        .grants(id)
        .await
        .iter()
        .map(|g| g["code"].as_str().unwrap().to_string())
        .collect();
    for (u, p, _, v) in answers.iter().step_by(3) {
        if v["status"] == "granted" {
            assert!(
                codes.contains(&v["code"].as_str().unwrap().to_string()),
                "{mode}: {u}'s grant lost"
            );
        }
        assert_eq!(&app.claim(id, u, Some(p)).await.1, v, "{mode}: {u} repeat");
        assert_eq!(&app.status(id, u).await.1, v, "{mode}: {u} read");
    }
    let body = app.campaign_body(id).await;
    assert_eq!(common::total_granted(&body), 47, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_skewed_demand_on_four_shards_grants_exactly_the_stock() {
    skewed_rush(Arc::new(spawn_app().await), "gate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lua_skewed_demand_on_four_shards_grants_exactly_the_stock() {
    skewed_rush(Arc::new(spawn_app().await), "redis-lua").await;
}

/// An app on a fresh database and the shared local cluster.
async fn on_cluster() -> Arc<TestApp> {
    let name = common::unique("shards");
    let db_url = common::fresh_database(&name).await;
    let url = cluster_url();
    Arc::new(
        spawn_app_on(&db_url, &name, |a| a.stores.redis_url = url)
            .await
            .owning_database(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_skewed_demand_on_a_cluster_grants_exactly_the_stock() {
    skewed_rush(on_cluster().await, "gate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lua_skewed_demand_on_a_cluster_grants_exactly_the_stock() {
    skewed_rush(on_cluster().await, "redis-lua").await;
}

/// After the pool sold out (and its shards were marked so), a cancel on
/// one shard makes the unit claimable from another: the next claimant
/// there gets it, and the earlier `sold_out` answers stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_given_back_after_the_sell_out_is_claimable_from_every_shard() {
    let app = Arc::new(spawn_app().await);
    for mode in ["gate", "redis-lua"] {
        let id = sharded(&app, mode, 4, &[("main", 8)]).await;
        let winners = users_on(&format!("{mode}w"), 4, None, 8);
        for u in &winners {
            assert_eq!(app.claim(id, u, None).await.0, 200, "{mode}: {u}");
        }
        // Losers on every shard: each proves (or finds marked) the sell-out.
        let losers: Vec<String> = (0..4)
            .flat_map(|s| users_on(&format!("{mode}l"), 4, Some(s), 2))
            .collect();
        for u in &losers {
            let (s, v) = app.claim(id, u, None).await;
            assert_eq!(
                (s, v["reason"].as_str()),
                (409, Some("sold_out")),
                "{mode}: {u} {v}"
            );
        }
        app.wait_durable(id, 8).await;
        let gone = &winners[0];
        let from = home_shard(&UserId::parse(gone.clone()).unwrap(), 4);
        assert_eq!(app.cancel(id, gone).await.0, 200, "{mode}");
        // Writing behind, the unit comes back once the cancel is durable
        // (its slot may leave the shard: see lua/cancel.lua).
        app.wait_campaign(id, "the unit back at a door", |v| {
            v["pools"][0]["remaining"] == 1
        })
        .await;
        let next = users_on(&format!("{mode}n"), 4, Some((from + 1) % 4), 1).remove(0);
        let (s, v) = app.claim(id, &next, None).await;
        assert_eq!(
            s, 200,
            "{mode}: the unit given back on shard {from} was not found: {v}"
        );
        let (s, v) = app.claim(id, &format!("{mode}-late"), None).await;
        assert_eq!(
            (s, v["reason"].as_str()),
            (409, Some("sold_out")),
            "{mode}: {v}"
        );
        for u in &losers {
            assert_eq!(
                app.status(id, u).await.1["reason"],
                "sold_out",
                "{mode}: {u}"
            );
        }
        app.wait_durable(id, 8).await;
        assert_eq!(app.assert_db_invariants(id).await, 8, "{mode}");
    }
}

/// A process that died between a shard giving stock and the dry shard
/// taking it leaves the transfer recorded on the giver: the next dry
/// claimant completes it, and every unit is still granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_left_half_done_is_completed() {
    let app = Arc::new(spawn_app().await);
    let id = sharded(&app, "gate", 2, &[("main", 8)]).await;
    let (common, c, _) = app.redis_side(id).await;
    let ks = common.shards(&c);
    let gen = common
        .redis
        .state_generation(&ks[1])
        .await
        .unwrap()
        .unwrap();
    // Shard 1 owns slots 5..=8 and gives two of them to shard 0; nobody
    // takes them.
    let gave = common
        .redis
        .give(&ks[1], 0, "lost", 0, 16, gen, 8)
        .await
        .unwrap();
    assert_eq!(
        gave,
        firstcome::storage::redis::shards::Gave::Slots(vec![5, 6])
    );
    let users = users_on("t", 2, Some(0), 9);
    let mut granted = 0;
    for u in &users {
        let (s, v) = app.claim(id, u, None).await;
        match s {
            200 => granted += 1,
            409 => assert_eq!(granted, 8, "sold out before the stock was: {v}"),
            _ => panic!("{u}: {s} {v}"),
        }
    }
    assert_eq!(granted, 8);
    assert!(common.redis.transfers(&ks[1], 0).await.unwrap().is_empty());
    assert_eq!(app.assert_db_invariants(id).await, 8);
}

/// One shard's state lost mid-rush: every shard is started again from
/// PostgreSQL (a new generation), no acknowledged grant is lost, and the
/// stock is still granted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_shard_restarts_them_all_from_postgres() {
    let app = Arc::new(spawn_app().await);
    for mode in ["gate", "redis-lua"] {
        let id = sharded(&app, mode, 4, &[("main", 20)]).await;
        let first = users_on(&format!("{mode}a"), 4, None, 10);
        let mut told = Vec::new();
        for u in &first {
            let (s, v) = app.claim(id, u, None).await;
            assert_eq!(s, 200, "{mode}: {v}");
            told.push((u.clone(), v));
        }
        app.wait_durable(id, 10).await;
        let (common, c, _) = app.redis_side(id).await;
        common::del(&common.shards(&c)[2].meta).await;
        let rest = users_on(&format!("{mode}b"), 4, None, 30);
        let answers = rush(&app, id, &rest, |_| "main").await;
        let granted = answers.iter().filter(|a| a.2 == 200).count();
        assert!(
            answers.iter().all(|a| matches!(a.2, 200 | 409 | 503)),
            "{mode}"
        );
        // 503s (the rebuild) may ask again; then the stock is exact.
        for (u, _, s, _) in &answers {
            if *s == 503 {
                let (s, v) = app.claim(id, u, None).await;
                assert!(matches!(s, 200 | 409), "{mode}: {u} {s} {v}");
            }
        }
        app.wait_durable(id, 20).await;
        assert_eq!(
            app.assert_db_invariants(id).await,
            20,
            "{mode} ({granted} granted in the rush)"
        );
        for (u, v) in &told {
            assert_eq!(&app.status(id, u).await.1, v, "{mode}: {u}'s grant changed");
        }
    }
}

#[tokio::test]
async fn shards_are_checked() {
    let app = spawn_app().await;
    for (mode, shards, code) in [
        ("redis-queue", 2, "shards_unsupported"),
        ("db-lock", 2, "shards_unsupported"),
        ("gate", 0, "invalid_shards"),
        ("gate", 65, "invalid_shards"),
    ] {
        let spec = json!({"name": "x", "mode": mode, "pools": [{"name": "p", "stock": 5}], "shards": shards});
        let (s, v) = app.post_admin("/v1/campaigns", spec).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some(code)),
            "{mode} {shards}: {v}"
        );
    }
    let id = app.campaign("redis-queue", &[("p", 5)]).await;
    assert_eq!(app.campaign_body(id).await["shards"], 1);
}

/// Sells `stock` to users spread over the shards, then has a loser on every
/// shard told `sold_out` (so every shard is marked); returns the winners.
async fn sell_out(app: &TestApp, id: i64, tag: &str, stock: usize) -> Vec<String> {
    let winners = users_on(&format!("{tag}w"), 4, None, stock);
    for u in &winners {
        assert_eq!(app.claim(id, u, None).await.0, 200, "{tag}: {u}");
    }
    for s in 0..4 {
        let u = users_on(&format!("{tag}l"), 4, Some(s), 1).remove(0);
        let (st, v) = app.claim(id, &u, None).await;
        assert_eq!(
            (st, v["reason"].as_str()),
            (409, Some("sold_out")),
            "{tag}: {v}"
        );
    }
    winners
}

/// A cancel whose caller died before publishing its unit (the unit waits
/// in its shard's `retn`, every other shard still marked sold out): the
/// worker publishes it, and it is claimable from another shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_given_back_by_a_caller_that_died_is_published_by_the_worker() {
    let app = Arc::new(spawn_app().await);
    let id = sharded(&app, "gate", 4, &[("main", 4)]).await;
    let winners = sell_out(&app, id, "dead", 4).await;
    let gone = &winners[0];
    let (common, c, _) = app.redis_side(id).await;
    let user = UserId::parse(gone.clone()).unwrap();
    // PostgreSQL cancels; the mirror in Redis runs the script only, as a
    // process dying right after it would leave it.
    let mut tx = common.db.begin().await.unwrap();
    tx.cancel_grant(c.id, &user, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let k = common.keys_for(&c, &user);
    let r = common.redis.cancel(&k, 0, gone, None, false).await.unwrap();
    assert_eq!(r[0], "cancelled");
    app.wait_campaign(id, "the worker publishing the unit", |v| {
        v["pools"][0]["remaining"] == 1
    })
    .await;
    let from = k.shard;
    let next = users_on("deadn", 4, Some((from + 1) % 4), 1).remove(0);
    let (s, v) = app.claim(id, &next, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.assert_db_invariants(id).await, 4);
}

/// redis-lua holds a cancel's slot back until the cancel is durable: until
/// then no shard may prove the pool sold out (it answers 503, never a
/// `sold_out` that the unit's return would contradict).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_not_yet_flushed_is_never_answered_sold_out() {
    let app = Arc::new(common::spawn_app_without_worker().await);
    let id = sharded(&app, "redis-lua", 4, &[("main", 4)]).await;
    let winners = sell_out(&app, id, "held", 4).await;
    let gone = &winners[0];
    assert_eq!(app.cancel(id, gone).await.0, 200);
    let from = home_shard(&UserId::parse(gone.clone()).unwrap(), 4);
    for s in (0..4).filter(|s| *s != from) {
        let u = users_on("heldn", 4, Some(s), 1).remove(0);
        let (st, v) = app.claim(id, &u, None).await;
        assert_eq!(
            st, 503,
            "shard {s}: no flusher runs, so the unit is not back yet: {v}"
        );
    }
}

/// A refusal whose request died before it was made durable (`X` on its
/// shard), and a pool whose sum drifted: the reconciler makes the first
/// durable and starts the shards again from PostgreSQL for the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_settles_refusals_and_drift_on_every_shard() {
    use firstcome::tasks::reconcile::reconcile;
    let app = Arc::new(common::spawn_app_without_worker().await);
    let id = sharded(&app, "gate", 3, &[("main", 6)]).await;
    sell_out_3(&app, id).await;
    let (rc, c, _) = app.redis_side(id).await;
    // A loser on shard 2 whose refusal never reached PostgreSQL.
    let u = users_on("lost", 3, Some(2), 1).remove(0);
    let k = rc.keys_for(&c, &UserId::parse(u.clone()).unwrap());
    let mut conn = common::redis_conn().await;
    let _: () = redis::cmd("HSET")
        .arg(&k.ans)
        .arg(&u)
        .arg("X|999")
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = reconcile(&rc, &c, true).await.unwrap();
    assert_eq!(r.answers_repaired, 1, "{r:?}");
    let (s, v) = app.status(id, &u).await;
    assert_eq!(
        (s, v["reason"].as_str(), v["seq"].as_i64()),
        (200, Some("sold_out"), Some(999)),
        "{v}"
    );
    // Drift: a unit that is not there appears at one shard's door.
    let _: () = redis::cmd("INCR")
        .arg(&k.pools[0].left)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = reconcile(&rc, &c, true).await.unwrap();
    assert_eq!((r.pools_repaired, r.stock_delta), (1, -1), "{r:?}");
    let (s, v) = app.claim(id, "after-drift", None).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("sold_out")), "{v}");
    assert_eq!(app.assert_db_invariants(id).await, 6);
}

/// Sells a 3-shard campaign of 6 out, a loser told so on every shard.
async fn sell_out_3(app: &TestApp, id: i64) {
    for u in users_on("s3w", 3, None, 6) {
        assert_eq!(app.claim(id, &u, None).await.0, 200, "{u}");
    }
    for s in 0..3 {
        let u = users_on("s3l", 3, Some(s), 1).remove(0);
        assert_eq!(app.claim(id, &u, None).await.0, 409, "{u}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    /// A sharded gate campaign answers as the unsharded model does, claim
    /// by claim: a unit given back is claimable from every shard at once,
    /// and nobody is told sold_out while a unit is left anywhere.
    #[test]
    fn a_sharded_campaign_follows_the_model(
        stock in 1i64..7,
        shards in 2i64..5,
        ops in crate::properties::ops(8, 1),
    ) {
        crate::properties::runtime().block_on(crate::properties::run_http("gate", stock, shards, ops))?;
    }
}
