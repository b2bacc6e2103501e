//! The scripts after faults: dead-letter replay, poisoned and partial
//! states, stale or foreign states dropped, open-ended keys refreshed.

use super::*;

#[tokio::test]
async fn dead_letters_replay_into_the_queue_or_sell_out_once_each() {
    let f = Fixture::new(&[2], "", "").await;
    assert_eq!(f.claim("a", 0, "queue").await[1], "Q|0|1");
    assert_eq!(f.claim("b", 0, "queue").await[1], "Q|0|2");
    let k = &f.k;
    let p = &k.pools[0];
    let mut c = common::redis_conn().await;
    // Both were dead-lettered (as the drainer does: answer D, out of the
    // queued count, stock back at the door), a's twice (issue 11 item 11);
    // a newcomer took one unit of the stock.
    let mut pipe = redis::pipe();
    for (u, s) in [("a", "1"), ("b", "2"), ("a", "1")] {
        pipe.xadd(&k.dlq, "*", &[("u", u), ("p", "0"), ("s", s)]);
    }
    let _: () = pipe
        .hset(&k.ans, "a", "D|0|1")
        .hset(&k.ans, "b", "D|0|2")
        .incr(&p.left, 2)
        .decr(&k.queued, 2)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f.claim("n", 0, "queue").await[1], "Q|0|3");
    let ids: Vec<String> = {
        let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&k.dlq)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        r.ids.into_iter().map(|e| e.id).collect()
    };
    let mut results = Vec::new();
    for (id, (u, s)) in ids.iter().zip([("a", "1"), ("b", "2"), ("a", "1")]) {
        let r: Vec<String> = f
            .store
            .eval(
                &f.store.scripts().replay,
                &[&k.ans, &p.left, &k.queue, &k.queued, &k.dlq, &k.meta],
                &[u, "0", s, id],
            )
            .await
            .unwrap();
        results.push(r[0].clone());
    }
    assert_eq!(results, vec!["requeued", "sold_out", "stale"]);
    assert_eq!(f.get(&p.left).await.as_deref(), Some("0"));
    assert_eq!(f.get(&k.queued).await.as_deref(), Some("2"));
    let b: String = redis::cmd("HGET")
        .arg(&k.ans)
        .arg("b")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(b, "X|2", "a refusal in waiting, made durable by the caller");
    let dlq_len: i64 = redis::cmd("XLEN")
        .arg(&k.dlq)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dlq_len, 0);
}

/// Issue 11 item 3: a state whose counter says stock is left while every
/// slot 1..stock is taken never hands out slot stock+1; a cancel of a slot
/// already free adds no stock; allocation never goes past the stock.
#[tokio::test]
async fn a_poisoned_state_never_hands_out_a_slot_beyond_the_stock() {
    let f = Fixture::new(&[2], "", "").await;
    let k = &f.k;
    let p = &k.pools[0];
    assert_eq!(f.claim("a", 0, "lua").await[1], "G|0|1|CODEa|1");
    assert_eq!(f.claim("b", 0, "lua").await[1], "G|0|2|CODEb|2");
    let mut c = common::redis_conn().await;
    // Drift: one unit of stock too many at the door.
    let _: () = redis::cmd("SET")
        .arg(&p.left)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f.claim("c", 0, "lua").await[1], "R|sold_out|3");
    assert_eq!(
        f.get(&p.left).await.as_deref(),
        Some("0"),
        "counter set right"
    );
    assert_eq!(f.get(&p.hw).await.as_deref(), Some("2"));
    // A cancel of a slot Redis already lists free adds no stock.
    let _: () = redis::cmd("ZADD")
        .arg(&p.free)
        .arg(1)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f.cancel(&["a", "", "", "0"]).await[0], "cancelled");
    assert_eq!(
        f.get(&p.left).await.as_deref(),
        Some("0"),
        "no stock it did not take"
    );
    // The queue's allocation stops at the stock too.
    let q = Fixture::new(&[1], "", "").await;
    assert_eq!(q.claim("a", 0, "queue").await[1], "Q|0|1");
    let _: () = redis::cmd("SET")
        .arg(&q.k.pools[0].hw)
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let out: Vec<String> = q
        .store
        .eval(
            &q.store.scripts().allocate,
            &[
                &q.k.ans,
                &q.k.meta,
                &q.k.queued,
                &q.k.pools[0].hw,
                &q.k.pools[0].free,
            ],
            &["1", "1", "a", "K1"],
        )
        .await
        .unwrap();
    assert_eq!(out, vec!["0", "X|1"]);
    assert_eq!(
        q.get(&q.k.queued).await.as_deref(),
        Some("0"),
        "a refusal leaves the queue"
    );
}

/// A release for a slot PostgreSQL says is held elsewhere keeps it taken
/// and gives no stock back; a replacement's slot is marked taken.
#[tokio::test]
async fn a_release_never_frees_a_slot_postgres_holds() {
    let f = Fixture::new(&[3], "", "").await;
    let k = &f.k;
    let p = &k.pools[0];
    let r = f.claim("a", 0, "gate").await;
    // Slot conflict: no stock back, slot not freed, answer gone.
    assert_eq!(f.release(&["a", &r[1], "", "", "0", "0", ""]).await, 1);
    assert_eq!(f.get(&p.left).await.as_deref(), Some("2"));
    assert_eq!(f.get(&p.hw).await.as_deref(), Some("1"));
    // The user's grant in PostgreSQL holds slot 3 (Redis never handed it
    // out): the reservation's slot 2 goes back, slot 3 becomes taken.
    let r = f.claim("a", 0, "gate").await;
    assert!(r[1].starts_with("P|0|2|"), "{r:?}");
    let replaced = ["a", &r[1], "G|0|3|PGCODE|9", "2", "0", "1", "3"];
    assert_eq!(f.release(&replaced).await, 1);
    assert_eq!(f.get(&p.hw).await.as_deref(), Some("3"));
    assert_eq!(f.get(&p.left).await.as_deref(), Some("1"));
    let free: Vec<String> = {
        let key = p.free.clone();
        f.store
            .run(|mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap()
    };
    assert_eq!(free, vec!["2"]);
}

/// Issue 19 item 9: the user id `_` is an ordinary user (the answers hash's
/// placeholder is outside the user-id alphabet).
#[tokio::test]
async fn the_user_named_underscore_is_an_ordinary_user() {
    let f = Fixture::new(&[1], "", "").await;
    assert_eq!(f.claim("_", 0, "lua").await[1], "G|0|1|CODE_|1");
    assert_eq!(f.claim("_", 0, "lua").await[0], "dup");
}

/// A state of a generation PostgreSQL moved past is dropped, once; an
/// open-ended campaign's expiry is pushed forward, never back.
#[tokio::test]
async fn stale_states_drop_and_open_ended_keys_refresh() {
    let f = Fixture::new(&[1], "", "").await;
    let k = &f.k;
    let n: i64 = f
        .store
        .eval(&f.store.scripts().drop_stale, &[&k.meta], &["7"])
        .await
        .unwrap();
    assert_eq!(n, 0, "another generation stays");
    let far = (chrono::Utc::now() + chrono::Duration::days(7)).timestamp_millis();
    let keys = k.all();
    let n: i64 = f
        .store
        .eval(&f.store.scripts().refresh, &keys, &[&far.to_string(), "0"])
        .await
        .unwrap();
    assert_eq!(n, 0, "not due: the expiry is after the threshold");
    let n: i64 = f
        .store
        .eval(
            &f.store.scripts().refresh,
            &keys,
            &[&far.to_string(), &(far - 1).to_string()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let ttl: i64 = {
        let key = k.ans.clone();
        f.store
            .run(|mut c| async move { redis::cmd("PTTL").arg(&key).query_async(&mut c).await })
            .await
            .unwrap()
    };
    assert!(ttl > 6 * 24 * 3600 * 1000, "{ttl}");
    let n: i64 = f
        .store
        .eval(&f.store.scripts().drop_stale, &[&k.meta], &["0"])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(f.claim("a", 0, "gate").await, vec!["noinit"]);
}

/// A state missing one of its parts (a key expired or evicted before meta)
/// never decides: it is forgotten, so the caller rebuilds it.
#[tokio::test]
async fn a_partial_state_is_forgotten_not_used() {
    for gone in ["seq", "left", "hw", "ans"] {
        let f = Fixture::new(&[3], "", "").await;
        // A slot handed out: a lost high-water mark would hand it out again.
        assert_eq!(f.claim("first", 0, "gate").await[0], "new");
        let key = match gone {
            "seq" => f.k.seq.clone(),
            "left" => f.k.pools[0].left.clone(),
            "hw" => f.k.pools[0].hw.clone(),
            _ => f.k.ans.clone(),
        };
        common::del(&key).await;
        assert_eq!(f.claim("a", 0, "gate").await, vec!["noinit"], "{gone}");
        let meta = common::exists(&f.k.meta).await;
        assert!(!meta, "{gone}: the partial state is dropped");
    }
}

#[tokio::test]
async fn a_state_another_server_loaded_is_dropped() {
    let f = Fixture::new(&[1], "", "").await;
    let k = &f.k;
    let same = |f: &Fixture| {
        let meta = f.k.meta.clone();
        let store = f.store.clone();
        async move {
            store
                .eval::<i64>(&store.scripts().same_server, &[&meta], &[])
                .await
                .unwrap()
        }
    };
    assert_eq!(same(&f).await, 0, "this server loaded it: kept");
    assert_eq!(f.claim("a", 0, "lua").await[0], "new");
    // What a restart or failover looks like: meta written under another
    // server's run_id.
    let meta = k.meta.clone();
    f.store
        .run(|mut c| async move {
            redis::cmd("HSET")
                .arg(&meta)
                .arg("run")
                .arg("0000000000000000000000000000000000000000")
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .unwrap();
    assert_eq!(same(&f).await, 1, "another server's state: dropped");
    assert_eq!(same(&f).await, 0, "nothing left to drop");
    assert_eq!(
        f.claim("b", 0, "lua").await,
        vec!["noinit".to_string()],
        "without meta the next claim asks for a rebuild"
    );
}

/// Red-team B4: a redis-lua rebuild waits for a surviving outbox (answers
/// already told) while a flusher holds the lease, however old its oldest
/// entry; without a flusher only until the entries are two minutes old.
#[tokio::test]
async fn a_rebuild_waits_for_an_outbox_a_flusher_is_writing() {
    let f = Fixture::new(&[3], "", "").await;
    let k = &f.k;
    let mut c = common::redis_conn().await;
    let wait = |age_limit_ms: i64| f.store.outbox_to_flush(k, age_limit_ms);
    assert_eq!(wait(120_000).await.unwrap(), 0, "an empty outbox");
    // An entry appended at 1970-01-01T00:00:01Z: older than any limit.
    let _: () = redis::pipe()
        .xadd(&k.outbox, "1000-0", &[("u", "a")])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(wait(120_000).await.unwrap(), 0, "nobody flushes it");
    let _: () = redis::pipe()
        .pset_ex(&k.lease, "a-worker", 60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(wait(120_000).await.unwrap(), 1, "a flusher is at work");
    // A fresh entry is waited for even without a flusher (one may start).
    let _: () = redis::pipe()
        .del(&k.lease)
        .xadd(&k.outbox, "*", &[("u", "b")])
        .xdel(&k.outbox, &["1000-0"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(wait(120_000).await.unwrap(), 1, "a young entry");
}

/// `answer.lua`: a state whose answers hash went before meta (keys expiring
/// one by one) is not read as "never claimed": it is forgotten, and the
/// read is told there is no whole state.
#[tokio::test]
async fn a_status_read_never_trusts_a_state_without_its_answers() {
    let f = Fixture::new(&[2], "", "").await;
    assert_eq!(f.claim("a", 0, "lua").await[0], "new");
    let (gen, ans, outbox) = f.store.read_answer(&f.k, "a").await.unwrap();
    assert!(gen.is_some() && ans.is_some(), "a whole state answers");
    assert_eq!(outbox, 1, "the grant waits in the outbox");
    common::del(&f.k.ans).await;
    let (gen, ans, _) = f.store.read_answer(&f.k, "a").await.unwrap();
    assert_eq!((gen, ans), (None, None), "no whole state");
    let meta = common::exists(&f.k.meta).await;
    assert!(!meta, "the partial state is forgotten");
}
