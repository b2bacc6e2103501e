//! Abuse of the request path: rate limits per user and per address,
//! input bounds, unknown campaigns counted, the campaign read cache,
//! bounded metric labels, store failures answered without driver text.

use super::*;

#[tokio::test]
async fn a_user_over_the_limit_gets_429_and_a_stable_answer_otherwise() {
    let app = spawn(|a| (a.rate_per_user, a.rate_per_user_burst) = (1, 3)).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let (s, _, first) = claim(&app, id, None, "eve").await;
    assert_eq!(s, 200);
    // Poll until refused: the burst is 3, so a refusal comes within a few
    // requests unless each one takes a second.
    let mut limited = None;
    for _ in 0..200 {
        let (s, ra, v) = status(&app, id, "eve").await;
        match s {
            200 => assert_eq!(v, first, "polling within the limit is stable"),
            429 => {
                limited = Some((ra, v));
                break;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let (ra, v) = limited.expect("the limit refused some request");
    assert_eq!(v["code"], "rate_limited");
    let secs: u64 = ra.expect("Retry-After").parse().expect("seconds");
    assert!(secs >= 1);
    // Another user is not affected.
    let (s, _, _) = claim(&app, id, None, "frank").await;
    assert_eq!(s, 200);
    // After Retry-After, eve is served again with the same answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (s, _, v) = status(&app, id, "eve").await;
        if s == 200 {
            assert_eq!(v, first);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still limited");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_address_over_the_limit_gets_429_but_probes_do_not() {
    let app = spawn(|a| (a.rate_per_ip, a.rate_per_ip_burst) = (1, 5)).await;
    let mut limited = None;
    for _ in 0..200 {
        let (s, ra, v) = call(&app, Method::GET, "/v1/campaigns/1", None, None).await;
        if s == 429 {
            limited = Some((ra, v));
            break;
        }
        assert_eq!(s, 404, "{v}");
    }
    let (ra, v) = limited.expect("the limit refused some request");
    assert_eq!(v["code"], "rate_limited");
    assert!(ra.expect("Retry-After").parse::<u64>().unwrap() >= 1);
    for _ in 0..20 {
        assert_eq!(call(&app, Method::GET, "/healthz", None, None).await.0, 200);
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_stable_codes() {
    let app = common::spawn_app().await;
    let far = (chrono::Utc::now() + chrono::Duration::days(3650)).to_rfc3339();
    for (spec, code) in [
        (
            json!({"name":"x","pools":[{"name":"a","stock":1}],"closes_at": far}),
            "invalid_schedule",
        ),
        (
            json!({"name":"x","pools":[{"name":"a","stock":1}],"opens_at":"1970-01-01T00:00:00Z"}),
            "invalid_schedule",
        ),
        (
            json!({"name":"x","pools":[{"name":"a","stock":1}],"opens_at":"+275000-01-01T00:00:00Z"}),
            "invalid_body",
        ),
        (
            json!({"name":"x","pools":[{"name":"a","stock":1}],"hold_secs": 1_000_000_000}),
            "invalid_hold",
        ),
        (
            json!({"name":"x\u{1b}[31m","pools":[{"name":"a","stock":1}]}),
            "invalid_name",
        ),
        (
            json!({"name":"x","pools":[{"name":"a","stock":1e20}]}),
            "invalid_body",
        ),
    ] {
        let (s, v) = app.post_admin("/v1/campaigns", spec.clone()).await;
        assert_eq!((s, v["code"].as_str()), (422, Some(code)), "{spec}: {v}");
    }
    let id = app.campaign("gate", &[("main", 5)]).await;
    let long = "u".repeat(129);
    let (s, v) = app.claim(id, &long, None).await;
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_user_id")));
    let (s, v) = app.status(id, "a%7Cb").await;
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_user_id")));
    // A body past MAX_BODY_BYTES.
    let huge = json!({"user_id": "x".repeat(firstcome::http::MAX_BODY_BYTES)});
    let claims = format!("/v1/campaigns/{id}/claims");
    let (s, v) = app.send(Method::POST, &claims, Some(huge)).await;
    assert_eq!((s, v["code"].as_str()), (413, Some("body_too_large")));
    app.stop().await;
}

#[tokio::test]
async fn request_metrics_label_unknown_methods_as_other() {
    let app = common::spawn_app().await;
    let id = app.campaign("gate", &[("main", 1)]).await;
    // Methods a client makes up must not become label values: each would
    // be a new series for as long as the process lives.
    let made_up = Method::from_bytes(b"FOOBARSEC").unwrap();
    for path in [format!("/v1/campaigns/{id}"), "/healthz".to_string()] {
        let (s, _) = app.send(made_up.clone(), &path, None).await;
        assert_eq!(s, 405, "{path}");
    }
    let metrics = app.metrics().await;
    assert!(!metrics.contains("FOOBARSEC"), "{metrics}");
    assert!(
        metrics.contains(r#"method="other",route="/v1/campaigns/{id}",status="405""#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_store_failure_answers_a_fixed_detail_without_driver_text() {
    let name = common::unique("sec");
    let db_url = common::fresh_database(&name).await;
    let app = common::spawn_app_on(&db_url, &name, |_| {})
        .await
        .owning_database();
    // Take the database away under the running app (its sessions ended).
    common::drop_database(&db_url).await;
    for path in ["/readyz", "/v1/campaigns/424242"] {
        let (s, ra, v) = call(&app, Method::GET, path, None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("database_unavailable")),
            "{path}: {v}"
        );
        assert!(ra.is_some(), "{path}: Retry-After");
        let detail = v["detail"].as_str().unwrap();
        for leak in [
            name.as_str(),
            "postgres",
            "mysql",
            "sqlx",
            "pool",
            "error returned",
        ] {
            assert!(
                !detail.contains(leak),
                "{path}: the detail leaks {leak:?}: {detail}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn claims_to_an_unknown_campaign_count_against_the_user_limit() {
    let app = spawn(|a| (a.rate_per_user, a.rate_per_user_burst) = (1, 3)).await;
    // Each of these used to cost a PostgreSQL lookup and no token of the
    // limit: a free flood.
    let mut codes = Vec::new();
    for _ in 0..200 {
        let (s, _, v) = claim(&app, 987_654_321, None, "mallory").await;
        codes.push(s);
        if s == 429 {
            assert_eq!(v["code"], "rate_limited");
            break;
        }
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("campaign_not_found")),
            "{v}"
        );
    }
    assert_eq!(codes.last(), Some(&429), "never limited: {codes:?}");
    app.stop().await;
}

/// `firstcome_campaign_reads_from_db_total` of public reads, from the
/// (process-wide) metrics.
async fn campaign_db_reads(app: &common::TestApp) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(r#"firstcome_campaign_reads_from_db_total{by="public"} "#))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// `n` concurrent GETs of `path` (50 at a time); their statuses.
async fn flood_get(app: &common::TestApp, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n / 50 {
        let batch = (0..50).map(|_| async {
            let r = app.http.get(format!("{}{path}", app.base)).send().await;
            r.expect("request").status().as_u16()
        });
        out.extend(futures::future::join_all(batch).await);
    }
    out
}

#[tokio::test]
async fn campaign_reads_are_cached_with_an_etag_and_spare_postgresql() {
    let app = common::spawn_app().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let path = format!("/v1/campaigns/{id}");
    let url = format!("{}{path}", app.base);
    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=1");
    let etag = r.headers()[header::ETAG].clone();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id);
    // Nothing changed, so whether the body was refilled or not, the tag
    // still matches: 304 without a body.
    let r = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    assert_eq!(r.headers()[header::ETAG], etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"another\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A flood of reads of one campaign, then of an unknown one: each read
    // used to cost a PostgreSQL query; now one per second per id. The
    // counter is process-wide (other tests read campaigns too), hence the
    // loose bound: without the cache it grows by at least n.
    let n = 400;
    for (path, want) in [(path.as_str(), 200), ("/v1/campaigns/987654321", 404)] {
        let before = campaign_db_reads(&app).await;
        let statuses = flood_get(&app, path, n).await;
        assert!(statuses.iter().all(|s| *s == want), "{path}: {statuses:?}");
        let reads = campaign_db_reads(&app).await - before;
        assert!(
            reads < (n / 4) as f64,
            "{path}: {n} reads cost {reads} PostgreSQL reads"
        );
    }
    // A claim is seen by the public within the TTL, by the admin at once.
    let (s, _) = app.claim(id, "ida", None).await;
    assert_eq!(s, 200);
    assert_eq!(common::total_granted(&app.campaign_body(id).await), 1);
    common::until("the public read counts the grant", || async {
        common::total_granted(&app.send(Method::GET, &path, None).await.1) == 1
    })
    .await;
    app.stop().await;
}
