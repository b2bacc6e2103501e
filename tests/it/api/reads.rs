//! What the API reads back: campaign bodies and counts, the default mode,
//! the SSE stream, ops endpoints, the grants export's pools.

use super::*;
use crate::common::{count, execute, strings};

#[tokio::test]
async fn campaign_body_counts_stock() {
    let app = spawn_app().await;
    for mode in ["db-lock", "gate", "redis-queue"] {
        let id = app.campaign(mode, &[("a", 3), ("b", 2)]).await;
        app.claim(id, "x", Some("a")).await;
        app.claim(id, "y", Some("b")).await;
        let v = app.wait_durable_then_get(id, 2).await;
        assert_eq!(v["mode"], mode);
        assert_eq!(
            v["pools"][0],
            json!({"name":"a","stock":3,"remaining":2,"granted":1})
        );
        assert_eq!(
            v["pools"][1],
            json!({"name":"b","stock":2,"remaining":1,"granted":1})
        );
        assert_eq!(v["queued"], 0);
    }
    app.stop().await;
}

trait WaitGet {
    async fn wait_durable_then_get(&self, id: i64, n: i64) -> Value;
}

impl WaitGet for common::TestApp {
    async fn wait_durable_then_get(&self, id: i64, n: i64) -> Value {
        self.wait_durable(id, n).await;
        self.campaign_body(id).await
    }
}

#[tokio::test]
async fn default_mode_is_gate_and_one_pool_needs_no_name() {
    let app = spawn_app().await;
    let v = app
        .create_campaign(json!({"name":"d","pools":[{"name":"only","stock":1}]}))
        .await;
    assert_eq!(v["mode"], "gate");
    let (s, a) = app.claim(v["id"].as_i64().unwrap(), "u", None).await;
    assert_eq!(s, 200);
    assert_eq!(a["pool"], "only");
    assert_eq!(a["slot"], 1);
    app.stop().await;
}

async fn sse_events(app: &common::TestApp, id: i64, user: &str) -> Vec<Value> {
    let r = app
        .http
        .get(format!(
            "{}/v1/campaigns/{id}/claims/{user}/events",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = String::new();
    let mut stream = r.bytes_stream();
    // The stream must close by itself after the final state.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await
    .expect("event stream closes after the final state");
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn events_stream_until_the_final_state() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 1)]).await;
    app.claim(id, "g", None).await;
    let ev = sse_events(&app, id, "g").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["status"], "granted");
    assert_eq!(
        app.send(
            reqwest::Method::GET,
            &format!("/v1/campaigns/{id}/claims/nobody/events"),
            None
        )
        .await
        .0,
        404
    );

    // redis-queue: the stream is opened while the claim is still queued
    // (the worker is stopped), and follows it to granted.
    let id = app.campaign("redis-queue", &[("main", 1)]).await;
    app.stop_worker.send(true).unwrap();
    let (s, _) = app.claim(id, "q", None).await;
    assert_eq!(s, 202);
    let watcher = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let app2 = common::TestApp::client_only(&base);
            sse_events(&app2, id, "q").await
        })
    };
    // A second process with a worker drains the queue.
    let other = common::spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    let ev = watcher.await.unwrap();
    assert_eq!(ev.first().unwrap()["status"], "queued", "{ev:?}");
    assert_eq!(ev.last().unwrap()["status"], "granted", "{ev:?}");
    other.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 1)]).await;
    app.claim(id, "m", None).await;
    assert_eq!(
        app.send(reqwest::Method::GET, "/healthz", None).await.0,
        200
    );
    let (s, v) = app.send(reqwest::Method::GET, "/readyz", None).await;
    // The database's key is its kind: "postgres" or "mysql".
    assert_eq!((s, &v), (200, &json!({app.db.kind(): "ok", "redis": "ok"})));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("firstcome_claims_total{mode=\"gate\",outcome=\"granted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("firstcome_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("le=\"0.001\""),
        "explicit buckets: {metrics}"
    );
    let (s, doc) = app.send(reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(s, 200);
    for p in [
        "/v1/campaigns",
        "/v1/campaigns/{id}",
        "/v1/campaigns/{id}/claims",
        "/v1/campaigns/{id}/claims/{user_id}",
        "/v1/campaigns/{id}/claims/{user_id}/events",
        "/v1/campaigns/{id}/claims/{user_id}/confirm",
        "/v1/campaigns/{id}/grants",
    ] {
        assert!(doc["paths"][p].is_object(), "openapi lacks {p}");
    }
    app.stop().await;
}

/// Grants carry no foreign key (it cost a per-row lock on the shared pool
/// row): the batched insert still refuses a pool of another campaign, and
/// deleting a campaign still deletes its grants.
#[tokio::test]
async fn grants_name_only_their_campaigns_pools_and_go_with_them() {
    use firstcome::storage::pg::NewGrant;
    let app = spawn_app().await;
    let a = app.campaign("db-atomic", &[("main", 5)]).await;
    let b = app.campaign("db-atomic", &[("main", 5)]).await;
    let pool_of = "SELECT id FROM pools WHERE campaign_id = $1";
    let (pa, pb) = (count(&app, pool_of, a).await, count(&app, pool_of, b).await);
    let row = |campaign_id: i64, pool_id: i64, user: &str, code: &str| NewGrant {
        campaign_id,
        pool_id,
        user_id: user.into(),
        slot: 1,
        code: code.into(),
        seq: 1,
    };
    let inserted = app
        .db
        .insert_grants(&[
            row(a, pa, "fits", "CODE-FITS"),
            row(a, pb, "stray", "CODE-STRAY"),
            row(a, 987_654_321, "ghost", "CODE-GHOST"),
            row(b, pb, "other", "CODE-OTHER"),
        ])
        .await
        .unwrap();
    let mut inserted = inserted;
    inserted.sort();
    assert_eq!(inserted, vec!["CODE-FITS", "CODE-OTHER"]);
    execute(&app, "DELETE FROM campaigns WHERE id = $1", a).await;
    let left = strings(
        &app,
        "SELECT code FROM grants WHERE $1 > 0 ORDER BY code",
        a,
    )
    .await;
    assert_eq!(left, vec!["CODE-OTHER"]);
    app.stop().await;
}
