//! The public campaign page (`/c/{id}`): served in the reader's language
//! with its assets and a strict CSP; then, in a headless Debian chromium
//! (browser.rs), it shows the name and the remaining stock, a claim through
//! its button shows the granted seat, and a queued claim turns granted
//! without a reload. The tests write the screenshots in docs/screenshots/.

mod browser;

use serde_json::json;

use crate::common::{spawn_app, spawn_app_on, spawn_app_without_worker};
use browser::Browser;

/// Where the test run leaves its screenshots (shown by the README).
fn screenshot(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/screenshots")
        .join(name)
}

#[tokio::test]
async fn the_page_is_served_in_the_readers_language() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let get = |path: String, lang: &'static str| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let r = http
                .get(url)
                .header("accept-language", lang)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.text().await.unwrap())
        }
    };
    let (s, h, body) = get(format!("/c/{id}"), "ko-KR,ko;q=0.9,en;q=0.5").await;
    assert_eq!(s, 200);
    assert_eq!(h["content-language"], "ko");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(
        body.contains("<html lang=\"ko\">") && body.contains("신청하기"),
        "{body}"
    );
    let (s, h, body) = get(format!("/c/{id}"), "en-US,en;q=0.9").await;
    assert_eq!((s, &h["content-language"]), (200, &"en".parse().unwrap()));
    assert!(body.contains(">Claim<"));
    for asset in ["/assets/page.css", "/assets/campaign.js"] {
        let (s, _, body) = get(asset.to_string(), "en").await;
        assert_eq!(s, 200, "{asset}");
        assert!(body.len() > 500, "{asset}");
    }
    // Unknown and unpublished campaigns are not found, like in the API.
    let hidden = app
        .create_campaign(json!({"name": "h", "mode": "gate", "published": false,
            "pools": [{"name": "main", "stock": 1}]}))
        .await["id"]
        .as_i64()
        .unwrap();
    for path in [format!("/c/{hidden}"), "/c/999999".into(), "/c/x".into()] {
        let (s, _, body) = get(path.clone(), "en").await;
        assert_eq!(s, 404, "{path}");
        assert!(body.contains("campaign_not_found"), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_claim_through_the_button_shows_the_granted_seat() {
    let app = spawn_app().await;
    let v = app
        .create_campaign(json!({"name": "Spring concert", "mode": "gate",
            "pools": [{"name": "floor", "stock": 5}, {"name": "balcony", "stock": 3}]}))
        .await;
    let id = v["id"].as_i64().unwrap();
    let mut b = Browser::start("en-US").await;
    b.goto(&format!("{}/c/{id}", app.base)).await;
    b.wait_for("the stock", "document.querySelector('[data-pool=floor]')")
        .await;
    assert_eq!(
        b.eval("document.getElementById('name').textContent").await,
        "Spring concert"
    );
    assert_eq!(
        b.eval("document.querySelector('[data-pool=floor]').textContent")
            .await,
        "5 of 5 left"
    );
    b.eval("document.getElementById('user').value = 'alice'; document.getElementById('pool').value = 'balcony'; document.getElementById('claim').click()")
        .await;
    b.wait_for(
        "granted",
        "document.getElementById('status').dataset.status === 'granted'",
    )
    .await;
    let text = b
        .eval("document.getElementById('status').textContent")
        .await;
    assert!(text.as_str().unwrap().contains("balcony #1"), "{text}");
    // The seat is in PostgreSQL, and the bar follows (polled, not reloaded).
    let (s, a) = app.status(id, "alice").await;
    assert_eq!(
        (s, a["slot"].as_i64(), a["pool"].as_str()),
        (200, Some(1), Some("balcony"))
    );
    b.wait_for(
        "the balcony bar at 2",
        "document.querySelector('[data-pool=balcony]').textContent === '2 of 3 left'",
    )
    .await;
    b.screenshot(&screenshot("campaign-en.png")).await;
}

#[tokio::test]
async fn a_queued_claim_turns_granted_without_a_reload() {
    // No worker: the claim stays queued until one starts.
    let app = spawn_app_without_worker().await;
    let id = app
        .create_campaign(json!({"name": "모의고사 좌석", "mode": "redis-queue",
            "pools": [{"name": "seoul", "stock": 3}]}))
        .await["id"]
        .as_i64()
        .unwrap();
    let mut b = Browser::start("ko-KR").await;
    b.goto(&format!("{}/c/{id}", app.base)).await;
    b.wait_for("the stock", "document.querySelector('[data-pool=seoul]')")
        .await;
    assert_eq!(
        b.eval("document.querySelector('[data-pool=seoul]').textContent")
            .await,
        "3개 중 3개 남음"
    );
    b.eval(
        "document.getElementById('user').value = 'minji'; document.getElementById('claim').click()",
    )
    .await;
    b.wait_for(
        "queued",
        "document.getElementById('status').dataset.status === 'queued'",
    )
    .await;
    let worker = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    b.wait_for(
        "granted",
        "document.getElementById('status').dataset.status === 'granted'",
    )
    .await;
    let text = b
        .eval("document.getElementById('status').textContent")
        .await;
    assert!(text.as_str().unwrap().contains("seoul 1번"), "{text}");
    // Still the same page: the form keeps what was typed, the bar follows.
    assert_eq!(
        b.eval("document.getElementById('user').value").await,
        "minji"
    );
    b.wait_for(
        "the bar at 2",
        "document.querySelector('[data-pool=seoul]').textContent === '3개 중 2개 남음'",
    )
    .await;
    b.screenshot(&screenshot("campaign-ko.png")).await;
    drop(worker);
}

#[tokio::test]
async fn the_campaign_list_pages_for_the_admin_only() {
    let app = spawn_app().await;
    let ids: Vec<i64> =
        futures::future::join_all((0..3).map(|_| app.campaign("db-lock", &[("main", 1)]))).await;
    let (s, v) = app.send(reqwest::Method::GET, "/v1/campaigns", None).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")));
    let (s, v) = crate::operator::admin(
        &app,
        reqwest::Method::GET,
        "/v1/campaigns?limit=2",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let first: Vec<i64> = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let mut newest = ids.clone();
    newest.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(first, newest[..2]);
    let next = v["next"].as_i64().unwrap();
    let (_, v) = crate::operator::admin(
        &app,
        reqwest::Method::GET,
        &format!("/v1/campaigns?limit=2&before={next}"),
        None,
        None,
    )
    .await;
    assert_eq!(v["campaigns"][0]["id"].as_i64(), Some(newest[2]));
    assert!(v["next"].is_null());
    let (s, v) = crate::operator::admin(
        &app,
        reqwest::Method::GET,
        "/v1/campaigns?limit=0",
        None,
        None,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_limit")));
}

#[tokio::test]
async fn the_dashboards_pause_button_pauses() {
    let app = spawn_app().await;
    let id = app.campaign("redis-lua", &[("main", 10)]).await;
    for u in ["a", "b", "c"] {
        assert_eq!(app.claim(id, u, None).await.0, 200);
    }
    let mut b = Browser::start_sized("en-US", (1000, 820)).await;
    b.goto(&format!("{}/admin", app.base)).await;
    b.wait_for(
        "the sign-in form",
        "!document.getElementById('login').hidden",
    )
    .await;
    let sign_in = format!(
        "document.getElementById('token').value = {}; document.getElementById('login').requestSubmit()",
        serde_json::to_string(crate::common::TOKEN).unwrap()
    );
    b.eval(&sign_in).await;
    let row = format!("document.querySelector('#campaigns tr[data-id=\"{id}\"]')");
    b.wait_for("the campaign in the list", &row).await;
    b.eval(&format!("{row}.click()")).await;
    b.wait_for(
        "the pools",
        "document.querySelector('#pools tbody tr') && document.querySelector('#pools tbody tr').cells[2].textContent === '3'",
    )
    .await;
    b.eval("document.getElementById('pause').click()").await;
    b.wait_for(
        "paused",
        "document.getElementById('detail').dataset.paused === 'true'",
    )
    .await;
    // Paused for real: a new user is told to come back.
    let (s, v) = app.claim(id, "d", None).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("paused")), "{v}");
    b.wait_for(
        "the action logged",
        "document.getElementById('actions').textContent.includes('pause')",
    )
    .await;
    // The live counts of the campaign's mode and its flush lag (from the
    // second refresh on: rates need two reads).
    b.wait_for(
        "claims by outcome and the flush lag",
        "document.getElementById('live').textContent.includes('claims granted/s') && document.getElementById('live').textContent.includes('flush lag')",
    )
    .await;
    b.screenshot(&screenshot("admin.png")).await;
    // The token lives in the tab's sessionStorage, never in the URL.
    assert_eq!(b.eval("location.href.includes('token')").await, false);
}

#[tokio::test]
async fn a_held_seat_shows_its_deadline_and_the_hosts_payment_link() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(
            json!({"name": "Seats", "mode": "gate", "confirm_within_secs": 600,
            "pools": [{"name": "main", "stock": 2}]}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let mut b = Browser::start("en-US").await;
    // The host page links here with where the payment happens; a URL that
    // is not http(s) would be ignored.
    b.goto(&format!(
        "{}/c/{id}#confirm=https://shop.example/pay",
        app.base
    ))
    .await;
    b.wait_for("the stock", "document.querySelector('[data-pool=main]')")
        .await;
    b.eval(
        "document.getElementById('user').value = 'hana'; document.getElementById('claim').click()",
    )
    .await;
    b.wait_for("held", "document.querySelector('#status .held')")
        .await;
    let text = b
        .eval("document.querySelector('#status .held').textContent")
        .await;
    assert!(
        text.as_str()
            .unwrap()
            .starts_with("Held for you: confirm before"),
        "{text}"
    );
    assert_eq!(
        b.eval("document.getElementById('confirm').href").await,
        "https://shop.example/pay"
    );
    let (_, a) = app.status(id, "hana").await;
    assert_eq!(a["hold"], "held", "{a}");
}
