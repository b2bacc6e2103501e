//! PATCH of a live campaign: the window's end moved earlier and later in
//! every mode (a second API process holding the campaign loaded before
//! follows), and bad input refused with stable codes. Stock changes are
//! in `restock.rs`.

use chrono::{Duration, SubsecRound, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use super::{actions, admin, claim_raw};
use crate::common::{eventually, spawn_api_on, spawn_app, TestApp};

pub(super) async fn patch(app: &TestApp, id: i64, body: Value) -> (u16, Value) {
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
    let second = spawn_api_on(&app.db_url, &app.prefix).await;
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
    let sharded = app
        .create_campaign(json!({"name": "s", "mode": "gate", "shards": 2,
            "pools": [{"name": "main", "stock": 5}]}))
        .await["id"]
        .as_i64()
        .unwrap();
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
            sharded,
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
