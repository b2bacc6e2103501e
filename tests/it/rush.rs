//! Concurrent rushes against every mode, single pool and six pools, with
//! every invariant (docs/ARCHITECTURE.md) checked from PostgreSQL and the answers.

use crate::common;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::common::{spawn_app, TestApp};
use serde_json::Value;
use tokio::sync::Semaphore;

/// Fires `claims` claims from `users` distinct users (the rest repeats) at
/// the campaign with up to 128 in flight; returns (user, pool, status, body)
/// in completion order.
async fn fire(
    app: &Arc<TestApp>,
    id: i64,
    pools: &[(&str, i64)],
    users: usize,
    claims: usize,
) -> Vec<(String, usize, u16, Value)> {
    let gate = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::new();
    for k in 0..claims {
        let app = app.clone();
        let gate = gate.clone();
        // Repeats interleave with first claims: user k % users.
        let u = k % users;
        let p = u % pools.len();
        let pool = pools[p].0.to_string();
        let named = pools.len() > 1 || u.is_multiple_of(2); // one-pool campaigns accept no pool name
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let user = format!("user-{u}");
            let (s, v) = app.claim(id, &user, named.then_some(pool.as_str())).await;
            (user, p, s, v)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn rush(mode: &str, pools: &[(&str, i64)], users: usize, claims: usize) {
    rush_on(&Arc::new(spawn_app().await), mode, pools, users, claims).await;
}

/// A rush on `app` (a new campaign in `mode`), then every invariant.
pub async fn rush_on(
    app: &Arc<TestApp>,
    mode: &str,
    pools: &[(&str, i64)],
    users: usize,
    claims: usize,
) {
    let id = app.campaign(mode, pools).await;
    let answers = fire(app, id, pools, users, claims).await;

    // No 5xx, no problem bodies: every answer is a claim state.
    for (u, _, s, v) in &answers {
        assert!(matches!(s, 200 | 202 | 409), "{mode}: {u} got {s} {v}");
        let want = match v["status"].as_str() {
            Some("granted") => 200,
            Some("queued") => 202,
            Some("rejected") => 409,
            other => panic!("{mode}: unexpected status {other:?} in {v}"),
        };
        assert_eq!(*s, want, "{mode}: status code and body disagree: {v}");
    }

    // Drain: every granted answer must become a grant; no claim queued.
    let granted_answers: HashSet<String> = answers
        .iter()
        .filter(|a| a.2 == 200)
        .map(|a| a.3["code"].as_str().unwrap().to_string())
        .collect();
    let total_stock: i64 = pools.iter().map(|p| p.1).sum();
    let mut demand = vec![0i64; pools.len()];
    for u in 0..users.min(claims) {
        demand[u % pools.len()] += 1;
    }
    let expected: i64 = pools.iter().zip(&demand).map(|(p, d)| p.1.min(*d)).sum();
    app.wait_durable(id, expected).await;

    // Invariants 1-3 from PostgreSQL.
    let active = app.assert_db_invariants(id).await;
    assert_eq!(active, expected, "{mode}: undersold (stock {total_stock})");

    // Invariant 5: every granted answer is a grant.
    let grants = app.grants(id).await;
    let codes: HashMap<String, &Value> = grants
        .iter()
        .map(|g| (g["code"].as_str().unwrap().to_string(), g))
        .collect();
    for c in &granted_answers {
        assert!(codes.contains_key(c), "{mode}: acknowledged grant {c} lost");
    }

    // Invariant 7: one stable answer per user; the final state matches the
    // grants table.
    let mut first: HashMap<&str, &Value> = HashMap::new();
    for (u, _, _, v) in &answers {
        let f = first.entry(u.as_str()).or_insert(v);
        if f["status"] == "queued" || v["status"] == "queued" {
            assert_eq!(f["seq"], v["seq"], "{mode}: {u} got two arrival numbers");
        } else {
            assert_eq!(*f, v, "{mode}: {u} got contradictory answers");
        }
    }
    let by_user: HashMap<&str, &Value> = grants
        .iter()
        .map(|g| (g["user_id"].as_str().unwrap(), g))
        .collect();
    let mut sold_out_seqs = vec![Vec::new(); pools.len()];
    let mut granted_seqs = vec![Vec::new(); pools.len()];
    for u in 0..users.min(claims) {
        let user = format!("user-{u}");
        let (s, v) = app.status(id, &user).await;
        assert_eq!(s, 200, "{mode}: status of {user}: {v}");
        match v["status"].as_str().unwrap() {
            "granted" => {
                let g = by_user
                    .get(user.as_str())
                    .unwrap_or_else(|| panic!("{mode}: {user} granted but no grant"));
                assert_eq!(g["code"], v["code"]);
                assert_eq!(g["slot"], v["slot"]);
                assert_eq!(g["pool"], v["pool"]);
                granted_seqs[u % pools.len()].push(v["seq"].as_i64().unwrap());
            }
            "rejected" => {
                assert_eq!(v["reason"], "sold_out", "{mode}: {v}");
                assert!(
                    !by_user.contains_key(user.as_str()),
                    "{mode}: {user} rejected but holds a grant"
                );
                sold_out_seqs[u % pools.len()].push(v["seq"].as_i64().unwrap());
            }
            other => panic!("{mode}: {user} still {other} after draining"),
        }
    }
    // Redis agrees: every answer final (gate's batched promotions and the
    // queue's drainer both landed), no reservation left pending.
    if !mode.starts_with("db-") {
        assert_redis_settled(app, id, mode).await;
    }

    // Invariant 6: in redis-queue, grants go to the earliest arrivals.
    if mode == "redis-queue" {
        for p in 0..pools.len() {
            if let (Some(g), Some(s)) =
                (granted_seqs[p].iter().max(), sold_out_seqs[p].iter().min())
            {
                assert!(
                    g < s,
                    "redis-queue: pool {p} granted seq {g} after sold_out seq {s}"
                );
            }
        }
    }
}

/// Waits (10 s at most) until the campaign's Redis answers are all granted
/// or rejected and its pending set is empty; fails with what is left.
async fn assert_redis_settled(app: &TestApp, id: i64, mode: &str) {
    let store = common::common_for(app).await.redis;
    let base = format!("{}:{{c{id}}}", app.prefix);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ans, pending): (HashMap<String, String>, i64) = store
            .run(|mut c| {
                let base = base.clone();
                async move {
                    redis::pipe()
                        .hgetall(format!("{base}:ans"))
                        .zcard(format!("{base}:pending"))
                        .query_async(&mut c)
                        .await
                }
            })
            .await
            .unwrap();
        let unsettled: Vec<_> = ans
            .iter()
            .filter(|(u, a)| *u != "#" && !(a.starts_with("G|") || a.starts_with("R|")))
            .collect();
        assert!(ans.len() > 1, "{mode}: no answers in Redis under {base}");
        if unsettled.is_empty() && pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{mode}: Redis still holds {} unsettled answers (e.g. {:?}) and {pending} pending",
            unsettled.len(),
            unsettled.first()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

macro_rules! rush_tests {
    ($($name:ident: $mode:expr,)*) => {
        mod single_pool {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::rush($mode, &[("main", 100)], 300, 1000).await;
                }
            )*
        }
        mod six_pools {
            const POOLS: &[(&str, i64)] = &[("s1", 20), ("s2", 20), ("s3", 15), ("s4", 15), ("s5", 10), ("s6", 40)];
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::rush($mode, POOLS, 360, 1000).await;
                }
            )*
        }
    };
}

rush_tests! {
    db_lock: "db-lock",
    db_atomic: "db-atomic",
    redis_lua: "redis-lua",
    gate: "gate",
    redis_queue: "redis-queue",
}
