//! Issue 11: answers that never change, slots that never poison. Each test
//! reproduces a fault found outside the chaos harness (R) or read in the
//! code (S) and checks the invariant it broke (docs/GUARANTEES.md lists
//! them by item).

mod fences;

use crate::common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::common::{
    claim_all, common_for, count, execute, execute_raw, on_mysql, redis_conn, refused_users,
    spawn_app, spawn_app_on, until, TestApp,
};
use firstcome::{
    domain::{CampaignId, UserId},
    modes::redis_common::Stored,
    storage::{
        pg::{NewGrant, NewRejection},
        redis::ScriptMode,
    },
};
use serde_json::Value;

/// Deletes every key of a campaign, as FLUSHDB or an expiry would.
async fn lose_redis_state(app: &TestApp, id: i64) {
    let mut c = redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:{{c{id}}}:*", app.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    common::del(&keys).await;
}

/// Stores a grant of `slot` for `user` straight in PostgreSQL, behind
/// Redis's back (a poisoned slot); returns how many rows were stored.
async fn grant_behind_redis(app: &TestApp, id: i64, user: &str, slot: i32, seq: i64) -> usize {
    let pool_id: i64 = count(app, "SELECT id FROM pools WHERE campaign_id = $1", id).await;
    app.db
        .insert_grants(&[NewGrant {
            campaign_id: id,
            pool_id,
            user_id: user.into(),
            slot,
            code: format!("{user}CODE"),
            seq,
        }])
        .await
        .unwrap()
        .len()
}

/// R1: after Redis loses a campaign's state, every user keeps the final
/// answer they were given (granted or sold_out), on GET and on a repeated
/// claim; nobody told sold_out is later told 404 or granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn final_answers_survive_the_loss_of_redis_state() {
    let app = Arc::new(spawn_app().await);
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 10)]).await;
        let mut given: HashMap<String, (u16, Value)> =
            claim_all(&app, id, (0..40).map(|i| format!("u{i}")), 40)
                .await
                .into_iter()
                .collect();
        app.wait_durable(id, 10).await;
        // Queued answers are not final: wait for their final state.
        for (u, a) in given.iter_mut() {
            if a.0 == 202 {
                let (app, u2) = (app.clone(), u.clone());
                until("queued claim settles", || {
                    let (app, u2) = (app.clone(), u2.clone());
                    async move { app.status(id, &u2).await.1["status"] != "queued" }
                })
                .await;
                *a = app.claim(id, u, None).await;
            }
        }
        let refused = given.values().filter(|a| a.0 == 409).count() as i64;
        assert_eq!(refused, 30, "{mode}");
        // redis-lua writes refusals behind, like its grants: wait for them.
        until("refusals durable", || {
            let app = app.clone();
            async move {
                let sql = format!("SELECT count(DISTINCT x.u) FROM {}", refused_users());
                count(&app, &sql, id).await == refused
            }
        })
        .await;
        lose_redis_state(&app, id).await;
        for (u, (s, body)) in &given {
            let (gs, gv) = app.status(id, u).await;
            assert_eq!(gs, 200, "{mode}: {u} was {s} {body}, now GET {gs} {gv}");
            assert_eq!(&gv["status"], &body["status"], "{mode}: {u}");
            assert_eq!(&gv["seq"], &body["seq"], "{mode}: {u}");
            assert_eq!(&gv["code"], &body["code"], "{mode}: {u}");
            let again = app.claim(id, u, None).await;
            assert_eq!((again.0, &again.1), (*s, body), "{mode}: {u} claims again");
        }
        assert_eq!(app.assert_db_invariants(id).await, 10);
    }
}

/// R2: a campaign without closes_at keeps working past the default key
/// lifetime: a rebuild never sets an expiry in the past, and the worker
/// keeps it in its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_ended_campaigns_outlive_the_key_lifetime() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let thirty_days_ago = if on_mysql() {
        "UTC_TIMESTAMP(6) - INTERVAL 30 DAY"
    } else {
        "now() - interval '30 days'"
    };
    execute(
        &app,
        &format!("UPDATE campaigns SET created_at = {thirty_days_ago} WHERE id = $1"),
        id,
    )
    .await;
    lose_redis_state(&app, id).await;
    let (s, v) = app.claim(id, "late", None).await;
    assert_eq!(s, 200, "{v}");
    let mut c = redis_conn().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}:{{c{id}}}:meta", app.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 6 * 24 * 3600 * 1000, "keys live on: {ttl} ms");
    let live = app
        .db
        .live_campaigns(&[firstcome::domain::Mode::Gate])
        .await
        .unwrap();
    assert!(live.contains(&CampaignId(id)), "the worker still serves it");
}

/// R3: a slot PostgreSQL holds while Redis lists it free, or holds for a
/// user Redis does not know, never oversells: PostgreSQL refuses a slot
/// beyond the stock, a conflict keeps the slot taken, a cancel adds only
/// the stock it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_slot_never_oversells() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 3)]).await;
    let k = format!("{}:{{c{id}}}", app.prefix);
    let mut c = redis_conn().await;
    let (s, a) = app.claim(id, "A", None).await;
    assert_eq!((s, a["slot"].as_i64()), (200, Some(1)));
    // Poison 1: Redis forgets A, lists slot 1 free, counts it in stock.
    let _: () = redis::pipe()
        .hdel(format!("{k}:ans"), "A")
        .zadd(format!("{k}:p0:free"), 1, 1)
        .incr(format!("{k}:p0:left"), 1)
        .query_async(&mut c)
        .await
        .unwrap();
    let (s, again) = app.claim(id, "A", None).await;
    assert_eq!((s, &again["code"]), (200, &a["code"]), "A keeps its grant");
    let (s, _) = app.cancel(id, "A").await;
    assert_eq!(s, 200);
    // Poison 2: PostgreSQL holds slot 2 for Z, whom Redis never saw.
    assert_eq!(grant_behind_redis(&app, id, "Z", 2, 99).await, 1);
    // And PostgreSQL itself refuses a slot beyond the stock.
    let beyond = grant_behind_redis(&app, id, "Y", 4, 98).await;
    assert_eq!(beyond, 0, "slot 4 of a stock of 3 is never stored");
    // Everyone asks until answered (a slot conflict answers 503: retry).
    let mut granted = 0;
    for u in ["B", "C", "D", "E", "F"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = app.claim(id, u, None).await;
            if s == 503 {
                assert!(tokio::time::Instant::now() < deadline, "{u} never answered");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            assert!(matches!(s, 200 | 409), "{u}: {s} {v}");
            granted += (s == 200) as i64;
            break;
        }
    }
    assert_eq!(granted, 2, "slots 1 and 3 were left; Z holds 2");
    assert_eq!(app.assert_db_invariants(id).await, 3);
}

/// R4 (and S13): commits slower than the orphan threshold. The sweeper
/// settles reservations still in the committer's queue, but a void row
/// fences their commits off: no answer `granted` is ever taken back, and
/// no slot is booked twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_commits_never_turn_a_grant_into_a_404() {
    let name = common::unique("slow");
    let db_url = common::fresh_database(&name).await;
    let app = Arc::new(
        spawn_app_on(&db_url, &name, |a| {
            a.commit_max_batch = 4;
            a.commit_inflight = 1;
            a.orphan_after_ms = 300;
        })
        .await
        .owning_database(),
    );
    let id = app.campaign("gate", &[("main", 100)]).await;
    // Each active grant's insert sleeps 0.25 s (a trigger).
    let (create, drop): (&[&str], &str) = if on_mysql() {
        (
            &[
                "CREATE TRIGGER slow_insert BEFORE INSERT ON grants FOR EACH ROW
               BEGIN IF NEW.state = 'active' THEN DO SLEEP(0.25); END IF; END",
            ],
            "DROP TRIGGER slow_insert",
        )
    } else {
        (
            &[
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep(0.25); RETURN NEW; END $$",
                "CREATE TRIGGER slow_insert BEFORE INSERT ON grants
                 FOR EACH ROW WHEN (NEW.state = 'active') EXECUTE FUNCTION slow_insert()",
            ],
            "DROP TRIGGER slow_insert ON grants",
        )
    };
    for sql in create {
        execute_raw(&app, sql).await;
    }
    let answers = claim_all(&app, id, (0..16).map(|i| format!("s{i}")), 16).await;
    execute_raw(&app, drop).await;
    let voided = count(
        &app,
        "SELECT count(*) FROM grants WHERE campaign_id = $1 AND state = 'void'",
        id,
    )
    .await;
    assert!(
        voided > 0,
        "the sweeper settled reservations still in flight"
    );
    for (u, (s, v)) in &answers {
        assert!(matches!(s, 200 | 503), "{u}: {s} {v}");
        if *s == 200 {
            let (gs, gv) = app.status(id, u).await;
            assert_eq!((gs, &gv["code"]), (200, &v["code"]), "{u} keeps its grant");
        }
    }
    app.assert_db_invariants(id).await;
}

/// S5 and S9: a reservation whose commit reported an error is settled by
/// PostgreSQL: granted if the row is there (a connection lost after
/// COMMIT), granted-then-released if the row was cancelled meanwhile,
/// released (and its code voided for good) if not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uncertain_commit_is_settled_by_postgres() {
    let app = common::spawn_app_without_worker().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let (common, c, _) = app.redis_side(id).await;
    let pool = &c.pools[0];
    let reserve = |user: &'static str| {
        let (common, c, pool) = (common.clone(), c.clone(), pool.clone());
        async move {
            let u = UserId::parse(user).unwrap();
            match common
                .claim_script(&c, &pool, &u, ScriptMode::Reserve)
                .await
                .unwrap()
            {
                firstcome::modes::redis_common::ScriptReply::New(s, _) => (u, s),
                other => panic!("{other:?}"),
            }
        }
    };
    let row = |u: &UserId, s: &Stored| match s {
        Stored::Pending {
            slot, code, seq, ..
        } => NewGrant {
            campaign_id: id,
            pool_id: pool.id,
            user_id: u.as_str().into(),
            slot: *slot,
            code: code.clone(),
            seq: *seq,
        },
        _ => panic!("{s:?}"),
    };
    // Committed despite the error: granted.
    let (a, sa) = reserve("a").await;
    app.db.insert_grants(&[row(&a, &sa)]).await.unwrap();
    common.resolve_orphan(&c, &a, &sa).await.unwrap();
    assert!(matches!(
        common.stored(&c, &a).await.unwrap(),
        Some(Stored::Granted { .. })
    ));
    // Committed, then cancelled while Redis still said pending: cancelled.
    let (b, sb) = reserve("b").await;
    app.db.insert_grants(&[row(&b, &sb)]).await.unwrap();
    execute(
        &app,
        "UPDATE grants SET state = 'cancelled' WHERE campaign_id = $1 AND user_id = 'b'",
        id,
    )
    .await;
    common.resolve_orphan(&c, &b, &sb).await.unwrap();
    assert!(matches!(
        common.stored(&c, &b).await.unwrap(),
        Some(Stored::Cancelled { .. })
    ));
    // Never committed: released, and the commit can no longer land.
    let (d, sd) = reserve("d").await;
    common.resolve_orphan(&c, &d, &sd).await.unwrap();
    assert_eq!(common.stored(&c, &d).await.unwrap(), None);
    let late = app.db.insert_grants(&[row(&d, &sd)]).await.unwrap();
    assert!(late.is_empty(), "a voided code never becomes a grant");
    let (left, _) = common.counters(&c).await.unwrap().unwrap();
    assert_eq!(left, vec![4], "only a's grant holds stock");
}

/// The group committer answers as soon as a batch is durable and promotes
/// the batch's Redis answers after: between the two, and if the promotion
/// never comes, Redis still holds the pending reservation (`P`) or refusal
/// (`X`) while the user has been told granted or sold_out. Every read in
/// that window (status, a repeat claim, a cancel) must agree with what
/// was told, and a promotion arriving late must change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_told_before_its_promotion_is_what_every_read_sees() {
    let app = common::spawn_app_without_worker().await;
    let id = app.campaign("gate", &[("main", 2)]).await;
    let (common, c, _) = app.redis_side(id).await;
    let pool = c.pools[0].clone();
    // Decided in Redis and committed as the committer does, not promoted.
    let told = |user: &'static str| {
        let (app, common, c, pool) = (&app, common.clone(), c.clone(), pool.clone());
        async move {
            let u = UserId::parse(user).unwrap();
            let (s, gen) = match common
                .claim_script(&c, &pool, &u, ScriptMode::Reserve)
                .await
                .unwrap()
            {
                firstcome::modes::redis_common::ScriptReply::New(s, gen) => (s, gen),
                other => panic!("{other:?}"),
            };
            let stored = match &s {
                Stored::Pending {
                    slot, code, seq, ..
                } => {
                    let g = NewGrant {
                        campaign_id: id,
                        pool_id: pool.id,
                        user_id: user.into(),
                        slot: *slot,
                        code: code.clone(),
                        seq: *seq,
                    };
                    let f = app.db.insert_fenced(&[g], &[gen], &[], &[]).await.unwrap();
                    f.codes.len()
                }
                Stored::Refusing { seq } => {
                    let r = NewRejection {
                        campaign_id: id,
                        user_id: user.into(),
                        seq: *seq,
                    };
                    let f = app.db.insert_fenced(&[], &[], &[r], &[gen]).await.unwrap();
                    f.refusals.len()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(stored, 1, "{user}: committed");
            s
        }
    };
    let p1 = told("winner").await;
    let p2 = told("canceller").await;
    let x = told("loser").await;
    let (Stored::Pending { code: code1, .. }, Stored::Refusing { seq: lseq }) = (&p1, &x) else {
        panic!("{p1:?} {x:?}")
    };

    // Reads before any promotion agree with what was told.
    let (s, v) = app.status(id, "winner").await;
    assert_eq!(
        (s, v["status"].as_str(), v["code"].as_str()),
        (200, Some("granted"), Some(code1.as_str())),
        "{v}"
    );
    let (s, v) = app.claim(id, "winner", None).await;
    assert_eq!(
        (s, v["status"].as_str(), v["code"].as_str()),
        (200, Some("granted"), Some(code1.as_str())),
        "{v}"
    );
    let (s, v) = app.cancel(id, "loser").await;
    assert_eq!(s, 409, "a refused user has nothing to cancel: {v}");
    assert!(
        v.to_string().contains("rejected"),
        "told sold_out, never queued: {v}"
    );
    let (s, v) = app.status(id, "loser").await;
    assert_eq!(
        (s, v["status"].as_str(), v["reason"].as_str()),
        (200, Some("rejected"), Some("sold_out")),
        "{v}"
    );
    let (s, v) = app.claim(id, "loser", None).await;
    assert_eq!(
        (v["reason"].as_str(), v["seq"].as_i64()),
        (Some("sold_out"), Some(*lseq)),
        "{s} {v}"
    );

    // A cancel while still pending in Redis; then the late promotions.
    let (s, v) = app.cancel(id, "canceller").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let promote = |s: &Stored| match s.clone() {
        Stored::Pending {
            pidx,
            slot,
            code,
            seq,
            ..
        } => Stored::Granted {
            pidx,
            slot,
            code,
            seq,
        },
        Stored::Refusing { seq } => Stored::Rejected { seq },
        other => panic!("{other:?}"),
    };
    let triples: Vec<(String, String, String)> =
        [("winner", &p1), ("canceller", &p2), ("loser", &x)]
            .iter()
            .map(|(u, s)| (u.to_string(), s.encode(), promote(s).encode()))
            .collect();
    let late = common.promote(&c, &triples, false).await.unwrap();
    assert_eq!(
        late, 0,
        "every answer was settled by the reads: the late promotion found none"
    );
    let (s, v) = app.status(id, "canceller").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    // The cancelled unit is claimable again, once.
    let (s, v) = app.claim(id, "next", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("granted")), "{v}");
    let (s, v) = app.claim(id, "after", None).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("sold_out")), "{v}");
    app.assert_db_invariants(id).await;
}
