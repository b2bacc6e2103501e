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

/// A counter of the (process-wide) metrics, summed over its label sets.
pub(super) async fn counter(app: &common::TestApp, name: &str) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 19 item 1: the streams of a campaign are fed by one watcher that
/// reads every user's answer in one call a tick; a stream reads its claim
/// only when its answer changed. N streams used to cost N reads a tick.
#[tokio::test]
async fn many_streams_of_a_campaign_share_one_reader_and_still_follow_their_claim() {
    const N: usize = 30;
    let app = spawn(|_| {}).await;
    let users: Vec<String> = (0..N).map(|i| format!("w{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    app.stop_worker.send(true).unwrap();
    let id = app.campaign("redis-queue", &[("main", N as i64)]).await;
    for u in &names {
        assert_eq!(claim(&app, id, None, u).await.0, 202);
    }
    let reads_before = counter(&app, "firstcome_stream_reads_total").await;
    let mut streams = Vec::new();
    for u in &names {
        let s = open(&app, id, u, None).await;
        assert_eq!(s.status(), 200);
        streams.push(s);
    }
    // Let the watcher tick a number of times (at least 12 Redis polls,
    // the counter being process-wide, and at least 3 s: 12 ticks of our
    // own), while nothing changes.
    let polls_before = counter(&app, "firstcome_stream_polls_total").await;
    let start = tokio::time::Instant::now();
    common::until("the watchers polled", || async {
        counter(&app, "firstcome_stream_polls_total").await - polls_before >= 12.0
            && start.elapsed() >= Duration::from_secs(3)
    })
    .await;
    // Each stream read its claim once when it joined (the watcher announces
    // a new user once); polling per stream would have cost N per tick, at
    // least 12 N here. Other tests' streams share the counter: loose bound.
    let reads = counter(&app, "firstcome_stream_reads_total").await - reads_before;
    assert!(
        reads < (3 * N) as f64,
        "{N} idle streams read their claims {reads} times"
    );
    // A change still reaches every stream, which closes on its final answer.
    let followers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut body = String::new();
                while let Ok(Some(chunk)) = s.chunk().await {
                    body.push_str(&String::from_utf8_lossy(&chunk));
                }
                body
            })
        })
        .collect();
    // A second process with a worker drains the queue.
    let other = common::spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    for f in followers {
        let body = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("the stream closes after its final answer")
            .unwrap();
        let statuses: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Value>(d).unwrap()["status"].clone())
            .collect();
        assert_eq!(statuses.first(), Some(&json!("queued")), "{body}");
        assert_eq!(statuses.last(), Some(&json!("granted")), "{body}");
    }
    other.stop().await;
    app.stop().await;
}

/// The PostgreSQL modes are watched in PostgreSQL (one query for every
/// user of the campaign), and so are holds in any mode (a confirmation is
/// written to PostgreSQL only): a held grant's stream sees its
/// confirmation and closes.
#[tokio::test]
async fn a_held_grant_stream_follows_it_to_its_confirmation_in_every_kind_of_mode() {
    let app = spawn(|_| {}).await;
    for mode in ["db-atomic", "gate"] {
        let id = app
            .create_campaign(json!({"name":"seats","mode":mode,
                "pools":[{"name":"hall","stock":3}],"confirm_within_secs":600}))
            .await["id"]
            .as_i64()
            .unwrap();
        assert_eq!(claim(&app, id, None, "held").await.0, 200);
        let mut s = open(&app, id, "held", None).await;
        assert_eq!(s.status(), 200);
        let follower = tokio::spawn(async move {
            let mut body = String::new();
            while let Ok(Some(chunk)) = s.chunk().await {
                body.push_str(&String::from_utf8_lossy(&chunk));
            }
            body
        });
        let path = format!("/v1/campaigns/{id}/claims/held/confirm");
        common::until("the grant is durable and confirmed", || async {
            call(&app, Method::POST, &path, Some(common::TOKEN), None)
                .await
                .0
                == 200
        })
        .await;
        let body = tokio::time::timeout(Duration::from_secs(30), follower)
            .await
            .expect("the stream closes once confirmed")
            .unwrap();
        let holds: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Value>(d).unwrap()["hold"].clone())
            .collect();
        assert_eq!(holds.first(), Some(&json!("held")), "{mode}: {body}");
        assert_eq!(holds.last(), Some(&json!("confirmed")), "{mode}: {body}");
    }
    app.stop().await;
}
