//! Security and bad input, end to end: user JWTs (required, subject,
//! expiry, algorithm), rate limits with Retry-After, input bounds, and the
//! production profile's refusal to start half-configured.

mod addresses;
mod connections;
mod flood;
mod limits;
mod published;
mod streams;

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
    hs256_claims(&json!({"sub": sub, "exp": exp}), secret)
}

/// An HS256 token carrying `claims`.
fn hs256_claims(claims: &Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
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
    let no_exp = hs256_claims(&json!({"sub": "alice"}), SECRET);
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
    let alice_path = format!("{claims}/alice");
    let (s, _, _) = call(&app, Method::GET, &alice_path, Some(&alice), None).await;
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
    let (s, _, st) = call(&app, Method::GET, &alice_path, Some(&alice), None).await;
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
    let carol = format!("{claims}/carol");
    let (s, _, v) = call(&app, Method::GET, &carol, Some(&confused), None).await;
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

#[test]
fn the_production_profile_refuses_to_start_half_configured() {
    let mut a = ServeArgs::for_tests("postgres://x/y", "redis://x", "fc", "");
    a.production = true;
    a.rate_per_user = 20;
    a.admin_token = None;
    a.jwt_secret = Some(SECRET.into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAdminToken));
    a.admin_token = Some("short".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAdminToken));
    a.admin_token = Some("x".repeat(40));
    assert_eq!(a.validate(), Err(ConfigError::WeakAdminToken));
    a.admin_token = Some("a-long-enough-admin-token".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutAudience));
    a.jwt_audience = Some("firstcome".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutIssuer));
    a.jwt_issuer = Some("https://id.example".into());
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutIpLimit));
    a.rate_per_ip = 50;
    assert_eq!(
        a.validate(),
        Err(ConfigError::ProductionWithoutBadTokenLimit)
    );
    a.bad_tokens_per_ip = 10;
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutOpsAddr));
    a.ops_addr = Some("127.0.0.1:0".parse().unwrap());
    assert_eq!(
        a.validate(),
        Err(ConfigError::ProductionWithoutWebhookAllow)
    );
    a.webhooks.webhook_allow = vec!["hooks.example".into()];
    assert_eq!(a.validate(), Ok(()));
    a.rate_per_user = 0;
    assert_eq!(a.validate(), Err(ConfigError::ProductionWithoutUserLimit));
    a.rate_per_user = 20;
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

/// Issue 19 item 7: no key and no explicit trust in the request's user id
/// refuses to start; the flag (or a key) lets it.
#[test]
fn without_a_key_the_service_refuses_to_start_unless_told() {
    let mut a = ServeArgs::for_tests("postgres://x/y", "redis://x", "fc", "token");
    assert_eq!(a.validate(), Ok(()), "the tests trust user ids explicitly");
    a.insecure_trust_user_id = false;
    assert_eq!(a.validate(), Err(ConfigError::NoJwtKey));
    a.jwt_secret = Some(SECRET.into());
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

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let app = spawn(|a| a.jwt_secret = Some(SECRET.into())).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    // nbf an hour ahead: far beyond the clock-skew leeway.
    let early = hs256_claims(
        &json!({"sub": "gina", "exp": now() + 7200, "nbf": now() + 3600}),
        SECRET,
    );
    let (s, _, v) = claim(&app, id, Some(&early), "gina").await;
    assert_eq!((s, v["code"].as_str()), (401, Some("invalid_token")), "{v}");
    // Within the leeway it is accepted.
    let skewed = hs256_claims(
        &json!({"sub": "gina", "exp": now() + 7200, "nbf": now() + 5}),
        SECRET,
    );
    let (s, _, v) = claim(&app, id, Some(&skewed), "gina").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
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
async fn only_the_payment_service_or_the_admin_confirms_a_hold() {
    const PAYMENT: &str = "the-payment-service-token";
    let app =
        spawn(|a| (a.jwt_secret, a.confirm_token) = (Some(SECRET.into()), Some(PAYMENT.into())))
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
