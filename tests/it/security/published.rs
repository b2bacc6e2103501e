//! Issue 19 item 12: campaign ids are sequential, so an unannounced
//! campaign is created unpublished: it answers exactly like an unknown id
//! to everyone but the admin until it is published.

use super::*;

/// (status, problem code, detail) of every public call on campaign `id`.
async fn public_answers(app: &common::TestApp, id: i64) -> Vec<(u16, Value, Value)> {
    let claims = format!("/v1/campaigns/{id}/claims");
    let calls = [
        (Method::GET, format!("/v1/campaigns/{id}"), None),
        (
            Method::POST,
            claims.clone(),
            Some(json!({"user_id": "peek"})),
        ),
        (Method::GET, format!("{claims}/peek"), None),
        (Method::DELETE, format!("{claims}/peek"), None),
        (Method::GET, format!("{claims}/peek/events"), None),
    ];
    let mut out = Vec::new();
    for (m, path, body) in calls {
        let (s, _, v) = call(app, m, &path, None, body).await;
        out.push((s, v["code"].clone(), v["detail"].clone()));
    }
    out
}

#[tokio::test]
async fn an_unpublished_campaign_is_an_unknown_id_to_all_but_the_admin() {
    let app = spawn(|_| {}).await;
    let v = app
        .create_campaign(json!({"name":"secret drop","mode":"gate",
            "pools":[{"name":"main","stock":2}],"published":false}))
        .await;
    assert_eq!(v["published"], false, "{v}");
    let id = v["id"].as_i64().unwrap();
    // Another process of the deployment, which sees the 404 first.
    let other = common::spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    let unknown = public_answers(&app, 987_654_321).await;
    assert!(unknown
        .iter()
        .all(|(s, c, _)| *s == 404 && c == "campaign_not_found"));
    assert_eq!(public_answers(&app, id).await, unknown);
    assert_eq!(public_answers(&other, id).await, unknown);
    // The admin reads it (uncached) and exports its grants.
    let body = app.campaign_body(id).await;
    assert_eq!(
        (body["id"].as_i64(), &body["published"]),
        (Some(id), &json!(false))
    );
    assert!(app.grants(id).await.is_empty());
    // Publishing is the admin's.
    let publish = format!("/v1/campaigns/{id}/publish");
    let (s, _, v) = call(&app, Method::POST, &publish, None, None).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (s, _, v) = call(&app, Method::POST, &publish, Some(common::TOKEN), None).await;
    assert_eq!((s, &v["published"]), (200, &json!(true)), "{v}");
    let (s, _, _) = call(
        &app,
        Method::POST,
        "/v1/campaigns/987654321/publish",
        Some(common::TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Everyone sees it now: here at once, in the other process within its
    // cache's TTL.
    let (s, _, v) = call(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!((s, &v["published"]), (200, &json!(true)), "{v}");
    assert_eq!(claim(&app, id, None, "first").await.0, 200);
    common::until("the other process sees it published", || async {
        other
            .send(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await
            .0
            == 200
    })
    .await;
    assert_eq!(claim(&other, id, None, "second").await.0, 200);
    let (s, doc) = app.send(Method::GET, "/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/campaigns/{id}/publish"]["post"].is_object());
    other.stop().await;
    app.stop().await;
}

/// Existing tools create campaigns without the field: they are public.
#[tokio::test]
async fn campaigns_are_published_by_default() {
    let app = spawn(|_| {}).await;
    let id = app.campaign("redis-lua", &[("main", 1)]).await;
    let (s, _, v) = call(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!((s, &v["published"]), (200, &json!(true)), "{v}");
    app.stop().await;
}
