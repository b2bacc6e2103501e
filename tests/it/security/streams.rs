//! Issue 19 item 1: event streams are capped (per user, per client address,
//! in total) and end when the caller's token expires.

use super::*;

/// Opens `user`'s event stream (kept open while the response lives).
async fn open(
    app: &common::TestApp,
    id: i64,
    user: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut r = app.http.get(format!(
        "{}/v1/campaigns/{id}/claims/{user}/events",
        app.base
    ));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.expect("request")
}

/// A redis-queue campaign whose claims stay queued (no worker drains),
/// so their streams stay open; `users` have claimed.
async fn queued(app: &common::TestApp, users: &[&str], token: Option<&str>) -> i64 {
    app.stop_worker.send(true).unwrap();
    let id = app.campaign("redis-queue", &[("main", 10)]).await;
    for u in users {
        let (s, _, v) = claim(app, id, token, u).await;
        assert_eq!(s, 202, "{v}");
    }
    id
}

#[tokio::test]
async fn streams_are_capped_per_user_and_per_address() {
    let app = spawn(|a| (a.sse_per_user, a.sse_per_ip) = (2, 3)).await;
    let id = queued(&app, &["q", "r"], None).await;
    let (s1, s2) = (
        open(&app, id, "q", None).await,
        open(&app, id, "q", None).await,
    );
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    let third = open(&app, id, "q", None).await;
    assert_eq!(third.status(), 429);
    let v: Value = third.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited", "{v}");
    // Another user from the same address: one more, then the address is full.
    let r1 = open(&app, id, "r", None).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(open(&app, id, "r", None).await.status(), 429);
    // A stream that ends by itself (a settled answer) gives its place back.
    let gate = app.campaign("gate", &[("main", 5)]).await;
    assert_eq!(claim(&app, gate, None, "g").await.0, 200);
    drop((s1, s2, r1));
    common::until("a settled stream's place given back", || async {
        let s = open(&app, gate, "g", None).await;
        s.status() == 200 && s.text().await.is_ok()
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_process_holds_at_most_its_streams() {
    let app = spawn(|a| a.sse_max_streams = 1).await;
    let id = queued(&app, &["a", "b"], None).await;
    let first = open(&app, id, "a", None).await;
    assert_eq!(first.status(), 200);
    let second = open(&app, id, "b", None).await;
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key(header::RETRY_AFTER));
    let v: Value = second.json().await.unwrap();
    assert_eq!(v["code"], "stream_capacity", "{v}");
    app.stop().await;
}

/// A stream lives no longer than the token that opened it.
#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = spawn(|a| a.jwt_secret = Some(SECRET.into())).await;
    let long = hs256("t", now() + 3600, SECRET);
    let id = queued(&app, &["t"], Some(&long)).await;
    let short = hs256("t", now() + 3, SECRET);
    let mut s = open(&app, id, "t", Some(&short)).await;
    assert_eq!(s.status(), 200);
    // The test app's streams last 60 s; this one must end with its token.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = s.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    app.stop().await;
}

/// Red-team C4: shutting down ends open streams at once, rather than
/// waiting up to `--sse-max-secs` for them.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let app = spawn(|_| {}).await;
    let id = queued(&app, &["s"], None).await;
    let mut stream = open(&app, id, "s", None).await;
    assert_eq!(stream.status(), 200);
    let stopping = tokio::spawn(app.stop());
    // The test app's streams last 60 s; this one must end with the server.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream held the shutdown");
    stopping.await.unwrap();
}
