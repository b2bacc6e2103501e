//! Security and bad input, end to end: user JWTs (required, subject,
//! expiry, algorithm), rate limits with Retry-After, input bounds, and the
//! production profile's refusal to start half-configured.

use crate::common;

use std::time::Duration;

use firstcome::{cli::ServeArgs, config::ConfigError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{header, Method};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// A throwaway P-256 key pair, only for these tests.
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgY+MsPLqefBmdcwdr
m5S7hAwD5H35Qudq0PyeH7LQ+H2hRANCAAQv2NxwaNrAdnAdmFtPxzWMgn4vrm5E
Q755BCEjNXpajxaU6+tW1JQKUUN1jQUfRV3z01RvXl6amDcNZoXacQJo
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEL9jccGjawHZwHZhbT8c1jIJ+L65u
REO+eQQhIzV6Wo8WlOvrVtSUClFDdY0FH0Vd89NUb15empg3DWaF2nECaA==
-----END PUBLIC KEY-----
";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 token for `sub` expiring at `exp`.
fn hs256(sub: &str, exp: i64, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn spawn(tweak: impl FnOnce(&mut ServeArgs)) -> common::TestApp {
    let name = common::unique("sec");
    let db_url = common::fresh_database(&name).await;
    common::spawn_app_on(&db_url, &name, tweak)
        .await
        .owning_database()
}

/// A request with an optional bearer token: (status, Retry-After, body).
async fn call(
    app: &common::TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut r = app.http.request(method, format!("{}{path}", app.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let s = r.status().as_u16();
    let ra = r
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    if s >= 400 {
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json",
            "errors are problems"
        );
    }
    (s, ra, r.json().await.unwrap_or(Value::Null))
}

/// Claims for `user` with an optional bearer token.
async fn claim(
    app: &common::TestApp,
    id: i64,
    token: Option<&str>,
    user: &str,
) -> (u16, Option<String>, Value) {
    let path = format!("/v1/campaigns/{id}/claims");
    call(
        app,
        Method::POST,
        &path,
        token,
        Some(json!({ "user_id": user })),
    )
    .await
}

/// The claim status of `user`, without a token.
async fn status(app: &common::TestApp, id: i64, user: &str) -> (u16, Option<String>, Value) {
    let path = format!("/v1/campaigns/{id}/claims/{user}");
    call(app, Method::GET, &path, None, None).await
}

#[tokio::test]
async fn user_calls_need_a_valid_token_for_the_same_user() {
    let app = spawn(|a| a.jwt_secret = Some(SECRET.into())).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let claims = format!("/v1/campaigns/{id}/claims");
    let alice = hs256("alice", now() + 600, SECRET);
    let body = || Some(json!({"user_id": "alice"}));

    // No token, a garbage token, a wrongly signed one, an expired one.
    let (s, _, v) = call(&app, Method::POST, &claims, None, body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("missing_token")));
    let (s, _, v) = call(&app, Method::POST, &claims, Some("not.a.jwt"), body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")));
    let forged = hs256("alice", now() + 600, "another-secret-another-secret-xx");
    let (s, _, v) = call(&app, Method::POST, &claims, Some(&forged), body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")));
    let expired = hs256("alice", now() - 3600, SECRET);
    let (s, _, v) = call(&app, Method::POST, &claims, Some(&expired), body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("expired_token")));
    // A token without exp is refused: it would never expire.
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (s, _, v) = call(&app, Method::POST, &claims, Some(&no_exp), body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")));
    // An alg=none token (header and claims, no signature).
    let none = {
        use base64_like::encode;
        format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600).as_bytes())
        )
    };
    let (s, _, v) = call(&app, Method::POST, &claims, Some(&none), body()).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")));
    // Nothing was claimed by any of those.
    let (s, _, _) = call(
        &app,
        Method::GET,
        &format!("{claims}/alice"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Alice may not act for bob, on any user call.
    let bob_body = Some(json!({"user_id": "bob"}));
    let (s, _, v) = call(&app, Method::POST, &claims, Some(&alice), bob_body).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden_user")));
    for (m, path) in [
        (Method::GET, format!("{claims}/bob")),
        (Method::DELETE, format!("{claims}/bob")),
        (Method::GET, format!("{claims}/bob/events")),
    ] {
        let (s, _, v) = call(&app, m.clone(), &path, Some(&alice), None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (403, Some("forbidden_user")),
            "{m} {path}"
        );
        let (s, _, v) = call(&app, m.clone(), &path, None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (401, Some("missing_token")),
            "{m} {path}"
        );
    }

    // With her own token everything works, and repeats are stable.
    let (s, _, first) = call(&app, Method::POST, &claims, Some(&alice), body()).await;
    assert_eq!((s, first["status"].as_str()), (200, Some("granted")));
    let (s, _, again) = call(&app, Method::POST, &claims, Some(&alice), body()).await;
    assert_eq!((s, &again), (200, &first));
    let (s, _, st) = call(
        &app,
        Method::GET,
        &format!("{claims}/alice"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((s, &st), (200, &first));
    let (s, _, c) = call(
        &app,
        Method::DELETE,
        &format!("{claims}/alice"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((s, c["status"].as_str()), (200, Some("cancelled")));

    // Reading a campaign stays public; admin calls still need the admin token.
    let (s, _, _) = call(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, v) = call(
        &app,
        Method::POST,
        "/v1/campaigns",
        Some(&alice),
        Some(json!({"name":"x","pools":[{"name":"a","stock":1}]})),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    app.stop().await;
}

#[tokio::test]
async fn es256_public_keys_verify_and_refuse_other_algorithms() {
    let app = spawn(|a| a.jwt_public_key = Some(EC_PUBLIC.into())).await;
    let id = app.campaign("db-atomic", &[("main", 5)]).await;
    let claims = format!("/v1/campaigns/{id}/claims");
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "carol", "exp": now() + 600}),
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    let (s, _, v) = call(
        &app,
        Method::POST,
        &claims,
        Some(&es),
        Some(json!({"user_id": "carol"})),
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
    // HS256 "signed" with the public key text: the classic confusion.
    let confused = hs256("carol", now() + 600, EC_PUBLIC);
    let (s, _, v) = call(
        &app,
        Method::GET,
        &format!("{claims}/carol"),
        Some(&confused),
        None,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")));
    app.stop().await;
}

#[tokio::test]
async fn without_a_key_the_request_user_id_is_trusted() {
    let app = common::spawn_app().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    // A token, even a bogus one, is ignored.
    let (s, _, v) = claim(&app, id, Some("whatever"), "dave").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")));
    app.stop().await;
}

#[tokio::test]
async fn a_user_over_the_limit_gets_429_and_a_stable_answer_otherwise() {
    let app = spawn(|a| {
        a.rate_per_user = 1;
        a.rate_per_user_burst = 3;
    })
    .await;
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
    let app = spawn(|a| {
        a.rate_per_ip = 1;
        a.rate_per_ip_burst = 5;
    })
    .await;
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
    let (s, v) = app
        .send(
            Method::POST,
            &format!("/v1/campaigns/{id}/claims"),
            Some(huge),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (413, Some("body_too_large")));
    app.stop().await;
}

#[test]
fn the_production_profile_refuses_to_start_half_configured() {
    let mut a = ServeArgs::for_tests("postgres://x/y", "redis://x", "fc", "");
    a.production = true;
    a.admin_token = None;
    a.jwt_secret = Some(SECRET.into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAdminToken));
    a.admin_token = Some("short".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAdminToken));
    a.admin_token = Some("a-long-enough-admin-token".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAudience));
    a.jwt_audience = Some("firstcome".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutIssuer));
    a.jwt_issuer = Some("https://id.example".into());
    assert_eq!(a.validate(), Ok(()));
    a.jwt_secret = None;
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutJwtKey));
    a.jwt_public_key = Some(EC_PUBLIC.into());
    assert_eq!(a.validate(), Ok(()));
    a.jwt_secret = Some(SECRET.into());
    assert_eq!(a.validate(), Err(ConfigError::TwoJwtKeys));
    // Outside production, a short secret is still refused: it would be
    // brute-forced offline from any token.
    a.production = false;
    a.jwt_public_key = None;
    a.jwt_secret = Some("short".into());
    assert_eq!(a.validate(), Err(ConfigError::ShortJwtSecret));
    a.jwt_secret = None;
    a.admin_token = None;
    assert_eq!(a.validate(), Ok(()));
}

#[tokio::test]
async fn the_production_profile_stops_the_build() {
    let mut a = ServeArgs::for_tests(&common::database_url(), &common::redis_url(), "fc", "token");
    a.production = true;
    let err = firstcome::app::Application::build(a)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--production"), "{err}");
}

/// URL-safe base64 without padding, enough to hand-craft a token.
mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// Reads from `s` until the server closes the connection (EOF or reset);
/// returns what was read, or `None` if it is still open at `deadline`.
async fn read_until_closed(s: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_sending_half_a_request_line_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let app = spawn(|a| a.header_read_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // Slow headers: half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    let got = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "a slow-headers connection was still open after 10 s"
    );
    // Nothing at all after connecting: closed too.
    let mut mute = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_until_closed(&mut mute, Duration::from_secs(10)).await;
    assert!(
        got.is_some(),
        "a silent connection was still open after 10 s"
    );
    // The service still answers.
    assert_eq!(call(&app, Method::GET, "/healthz", None, None).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_never_comes_gets_503_at_the_request_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn(|a| a.request_timeout_secs = 1).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A complete head announcing a body that never arrives.
    let head = format!(
        "POST /v1/campaigns/{id}/claims HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"user_id\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Read until the answer's code shows up (the connection may stay open).
    use tokio::io::AsyncReadExt;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("request_timeout") {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => panic!("no answer within 10 s: {}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    app.stop().await;
}

#[test]
fn connection_limits_are_checked_at_startup() {
    let mut a = ServeArgs::for_tests("postgres://x/y", "redis://x", "fc", "t");
    assert_eq!(a.validate(), Ok(()));
    a.idle_timeout_secs = a.request_timeout_secs;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.idle_timeout_secs = 15;
    a.request_timeout_secs = 5;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.idle_timeout_secs = 16;
    assert_eq!(a.validate(), Ok(()));
    a.header_read_timeout_secs = 0;
    assert_eq!(a.validate(), Err(ConfigError::BadTimeouts));
    a.header_read_timeout_secs = 1;
    a.max_connections = 0;
    assert_eq!(a.validate(), Err(ConfigError::NoConnections));
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
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("FOOBARSEC"), "{metrics}");
    assert!(
        metrics.contains(r#"method="other",route="/v1/campaigns/{id}",status="405""#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let app = spawn(|a| a.jwt_secret = Some(SECRET.into())).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    // nbf an hour ahead: far beyond the clock-skew leeway.
    let early = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "gina", "exp": now() + 7200, "nbf": now() + 3600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (s, _, v) = claim(&app, id, Some(&early), "gina").await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")), "{v}");
    // Within the leeway it is accepted.
    let skewed = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "gina", "exp": now() + 7200, "nbf": now() + 5}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (s, _, v) = claim(&app, id, Some(&skewed), "gina").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn a_store_failure_answers_a_fixed_detail_without_driver_text() {
    let name = common::unique("sec");
    let db_url = common::fresh_database(&name).await;
    let app = common::spawn_app_on(&db_url, &name, |_| {})
        .await
        .owning_database();
    // Take the database away under the running app.
    let server = db_url.rsplit_once('/').unwrap().0;
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{server}/postgres"))
            .await
            .unwrap();
    sqlx::query(&format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#))
        .execute(&mut admin)
        .await
        .unwrap();
    app.db.close().await;
    for path in ["/readyz", "/v1/campaigns/424242"] {
        let (s, ra, v) = call(&app, Method::GET, path, None, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("database_unavailable")),
            "{path}: {v}"
        );
        assert!(ra.is_some(), "{path}: Retry-After");
        let detail = v["detail"].as_str().unwrap();
        for leak in [name.as_str(), "postgres", "sqlx", "pool", "error returned"] {
            assert!(
                !detail.contains(leak),
                "{path}: the detail leaks {leak:?}: {detail}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn create_checks_the_admin_token_before_the_body() {
    let app = common::spawn_app().await;
    let url = format!("{}/v1/campaigns", app.base);
    for token in [
        None,
        Some("wrong-token"),
        Some("test-admin-token-but-longer"),
    ] {
        for body in ["{not json", r#"{"name": 1}"#] {
            let mut r = app
                .http
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!(
                (s, v["code"].as_str()),
                (401, Some("unauthorized")),
                "{token:?} {body}"
            );
        }
    }
    // Without a content type, too: the token comes first.
    let r = app.http.post(&url).body("x").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // With the token, the body is judged.
    let r = app
        .http
        .post(&url)
        .bearer_auth(common::TOKEN)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    app.stop().await;
}

#[tokio::test]
async fn claims_to_an_unknown_campaign_count_against_the_user_limit() {
    let app = spawn(|a| {
        a.rate_per_user = 1;
        a.rate_per_user_burst = 3;
    })
    .await;
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
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

#[tokio::test]
async fn only_the_payment_service_or_the_admin_confirms_a_hold() {
    const PAYMENT: &str = "the-payment-service-token";
    let app = spawn(|a| {
        a.jwt_secret = Some(SECRET.into());
        a.confirm_token = Some(PAYMENT.into());
    })
    .await;
    let id = app
        .create_campaign(json!({"name":"seats","mode":"gate",
            "pools":[{"name":"hall","stock":3}],"confirm_within_secs":600}))
        .await["id"]
        .as_i64()
        .unwrap();
    let alice = hs256("alice", now() + 600, SECRET);
    let (s, _, v) = claim(&app, id, Some(&alice), "alice").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
    let path = format!("/v1/campaigns/{id}/claims/alice/confirm");
    // Her own token cannot vouch for her payment.
    let (s, _, v) = call(&app, Method::POST, &path, Some(&alice), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("forbidden_confirm")),
        "{v}"
    );
    for token in [None, Some("wrong"), Some(SECRET)] {
        let (s, _, v) = call(&app, Method::POST, &path, token, None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}: {v}"
        );
    }
    let (s, _, v) = call(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}/claims/alice"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(
        (s, v["hold"].as_str()),
        (200, Some("held")),
        "still held: {v}"
    );
    // The payment service confirms; the admin may too (idempotent).
    let (s, _, v) = call(&app, Method::POST, &path, Some(PAYMENT), None).await;
    assert_eq!((s, v["hold"].as_str()), (200, Some("confirmed")), "{v}");
    let (s, _, v) = call(&app, Method::POST, &path, Some(common::TOKEN), None).await;
    assert_eq!((s, v["hold"].as_str()), (200, Some("confirmed")), "{v}");
    // The payment token is good for nothing else.
    let (s, _, _) = call(
        &app,
        Method::GET,
        &format!("/v1/campaigns/{id}/grants"),
        Some(PAYMENT),
        None,
    )
    .await;
    assert_eq!(s, 401);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_the_rest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn(|a| a.header_read_timeout_secs = 2).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    // Reads until `needle` shows up (deadline 10 s); what was read.
    async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(needle) {
            let mut buf = [0u8; 1024];
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                other => panic!(
                    "{needle:?} not read ({other:?}): {}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    // An idle keep-alive connection, and one stuck in its request line.
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut idle, "ok").await;
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /healthz HT").await.unwrap();
    // A claim in flight: its handler is reading the body (100 Continue
    // says so) when the shutdown comes.
    let body = r#"{"user_id":"late"}"#;
    let mut busy = connect().await.unwrap();
    busy.write_all(
        format!(
            "POST /v1/campaigns/{id}/claims HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    read_until(&mut busy, "100 Continue").await;
    let stopping = tokio::spawn(app.stop());
    // The idle connection is closed at once, the slow one at its header
    // timeout; the claim in flight still gets its answer.
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(10))
            .await
            .is_some(),
        "the idle connection stayed open"
    );
    busy.write_all(body.as_bytes()).await.unwrap();
    let answer = read_until(&mut busy, "granted").await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "the slow connection stayed open"
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn beyond_the_connection_cap_a_client_waits_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn(|a| {
        a.max_connections = 1;
        a.header_read_timeout_secs = 1;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // The one slot: a client that says nothing (closed at its header
    // timeout).
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The next one is accepted by the kernel's backlog, served later.
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut got))
        .await
        .expect("served within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // It was served only once the first had been closed: the first's end
    // of stream was already there (loopback delivers the server's FIN
    // before the second connection could even be accepted).
    let mut buf = [0u8; 16];
    match first.try_read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => {
            panic!("the first connection was still open when the second was served: {other:?}")
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_connection_without_traffic_is_closed_at_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    // The header timeout out of the way: only the idle timeout (the
    // shortest allowed, 16 s) can close these.
    let app = spawn(|a| {
        a.header_read_timeout_secs = 3600;
        a.request_timeout_secs = 1;
        a.idle_timeout_secs = 16;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut kept, Duration::from_secs(40))
        .await
        .expect("the kept-alive connection was closed within 40 s");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(10))
            .await
            .is_some(),
        "the silent connection was still open"
    );
    app.stop().await;
}
