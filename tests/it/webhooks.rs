//! Webhooks: a real receiver on 127.0.0.1 records every delivery, fails
//! the first attempt of some events with 500 and checks each signature
//! with its own HMAC code; the service must deliver every durable fact at
//! least once, with the same webhook-id on a retry.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{claim_all, count, spawn_app_on, strings, until, TestApp, TOKEN};

/// The signing secret of every test webhook (32 random bytes).
const SECRET: &str = "whsec_3q2+7wYnlg5tM8ZyVQx4JgnGJ2Z4iW8cyzXlZl0hL1E=";

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Delivery {
    /// The path's last segment: which endpoint.
    endpoint: String,
    /// `webhook-id`.
    id: String,
    /// The body, parsed.
    body: Value,
    /// Whether the signature verified (checked on arrival).
    verified: bool,
    /// The status answered.
    status: u16,
}

/// What the receiver remembers, and how it answers.
#[derive(Default)]
struct Receiver {
    /// Every delivery, in arrival order.
    got: Vec<Delivery>,
    /// webhook-ids already answered 500 once.
    failed_once: HashSet<String>,
    /// Endpoints that answer 500 to everything.
    broken: HashSet<String>,
    /// Deliveries being answered now, and the most there ever were, per
    /// endpoint (the `slow` one takes 300 ms to answer).
    open: HashMap<String, (usize, usize)>,
}

type Shared = Arc<Mutex<Receiver>>;

/// Verifies a Standard Webhooks signature with this test's own HMAC.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let ts_ok = h("webhook-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| (t - chrono::Utc::now().timestamp()).abs() < 300);
    ts_ok
        && h("content-type") == "application/json"
        && h("webhook-signature").split(' ').any(|s| s == want)
}

async fn receive(
    State(rx): State<Shared>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let verified = verify(&headers, &body);
    if endpoint == "slow" {
        {
            let mut r = rx.lock().unwrap();
            let o = r.open.entry(endpoint.clone()).or_default();
            o.0 += 1;
            o.1 = o.1.max(o.0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        rx.lock().unwrap().open.get_mut(&endpoint).unwrap().0 -= 1;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut r = rx.lock().unwrap();
    // Every event whose number is odd fails its first attempt.
    let odd = id
        .trim_start_matches("evt_")
        .parse::<i64>()
        .is_ok_and(|n| n % 2 == 1);
    let status = if r.broken.contains(&endpoint) || (odd && r.failed_once.insert(id.clone())) {
        500
    } else {
        204
    };
    r.got.push(Delivery {
        endpoint,
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        status,
    });
    StatusCode::from_u16(status).unwrap()
}

/// Starts the receiver; its base URL and its memory.
async fn receiver() -> (String, Shared) {
    let rx: Shared = Arc::default();
    let app = Router::new()
        .route("/hook/{endpoint}", post(receive))
        .with_state(rx.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, rx)
}

/// An app whose webhooks may only call 127.0.0.1, retrying fast, dead
/// after `dead_after_secs`.
async fn app(dead_after_secs: u64) -> TestApp {
    let name = crate::common::unique("db");
    let db_url = crate::common::fresh_database(&name).await;
    spawn_app_on(&db_url, &name, |a| {
        a.webhooks.webhook_allow = vec!["127.0.0.1".into()];
        a.webhooks.webhook_retry_base_ms = 20;
        a.webhooks.webhook_retry_max_ms = 200;
        a.webhooks.webhook_dead_after_secs = dead_after_secs;
    })
    .await
    .owning_database()
}

/// A campaign of `mode` with a webhook to `endpoint`, `stock` units.
async fn hooked(app: &TestApp, base: &str, endpoint: &str, mode: &str, extra: Value) -> i64 {
    let mut spec = json!({"name": "hooked", "mode": mode, "pools": [{"name": "p", "stock": 5}],
        "webhook": {"url": format!("{base}/hook/{endpoint}"), "secret": SECRET}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    app.create_campaign(spec).await["id"].as_i64().unwrap()
}

/// Successful deliveries of `endpoint` as (type, user) pairs.
fn delivered(rx: &Shared, endpoint: &str) -> HashSet<(String, String)> {
    rx.lock()
        .unwrap()
        .got
        .iter()
        .filter(|d| d.endpoint == endpoint && d.status == 204)
        .map(|d| {
            let t = d.body["type"].as_str().unwrap_or_default().to_string();
            let u = d.body["data"]["user_id"].as_str().unwrap_or_default();
            (t, u.to_string())
        })
        .collect()
}

/// Every durable fact of the campaign as the receiver should see it.
async fn facts(app: &TestApp, id: i64) -> HashSet<(String, String)> {
    let rows = strings(
        app,
        "SELECT CONCAT(user_id, ' ', state, ' ', CASE WHEN confirmed_at IS NULL THEN 'n' ELSE 'y' END)
         FROM grants WHERE campaign_id = $1 AND state <> 'void'",
        id,
    )
    .await;
    let mut out = HashSet::new();
    for row in rows {
        let mut f = row.split(' ').map(str::to_string);
        let (u, state, confirmed) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        out.insert(("claim.granted".to_string(), u.clone()));
        if confirmed == "y" {
            out.insert(("claim.confirmed".into(), u.clone()));
        }
        if state != "active" {
            out.insert((format!("claim.{state}"), u));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_durable_fact_arrives_signed_and_retried_with_its_id() {
    let (base, rx) = receiver().await;
    let app = Arc::new(app(3600).await);
    let plain = app.campaign("gate", &[("p", 5)]).await;
    let mut ids = Vec::new();
    for mode in ["db-atomic", "gate", "redis-queue", "redis-lua"] {
        let id = hooked(&app, &base, mode, mode, json!({})).await;
        let users = (0..20).map(|i| format!("u{i}"));
        claim_all(&app, id, users, 20).await;
        app.wait_durable(id, 5).await;
        let winner = strings(
            &app,
            "SELECT user_id FROM grants WHERE campaign_id = $1 AND state = 'active' LIMIT 1",
            id,
        )
        .await
        .remove(0);
        let (s, _) = app.cancel(id, &winner).await;
        assert_eq!(s, 200, "{mode}: cancel");
        ids.push((mode, id));
    }
    claim_all(&app, plain, (0..10).map(|i| format!("p{i}")), 10).await;
    app.wait_durable(plain, 5).await;

    for (mode, id) in &ids {
        let want = facts(&app, *id).await;
        assert_eq!(want.len(), 6, "{mode}: 5 grants and a cancellation");
        until(&format!("{mode}: every fact delivered"), || async {
            delivered(&rx, mode) == want
        })
        .await;
    }
    let got = rx.lock().unwrap().got.clone();
    assert!(got.iter().all(|d| d.verified), "every signature verifies");
    let mut bodies: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in &got {
        bodies.entry(d.id.as_str()).or_default().push(d);
    }
    let retried: Vec<_> = bodies.values().filter(|ds| ds.len() > 1).collect();
    assert!(!retried.is_empty(), "some first attempts failed");
    for ds in retried {
        assert_eq!(ds[0].status, 500, "the retry is of a failed attempt");
        assert!(
            ds.iter().all(|d| d.body == ds[0].body),
            "same id, same event"
        );
        assert!(ds.iter().any(|d| d.status == 204));
    }
    let data = &got.iter().find(|d| d.endpoint == "gate").unwrap().body["data"];
    assert_eq!(data["pool"], "p");
    assert!(data["slot"].as_i64().is_some() && data["seq"].as_i64().is_some());
    assert!(data["code"].as_str().is_some());
    let sql = "SELECT count(*) FROM webhook_events WHERE campaign_id = $1";
    assert_eq!(
        count(&app, sql, plain).await,
        0,
        "no webhook, no outbox rows"
    );
    let sql = "SELECT count(*) FROM webhook_events WHERE campaign_id = $1 AND state <> 'delivered'";
    for (mode, id) in &ids {
        until(&format!("{mode}: all marked delivered"), || async {
            count(&app, sql, *id).await == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_grants_tell_their_confirmation_and_expiry_and_void_rows_nothing() {
    let (base, rx) = receiver().await;
    let app = app(3600).await;
    let id = hooked(
        &app,
        &base,
        "held",
        "db-lock",
        json!({"confirm_within_secs": 3}),
    )
    .await;
    for u in ["payer", "dawdler"] {
        assert_eq!(app.claim(id, u, None).await.0, 200);
    }
    let path = format!("/v1/campaigns/{id}/claims/payer/confirm");
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(TOKEN);
    assert_eq!(r.send().await.unwrap().status().as_u16(), 200);
    // A void row (a released gate reservation) is not a grant.
    let pool = count(&app, "SELECT id FROM pools WHERE campaign_id = $1", id).await;
    let void = firstcome::storage::pg::NewGrant {
        campaign_id: id,
        pool_id: pool,
        user_id: "ghost".into(),
        slot: 5,
        code: "VOIDCODE".into(),
        seq: 99,
    };
    app.db.void_reservation(&void).await.unwrap();
    let want: HashSet<(String, String)> = [
        ("claim.granted", "payer"),
        ("claim.granted", "dawdler"),
        ("claim.confirmed", "payer"),
        ("claim.expired", "dawdler"),
    ]
    .into_iter()
    .map(|(t, u)| (t.to_string(), u.to_string()))
    .collect();
    until("confirmation and expiry delivered", || async {
        delivered(&rx, "held") == want
    })
    .await;
    let sql = "SELECT count(*) FROM webhook_events WHERE campaign_id = $1 AND body LIKE '%ghost%'";
    assert_eq!(count(&app, sql, id).await, 0, "void rows give no event");
}

/// The admin's listing of a campaign's events of `state`.
async fn events(app: &TestApp, id: i64, state: &str) -> Vec<Value> {
    let path = format!("/v1/campaigns/{id}/webhooks/events?state={state}");
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(TOKEN);
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    v["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_without_a_2xx_go_dead_and_come_back_on_redelivery() {
    let (base, rx) = receiver().await;
    let app = app(1).await;
    rx.lock().unwrap().broken.insert("down".into());
    let id = hooked(&app, &base, "down", "db-atomic", json!({})).await;
    assert_eq!(app.claim(id, "u1", None).await.0, 200);
    let dead = crate::common::eventually("the event dead-lettered", || async {
        events(&app, id, "dead").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["type"], "claim.granted");
    assert_eq!(dead["last_status"], 500);
    assert!(dead["attempts"].as_i64().unwrap() >= 1);
    assert!(events(&app, id, "pending").await.is_empty());
    assert!(app.metrics().await.contains("outcome=\"dead\""));

    rx.lock().unwrap().broken.clear();
    let eid = dead["id"].as_str().unwrap();
    let path = format!("/v1/campaigns/{id}/webhooks/events/{eid}/redeliver");
    let (s, v) = app.post_admin(&path, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "pending");
    until("redelivered", || async {
        events(&app, id, "delivered").await.len() == 1
    })
    .await;
    let ok = rx
        .lock()
        .unwrap()
        .got
        .iter()
        .any(|d| d.id == eid && d.status == 204);
    assert!(ok, "the redelivery carries the same webhook-id");
    // Delivered events can be sent again too; unknown ones are 404.
    assert_eq!(app.post_admin(&path, json!({})).await.0, 200);
    let path = format!("/v1/campaigns/{id}/webhooks/events/evt_999999/redeliver");
    let (s, v) = app.post_admin(&path, json!({})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("event_not_found")));
    let other = app.campaign("db-atomic", &[("p", 1)]).await;
    let path = format!("/v1/campaigns/{other}/webhooks/events/{eid}/redeliver");
    assert_eq!(
        app.post_admin(&path, json!({})).await.0,
        404,
        "another campaign's event"
    );
    let (s, _) = app
        .send(
            Method::GET,
            &format!("/v1/campaigns/{id}/webhooks/events"),
            None,
        )
        .await;
    assert_eq!(s, 401, "admin only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_webhooks_are_refused_and_the_secret_never_shown() {
    let app = app(3600).await;
    let create = |hook: Value| {
        let app = &app;
        async move {
            let spec = json!({"name": "c", "mode": "gate", "pools": [{"name": "p", "stock": 1}],
                "webhook": hook});
            app.post_admin("/v1/campaigns", spec).await
        }
    };
    for (hook, code) in [
        (
            json!({"url": "ftp://127.0.0.1/x", "secret": SECRET}),
            "invalid_webhook_url",
        ),
        (
            json!({"url": "not a url", "secret": SECRET}),
            "invalid_webhook_url",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "secret": SECRET.trim_start_matches("whsec_")}),
            "invalid_webhook_secret",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "secret": "whsec_c2hvcnQ="}),
            "invalid_webhook_secret",
        ),
        (
            json!({"url": "http://169.254.169.254/latest", "secret": SECRET}),
            "webhook_host_not_allowed",
        ),
        (
            json!({"url": "http://localhost/x", "secret": SECRET}),
            "webhook_host_not_allowed",
        ),
    ] {
        let (s, v) = create(hook.clone()).await;
        assert_eq!((s, v["code"].as_str()), (422, Some(code)), "{hook}: {v}");
    }
    let (s, _) = create(json!({"url": "http://127.0.0.1/x", "secret": SECRET, "x": 1})).await;
    assert!((400..500).contains(&s), "unknown fields are refused");
    let (s, v) = create(json!({"url": "http://127.0.0.1:9/x", "secret": SECRET})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["webhook"], json!({"url": "http://127.0.0.1:9/x"}));
    let id = v["id"].as_i64().unwrap();
    for body in [v.to_string(), app.campaign_body(id).await.to_string()] {
        assert!(
            !body.contains("whsec_") && !body.contains(&SECRET[6..20]),
            "{body}"
        );
    }
    let (_, public) = app
        .send(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await;
    assert!(!public.to_string().contains("whsec_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_to_one_endpoint_stay_within_its_cap() {
    let (base, rx) = receiver().await;
    let app = Arc::new(app(3600).await);
    let spec = json!({"name": "slow", "mode": "db-atomic", "pools": [{"name": "p", "stock": 12}],
        "webhook": {"url": format!("{base}/hook/slow"), "secret": SECRET}});
    let id = app.create_campaign(spec).await["id"].as_i64().unwrap();
    claim_all(&app, id, (0..12).map(|i| format!("s{i}")), 12).await;
    app.wait_durable(id, 12).await;
    until("every grant delivered", || async {
        delivered(&rx, "slow").len() == 12
    })
    .await;
    let most = rx.lock().unwrap().open["slow"].1;
    assert!(
        (1..=4).contains(&most),
        "at most 4 in flight to one endpoint, saw {most}"
    );
}
