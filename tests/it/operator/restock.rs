//! A pool's stock changed while the campaign runs, in every mode: raised
//! during a rush with a second API process holding the campaign loaded
//! before; lowered (refused below what is taken or a held slot); lowered
//! during a rush; and a lower cut off between Redis and PostgreSQL, which
//! the reconciler brings back to PostgreSQL's stock.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{actions, patch::patch};
use crate::common::{count, eventually, spawn_api_on, spawn_app, TestApp};

const MODES: [&str; 5] = ["db-lock", "db-atomic", "gate", "redis-lua", "redis-queue"];

/// A PATCH body setting pool `main` to `n`.
fn stock(n: i64) -> Value {
    json!({"pools": [{"name": "main", "stock": n}]})
}

/// `user`'s final answer: the claim's, or, while it is queued, its status
/// once the drainer decided.
async fn settled(app: &TestApp, id: i64, user: &str) -> Value {
    let (s, v) = app.claim(id, user, None).await;
    assert!(s == 200 || s == 202 || s == 409, "{user}: {s} {v}");
    if v["status"] != "queued" {
        return v;
    }
    eventually(&format!("{user} decided"), || async move {
        let (_, v) = app.status(id, user).await;
        (v["status"] != "queued").then_some(v)
    })
    .await
}

/// The slot of a granted answer; `None` for a refusal (which must be
/// `sold_out`).
fn slot(v: &Value) -> Option<i64> {
    if v["status"] == "granted" {
        return v["slot"].as_i64();
    }
    assert_eq!(v["reason"], "sold_out", "{v}");
    None
}

/// Raise during a rush: a second process that loaded the campaign before
/// the PATCH neither undersells nor oversells: exactly the new stock is
/// granted, slots exactly 1..=new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raise_during_a_rush_grants_exactly_the_new_stock() {
    for mode in MODES {
        let app = Arc::new(spawn_app().await);
        let id = app.campaign(mode, &[("main", 20)]).await;
        let second = Arc::new(spawn_api_on(&app.db_url, &app.prefix).await);
        assert!(slot(&settled(&second, id, "warm").await).is_some());
        let apps = [app.clone(), second.clone()];
        let mut tasks = Vec::new();
        for i in 0..80 {
            let a = apps[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                settled(&a, id, &format!("u{i}")).await
            }));
            if i == 30 {
                let (s, v) = patch(&app, id, stock(30)).await;
                assert_eq!(s, 200, "{mode}: {v}");
            }
        }
        let mut granted = 0;
        for t in tasks {
            granted += i64::from(slot(&t.await.unwrap()).is_some());
        }
        // Everyone refused before the raise stays refused; later arrivals
        // took the new units: exactly 30 (with the warm-up claim).
        assert_eq!(granted + 1, 30, "{mode}");
        app.wait_durable(id, 30).await;
        assert_eq!(app.assert_db_invariants(id).await, 30, "{mode}");
        let sql = "SELECT count(DISTINCT slot) FROM grants WHERE campaign_id = $1
                   AND state = 'active' AND slot BETWEEN 1 AND 30";
        assert_eq!(count(&app, sql, id).await, 30, "{mode}");
        assert_eq!(slot(&settled(&second, id, "late").await), None, "{mode}");
    }
}

/// Lower: below what is taken, 409; at or above, 200, and no slot above
/// the new stock is handed out again (a released one included); a held
/// slot above it, 409.
#[tokio::test]
async fn a_lower_stock_never_hands_out_a_slot_above_it() {
    for mode in MODES {
        let app = spawn_app().await;
        let id = app.campaign(mode, &[("main", 10)]).await;
        for i in 1..=6 {
            let v = settled(&app, id, &format!("u{i}")).await;
            assert_eq!(slot(&v), Some(i), "{mode}: {v}");
        }
        let (s, v) = patch(&app, id, stock(5)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("stock_below_granted")),
            "{mode}: {v}"
        );
        // Slots 5 and 6 go back: 4 granted, released 5 and 6.
        for u in ["u5", "u6"] {
            assert_eq!(app.cancel(id, u).await.0, 200, "{mode}");
        }
        app.wait_durable(id, 4).await;
        let (s, v) = patch(&app, id, stock(3)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("stock_below_granted")),
            "{mode}: {v}"
        );
        // redis-lua drops slot 6 only once the cancellations it wrote
        // behind are in PostgreSQL (409 slot_above_stock until then).
        let v = eventually(&format!("{mode}: lowered to 5"), || async {
            let (s, v) = patch(&app, id, stock(5)).await;
            if s == 409 && v["code"] == "slot_above_stock" && mode == "redis-lua" {
                return None;
            }
            assert_eq!(s, 200, "{mode}: {v}");
            Some(v)
        })
        .await;
        assert_eq!(v["pools"][0]["stock"], 5, "{mode}");
        // One unit left (slot 5); the released slot 6 is gone.
        let mut slots = Vec::new();
        for i in 0..4 {
            slots.extend(slot(&settled(&app, id, &format!("n{i}")).await));
        }
        assert_eq!(slots, [5], "{mode}");
        app.wait_durable(id, 5).await;
        assert_eq!(app.assert_db_invariants(id).await, 5, "{mode}");
        // A held slot above the asked stock: 409 too.
        assert_eq!(app.cancel(id, "u1").await.0, 200);
        let (s, v) = patch(&app, id, stock(4)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("slot_above_stock")),
            "{mode}: {v}"
        );
        let log = actions(&app, id).await;
        assert_eq!(log[0].1, "patch");
        assert_eq!(log[0].2["pools"][0]["stock"], 10, "{mode}");
        assert_eq!(log[0].3["pools"][0]["stock"], 5, "{mode}");
    }
}

/// A lower racing a rush on two processes: it lands (exactly the new stock
/// is granted) or is refused because the units are taken (exactly the old
/// stock is); never more, never a slot above what PostgreSQL says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lower_during_a_rush_is_exact_either_way() {
    for mode in MODES {
        let app = Arc::new(spawn_app().await);
        let id = app.campaign(mode, &[("main", 40)]).await;
        let second = Arc::new(spawn_api_on(&app.db_url, &app.prefix).await);
        let apps = [app.clone(), second.clone()];
        let mut tasks = Vec::new();
        let mut lowered = None;
        for i in 0..70 {
            let a = apps[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                settled(&a, id, &format!("u{i}")).await
            }));
            if i == 10 {
                let (s, v) = patch(&app, id, stock(20)).await;
                assert!(
                    s == 200 || (s == 409 && v["code"] == "stock_below_granted"),
                    "{mode}: {s} {v}"
                );
                lowered = Some(s == 200);
            }
        }
        let mut granted = 0;
        for t in tasks {
            granted += i64::from(slot(&t.await.unwrap()).is_some());
        }
        let want = if lowered == Some(true) { 20 } else { 40 };
        assert_eq!(granted, want, "{mode}");
        app.wait_durable(id, want).await;
        assert_eq!(app.assert_db_invariants(id).await, want, "{mode}");
        assert_eq!(app.campaign_body(id).await["pools"][0]["stock"], want);
    }
}

/// A lower applied to Redis whose PostgreSQL transaction never committed
/// (the process died between the two): Redis refuses early -- never past
/// PostgreSQL's stock -- until the reconciler brings it back to it.
#[tokio::test]
async fn a_lower_cut_off_before_postgresql_is_brought_back() {
    use firstcome::storage::redis::operator::{Fence, Restocked, StockChange};
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let app = spawn_app().await;
        let id = app.campaign(mode, &[("main", 6)]).await;
        for (u, want) in [("u1", 1), ("u2", 2)] {
            assert_eq!(slot(&settled(&app, id, u).await), Some(want), "{mode}");
        }
        let (common, c, k) = app.redis_side(id).await;
        let cut = StockChange {
            pidx: 0,
            stock: 3,
            was: 6,
        };
        // The dead process held the rebuild lock; it expired since.
        crate::common::set(&k.rebuild_lock, "dead").await;
        let fence = Fence {
            lock: &k.rebuild_lock,
            token: "dead",
        };
        let r = common.redis.restock(&k, &[cut], fence).await.unwrap();
        assert_eq!(r, Restocked::Done);
        crate::common::del(&k.rebuild_lock).await;
        assert_eq!(slot(&settled(&app, id, "u3").await), Some(3), "{mode}");
        assert_eq!(slot(&settled(&app, id, "u4").await), None, "{mode}");
        // The reconciler sees Redis bound the pool by 3 where PostgreSQL
        // says 6, and brings it back before comparing anything.
        let r = firstcome::tasks::reconcile::reconcile(&common, &c, true)
            .await
            .unwrap();
        assert_eq!(r.skipped.as_deref(), Some("settings changed"), "{mode}");
        let mut slots = Vec::new();
        for u in ["u5", "u6", "u7", "u8"] {
            slots.extend(slot(&settled(&app, id, u).await));
        }
        assert_eq!(slots, [4, 5, 6], "{mode}");
        app.wait_durable(id, 6).await;
        assert_eq!(app.assert_db_invariants(id).await, 6, "{mode}");
        // Quiet and agreed: the next pass finds nothing to do.
        let r = eventually(&format!("{mode}: a clean pass"), || async {
            let r = firstcome::tasks::reconcile::reconcile(&common, &c, true)
                .await
                .unwrap();
            r.skipped.is_none().then_some(r)
        })
        .await;
        assert_eq!(r.pools_repaired + r.answers_repaired, 0, "{mode}: {r:?}");
    }
}
