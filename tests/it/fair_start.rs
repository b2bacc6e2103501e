//! The fair start (issue 14): a pre-queue before opening admitted in an
//! order drawn from a committed seed, positions and waits of queued
//! claims, and queued users leaving. Real PostgreSQL and Redis.

use std::{collections::HashSet, sync::Arc};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;

/// A redis-queue campaign opening `in_ms` from now with a pre-queue.
async fn fair_start(app: &TestApp, stock: i64, in_ms: i64) -> i64 {
    let opens = chrono::Utc::now() + chrono::Duration::milliseconds(in_ms);
    let v = app
        .create_campaign(json!({
            "name": "fair", "mode": "redis-queue", "opens_at": opens,
            "prequeue_secs": 600, "pools": [{"name": "p", "stock": stock}]
        }))
        .await;
    v["id"].as_i64().expect("created")
}

/// A GET with the admin token.
async fn get_admin(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The order anyone recomputes from the published seed and list, written
/// here from the recipe in docs/ARCHITECTURE.md, not with the service's code.
fn recompute(seed_hex: &str, users: &[String]) -> Vec<String> {
    let seed = unhex(seed_hex);
    let mut keyed: Vec<(Vec<u8>, String)> = users
        .iter()
        .map(|u| {
            let mut h = Sha256::new();
            h.update(&seed);
            h.update(u.as_bytes());
            (h.finalize().to_vec(), u.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, u)| u).collect()
}

#[tokio::test]
async fn a_fair_start_admits_the_prequeue_in_drawn_order() {
    let app = Arc::new(spawn_app().await);
    let id = fair_start(&app, 5, 3_000).await;
    let body = app.campaign_body(id).await;
    let commitment = body["draw_commitment"]
        .as_str()
        .expect("commitment")
        .to_string();
    assert!(
        body.get("draw_seed").is_none(),
        "no seed before opening: {body}"
    );
    // 30 users pre-queue: queued, no number, no position yet.
    let users: Vec<String> = (0..30).map(|i| format!("pre{i}")).collect();
    for (u, (code, v)) in claim_all(&app, id, users.clone(), 8).await {
        assert_eq!(code, 202, "{u}: {v}");
        assert_eq!(v["status"], "queued", "{u}: {v}");
        assert!(
            v.get("seq").is_none() && v["position"].is_null(),
            "{u}: {v}"
        );
    }
    // A repeat is the same answer; one user leaves before opening.
    assert_eq!(app.claim(id, "pre3", None).await.0, 202);
    let (code, left) = app.cancel(id, "pre3").await;
    assert_eq!(
        (code, left["status"].as_str()),
        (200, Some("cancelled")),
        "{left}"
    );
    assert_eq!(app.status(id, "pre3").await.1["status"], "cancelled");
    // The opening: the seed is shown, the pre-queue admitted first.
    let body = app
        .wait_campaign(id, "the seed", |v| v["draw_seed"].is_string())
        .await;
    let seed = body["draw_seed"].as_str().unwrap().to_string();
    assert_eq!(hex(&Sha256::digest(unhex(&seed))), commitment);
    // Later arrivals queue behind: the stock (5) is the pre-queue's.
    let late: Vec<String> = (0..10).map(|i| format!("late{i}")).collect();
    for (u, (code, v)) in claim_all(&app, id, late.clone(), 8).await {
        assert_eq!(
            (code, v["reason"].as_str()),
            (409, Some("sold_out")),
            "{u}: {v}"
        );
    }
    app.wait_durable(id, 5).await;
    assert_eq!(app.assert_db_invariants(id).await, 5);
    // The published list: every pre-queued user, in the recomputed order.
    let (code, draw) = get_admin(&app, &format!("/v1/campaigns/{id}/draw?limit=100")).await;
    assert_eq!(code, 200, "{draw}");
    let listed: Vec<String> = draw["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_string())
        .collect();
    let ranks: Vec<i64> = draw["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rank"].as_i64().unwrap())
        .collect();
    assert_eq!(ranks, (1..=30).collect::<Vec<_>>());
    assert_eq!(
        listed.iter().cloned().collect::<HashSet<_>>(),
        users.iter().cloned().collect::<HashSet<_>>()
    );
    assert_eq!(
        listed,
        recompute(&seed, &users),
        "the order follows the seed"
    );
    // The first five in drawn order who stayed won, numbered by their place.
    let winners: Vec<&String> = listed.iter().filter(|u| *u != "pre3").take(5).collect();
    for (rank, u) in listed.iter().enumerate() {
        let (_, v) = app.status(id, u).await;
        if u == "pre3" {
            assert_eq!(v["status"], "cancelled", "{u}: {v}");
        } else if winners.contains(&u) {
            assert_eq!(v["status"], "granted", "{u}: {v}");
            assert_eq!(v["seq"].as_i64(), Some(rank as i64 + 1), "{u}: {v}");
        } else {
            assert_eq!(v["reason"], "sold_out", "{u}: {v}");
        }
    }
    // Invariant 6 in its fair-start form: the pre-queue in drawn order,
    // then arrival order; no later arrival holds a grant.
    for u in &late {
        assert_eq!(app.status(id, u).await.1["reason"], "sold_out");
    }
    // Bad calls about the draw.
    let (code, v) = get_admin(&app, &format!("/v1/campaigns/{id}/draw?limit=0")).await;
    assert_eq!((code, v["code"].as_str()), (400, Some("invalid_limit")));
}

#[tokio::test]
async fn later_arrivals_queue_behind_the_prequeue() {
    let app = Arc::new(spawn_app().await);
    let id = fair_start(&app, 20, 2_000).await;
    let pre: Vec<String> = (0..8).map(|i| format!("early{i}")).collect();
    claim_all(&app, id, pre.clone(), 8).await;
    app.wait_campaign(id, "the seed", |v| v["draw_seed"].is_string())
        .await;
    let late: Vec<String> = (0..20).map(|i| format!("late{i}")).collect();
    let answers = claim_all(&app, id, late.clone(), 8).await;
    let admitted = answers.iter().filter(|(_, (c, _))| *c == 202).count();
    assert_eq!(admitted, 12, "the door keeps 8 units for the pre-queue");
    app.wait_durable(id, 20).await;
    assert_eq!(app.assert_db_invariants(id).await, 20);
    let mut max_pre = 0;
    for u in &pre {
        let (_, v) = app.status(id, u).await;
        assert_eq!(v["status"], "granted", "{u}: {v}");
        max_pre = max_pre.max(v["seq"].as_i64().unwrap());
    }
    assert!(max_pre <= 8, "the pre-queue holds the first numbers");
    for (u, (code, _)) in &answers {
        if *code == 202 {
            let (_, v) = app.status(id, u).await;
            assert_eq!(v["status"], "granted", "{u}: {v}");
            assert!(
                v["seq"].as_i64().unwrap() > max_pre,
                "{u} after the pre-queue: {v}"
            );
        }
    }
}

#[tokio::test]
async fn the_prequeue_closes_at_opening_without_a_claim() {
    // No claim after opening: the worker closes the pre-queue and the
    // drainer admits it.
    let app = Arc::new(spawn_app().await);
    let id = fair_start(&app, 2, 1_500).await;
    claim_all(&app, id, (0..4).map(|i| format!("u{i}")), 4).await;
    app.wait_durable(id, 2).await;
    assert_eq!(app.assert_db_invariants(id).await, 2);
    let sql = format!("SELECT count(*) FROM {}", crate::common::refused_users());
    let refused = count(&app, &sql, id).await;
    assert_eq!(refused, 2, "the two drawn last are refused durably");
}

#[tokio::test]
async fn a_queued_position_counts_down_and_a_leaver_frees_the_unit() {
    // No worker: nothing drains until the test says so.
    let app = Arc::new(spawn_app_without_worker().await);
    let id = app.campaign("redis-queue", &[("p", 3)]).await;
    for u in ["a", "b", "c"] {
        assert_eq!(app.claim(id, u, None).await.0, 202);
    }
    assert_eq!(app.claim(id, "d", None).await.1["reason"], "sold_out");
    let (_, v) = app.status(id, "c").await;
    assert_eq!(
        (v["seq"].as_i64(), v["position"].as_i64()),
        (Some(3), Some(3)),
        "{v}"
    );
    assert!(v["eta_secs"].is_null(), "no rate measured yet: {v}");
    // The drainer's progress moves positions; it never moves back.
    let (common, _, k) = app.redis_side(id).await;
    common.redis.record_progress(&k, 1).await.unwrap();
    common.redis.record_progress(&k, 0).await.unwrap();
    let v = eventually("c's position to count down", || {
        let app = app.clone();
        async move {
            let (_, v) = app.status(id, "c").await;
            (v["position"].as_i64() == Some(2)).then_some(v)
        }
    })
    .await;
    assert_eq!(v["status"], "queued");
    // b leaves: its place is skipped and its unit goes back to the door.
    let (code, v) = app.cancel(id, "b").await;
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
    assert!(v.get("slot").is_none(), "nothing was held: {v}");
    assert_eq!(
        app.claim(id, "b", None).await.1["status"],
        "cancelled",
        "left for good"
    );
    assert_eq!(
        app.claim(id, "e", None).await.0,
        202,
        "the unit is claimable again"
    );
    // A worker drains: a, c and e granted, b skipped, slots 1..3.
    let worker = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    app.wait_durable(id, 3).await;
    assert_eq!(app.assert_db_invariants(id).await, 3);
    let granted: HashSet<String> = app
        .grants(id)
        .await
        .iter()
        .map(|g| g["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        granted,
        ["a", "c", "e"].iter().map(|s| s.to_string()).collect()
    );
    worker.stop().await;
}

#[tokio::test]
async fn bad_fair_starts_are_refused_with_their_code() {
    let app = spawn_app().await;
    let soon = chrono::Utc::now() + chrono::Duration::hours(1);
    let cases: [(Value, &str); 4] = [
        (
            json!({"mode": "redis-queue", "prequeue_secs": 60}),
            "invalid_prequeue",
        ),
        (
            json!({"mode": "redis-queue", "prequeue_secs": 0, "opens_at": soon}),
            "invalid_prequeue",
        ),
        (
            json!({"mode": "redis-queue", "prequeue_secs": 700000, "opens_at": soon}),
            "invalid_prequeue",
        ),
        (
            json!({"mode": "gate", "prequeue_secs": 60, "opens_at": soon}),
            "prequeue_unsupported",
        ),
    ];
    for (extra, code) in cases {
        let mut spec = json!({"name": "c", "pools": [{"name": "p", "stock": 1}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (status, v) = app.post_admin("/v1/campaigns", spec.clone()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some(code)),
            "{spec}: {v}"
        );
    }
    let id = app.campaign("redis-queue", &[("p", 1)]).await;
    let (status, v) = get_admin(&app, &format!("/v1/campaigns/{id}/draw")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("no_prequeue")),
        "{v}"
    );
    assert!(app.campaign_body(id).await.get("draw_commitment").is_none());
}
