//! A redis-queue state dropped while its queue survives (a failover that
//! lost nothing, caught by the server marker; meta lost alone): the claims
//! it had accepted keep their answer and arrival number, the units they
//! took at the door stay taken, and new arrivals number after them, so the
//! queue is still granted in arrival order (found by the chaos harness's
//! master fault: `unfair` in 3 of 10 rounds before).

use std::sync::Arc;

use crate::common::{self, spawn_app_without_worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_keeps_the_claims_its_queue_still_holds() {
    let app = Arc::new(spawn_app_without_worker().await);
    let id = app.campaign("redis-queue", &[("main", 5)]).await;
    let mut told = Vec::new();
    for i in 0..4 {
        let (s, v) = app.claim(id, &format!("q{i}"), None).await;
        assert_eq!(s, 202, "{v}");
        told.push(v);
    }
    // The state goes (as the worker's server check drops it), the queue
    // stays; the next claim rebuilds from PostgreSQL, which holds none of
    // the four.
    let (_, _, k) = app.redis_side(id).await;
    common::del(&k.meta).await;
    // One unit is left at the door: the fifth claim (which rebuilds) is
    // queued after the four, the sixth refused.
    let (s, v) = app.claim(id, "late", None).await;
    assert_eq!(s, 202, "{v}");
    let late_seq = v["seq"].as_i64().unwrap();
    assert!(
        told.iter().all(|t| t["seq"].as_i64().unwrap() < late_seq),
        "{v}"
    );
    for (i, v) in told.iter().enumerate() {
        let (s, now) = app.status(id, &format!("q{i}")).await;
        assert_eq!((s, &now), (200, v), "q{i}'s queued answer changed");
    }
    let (s, v) = app.claim(id, "later", None).await;
    assert_eq!((s, v["reason"].as_str()), (409, Some("sold_out")), "{v}");
    // A worker drains: all five granted, in arrival order.
    let other = common::spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    app.wait_durable(id, 5).await;
    assert_eq!(app.assert_db_invariants(id).await, 5);
    for u in ["q0", "q1", "q2", "q3", "late"] {
        assert_eq!(app.status(id, u).await.1["status"], "granted", "{u}");
    }
    other.stop().await;
}

/// The drainer inserts a batch in chunks at once, on connections of their
/// own. A chunk whose insert fails leaves the whole batch pending even
/// when another chunk of it was written meanwhile: the retry gives each
/// user the slot allocated to them, grants nobody twice, and slots still
/// follow arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_chunk_leaves_its_batch_to_a_retry_in_arrival_order() {
    use firstcome::modes::redis_queue::drainer::INSERT_CHUNK;
    let app = Arc::new(spawn_app_without_worker().await);
    // Two chunks in the first batch of 1,000, the rest in the next batch.
    let stock = (2 * INSERT_CHUNK + 100) as i64;
    let id = app.campaign("redis-queue", &[("main", stock)]).await;
    let answers = common::claim_all(&app, id, (0..stock).map(|i| format!("p{i}")), 32).await;
    let mut queued: Vec<(i64, String)> = answers
        .iter()
        .map(|(u, (s, v))| {
            assert_eq!(*s, 202, "{u}: {v}");
            (v["seq"].as_i64().unwrap(), u.clone())
        })
        .collect();
    queued.sort();
    // The tenth in line is in the first chunk: its insert fails once.
    let victim = &queued[9].1;
    // A sequence counts the trigger's firings: it is not rolled back with
    // the failed statement.
    let (setup, fired_sql) = if common::on_mysql() {
        (
            vec![
                "CREATE SEQUENCE fault_fired NOCACHE".to_string(),
                format!(
                    "CREATE TRIGGER fail_once BEFORE INSERT ON grants FOR EACH ROW
                     BEGIN
                       IF NEW.user_id = '{victim}' AND NEXTVAL(fault_fired) = 1 THEN
                         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected failure of the first chunk';
                       END IF;
                     END"
                ),
            ],
            "SELECT next_not_cached_value - 1 FROM fault_fired WHERE $1 > 0",
        )
    } else {
        (
            vec![
                "CREATE SEQUENCE fault_fired".to_string(),
                format!(
                    "CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN
                          IF NEW.user_id = '{victim}' AND nextval('fault_fired') = 1 THEN
                            RAISE EXCEPTION 'injected failure of the first chunk';
                          END IF;
                          RETURN NEW;
                        END $$"
                ),
                "CREATE TRIGGER fail_once BEFORE INSERT ON grants
                 FOR EACH ROW EXECUTE FUNCTION fail_once()"
                    .to_string(),
            ],
            "SELECT last_value FROM fault_fired WHERE $1 > 0",
        )
    };
    for sql in &setup {
        common::execute_raw(&app, sql).await;
    }
    let worker = common::spawn_app_on(&app.db_url, &app.prefix, |_| {}).await;
    app.wait_durable(id, stock).await;
    let fired = common::count(&app, fired_sql, 1).await;
    assert!(fired >= 2, "the first chunk failed once, then was retried");
    assert_eq!(app.assert_db_invariants(id).await, stock);
    // Slots in arrival order: the n-th in line holds slot n.
    let rows: Vec<(String, i32, i64)> = common::strings(
        &app,
        "SELECT CONCAT(user_id, ' ', slot, ' ', seq) FROM grants
         WHERE campaign_id = $1 AND state = 'active' ORDER BY seq",
        id,
    )
    .await
    .iter()
    .map(|r| {
        let f: Vec<&str> = r.split(' ').collect();
        (
            f[0].to_string(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        )
    })
    .collect();
    for (n, ((seq, user), (u, slot, s))) in queued.iter().zip(&rows).enumerate() {
        assert_eq!((u, *s), (user, *seq), "grant {n} is the {n}-th in line");
        assert_eq!(
            *slot as usize,
            n + 1,
            "{u} holds the slot of its place in line"
        );
    }
    for (seq, u) in queued.iter().step_by(97) {
        let (s, v) = app.status(id, u).await;
        assert_eq!(
            (s, v["status"].as_str(), v["seq"].as_i64()),
            (200, Some("granted"), Some(*seq)),
            "{u}"
        );
    }
    worker.stop().await;
}
