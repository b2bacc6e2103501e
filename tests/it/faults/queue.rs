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
