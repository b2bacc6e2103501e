//! The HTTP contract: bad input, auth, repeated claims, windows,
//! cancellation with slot reuse, the grants export, SSE and ops endpoints.

mod reads;

use crate::common;

use std::time::Duration;

use crate::common::{spawn_app, TOKEN};
use futures::StreamExt;
use serde_json::{json, Value};

async fn raw(
    app: &common::TestApp,
    method: &str,
    path: &str,
    body: &str,
    ctype: &str,
    token: Option<&str>,
) -> (u16, String, Value) {
    let mut r = app
        .http
        .request(method.parse().unwrap(), format!("{}{path}", app.base))
        .header("content-type", ctype)
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (s, ct, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_problem_json_with_a_stable_code() {
    let app = spawn_app().await;
    let multi = app.campaign("db-lock", &[("a", 1), ("b", 1)]).await;
    let single = app.campaign("gate", &[("only", 1)]).await;
    let big = format!(
        r#"{{"name":"{}","pools":[{{"name":"a","stock":1}}]}}"#,
        "x".repeat(100_000)
    );
    let j = "application/json";
    type Case<'a> = (
        &'a str,
        String,
        String,
        &'a str,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("POST", "/v1/campaigns".into(), r#"{"name":"#.into(), j, Some(TOKEN), 400, "malformed_json"),
        ("POST", "/v1/campaigns".into(), "{}".into(), j, Some(TOKEN), 422, "invalid_body"),
        ("POST", "/v1/campaigns".into(), r#"{"name":1,"pools":[]}"#.into(), j, Some(TOKEN), 422, "invalid_body"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":"7"}]}"#.into(), j, Some(TOKEN), 422, "invalid_body"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}],"stok":1}"#.into(), j, Some(TOKEN), 422, "invalid_body"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":0}]}"#.into(), j, Some(TOKEN), 422, "invalid_stock"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":-3}]}"#.into(), j, Some(TOKEN), 422, "invalid_stock"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[]}"#.into(), j, Some(TOKEN), 422, "no_pools"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","mode":"fastest","pools":[{"name":"a","stock":1}]}"#.into(), j, Some(TOKEN), 422, "unknown_mode"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a b","stock":1}]}"#.into(), j, Some(TOKEN), 422, "invalid_pool"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1},{"name":"a","stock":1}]}"#.into(), j, Some(TOKEN), 422, "duplicate_pool"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}],"per_user_limit":2}"#.into(), j, Some(TOKEN), 422, "invalid_per_user_limit"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}],"opens_at":"2030-01-02T00:00:00Z","closes_at":"2030-01-01T00:00:00Z"}"#.into(), j, Some(TOKEN), 422, "invalid_window"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}],"hold_secs":-1}"#.into(), j, Some(TOKEN), 422, "invalid_hold"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"  ","pools":[{"name":"a","stock":1}]}"#.into(), j, Some(TOKEN), 422, "invalid_name"),
        ("POST", "/v1/campaigns".into(), big, j, Some(TOKEN), 413, "body_too_large"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}]}"#.into(), j, None, 401, "unauthorized"),
        ("POST", "/v1/campaigns".into(), r#"{"name":"n","pools":[{"name":"a","stock":1}]}"#.into(), j, Some("wrong"), 401, "unauthorized"),
        ("POST", "/v1/campaigns/999999/claims".into(), r#"{"user_id":"u"}"#.into(), j, None, 404, "campaign_not_found"),
        ("POST", "/v1/campaigns/abc/claims".into(), r#"{"user_id":"u"}"#.into(), j, None, 404, "campaign_not_found"),
        ("POST", format!("/v1/campaigns/{multi}/claims"), r#"{"user_id":"u","pool":"zzz"}"#.into(), j, None, 422, "unknown_pool"),
        ("POST", format!("/v1/campaigns/{multi}/claims"), r#"{"user_id":"u"}"#.into(), j, None, 422, "pool_required"),
        ("POST", format!("/v1/campaigns/{single}/claims"), r#"{"user_id":"bad|id"}"#.into(), j, None, 422, "invalid_user_id"),
        ("POST", format!("/v1/campaigns/{single}/claims"), r#"{"user_id":""}"#.into(), j, None, 422, "invalid_user_id"),
        ("POST", format!("/v1/campaigns/{single}/claims"), format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129)), j, None, 422, "invalid_user_id"),
        ("POST", format!("/v1/campaigns/{single}/claims"), r#"{"user_id":7}"#.into(), j, None, 422, "invalid_body"),
        ("POST", format!("/v1/campaigns/{single}/claims"), r#"{"user_id":"u"}"#.into(), "text/plain", None, 415, "unsupported_media_type"),
        ("POST", format!("/v1/campaigns/{single}/claims"), "not json".into(), j, None, 400, "malformed_json"),
        ("GET", format!("/v1/campaigns/{single}/claims/nobody"), String::new(), j, None, 404, "claim_not_found"),
        ("DELETE", format!("/v1/campaigns/{single}/claims/nobody"), String::new(), j, None, 404, "claim_not_found"),
        ("GET", format!("/v1/campaigns/{single}/grants?after=xyz"), String::new(), j, Some(TOKEN), 400, "invalid_cursor"),
        ("GET", format!("/v1/campaigns/{single}/grants?limit=0"), String::new(), j, Some(TOKEN), 400, "invalid_limit"),
        ("GET", format!("/v1/campaigns/{single}/grants?limit=x"), String::new(), j, Some(TOKEN), 400, "invalid_query"),
        ("GET", format!("/v1/campaigns/{single}/grants"), String::new(), j, None, 401, "unauthorized"),
        ("GET", "/v1/campaigns/424242".into(), String::new(), j, None, 404, "campaign_not_found"),
        ("GET", "/v1/nothing-here".into(), String::new(), j, None, 404, "not_found"),
        ("PUT", format!("/v1/campaigns/{single}"), String::new(), j, None, 405, "method_not_allowed"),
    ];
    for (method, path, body, ctype, token, want_status, want_code) in cases {
        let (s, ct, v) = raw(&app, method, &path, &body, ctype, token).await;
        assert_eq!(s, want_status, "{method} {path} {body:.80}: {v}");
        assert_eq!(
            ct, "application/problem+json",
            "{method} {path}: content-type"
        );
        assert_eq!(v["code"], want_code, "{method} {path} {body:.80}: {v}");
        assert_eq!(v["status"], want_status, "{method} {path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_claim_returns_the_first_answer() {
    let app = spawn_app().await;
    for mode in ["db-lock", "db-atomic", "redis-lua", "gate", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 1)]).await;
        let (s1, a1) = app.claim(id, "alice", None).await;
        let (s2, a2) = app.claim(id, "alice", Some("main")).await;
        assert_eq!((s1, &a1), (s2, &a2), "{mode}: repeat differs");
        if mode == "redis-queue" {
            assert_eq!(s1, 202);
            app.wait_durable(id, 1).await;
        } else {
            assert_eq!(s1, 200, "{mode}: {a1}");
        }
        let (s3, b1) = app.claim(id, "bob", None).await;
        let (s4, b2) = app.claim(id, "bob", None).await;
        assert_eq!(s3, 409, "{mode}: {b1}");
        assert_eq!(b1["reason"], "sold_out");
        assert_eq!((s3, &b1), (s4, &b2), "{mode}: repeated refusal differs");
        let (s, st) = app.status(id, "alice").await;
        assert_eq!(s, 200);
        assert_eq!(st["status"], "granted", "{mode}: {st}");
        assert_eq!(st["code"].as_str().unwrap().len(), 16);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_window_gives_not_open_and_closed() {
    let app = spawn_app().await;
    for mode in ["db-lock", "gate", "redis-queue"] {
        let later = app
            .create_campaign(
                json!({"name":"later","mode":mode,"pools":[{"name":"a","stock":5}],
                "opens_at":"2099-01-01T00:00:00Z"}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let (s, v) = app.claim(later, "u1", None).await;
        assert_eq!(s, 409);
        assert_eq!(
            v,
            json!({"status":"rejected","user_id":"u1","reason":"not_open"})
        );
        let over = app
            .create_campaign(
                json!({"name":"over","mode":mode,"pools":[{"name":"a","stock":5}],
                "opens_at":"2020-01-01T00:00:00Z","closes_at":"2020-01-02T00:00:00Z"}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let (s, v) = app.claim(over, "u1", None).await;
        assert_eq!(s, 409);
        assert_eq!(v["reason"], "closed", "{mode}: {v}");
        // Nothing was remembered or granted.
        assert_eq!(app.status(later, "u1").await.0, 404);
        assert!(app.grants(over).await.is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn cancelling_returns_the_slot_for_reuse() {
    let app = spawn_app().await;
    for mode in ["db-lock", "db-atomic", "redis-lua", "gate", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 2)]).await;
        for u in ["a", "b"] {
            app.claim(id, u, None).await;
        }
        app.wait_durable(id, 2).await;
        let (_, a) = app.status(id, "a").await;
        assert_eq!(a["status"], "granted", "{mode}: {a}");
        let (s, c) = app.claim(id, "c", None).await;
        assert_eq!(
            (s, c["reason"].as_str()),
            (409, Some("sold_out")),
            "{mode}: {c}"
        );

        let (s, x) = app.cancel(id, "a").await;
        assert_eq!(s, 200, "{mode}: {x}");
        assert_eq!(x["status"], "cancelled");
        assert_eq!(x["slot"], a["slot"]);
        assert_eq!(x["code"], a["code"]);
        // Idempotent.
        assert_eq!(app.cancel(id, "a").await, (200, x.clone()));
        // A refused claim cannot be cancelled.
        assert_eq!(app.cancel(id, "c").await.1["code"], "not_granted");
        // The cancelled user's claim stays cancelled.
        let (s, again) = app.claim(id, "a", None).await;
        assert_eq!(
            (s, again["status"].as_str()),
            (409, Some("cancelled")),
            "{mode}: {again}"
        );

        // The slot goes to the next new user.
        let (s, d) = app.claim(id, "d", None).await;
        assert!(s == 200 || s == 202, "{mode}: {d}");
        app.wait_durable(id, 2).await;
        let (_, d) = app.status(id, "d").await;
        assert_eq!(d["status"], "granted", "{mode}: {d}");
        assert_eq!(d["slot"], a["slot"], "{mode}: the released slot is reused");
        // redis-lua writes the cancel and d's grant behind: wait for both.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let grants = app.grants(id).await;
            let mut users: Vec<&str> = grants
                .iter()
                .map(|g| g["user_id"].as_str().unwrap())
                .collect();
            users.sort_unstable();
            if users == ["b", "d"] {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{mode}: {grants:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        app.assert_db_invariants(id).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn cancelling_after_the_hold_is_refused() {
    let app = spawn_app().await;
    // The window closed long ago, hold 0: a grant made before can no longer
    // be cancelled. Insert the grant directly (claims are closed).
    let id = app
        .create_campaign(
            json!({"name":"past","mode":"db-lock","pools":[{"name":"a","stock":5}],
            "opens_at":"2020-01-01T00:00:00Z","closes_at":"2020-01-02T00:00:00Z","hold_secs":0}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    common::execute(&app, "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq) SELECT $1, id, 'old', 1, 'OLDCODE', 1 FROM pools WHERE campaign_id = $1", id).await;
    let (s, v) = app.cancel(id, "old").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("hold_over")), "{v}");
    // After closing, a repeat still gets the first answer.
    let (s, v) = app.claim(id, "old", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn the_grants_export_pages_through_every_grant() {
    let app = spawn_app().await;
    let id = app.campaign("db-atomic", &[("main", 250)]).await;
    for i in 0..250 {
        assert_eq!(app.claim(id, &format!("u{i}"), None).await.0, 200);
    }
    let (s, first) = app
        .send(
            reqwest::Method::GET,
            &format!("/v1/campaigns/{id}/grants?limit=100"),
            None,
        )
        .await;
    assert_eq!(s, 401, "export needs the admin token: {first}");
    let all = app.grants(id).await; // pages of 100
    assert_eq!(all.len(), 250);
    let mut users: Vec<&str> = all.iter().map(|g| g["user_id"].as_str().unwrap()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 250);
    for g in &all {
        for f in ["user_id", "pool", "slot", "code", "seq"] {
            assert!(!g[f].is_null(), "grant lacks {f}: {g}");
        }
    }
    app.stop().await;
}
