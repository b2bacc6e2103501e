//! Issue 19 item 6: the client address behind a trusted proxy, the
//! per-address limit in front of JWT verification, and the operations
//! endpoints on a listener of their own.

use super::*;

/// A GET of `path` with `X-Forwarded-For: xff`; its status.
async fn get_from(app: &common::TestApp, path: &str, xff: &str) -> u16 {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .expect("request");
    r.status().as_u16()
}

#[tokio::test]
async fn behind_a_proxy_the_address_it_appended_is_limited() {
    let app = spawn(|a| {
        (a.rate_per_ip, a.rate_per_ip_burst) = (1, 2);
        a.behind_proxy = Some("X-Forwarded-For".into());
    })
    .await;
    let path = "/v1/campaigns/987654321";
    // The proxy appends the client (1.1.1.1) after whatever it was sent.
    assert_eq!(get_from(&app, path, "9.9.9.9, 1.1.1.1").await, 404);
    assert_eq!(get_from(&app, path, "8.8.8.8, 1.1.1.1").await, 404);
    assert_eq!(get_from(&app, path, "7.7.7.7, 1.1.1.1").await, 429);
    // Another client of the same proxy has a bucket of its own, whatever
    // it writes in front (here the exhausted client's address).
    assert_eq!(get_from(&app, path, "1.1.1.1, 2.2.2.2").await, 404);
    app.stop().await;

    // Without --behind-proxy the header is anyone's to write: not read.
    let app = spawn(|a| (a.rate_per_ip, a.rate_per_ip_burst) = (1, 2)).await;
    let codes = [
        get_from(&app, path, "1.0.0.1").await,
        get_from(&app, path, "1.0.0.2").await,
        get_from(&app, path, "1.0.0.3").await,
    ];
    assert_eq!(codes, [404, 404, 429]);
    app.stop().await;
}

/// A flood of forged tokens from one address is refused by the address'
/// limit before any signature is checked: a verified bad token is 401, so
/// a 429 shows the verification never ran.
#[tokio::test]
async fn the_address_limit_comes_before_token_verification() {
    let app = spawn(|a| {
        a.jwt_public_key = Some(EC_PUBLIC.into());
        (a.rate_per_ip, a.rate_per_ip_burst) = (1, 5);
    })
    .await;
    let forged = hs256("mallory", now() + 600, SECRET);
    let mut codes = Vec::new();
    for _ in 0..40 {
        let (s, _, v) = call(
            &app,
            Method::GET,
            &common::claim_path(1, "mallory"),
            Some(&forged),
            None,
        )
        .await;
        codes.push((s, v["code"].as_str().unwrap_or_default().to_string()));
    }
    let verified = codes.iter().filter(|(s, _)| *s == 401).count();
    let limited = codes.iter().filter(|(s, _)| *s == 429).count();
    assert!(verified <= 6, "{verified} tokens verified: {codes:?}");
    assert_eq!(verified + limited, codes.len(), "{codes:?}");
    app.stop().await;
}

/// Without a request limit per address (a rush's load test), failed token
/// checks still are: beyond `--bad-tokens-per-ip` in a second, the
/// address' user calls are refused 429 before any verification.
#[tokio::test]
async fn failed_token_checks_close_the_address_before_more_are_verified() {
    const PER_SEC: usize = 5;
    let app = spawn(|a| {
        a.jwt_public_key = Some(EC_PUBLIC.into());
        a.bad_tokens_per_ip = PER_SEC as u32;
    })
    .await;
    let forged = hs256("mallory", now() + 600, SECRET);
    let path = common::claim_path(1, "mallory");
    let start = tokio::time::Instant::now();
    let mut codes = Vec::new();
    for _ in 0..60 {
        let (s, _, _) = call(&app, Method::GET, &path, Some(&forged), None).await;
        codes.push(s);
    }
    // At most PER_SEC verified (401) per second the flood spanned.
    let windows = start.elapsed().as_secs() as usize + 2;
    let verified = codes.iter().filter(|s| **s == 401).count();
    assert!(
        verified <= PER_SEC * windows,
        "{verified} verified: {codes:?}"
    );
    assert!(codes.iter().all(|s| matches!(s, 401 | 429)), "{codes:?}");
    assert!(codes.contains(&429), "never limited: {codes:?}");
    app.stop().await;
}

#[tokio::test]
async fn ops_endpoints_leave_the_public_listener_for_the_ops_address() {
    let app = spawn(|a| a.ops_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let ops = app.ops_base.clone().expect("an ops listener");
    let get = |base: String, path: &'static str| {
        let http = app.http.clone();
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            r.status().as_u16()
        }
    };
    for path in ["/metrics", "/readyz", "/openapi.json"] {
        assert_eq!(get(app.base.clone(), path).await, 404, "public {path}");
        assert_eq!(get(ops.clone(), path).await, 200, "ops {path}");
    }
    assert_eq!(get(app.base.clone(), "/healthz").await, 200);
    assert_eq!(get(ops.clone(), "/healthz").await, 200);
    // The API is not on the ops listener.
    assert_eq!(get(ops.clone(), "/v1/campaigns/1").await, 404);
    // Shutdown closes both.
    let probe = app.http.clone();
    app.stop().await;
    let after = probe.get(format!("{ops}/healthz")).send().await;
    assert!(after.is_err(), "the ops listener outlived the shutdown");
}

/// `firstcome_ready_checks_total` from the (process-wide) metrics.
async fn ready_checks(app: &common::TestApp) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("firstcome_ready_checks_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Each `/readyz` took a PostgreSQL connection; now one check a second,
/// concurrent probes waiting for the one in progress.
#[tokio::test]
async fn readiness_is_checked_at_most_once_a_second() {
    let app = spawn(|_| {}).await;
    let before = ready_checks(&app).await;
    for _ in 0..10 {
        let batch = (0..30).map(|_| app.send(Method::GET, "/readyz", None));
        let codes = futures::future::join_all(batch).await;
        assert!(codes.iter().all(|(s, _)| *s == 200), "{codes:?}");
    }
    // The counter is process-wide (other tests probe too), hence the loose
    // bound: without the cache it grows by 300.
    let checks = ready_checks(&app).await - before;
    assert!(checks < 100.0, "300 probes cost {checks} checks");
    app.stop().await;
}
