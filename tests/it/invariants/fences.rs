//! Issue 11, continued: writes of a replaced state fenced off, a poisoned
//! queue that keeps draining, one user racing at the boundary, the
//! reconciler during a cancel storm.

use super::*;

/// S6: a rebuild bumps the generation under the exclusive lock before it
/// reads; a write decided in the older state is refused, never lands
/// behind the rebuild's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_of_a_replaced_state_are_fenced_off() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 5)]).await;
    let pool_id: i64 = count(&app, "SELECT id FROM pools WHERE campaign_id = $1", id).await;
    let gen = app.db.generation(CampaignId(id)).await.unwrap();
    assert!(gen >= 1, "creation loaded generation {gen}");
    let next = app.db.bump_generation(CampaignId(id)).await.unwrap();
    assert_eq!(next, gen + 1);
    let g = NewGrant {
        campaign_id: id,
        pool_id,
        user_id: "old".into(),
        slot: 1,
        code: "OLDGEN".into(),
        seq: 1,
    };
    let r = NewRejection {
        campaign_id: id,
        user_id: "old2".into(),
        seq: 2,
    };
    let f = app
        .db
        .insert_fenced(
            std::slice::from_ref(&g),
            &[gen],
            std::slice::from_ref(&r),
            &[gen],
        )
        .await
        .unwrap();
    assert!(
        f.codes.is_empty() && f.refusals.is_empty(),
        "stale writes refused"
    );
    let f = app
        .db
        .insert_fenced(std::slice::from_ref(&g), &[next], &[r], &[next])
        .await
        .unwrap();
    assert_eq!((f.codes.len(), f.refusals.len()), (1, 1));
    // A writer in flight holds the campaign row: the next bump waits for
    // it, so what the writer stores under the current generation is in
    // whatever the rebuild reads afterwards.
    let mut tx = app.db.begin().await.unwrap();
    let locked = tx.lock_generations(&[id]).await.unwrap();
    assert_eq!(locked, vec![(id, next)]);
    let db = app.db.clone();
    let bump = tokio::spawn(async move { db.bump_generation(CampaignId(id)).await });
    until("the bump waits for the writer in flight", || async {
        let waiting = if on_mysql() {
            // The bump's UPDATE still running: it only runs long waiting.
            "SELECT count(*) FROM information_schema.PROCESSLIST
             WHERE DB = DATABASE() AND INFO LIKE '%UPDATE campaigns SET redis_gen%'
               AND INFO NOT LIKE '%PROCESSLIST%' AND $1 > 0"
        } else {
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE campaigns SET redis_gen%'
               AND datname = (SELECT current_database()) AND $1 > 0"
        };
        count(&app, waiting, id).await > 0
    })
    .await;
    assert!(!bump.is_finished());
    let late = NewGrant {
        user_id: "inflight".into(),
        slot: 2,
        code: "INFLIGHT".into(),
        ..g.clone()
    };
    let stored = tx
        .insert_grants_in(std::slice::from_ref(&late), &[next])
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    tx.commit().await.unwrap();
    let after = bump.await.unwrap().unwrap();
    assert_eq!(after, next + 1);
    let refused = app
        .db
        .insert_fenced(
            &[NewGrant {
                code: "LATE".into(),
                user_id: "late".into(),
                slot: 3,
                ..g
            }],
            &[next],
            &[],
            &[],
        )
        .await
        .unwrap();
    assert!(
        refused.codes.is_empty(),
        "a write of the bumped generation is refused"
    );
    // The state in Redis is of the old generation: a claim decided in it
    // is refused at commit, the state dropped and rebuilt, the user
    // answered in the new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = app.claim(id, "fresh", None).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.db.generation(CampaignId(id)).await.unwrap() > next + 1);
    assert_eq!(app.assert_db_invariants(id).await, 3);
}

/// S7: in redis-queue, a slot PostgreSQL holds for a grant Redis never saw
/// does not loop batches through dead letters: it stays taken, the claim is
/// allocated again, every claim reaches a final answer, nothing stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poisoned_slot_does_not_stall_the_queue() {
    let app = spawn_app().await;
    let id = app.campaign("redis-queue", &[("main", 2)]).await;
    assert_eq!(grant_behind_redis(&app, id, "Z", 1, 99).await, 1);
    for u in ["a", "b"] {
        assert_eq!(app.claim(id, u, None).await.0, 202);
    }
    let mut finals = HashMap::new();
    for u in ["a", "b"] {
        until("a final answer", || async {
            app.status(id, u).await.1["status"] != "queued"
        })
        .await;
        finals.insert(u, app.status(id, u).await.1["status"].clone());
    }
    let granted = finals.values().filter(|s| *s == "granted").count();
    let rejected = finals.values().filter(|s| *s == "rejected").count();
    assert_eq!((granted, rejected), (1, 1), "{finals:?}");
    app.wait_campaign(id, "nothing queued", |v| v["queued"].as_i64() == Some(0))
        .await;
    assert_eq!(app.assert_db_invariants(id).await, 2);
}

/// S12: concurrent claims of one user at the sold-out boundary in the db-*
/// modes store one answer and tell it to every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_racing_at_the_boundary_gets_one_answer() {
    let app = Arc::new(spawn_app().await);
    for mode in ["db-atomic", "db-lock"] {
        for round in 0..10 {
            let id = app.campaign(mode, &[("main", 1)]).await;
            let mut tasks = Vec::new();
            for i in 0..12 {
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let u = if i % 2 == 0 { "same" } else { "other" };
                    (u, app.claim(id, u, None).await)
                }));
            }
            let mut seen: HashMap<&str, Vec<(u16, Value)>> = HashMap::new();
            for t in tasks {
                let (u, a) = t.await.unwrap();
                seen.entry(u).or_default().push(a);
            }
            for (u, answers) in &seen {
                assert!(
                    answers.windows(2).all(|w| w[0] == w[1]),
                    "{mode} round {round}: {u} got {answers:?}"
                );
            }
            let refusals = count(
                &app,
                "SELECT count(*) FROM rejections WHERE campaign_id = $1",
                id,
            )
            .await;
            assert_eq!(refusals + app.assert_db_invariants(id).await, 2, "{mode}");
        }
    }
}

/// S8 (redis-lua): a cancellation Redis has and PostgreSQL has not yet
/// (its outbox entry not flushed) is never "repaired" back to granted. The
/// reconciler's answer scan and PostgreSQL read can straddle the cancel;
/// the cancel's outbox entry outlives both reads (it is deleted only after
/// PostgreSQL committed it), so the pass sees it and stands down. Shown
/// deterministically on that state, then under a storm of cancels racing
/// repairing passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_never_undoes_a_cancel_in_flight() {
    use firstcome::tasks::reconcile;
    let app = spawn_app().await;
    let common = common_for(&app).await;
    let id = app.campaign("redis-lua", &[("main", 100)]).await;
    for i in 0..60 {
        assert_eq!(app.claim(id, &format!("u{i}"), None).await.0, 200);
    }
    app.wait_durable(id, 60).await;
    let (_, c, _) = app.redis_side(id).await;

    // The state between the two reads: Redis says cancelled, the outbox
    // holds the cancel, PostgreSQL still says active.
    app.stop_worker.send(true).unwrap();
    let lease = format!("{}:{{c{id}}}:lease", app.prefix);
    until("the flusher let its lease go", || async {
        let mut r = redis_conn().await;
        let v: Option<String> = redis::cmd("GET")
            .arg(&lease)
            .query_async(&mut r)
            .await
            .unwrap();
        v.is_none()
    })
    .await;
    assert_eq!(app.cancel(id, "u0").await.0, 200);
    assert_eq!(
        count(&app, "SELECT count(*) FROM grants WHERE campaign_id = $1 AND user_id = 'u0' AND state = 'active'", id).await,
        1,
        "the cancel is not flushed yet"
    );
    let r = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert_eq!(r.skipped.as_deref(), Some("busy"), "{r:?}");
    assert_eq!(r.answers_repaired, 0);
    assert_eq!(app.status(id, "u0").await.1["status"], "cancelled");

    // A second process flushes; then a pass finds nothing to repair.
    let second = spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    until("the cancel is durable", || async {
        count(&app, "SELECT count(*) FROM grants WHERE campaign_id = $1 AND user_id = 'u0' AND state = 'active'", id).await == 0
    })
    .await;

    // The storm: cancels racing repairing passes.
    let storm = {
        let app_base = second.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 1..60 {
                let r = client
                    .delete(format!("{app_base}/v1/campaigns/{id}/claims/u{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    let mut passes = 0;
    while !storm.is_finished() {
        reconcile::reconcile(&common, &c, true).await.unwrap();
        passes += 1;
    }
    storm.await.unwrap();
    assert!(passes > 0);
    until("every cancel is durable", || async {
        count(
            &app,
            "SELECT count(*) FROM grants WHERE campaign_id = $1 AND state = 'active'",
            id,
        )
        .await
            == 0
    })
    .await;
    let done = reconcile::reconcile(&common, &c, true).await.unwrap();
    assert_eq!(
        (done.answers_repaired, done.pools_repaired),
        (0, 0),
        "{done:?}"
    );
    for i in 0..60 {
        let (s, v) = app.status(id, &format!("u{i}")).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (200, Some("cancelled")),
            "u{i}: {v}"
        );
    }
    second.stop().await;
    app.stop().await;
}

/// Red-team B7: dead letters outlive a lost state. A replay while the
/// state is not loaded touches nothing; a rebuild keeps the dead-lettered
/// user's place (shown as queued, not 404), and the replay then puts it
/// back in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_survive_a_rebuild() {
    let app = common::spawn_app_without_worker().await;
    let id = app.campaign("redis-queue", &[("main", 2)]).await;
    let (s, v) = app.claim(id, "a", None).await;
    assert_eq!(s, 202, "{v}");
    let seq = v["seq"].as_i64().unwrap();
    let (common, c, k) = app.redis_side(id).await;
    // What the drainer does to a claim that fails for good.
    common.redis.add_dead_letter(&k, "a", 0, seq).await.unwrap();
    let mut r = redis_conn().await;
    let _: () = redis::pipe()
        .hset(&k.ans, "a", format!("D|0|{seq}"))
        .incr(&k.pools[0].left, 1)
        .decr(&k.queued, 1)
        .del(&k.queue)
        .del(&k.meta)
        .query_async(&mut r)
        .await
        .unwrap();
    let dead = common.redis.dead_letters(&k).await.unwrap();
    assert_eq!(dead.len(), 1);
    let (user, sq) = (&dead[0].user, dead[0].seq.to_string());
    let replay = common.redis.replay(&k, 0, user, &sq, &dead[0].id);
    assert_eq!(replay.await.unwrap()[0], "noinit", "no state: untouched");
    assert_eq!(common.redis.dead_letters(&k).await.unwrap(), dead);
    common.rebuild(&c).await.unwrap();
    let (s, v) = app.status(id, "a").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("queued")), "{v}");
    let replay = common.redis.replay(&k, 0, user, &sq, &dead[0].id);
    assert_eq!(replay.await.unwrap()[0], "requeued");
    assert!(common.redis.dead_letters(&k).await.unwrap().is_empty());
}

/// Red-team B8: a state loaded behind a rebuild's back while it reads
/// PostgreSQL (a predecessor paused past its lock, loading an older
/// generation) is not kept: the rebuild finds it, drops it and asks for
/// another try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_loaded_behind_a_rebuild_is_dropped() {
    let app = common::spawn_app_without_worker().await;
    let id = app.campaign("gate", &[("main", 3)]).await;
    let (common, c, k) = app.redis_side(id).await;
    let old = app.db.generation(CampaignId(id)).await.unwrap();
    let mut r = redis_conn().await;
    common::del(&k.meta).await;
    // The rebuild bumps the generation, then waits to read the grants.
    let locker = common::TableLock::take(&app.db_url, "grants").await;
    let rebuild = tokio::spawn({
        let (common, c) = (common.clone(), c.clone());
        async move { common.rebuild(&c).await }
    });
    until("the rebuild bumped the generation", || async {
        app.db.generation(CampaignId(id)).await.unwrap() > old
    })
    .await;
    // Meanwhile the paused predecessor loads its state, of generation `old`.
    let mut st = common::init_state("gate", &[3], "", "");
    st.gen = old;
    assert!(common.redis.init_state(&k, &st).await.unwrap());
    locker.release().await;
    let result = rebuild.await.unwrap();
    assert!(result.is_err(), "the rebuild found another's state: retry");
    let gen: Option<i64> = redis::cmd("HGET")
        .arg(&k.meta)
        .arg("gen")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_ne!(gen, Some(old), "the older generation's state is dropped");
}

/// A state partly lost: meta gone with the answers still there (a state
/// dropped by the server check, red-team C3), or the answers hash gone
/// with meta still there (keys expiring one by one: a CI chaos round,
/// where a status read said 404 to users told granted or sold out). gate
/// answers from PostgreSQL, where every told answer is; redis-lua, whose
/// grants may still wait in the outbox, says "retry" (503). Never 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partly_lost_state_never_contradicts_a_told_answer() {
    let app = common::spawn_app_without_worker().await;
    for (mode, lost) in [("redis-lua", "meta"), ("gate", "ans"), ("redis-lua", "ans")] {
        let id = app.campaign(mode, &[("main", 1)]).await;
        let (sw, w) = app.claim(id, "w", None).await;
        let (sl, l) = app.claim(id, "l", None).await;
        assert_eq!((sw, sl), (200, 409), "{mode}: {w} {l}");
        let (_, _, k) = app.redis_side(id).await;
        common::del(if lost == "meta" { &k.meta } else { &k.ans }).await;
        for (u, told) in [("w", &w), ("l", &l)] {
            // (A status read answers 200 with the claim's state.)
            let (s, v) = app.status(id, u).await;
            if mode == "gate" {
                assert_eq!((s, &v), (200, told), "{mode} {lost} {u}");
            } else {
                let code = v["code"].as_str();
                assert_eq!(
                    (s, code),
                    (503, Some("rebuilding")),
                    "{mode} {lost} {u}: {v}"
                );
            }
        }
    }
}
