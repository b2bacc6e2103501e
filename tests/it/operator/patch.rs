//! PATCH of a live campaign: the window's end moved earlier and later in
//! every mode (a second API process holding the campaign loaded before
//! follows), stock raised during a rush and lowered in the db modes, and
//! bad input refused with stable codes.

use std::sync::Arc;

use chrono::{Duration, SubsecRound, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use super::{actions, admin, claim_raw};
use crate::common::{count, eventually, spawn_app, spawn_app_on, TestApp};

async fn patch(app: &TestApp, id: i64, body: Value) -> (u16, Value) {
    admin(
        app,
        Method::PATCH,
        &format!("/v1/campaigns/{id}"),
        Some("carol"),
        Some(body),
    )
    .await
}

/// Claims by fresh users on `app` until one gets `closed` (`want_closed`)
/// or is admitted; the claims made on the way are allowed either answer.
async fn wait_window(app: &TestApp, id: i64, tag: &str, want_closed: bool) {
    let mut n = 0;
    eventually(&format!("{tag}: closed = {want_closed}"), || {
        n += 1;
        let user = format!("{tag}-{n}");
        async move {
            let (s, _, v) = claim_raw(app, id, &user).await;
            let closed = s == 409 && v["reason"] == "closed";
            assert!(closed || s == 200 || s == 202, "{tag}: {s} {v}");
            (closed == want_closed).then_some(())
        }
    })
    .await;
}

async fn move_the_window(mode: &str) {
    let app = spawn_app().await;
    let closes = Utc::now() + Duration::hours(1);
    let v = app
        .create_campaign(json!({"name": "w", "mode": mode, "closes_at": closes,
            "pools": [{"name": "main", "stock": 1000}]}))
        .await;
    let id = v["id"].as_i64().unwrap();
    let second = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    second.stop_worker.send(true).unwrap();
    let (s, first) = second.claim(id, "early", None).await;
    assert!(s == 200 || s == 202, "{mode}: {first}");

    // Earlier: both processes answer `closed` once it passes.
    // Milliseconds: what PostgreSQL and Redis keep exactly.
    let soon = (Utc::now() + Duration::seconds(2)).trunc_subsecs(3);
    let (s, v) = patch(&app, id, json!({ "closes_at": soon })).await;
    assert_eq!(s, 200, "{mode}: {v}");
    assert_eq!(
        v["closes_at"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(soon)
    );
    if mode != "db-lock" && mode != "db-atomic" {
        // The Redis state's window and the keys' expiry follow.
        let (common, c, k) = app.redis_side(id).await;
        assert_eq!(c.closes_at, Some(soon));
        let meta = k.meta.clone();
        let (closes_ms, exp): (String, String) = common
            .redis
            .run(|mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&meta)
                    .arg("closes")
                    .arg("exp")
                    .query_async(&mut conn)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(closes_ms, soon.timestamp_millis().to_string());
        let want = firstcome::modes::redis_common::RedisCommon::expire_at_ms(&c, Utc::now());
        assert_eq!(exp, want.to_string(), "{mode}: keys' expiry");
        let meta = k.meta.clone();
        let pexp: i64 = common
            .redis
            .run(|mut conn| async move {
                redis::cmd("PEXPIRETIME")
                    .arg(&meta)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(pexp, want, "{mode}: meta's expiry");
    }
    wait_window(&app, id, "a", true).await;
    wait_window(&second, id, "b", true).await;
    // The early user keeps the answer.
    let (s, v) = second.status(id, "early").await;
    assert_eq!(s, 200, "{mode}: {v}");
    assert_eq!(v["user_id"], "early");

    // Later: admitted again, here at once, in the other process too.
    let later = (Utc::now() + Duration::hours(2)).trunc_subsecs(3);
    let (s, v) = patch(&app, id, json!({ "closes_at": later })).await;
    assert_eq!(s, 200, "{mode}: {v}");
    let (s, _, v) = claim_raw(&app, id, "after-1").await;
    assert!(s == 200 || s == 202, "{mode}: {v}");
    wait_window(&second, id, "c", false).await;

    let log = actions(&app, id).await;
    assert_eq!((log[0].0.as_str(), log[0].1.as_str()), ("carol", "patch"));
    assert_eq!(
        log[0].3["closes_at"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(later)
    );
    assert_eq!(
        log[1].3["closes_at"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(soon)
    );
    second.stop().await;
}

macro_rules! window_tests {
    ($($name:ident: $mode:expr,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::move_the_window($mode).await;
            }
        )*
    };
}

mod closes_at_moves_the_window {
    window_tests! {
        db_lock: "db-lock",
        db_atomic: "db-atomic",
        redis_lua: "redis-lua",
        gate: "gate",
        redis_queue: "redis-queue",
    }
}

#[tokio::test]
async fn bad_patches_are_refused_with_stable_codes() {
    let app = spawn_app().await;
    let opens = Utc::now() + Duration::hours(1);
    let v = app
        .create_campaign(json!({"name": "b", "mode": "db-lock", "opens_at": opens,
            "pools": [{"name": "main", "stock": 5}]}))
        .await;
    let id = v["id"].as_i64().unwrap();
    let gate = app.campaign("gate", &[("main", 5)]).await;
    let cases: Vec<(i64, Value, u16, &str)> = vec![
        (id, json!({"stock": 3}), 422, "invalid_body"),
        (
            id,
            json!({"pools": [{"name": "main", "stock": 3, "x": 1}]}),
            422,
            "invalid_body",
        ),
        (id, json!({}), 422, "empty_patch"),
        (id, json!({"pools": []}), 422, "no_pools"),
        (
            id,
            json!({"pools": [{"name": "main", "stock": 0}]}),
            422,
            "invalid_stock",
        ),
        (
            id,
            json!({"pools": [{"name": "main", "stock": -4}]}),
            422,
            "invalid_stock",
        ),
        (
            id,
            json!({"pools": [{"name": "main", "stock": 10_000_001}]}),
            422,
            "invalid_stock",
        ),
        (
            id,
            json!({"pools": [{"name": "nope", "stock": 3}]}),
            422,
            "unknown_pool",
        ),
        (
            id,
            json!({"pools": [{"name": "main", "stock": 3}, {"name": "main", "stock": 4}]}),
            422,
            "duplicate_pool",
        ),
        (
            id,
            json!({"closes_at": opens - Duration::minutes(1)}),
            422,
            "invalid_window",
        ),
        (id, json!({"closes_at": "yesterday"}), 422, "invalid_body"),
        (
            id,
            json!({"closes_at": Utc::now() + Duration::days(500)}),
            422,
            "invalid_schedule",
        ),
        (
            gate,
            json!({"closes_at": Utc::now() - Duration::minutes(5)}),
            422,
            "invalid_schedule",
        ),
        (
            gate,
            json!({"pools": [{"name": "main", "stock": 8}]}),
            422,
            "restock_unsupported",
        ),
        (
            999_999,
            json!({"closes_at": opens}),
            404,
            "campaign_not_found",
        ),
    ];
    for (cid, body, status, code) in cases {
        let (s, v) = patch(&app, cid, body.clone()).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    // Not the admin.
    let (s, v) = app
        .send(
            Method::PATCH,
            &format!("/v1/campaigns/{id}"),
            Some(json!({"closes_at": opens + Duration::hours(1)})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    for path in ["pause", "resume"] {
        let (s, _) = app
            .send(Method::POST, &format!("/v1/campaigns/{id}/{path}"), None)
            .await;
        assert_eq!(s, 401, "{path}");
    }
    let (s, _) = app
        .send(Method::GET, &format!("/v1/campaigns/{id}/actions"), None)
        .await;
    assert_eq!(s, 401);
    // A malformed actor.
    let long = "x".repeat(65);
    for actor in [long.as_str(), "  "] {
        let (s, v) = admin(
            &app,
            Method::POST,
            &format!("/v1/campaigns/{id}/pause"),
            Some(actor),
            None,
        )
        .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (400, Some("invalid_actor")),
            "{actor:?}"
        );
    }
    let (s, v) = admin(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}/actions?limit=0"),
        None,
        None,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_limit")));
    // Nothing refused was applied or logged.
    let log = actions(&app, id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(app.campaign_body(id).await["pools"][0]["stock"], 5);
}

/// Raise during a rush (db modes): a second process that loaded the
/// campaign before the PATCH neither undersells nor oversells: exactly the
/// new stock is granted, slots exactly 1..=new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raise_during_a_rush_grants_exactly_the_new_stock() {
    for mode in ["db-lock", "db-atomic"] {
        let app = Arc::new(spawn_app().await);
        let id = app.campaign(mode, &[("main", 20)]).await;
        let second = Arc::new(spawn_app_on(&app.db_url, &app.prefix, |_| {}).await);
        second.stop_worker.send(true).unwrap();
        let (s, _) = second.claim(id, "warm", None).await;
        assert_eq!(s, 200);
        let apps = [app.clone(), second.clone()];
        let mut tasks = Vec::new();
        for i in 0..80 {
            let a = apps[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                let (s, v) = a.claim(id, &format!("u{i}"), None).await;
                assert!(
                    s == 200 || (s == 409 && v["reason"] == "sold_out"),
                    "{s} {v}"
                );
            }));
            if i == 30 {
                let (s, v) =
                    patch(&app, id, json!({"pools": [{"name": "main", "stock": 30}]})).await;
                assert_eq!(s, 200, "{v}");
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Everyone refused before the raise is remembered; later arrivals
        // took the new units: exactly 30.
        assert_eq!(app.assert_db_invariants(id).await, 30, "{mode}");
        let sql = "SELECT count(DISTINCT slot) FROM grants WHERE campaign_id = $1
                   AND state = 'active' AND slot BETWEEN 1 AND 30";
        assert_eq!(count(&app, sql, id).await, 30, "{mode}");
        let (s, v) = second.claim(id, "late", None).await;
        assert_eq!((s, v["reason"].as_str()), (409, Some("sold_out")), "{mode}");
    }
}

/// Lower (db modes): below what is granted, 409; at or above, 200, and no
/// slot above the new stock is handed out again (a released one included).
#[tokio::test]
async fn a_lower_stock_never_hands_out_a_slot_above_it() {
    for mode in ["db-lock", "db-atomic"] {
        let app = spawn_app().await;
        let id = app.campaign(mode, &[("main", 10)]).await;
        for i in 1..=6 {
            let (s, v) = app.claim(id, &format!("u{i}"), None).await;
            assert_eq!((s, v["slot"].as_i64()), (200, Some(i)));
        }
        let lower = |n: i64| json!({"pools": [{"name": "main", "stock": n}]});
        let (s, v) = patch(&app, id, lower(5)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("stock_below_granted")),
            "{v}"
        );
        // Slots 5 and 6 go back: 4 granted, released 5 and 6.
        for u in ["u5", "u6"] {
            assert_eq!(app.cancel(id, u).await.0, 200);
        }
        let (s, v) = patch(&app, id, lower(3)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("stock_below_granted")),
            "{v}"
        );
        let (s, v) = patch(&app, id, lower(5)).await;
        assert_eq!((s, v["pools"][0]["stock"].as_i64()), (200, Some(5)), "{v}");
        // One unit left (slot 5); the released slot 6 is gone.
        let mut slots = Vec::new();
        for i in 0..4 {
            let (s, v) = app.claim(id, &format!("n{i}"), None).await;
            if s == 200 {
                slots.push(v["slot"].as_i64().unwrap());
            } else {
                assert_eq!(v["reason"], "sold_out", "{v}");
            }
        }
        assert_eq!(slots, [5], "{mode}");
        assert_eq!(app.assert_db_invariants(id).await, 5);
        // A held slot above the asked stock: 409 too.
        assert_eq!(app.cancel(id, "u1").await.0, 200);
        let (s, v) = patch(&app, id, lower(4)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("slot_above_stock")),
            "{v}"
        );
        let log = actions(&app, id).await;
        assert_eq!(log[0].1, "patch");
        assert_eq!(log[0].2["pools"][0]["stock"], 10);
        assert_eq!(log[0].3["pools"][0]["stock"], 5);
    }
}
