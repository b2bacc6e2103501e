//! Operator controls (issue 14): pause and resume under a rush in every
//! mode, PATCH of a live campaign (window, stock) with a second API process
//! holding an older copy of the campaign, refusals of bad input, and the
//! log of operator actions.

mod cli;
mod patch;
mod pause;
mod restock;

use reqwest::Method;
use serde_json::Value;

use crate::common::{TestApp, TOKEN};

/// An admin call with an actor header; (status, Retry-After, JSON or Null).
pub async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    actor: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(TOKEN);
    if let Some(a) = actor {
        r = r.header("x-firstcome-actor", a);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// A claim; (status, Retry-After header, body).
pub async fn claim_raw(app: &TestApp, id: i64, user: &str) -> (u16, Option<String>, Value) {
    let r = app
        .http
        .post(format!("{}/v1/campaigns/{id}/claims", app.base))
        .json(&serde_json::json!({ "user_id": user }))
        .send()
        .await
        .expect("request");
    let s = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (s, retry, r.json().await.unwrap_or(Value::Null))
}

/// The campaign's logged actions, newest first: (actor, action, before, after).
pub async fn actions(app: &TestApp, id: i64) -> Vec<(String, String, Value, Value)> {
    let (s, v) = admin(
        app,
        Method::GET,
        &format!("/v1/campaigns/{id}/actions?limit=50"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap_or_default().to_string(),
                a["action"].as_str().unwrap_or_default().to_string(),
                a["before"].clone(),
                a["after"].clone(),
            )
        })
        .collect()
}
