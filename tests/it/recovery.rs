//! Recovery: holds that expire unless confirmed, the reconciler repairing
//! drift between Redis and PostgreSQL, dead-letter replay.

use crate::common::{common_for, eventually, redis_conn, spawn_app, TestApp, TOKEN};
use firstcome::{domain::CampaignId, tasks::reconcile};
use serde_json::{json, Value};

/// Confirms `user`'s hold as the admin (the payment service's stand-in).
async fn confirm(app: &TestApp, id: i64, user: &str) -> (u16, Value) {
    let r = app
        .http
        .post(format!(
            "{}/v1/campaigns/{id}/claims/{user}/confirm",
            app.base
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconfirmed_holds_expire_and_their_slots_return() {
    let app = spawn_app().await;
    for mode in ["db-lock", "db-atomic", "redis-lua", "gate", "redis-queue"] {
        let id = app
            .create_campaign(
                json!({"name":"seats","mode":mode,"pools":[{"name":"hall","stock":2}],
                "confirm_within_secs":1}),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        app.claim(id, "payer", None).await;
        app.claim(id, "dawdler", None).await;
        app.wait_durable(id, 2).await;
        let (s, held) = app.status(id, "dawdler").await;
        assert_eq!(s, 200);
        // It may already have expired on a slow machine; both are fine here.
        assert!(
            held["hold"] == "held" || held["hold"] == "expired",
            "{mode}: {held}"
        );
        let paid = eventually("confirmation", || async {
            let (s, v) = confirm(&app, id, "payer").await;
            (s == 200).then_some(v)
        })
        .await;
        assert_eq!(paid["hold"], "confirmed", "{mode}: {paid}");
        assert_eq!(
            confirm(&app, id, "payer").await.0,
            200,
            "confirming twice is fine"
        );
        // The dawdler's hold expires; the slot returns to stock.
        let expired = eventually("expiry", || async {
            let (_, v) = app.status(id, "dawdler").await;
            (v["hold"] == "expired").then_some(v)
        })
        .await;
        assert_eq!(expired["status"], "cancelled", "{mode}: {expired}");
        let (s, v) = confirm(&app, id, "dawdler").await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("hold_expired")),
            "{mode}: {v}"
        );
        let (_, c) = app.claim(id, "next", None).await;
        assert!(
            c["status"] == "granted" || c["status"] == "queued",
            "{mode}: {c}"
        );
        app.wait_durable(id, 2).await;
        let (_, c) = app.status(id, "next").await;
        assert_eq!(
            c["slot"], held["slot"],
            "{mode}: the expired slot is reused"
        );
        // The confirmed grant never expires.
        assert_eq!(app.status(id, "payer").await.1["hold"], "confirmed");
        app.assert_db_invariants(id).await;
    }
    let plain = app.campaign("gate", &[("a", 1)]).await;
    app.claim(plain, "u", None).await;
    assert_eq!(confirm(&app, plain, "u").await.1["code"], "no_hold");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_repairs_drift_and_reports_it() {
    let app = spawn_app().await;
    let common = common_for(&app).await;
    for mode in ["gate", "redis-queue", "redis-lua"] {
        let id = app.campaign(mode, &[("main", 10)]).await;
        for u in ["a", "b", "c"] {
            app.claim(id, u, None).await;
        }
        app.wait_durable(id, 3).await;
        let c = common
            .db
            .load_campaign(CampaignId(id))
            .await
            .unwrap()
            .unwrap();
        // Let any in-flight outbox/queue work finish: the reconciler skips
        // busy campaigns.
        let clean = eventually("a quiet campaign", || async {
            let r = reconcile::reconcile(&common, &c, false).await.unwrap();
            r.skipped.is_none().then_some(r)
        })
        .await;
        assert_eq!(
            (
                clean.answers_repaired,
                clean.pools_repaired,
                clean.stock_delta
            ),
            (0, 0, 0),
            "{mode}: {clean:?}"
        );
        assert_eq!(clean.remaining, vec![7]);
        assert!(
            reconcile::counters_agree(&common, &c).await.unwrap(),
            "{mode}: the periodic look finds a quiet, consistent campaign fine"
        );

        // Drift: a lost answer, a wrong counter, a grant cancelled in
        // PostgreSQL behind Redis' back.
        let k = common.keys(&c);
        let mut r = redis_conn().await;
        let _: () = redis::cmd("HDEL")
            .arg(&k.ans)
            .arg("a")
            .query_async(&mut r)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&k.pools[0].left)
            .arg(2)
            .arg("KEEPTTL")
            .query_async(&mut r)
            .await
            .unwrap();
        let slot_b = crate::common::count(
            &app,
            "SELECT slot FROM grants WHERE campaign_id = $1 AND user_id = 'b' AND state = 'active'",
            id,
        )
        .await as i32;
        crate::common::execute(
            &app,
            "UPDATE grants SET state = 'cancelled' WHERE campaign_id = $1 AND user_id = 'b'",
            id,
        )
        .await;

        assert!(
            !reconcile::counters_agree(&common, &c).await.unwrap(),
            "{mode}: the periodic look sees the counters drift"
        );
        let dry = reconcile::reconcile(&common, &c, false).await.unwrap();
        assert_eq!(dry.stock_delta, 6, "{mode}: {dry:?}");
        assert_eq!(dry.answers_repaired, 0, "a dry run changes nothing");
        let fixed = reconcile::reconcile(&common, &c, true).await.unwrap();
        assert_eq!(fixed.answers_repaired, 2, "{mode}: {fixed:?}");
        assert_eq!(fixed.pools_repaired, 1, "{mode}: {fixed:?}");
        assert_eq!(fixed.remaining, vec![8]);
        assert!(
            reconcile::counters_agree(&common, &c).await.unwrap(),
            "{mode}: repaired counters agree again"
        );
        let again = reconcile::reconcile(&common, &c, true).await.unwrap();
        assert_eq!(
            (again.answers_repaired, again.pools_repaired),
            (0, 0),
            "{mode}: repairs hold: {again:?}"
        );

        // The service behaves: a keeps its grant, b is cancelled, b's slot
        // is handed out again, and the stock is right.
        assert_eq!(app.status(id, "a").await.1["status"], "granted");
        assert_eq!(app.status(id, "b").await.1["status"], "cancelled");
        let mut slots = Vec::new();
        for i in 0..20 {
            app.claim(id, &format!("late-{i}"), None).await;
        }
        app.wait_durable(id, 10).await;
        for g in app.grants(id).await {
            slots.push(g["slot"].as_i64().unwrap() as i32);
        }
        slots.sort();
        assert_eq!(slots, (1..=10).collect::<Vec<_>>(), "{mode}");
        assert!(slots.contains(&slot_b));
        app.assert_db_invariants(id).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_lost_state_is_rebuilt_by_the_reconciler() {
    let app = spawn_app().await;
    let common = common_for(&app).await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    app.claim(id, "x", None).await;
    let (_, c, k) = app.redis_side(id).await;
    let mut r = redis_conn().await;
    let _: () = redis::cmd("DEL")
        .arg(&k.meta)
        .arg(&k.ans)
        .query_async(&mut r)
        .await
        .unwrap();
    let rep = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert!(rep.rebuilt, "{rep:?}");
    let (s, v) = app.claim(id, "x", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")));
    app.stop().await;
}

/// Puts an answer no pass can parse into the answers hash `ans`: a pass
/// that reads the answers fails on it.
async fn unreadable_answer(ans: &str) {
    let _: () = redis::cmd("HSET")
        .arg(ans)
        .arg("unreadable")
        .arg("not an answer")
        .query_async(&mut redis_conn().await)
        .await
        .unwrap();
}

/// A campaign with work in flight is skipped before its answers are read:
/// reading them costs memory and Redis time in the number of claimants,
/// and a busy pass compares nothing (a 10 M-user rush held gigabytes in
/// the service every interval). Shown with an answer the pass could not
/// parse: a pass that read the answers would fail on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_campaign_is_skipped_without_reading_its_answers() {
    let app = crate::common::spawn_app_without_worker().await;
    let common = common_for(&app).await;
    for mode in ["redis-lua", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 10)]).await;
        // No worker: the claim stays in the outbox (queue).
        let (s, v) = app.claim(id, "a", None).await;
        assert!(matches!(s, 200 | 202), "{mode}: {s} {v}");
        let (_, c, k) = app.redis_side(id).await;
        let mut r = redis_conn().await;
        unreadable_answer(&k.ans).await;
        let busy = reconcile::reconcile(&common, &c, true).await.unwrap();
        assert_eq!(busy.skipped.as_deref(), Some("busy"), "{mode}: {busy:?}");
        // Once quiet, the pass reads every answer (and fails on that one).
        let _: () = redis::cmd("HDEL")
            .arg(&k.ans)
            .arg("a")
            .query_async(&mut r)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&k.outbox)
            .arg(&k.queue)
            .arg(&k.queued)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(
            reconcile::reconcile(&common, &c, true).await.is_err(),
            "{mode}: a quiet pass reads the answers"
        );
    }
    // A sharded campaign likewise: a refusal of a dead request (`X`, on its
    // home shard) waits while the outbox is busy; any pass that read the
    // answers would make it durable.
    let id = app
        .create_campaign(serde_json::json!({"name": "sharded", "mode": "redis-lua",
            "pools": [{"name": "main", "stock": 6}], "shards": 3}))
        .await["id"]
        .as_i64()
        .unwrap();
    let (s, v) = app.claim(id, "a", None).await;
    assert_eq!(s, 200, "{v}");
    let (_, c, _) = app.redis_side(id).await;
    let lost = firstcome::domain::UserId::parse("lost").unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&common.keys_for(&c, &lost).ans)
        .arg("lost")
        .arg("X|999")
        .query_async(&mut redis_conn().await)
        .await
        .unwrap();
    let busy = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert_eq!(
        (busy.skipped.as_deref(), busy.answers_repaired),
        (Some("busy"), 0),
        "sharded: {busy:?}"
    );
    // Quiet again (the outbox written, here: dropped), a pass reads the
    // answers and makes the refusal durable.
    for k in common.shards(&c).iter() {
        let _: () = redis::cmd("DEL")
            .arg(&k.outbox)
            .query_async(&mut redis_conn().await)
            .await
            .unwrap();
    }
    let quiet = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert_eq!(quiet.answers_repaired, 1, "sharded: {quiet:?}");
    // gate: a reservation left pending (its request died) keeps the
    // campaign busy; the pass settles it from the pending set, oldest
    // first, still without reading the answers.
    let common = common.with_orphan_after(std::time::Duration::ZERO);
    let id = app.campaign("gate", &[("main", 10)]).await;
    let (_, c, k) = app.redis_side(id).await;
    let user = firstcome::domain::UserId::parse("orphan").unwrap();
    let reserved = common
        .claim_script(
            &c,
            &c.pools[0],
            &user,
            firstcome::storage::redis::ScriptMode::Reserve,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            reserved,
            firstcome::modes::redis_common::ScriptReply::New(..)
        ),
        "{reserved:?}"
    );
    unreadable_answer(&k.ans).await;
    let busy = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert_eq!(
        (busy.skipped.as_deref(), busy.orphans_settled),
        (Some("busy"), 1),
        "gate: {busy:?}"
    );
    let settled = common.stored(&c, &user).await.unwrap();
    assert!(
        !matches!(
            settled,
            Some(firstcome::modes::redis_common::Stored::Pending { .. })
        ),
        "the orphan is settled: {settled:?}"
    );
}
