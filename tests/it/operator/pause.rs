//! Pause and resume under a rush, in every mode, with two API processes:
//! while paused, new users get 409 `paused` with Retry-After and nothing is
//! remembered for them; users with answers keep them; a redis-queue's
//! queue waits; after the resume the rush completes with exactly the stock
//! granted.

use std::{collections::HashMap, sync::Arc};

use reqwest::Method;
use serde_json::Value;

use super::{actions, admin, claim_raw};
use crate::common::{count, spawn_app, spawn_app_on, until, TestApp};

const STOCK: i64 = 40;
const LATE: usize = 60;

/// Each of `users` claims at once, alternating between the processes.
async fn rush(
    apps: &[Arc<TestApp>],
    id: i64,
    users: Vec<String>,
) -> Vec<(String, (u16, Option<String>, Value))> {
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let app = apps[i % apps.len()].clone();
            tokio::spawn(async move {
                let a = claim_raw(&app, id, &u).await;
                (u, a)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn pause_then_resume(mode: &str) {
    // Two API processes on the same stores, neither running a worker yet
    // (so a redis-queue's early claims stay queued through the pause).
    let app = Arc::new(spawn_app().await);
    app.stop_worker.send(true).unwrap();
    let id = app.campaign(mode, &[("main", STOCK)]).await;
    // An API process only: a worker started and stopped afterwards could
    // already be draining the campaign it found at start.
    let second = Arc::new(crate::common::spawn_api_on(&app.db_url, &app.prefix).await);
    let apps = [app.clone(), second.clone()];
    let early: Vec<String> = (0..10).map(|i| format!("early-{i}")).collect();
    let mut first: HashMap<String, (u16, Value)> = HashMap::new();
    for (u, (s, _, v)) in rush(&apps, id, early.clone()).await {
        assert!(s == 200 || s == 202, "{mode}: early claim {u}: {s} {v}");
        first.insert(u, (s, v));
    }

    let (s, v) = admin(
        &app,
        Method::POST,
        &format!("/v1/campaigns/{id}/pause"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["paused"].as_bool()),
        (200, Some(true)),
        "{mode}: pause {v}"
    );
    // Idempotent.
    let (s, _) = admin(
        &app,
        Method::POST,
        &format!("/v1/campaigns/{id}/pause"),
        Some("alice"),
        None,
    )
    .await;
    assert_eq!(s, 200);

    // A worker starts now: a redis-queue drainer must leave the queue alone.
    let worker = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;

    let late: Vec<String> = (0..LATE).map(|i| format!("late-{i}")).collect();
    let mut during = late.clone();
    during.extend(early.iter().cloned());
    for (u, (s, retry, v)) in rush(&apps, id, during).await {
        if let Some((s0, v0)) = first.get(&u) {
            // Users with an answer keep it.
            assert!(
                s == 200 || s == 202,
                "{mode}: repeat of {u} while paused: {s} {v}"
            );
            if *s0 == 200 {
                assert_eq!((s, &v), (*s0, v0), "{mode}: {u}'s grant changed");
            }
            continue;
        }
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("paused")),
            "{mode}: {u}: {v}"
        );
        assert!(retry.is_some(), "{mode}: 409 paused without Retry-After");
    }
    // Nothing remembered for them: no answer anywhere, no row.
    for u in late.iter().take(10) {
        let (s, v) = second.status(id, u).await;
        assert_eq!(s, 404, "{mode}: {u} has an answer: {v}");
    }
    let batched = format!(
        "SELECT count(*) FROM {} AND x.u LIKE 'late-%'",
        crate::common::refused_users()
    );
    for sql in [
        "SELECT count(*) FROM grants WHERE campaign_id = $1 AND user_id LIKE 'late-%'",
        "SELECT count(*) FROM rejections WHERE campaign_id = $1 AND user_id LIKE 'late-%'",
        &batched,
    ] {
        assert_eq!(count(&app, sql, id).await, 0, "{mode}: {sql}");
    }
    if mode == "redis-queue" {
        // The drainer read the queue (its entries are pending in the
        // group) and granted nothing.
        let (common, _, k) = app.redis_side(id).await;
        let queue = k.queue.clone();
        let n_early = early.len() as i64;
        until("the drainer to read the queue while paused", || {
            let (common, queue) = (common.clone(), queue.clone());
            async move {
                let p: Vec<redis::Value> = common
                    .redis
                    .run(|mut conn| async move {
                        redis::cmd("XPENDING")
                            .arg(&queue)
                            .arg("g")
                            .query_async(&mut conn)
                            .await
                    })
                    .await
                    .unwrap();
                matches!(p.first(), Some(redis::Value::Int(n)) if *n == n_early)
            }
        })
        .await;
        let sql = "SELECT count(*) FROM grants WHERE campaign_id = $1";
        assert_eq!(count(&app, sql, id).await, 0, "granted while paused");
        for u in &early {
            let (_, v) = second.status(id, u).await;
            assert_eq!(v["status"], "queued", "{u} moved while paused: {v}");
        }
    }

    let (s, v) = admin(
        &second,
        Method::POST,
        &format!("/v1/campaigns/{id}/resume"),
        Some("bob"),
        None,
    )
    .await;
    assert_eq!(
        (s, v["paused"].as_bool()),
        (200, Some(false)),
        "{mode}: resume {v}"
    );
    let mut after = late.clone();
    after.extend(early.iter().cloned());
    for (u, (s, _, v)) in rush(&apps, id, after).await {
        assert!(
            s == 200 || s == 202 || (s == 409 && v["status"] == "rejected"),
            "{mode}: {u} after resume: {s} {v}"
        );
    }
    app.wait_durable(id, STOCK).await;
    assert_eq!(app.assert_db_invariants(id).await, STOCK, "{mode}");
    let slots = "SELECT count(DISTINCT slot) FROM grants WHERE campaign_id = $1
                 AND state = 'active' AND slot BETWEEN 1 AND 40";
    assert_eq!(count(&app, slots, id).await, STOCK);

    let log = actions(&app, id).await;
    let who: Vec<(&str, &str)> = log
        .iter()
        .map(|(a, b, _, _)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("bob", "resume"),
            ("alice", "pause"),
            ("alice", "pause"),
            ("admin", "create")
        ],
        "{mode}"
    );
    assert_eq!(log[0].2["paused"], true);
    assert_eq!(log[0].3["paused"], false);
    assert_eq!(log[3].3["pools"][0]["stock"], STOCK);
    worker.stop().await;
}

macro_rules! pause_tests {
    ($($name:ident: $mode:expr,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                pause_then_resume($mode).await;
            }
        )*
    };
}

mod pause_then_resume_under_a_rush {
    use super::pause_then_resume;
    pause_tests! {
        db_lock: "db-lock",
        db_atomic: "db-atomic",
        redis_lua: "redis-lua",
        gate: "gate",
        redis_queue: "redis-queue",
    }
}

/// Two processes: the one that did not pause, holding the campaign loaded
/// before, refuses at once (the decision is in the store), and a rebuild of
/// the Redis state from PostgreSQL keeps the pause.
#[tokio::test]
async fn a_pause_survives_a_rebuild_and_binds_every_process() {
    for (mode, shards) in [
        ("gate", 1),
        ("redis-lua", 1),
        ("redis-queue", 1),
        ("gate", 3),
    ] {
        let app = spawn_app().await;
        let v = app
            .create_campaign(
                serde_json::json!({"name": "p", "mode": mode, "shards": shards,
                "pools": [{"name": "main", "stock": 5}]}),
            )
            .await;
        let id = v["id"].as_i64().unwrap();
        let second = crate::common::spawn_api_on(&app.db_url, &app.prefix).await;
        let (s, _) = second.claim(id, "before", None).await;
        assert!(s == 200 || s == 202);
        let (s, _) = admin(
            &app,
            Method::POST,
            &format!("/v1/campaigns/{id}/pause"),
            None,
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, _, v) = claim_raw(&second, id, "u1").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("paused")),
            "{mode}: {v}"
        );
        // Redis loses the state: the rebuild reads the pause back.
        let (common, c, _) = app.redis_side(id).await;
        let gen = app.db.generation(c.id).await.unwrap();
        common.drop_stale(&c, gen).await.unwrap();
        let (s, _, v) = claim_raw(&second, id, "u2").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("paused")),
            "{mode} after rebuild: {v}"
        );
        let (s, v) = second.claim(id, "before", None).await;
        assert!(s == 200 || s == 202, "{mode}: {v}");
        let (s, _) = admin(
            &app,
            Method::POST,
            &format!("/v1/campaigns/{id}/resume"),
            None,
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = second.claim(id, "u2", None).await;
        assert!(s == 200 || s == 202, "{mode}: after resume {v}");
        second.stop().await;
    }
}

/// A paused redis-queue campaign's queue waits, and its gauges say so: the
/// claims queued before the pause (by a process without a worker) are
/// counted by a worker started after it, with the oldest one's wait.
#[tokio::test]
async fn a_waiting_queue_shows_its_length_and_oldest_wait() {
    let app = crate::common::spawn_app_without_worker().await;
    let id = app.campaign("redis-queue", &[("main", 10)]).await;
    for u in ["a", "b", "c"] {
        let (s, _, v) = claim_raw(&app, id, u).await;
        assert_eq!((s, v["status"].as_str()), (202, Some("queued")), "{v}");
    }
    let path = format!("/v1/campaigns/{id}/pause");
    assert_eq!(admin(&app, Method::POST, &path, None, None).await.0, 200);
    let worker = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    let length = format!("firstcome_queue_length{{campaign=\"{id}\"}} 3");
    let wait = format!("firstcome_queue_oldest_wait_seconds{{campaign=\"{id}\"}} ");
    until("the queue's gauges", || async {
        let m = worker.metrics().await;
        let waited = m
            .lines()
            .find_map(|l| l.strip_prefix(&wait)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        m.contains(&length) && waited > 0.0
    })
    .await;
    // Nothing was drained while paused.
    assert_eq!(app.status(id, "a").await.1["status"], "queued");
}

/// A pause committed in PostgreSQL whose Redis half never ran (the
/// operator's call died after the commit): the reconciler brings the flag
/// to Redis, in each Redis mode.
#[tokio::test]
async fn the_reconciler_carries_a_pause_redis_missed() {
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let app = spawn_app().await;
        let id = app.campaign(mode, &[("main", 5)]).await;
        assert!(matches!(app.claim(id, "a", None).await.0, 200 | 202));
        crate::common::execute(&app, "UPDATE campaigns SET paused = true WHERE id = $1", id).await;
        let (common, c, _) = app.redis_side(id).await;
        assert!(!firstcome::tasks::reconcile::settings_agree(&common, &c)
            .await
            .unwrap());
        let r = firstcome::tasks::reconcile::reconcile(&common, &c, true)
            .await
            .unwrap();
        assert_eq!(r.skipped.as_deref(), Some("settings changed"), "{mode}");
        assert!(firstcome::tasks::reconcile::settings_agree(&common, &c)
            .await
            .unwrap());
        // Redis now refuses new users, whatever copy a process holds.
        let (s, _, v) = claim_raw(&app, id, "b").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("paused")),
            "{mode}: {v}"
        );
    }
}
