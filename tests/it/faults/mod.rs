//! Faults: a flusher or drainer killed mid-batch, SCRIPT FLUSH during a
//! rush, Redis losing a campaign's state, Redis going away and coming back.

mod queue;
mod restarts;

use crate::common;

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::common::{claim_all, count, execute, redis_conn, spawn_app, spawn_app_on, TestApp};
use firstcome::storage::pg::NewGrant;
use serde_json::Value;

async fn rush(
    app: &Arc<TestApp>,
    id: i64,
    users: usize,
    claims: usize,
) -> Vec<(String, u16, Value)> {
    let who = (0..claims).map(|k| format!("user-{}", k % users));
    claim_all(app, id, who, 64)
        .await
        .into_iter()
        .map(|(u, (s, v))| (u, s, v))
        .collect()
}

fn granted_codes(answers: &[(String, u16, Value)]) -> HashSet<String> {
    answers
        .iter()
        .filter(|a| a.1 == 200)
        .map(|a| a.2["code"].as_str().unwrap().to_string())
        .collect()
}

/// Makes `n` entries of `stream` pending for a consumer that then "dies",
/// and gives that consumer the lease, as a worker killed mid-batch leaves.
async fn leave_dead_worker(
    stream: &str,
    lease: &str,
    n: usize,
) -> Vec<(String, Vec<(String, String)>)> {
    let mut c = redis_conn().await;
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead-worker")
        .arg("COUNT")
        .arg(n)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(lease)
        .arg("dead-worker")
        .arg("PX")
        .arg(300)
        .query_async(&mut c)
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|id| {
            let fields = id
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect();
            (id.id, fields)
        })
        .collect()
}

fn keys_of(app: &TestApp, id: i64) -> (String, String, String) {
    let base = format!("{}:{{c{id}}}", app.prefix);
    (
        format!("{base}:outbox"),
        format!("{base}:queue"),
        format!("{base}:lease"),
    )
}

/// A new worker takes over with batches smaller than what it takes over
/// (it must come back for the rest); waits until `n` grants are durable,
/// checks the invariants and returns the new worker and the stored
/// grants' `field`.
async fn take_over(app: &TestApp, id: i64, n: i64, field: &str) -> (TestApp, HashSet<String>) {
    let worker = spawn_app_on(&app.db_url, &app.prefix, |a| a.stream_batch = 7).await;
    app.wait_durable(id, n).await;
    assert_eq!(app.assert_db_invariants(id).await, n);
    let stored = app
        .grants(id)
        .await
        .iter()
        .map(|g| g[field].as_str().unwrap().to_string())
        .collect();
    (worker, stored)
}

/// A campaign in `mode` with stock 100 rushed (300 users, 1,000 claims)
/// while no worker runs.
async fn rush_without_worker(mode: &str) -> (Arc<TestApp>, i64, Vec<(String, u16, Value)>) {
    let app = Arc::new(common::spawn_app_without_worker().await);
    let id = app.campaign(mode, &[("main", 100)]).await;
    let answers = rush(&app, id, 300, 1000).await;
    (app, id, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flusher_killed_mid_batch_loses_and_doubles_nothing() {
    let (app, id, answers) = rush_without_worker("redis-lua").await;
    let codes = granted_codes(&answers);
    assert_eq!(codes.len(), 100);
    let (outbox, _, lease) = keys_of(&app, id);
    let taken = leave_dead_worker(&outbox, &lease, 40).await;
    assert_eq!(taken.len(), 40);
    // The dead worker had committed its first 20 before dying unacked.
    for (_, f) in taken.iter().take(20) {
        let get = |k: &str| f.iter().find(|x| x.0 == k).unwrap().1.clone();
        let pool_id = count(&app, "SELECT id FROM pools WHERE campaign_id = $1", id).await;
        app.db
            .insert_grants(&[NewGrant {
                campaign_id: id,
                pool_id,
                user_id: get("u"),
                slot: get("sl").parse().unwrap(),
                code: get("c"),
                seq: get("s").parse().unwrap(),
            }])
            .await
            .unwrap();
    }
    // A new worker takes over: every acknowledged grant lands, once.
    let (worker, stored) = take_over(&app, id, 100, "code").await;
    assert_eq!(stored, codes);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drainer_killed_mid_batch_grants_in_order_once() {
    let (app, id, answers) = rush_without_worker("redis-queue").await;
    let queued: HashSet<String> = answers
        .iter()
        .filter(|a| a.1 == 202)
        .map(|a| a.0.clone())
        .collect();
    assert_eq!(queued.len(), 100);
    let (_, queue, lease) = keys_of(&app, id);
    assert_eq!(leave_dead_worker(&queue, &lease, 30).await.len(), 30);
    let (worker, granted) = take_over(&app, id, 100, "user_id").await;
    // Fairness: the 100 queued users are the ones granted.
    assert_eq!(queued, granted);
    for u in &queued {
        assert_eq!(app.status(id, u).await.1["status"], "granted");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_flush_mid_rush_fails_no_claim() {
    let app = Arc::new(spawn_app().await);
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 100)]).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flusher = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = redis_conn().await;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _: () = redis::cmd("SCRIPT")
                        .arg("FLUSH")
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    n += 1;
                    tokio::task::yield_now().await;
                }
                n
            })
        };
        let answers = rush(&app, id, 300, 1000).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(flusher.await.unwrap() > 0);
        for (u, s, v) in &answers {
            assert!(matches!(s, 200 | 202 | 409), "{mode}: {u}: {s} {v}");
        }
        app.wait_durable(id, 100).await;
        assert_eq!(app.assert_db_invariants(id).await, 100);
    }
}

async fn delete_campaign_keys(prefix: &str, id: i64) -> usize {
    let mut c = redis_conn().await;
    let pattern = format!("{prefix}:{{c{id}}}:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        common::del(&keys).await;
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_redis_state_is_rebuilt_from_postgres() {
    let app = Arc::new(spawn_app().await);
    for mode in ["gate", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 50)]).await;
        let mut first = Vec::new();
        for i in 0..30 {
            first.push(app.claim(id, &format!("early-{i}"), None).await);
        }
        app.wait_durable(id, 30).await;
        let mut before = Vec::new();
        for i in 0..30 {
            before.push(app.status(id, &format!("early-{i}")).await.1);
        }
        assert!(delete_campaign_keys(&app.prefix, id).await > 0);
        // Early users keep their answers; the rest of the stock still goes.
        for (i, b) in before.iter().enumerate() {
            let (s, v) = app.claim(id, &format!("early-{i}"), None).await;
            assert_eq!((s, &v), (200, b), "{mode}: early-{i} after the loss");
        }
        let answers = rush(&app, id, 100, 100).await;
        let new_wins = answers.iter().filter(|a| matches!(a.1, 200 | 202)).count();
        assert_eq!(new_wins, 20, "{mode}");
        app.wait_durable(id, 50).await;
        assert_eq!(app.assert_db_invariants(id).await, 50);
    }
}
