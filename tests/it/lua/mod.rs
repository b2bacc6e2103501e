//! The Lua scripts, run directly against Redis: sold out, duplicates, the
//! window, slot reuse, compensation, allocation, promotion, NOSCRIPT.

mod recovery;
mod restock;
mod settings;

use crate::common;

use std::time::Duration;

use firstcome::{
    domain::CampaignId,
    storage::redis::{CampaignKeys, RedisStore, ScriptMode},
};

struct Fixture {
    store: RedisStore,
    k: std::sync::Arc<CampaignKeys>,
    stocks: Vec<i64>,
}

impl Fixture {
    /// A fresh campaign state with one pool per `(stock)` entry.
    async fn new(stocks: &[i64], opens_ms: &str, closes_ms: &str) -> Self {
        let prefix = common::unique("lua");
        let store = RedisStore::connect(&common::redis_url(), &prefix, Duration::from_secs(2))
            .await
            .unwrap();
        let k = store.keys(CampaignId(1), stocks.len(), 1)[0].clone();
        let st = common::init_state("gate", stocks, opens_ms, closes_ms);
        assert!(store.init_state(&k, &st).await.unwrap());
        // A second init must not clobber the live state.
        assert!(!store.init_state(&k, &st).await.unwrap());
        Self {
            store,
            k,
            stocks: stocks.to_vec(),
        }
    }

    async fn claim(&self, user: &str, pool: usize, mode: &str) -> Vec<String> {
        let k = &self.k;
        let p = &k.pools[pool];
        // The tests name the modes; the script reads how to decide.
        let script = match mode {
            "gate" => ScriptMode::Reserve,
            "lua" => ScriptMode::WriteBehind,
            "queue" => ScriptMode::Enqueue,
            other => panic!("no script mode for {other}"),
        };
        let stream = script.stream(k);
        let pidx = pool.to_string();
        let code = format!("CODE{user}");
        let stock = self.stocks[pool].to_string();
        self.store
            .eval(
                &self.store.scripts().claim,
                &[
                    &k.meta, &k.ans, &k.seq, &p.left, &p.hw, &p.free, stream, &k.queued, &k.pending,
                ],
                &[user, &pidx, &code, script.as_arg(), &stock],
            )
            .await
            .unwrap()
    }

    /// release.lua on pool 0, with its ARGV as given (user first).
    async fn release(&self, argv: &[&str]) -> i64 {
        let (k, p) = (&self.k, &self.k.pools[0]);
        self.store
            .eval(
                &self.store.scripts().release,
                &[
                    &k.meta, &k.ans, &p.left, &p.free, &k.queued, &k.pending, &p.hw,
                ],
                argv,
            )
            .await
            .unwrap()
    }

    /// cancel.lua on pool 0, with its ARGV as given (user first).
    async fn cancel(&self, argv: &[&str]) -> Vec<String> {
        let (k, p) = (&self.k, &self.k.pools[0]);
        self.store
            .eval(
                &self.store.scripts().cancel,
                &[&k.meta, &k.ans, &p.left, &p.free, &k.outbox],
                argv,
            )
            .await
            .unwrap()
    }

    /// Sets a plain key (a lock, a counter) as a test's fault or setup.
    async fn set(&self, key: &str, value: &str) {
        let (key, value) = (key.to_string(), value.to_string());
        self.store
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .unwrap();
    }

    async fn get(&self, key: &str) -> Option<String> {
        let key = key.to_string();
        self.store
            .run(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await
            .unwrap()
    }

    async fn ttl_ok(&self, key: &str) -> bool {
        let key = key.to_string();
        let ttl: i64 = self
            .store
            .run(|mut c| async move { redis::cmd("PTTL").arg(&key).query_async(&mut c).await })
            .await
            .unwrap();
        ttl > 0
    }
}

#[tokio::test]
async fn sells_out_and_remembers_the_refusal() {
    let f = Fixture::new(&[2], "", "").await;
    for (user, answer) in [
        ("a", ["new", "G|0|1|CODEa|1", "0"]),
        ("b", ["new", "G|0|2|CODEb|2", "0"]),
        ("c", ["new", "R|sold_out|3", "0"]),
        ("c", ["dup", "R|sold_out|3", "0"]),
    ] {
        assert_eq!(f.claim(user, 0, "lua").await, answer, "{user}");
    }
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("0"));
    // Both grants and the refusal are in the outbox, in order.
    let len: i64 = {
        let key = f.k.outbox.clone();
        f.store
            .run(|mut c| async move { redis::cmd("XLEN").arg(&key).query_async(&mut c).await })
            .await
            .unwrap()
    };
    assert_eq!(len, 3);
    // Every key carries the campaign's expiry.
    for key in [
        &f.k.meta,
        &f.k.ans,
        &f.k.seq,
        &f.k.outbox,
        &f.k.pools[0].left,
        &f.k.pools[0].hw,
    ] {
        assert!(f.ttl_ok(key).await, "{key} has no TTL");
    }
}

#[tokio::test]
async fn a_duplicate_gets_the_first_answer_and_takes_nothing() {
    let f = Fixture::new(&[5], "", "").await;
    let first = f.claim("a", 0, "gate").await;
    assert_eq!(first[0], "new");
    assert!(first[1].starts_with("P|0|1|CODEa|1|"), "{first:?}");
    let again = f.claim("a", 0, "gate").await;
    assert_eq!(again, vec!["dup".to_string(), first[1].clone(), "0".into()]);
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("4"));
    assert_eq!(f.get(&f.k.seq).await.as_deref(), Some("1"));
}

#[tokio::test]
async fn the_window_is_checked_on_redis_time_and_not_remembered() {
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .timestamp_millis()
        .to_string();
    let f = Fixture::new(&[5], &later, "").await;
    assert_eq!(f.claim("a", 0, "gate").await, vec!["not_open"]);
    let past = (chrono::Utc::now() - chrono::Duration::hours(1))
        .timestamp_millis()
        .to_string();
    let g = Fixture::new(&[5], "", &past).await;
    assert_eq!(g.claim("a", 0, "gate").await, vec!["closed"]);
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("5"));
    assert_eq!(f.get(&f.k.seq).await.as_deref(), Some("0"));
}

#[tokio::test]
async fn a_cancelled_slot_is_reused_lowest_first() {
    let f = Fixture::new(&[3], "", "").await;
    for u in ["a", "b", "c"] {
        f.claim(u, 0, "lua").await;
    }
    let p = &f.k.pools[0];
    let lua = ScriptMode::WriteBehind.as_arg();
    for u in ["c", "a"] {
        assert_eq!(f.cancel(&[u, lua, "", "0"]).await[0], "cancelled");
    }
    // Cancelling twice changes nothing.
    assert_eq!(f.cancel(&["a", lua, "", "0"]).await[0], "already");
    assert_eq!(f.get(&p.left).await.as_deref(), Some("2"));
    assert!(f.ttl_ok(&p.free).await, "free set has no TTL");
    assert_eq!(f.claim("d", 0, "lua").await[1], "G|0|1|CODEd|4");
    assert_eq!(f.claim("e", 0, "lua").await[1], "G|0|3|CODEe|5");
    assert_eq!(f.claim("x", 0, "lua").await[1], "R|sold_out|6");
}

#[tokio::test]
async fn compensation_releases_once_and_only_the_expected_answer() {
    let f = Fixture::new(&[1], "", "").await;
    let r = f.claim("a", 0, "gate").await;
    let pending = r[1].clone();
    let k = &f.k;
    let p = &k.pools[0];
    // Gate's refusal waits for PostgreSQL before it is final.
    assert_eq!(f.claim("b", 0, "gate").await[1], "X|2");
    let fixture = &f;
    let rel = |expected: String| async move {
        fixture
            .release(&["a", &expected, "", "1", "0", "1", ""])
            .await
    };
    assert_eq!(
        rel("P|0|1|OTHER|1|0".into()).await,
        0,
        "a different answer is not released"
    );
    assert_eq!(rel(pending.clone()).await, 1);
    assert_eq!(rel(pending.clone()).await, 0, "released once");
    assert_eq!(f.get(&p.left).await.as_deref(), Some("1"));
    // The user may claim again and gets the released slot.
    let again = f.claim("a", 0, "gate").await;
    assert!(again[1].starts_with("P|0|1|CODEa|3|"), "{again:?}");
}

#[tokio::test]
async fn queue_allocation_is_in_order_and_idempotent() {
    let f = Fixture::new(&[2, 1], "", "").await;
    assert_eq!(f.claim("a", 0, "queue").await[1], "Q|0|1");
    assert_eq!(f.claim("b", 1, "queue").await[1], "Q|1|2");
    assert_eq!(f.claim("c", 0, "queue").await[1], "Q|0|3");
    assert_eq!(
        f.claim("d", 1, "queue").await[1],
        "X|4",
        "refused at the door (durable before final)"
    );
    assert_eq!(f.get(&f.k.queued).await.as_deref(), Some("3"));
    let k = &f.k;
    let mut keys: Vec<&str> = vec![&k.ans, &k.meta, &k.queued];
    for p in &k.pools {
        keys.extend([p.hw.as_str(), p.free.as_str()]);
    }
    let args = ["2", "2", "1", "a", "K1", "b", "K2", "c", "K3", "zz", "K4"];
    let out: Vec<String> = f
        .store
        .eval(&f.store.scripts().allocate, &keys, &args)
        .await
        .unwrap();
    assert_eq!(out, vec!["0", "Q|0|1|1|K1", "Q|1|2|1|K2", "Q|0|3|2|K3", ""]);
    // Run again (a retried batch): the same slots and codes.
    let args2 = ["2", "2", "1", "a", "N1", "b", "N2", "c", "N3"];
    let out2: Vec<String> = f
        .store
        .eval(&f.store.scripts().allocate, &keys, &args2)
        .await
        .unwrap();
    assert_eq!(out2, vec!["0", "Q|0|1|1|K1", "Q|1|2|1|K2", "Q|0|3|2|K3"]);
    // Promotion only replaces what is expected, and counts down the queue.
    let n: i64 = f
        .store
        .eval(
            &f.store.scripts().promote,
            &[&k.ans, &k.queued, &k.pending],
            &[
                "1",
                "a",
                "Q|0|1|1|K1",
                "G|0|1|K1|1",
                "b",
                "wrong",
                "G|1|1|K2|2",
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(f.get(&k.queued).await.as_deref(), Some("2"));
}

#[tokio::test]
async fn scripts_reload_after_script_flush() {
    let f = Fixture::new(&[10], "", "").await;
    let mut c = common::redis_conn().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f.claim("a", 0, "lua").await[0], "new");
}

#[tokio::test]
async fn a_lost_state_is_reported_not_guessed() {
    let f = Fixture::new(&[10], "", "").await;
    common::del(&f.k.meta).await;
    assert_eq!(f.claim("a", 0, "gate").await, vec!["noinit"]);
}

#[tokio::test]
async fn an_unknown_script_mode_decides_nothing() {
    let f = Fixture::new(&[1], "", "").await;
    let k = &f.k;
    let p = &k.pools[0];
    let r: Result<Vec<String>, _> = f
        .store
        .eval(
            &f.store.scripts().claim,
            &[
                &k.meta, &k.ans, &k.seq, &p.left, &p.hw, &p.free, &k.outbox, &k.queued, &k.pending,
            ],
            &["a", "0", "CODEa", "gate", "1"],
        )
        .await;
    assert!(r.is_err(), "an old mode word is refused: {r:?}");
    assert_eq!(
        f.get(&k.seq).await.as_deref(),
        Some("0"),
        "no arrival drawn"
    );
    assert_eq!(
        f.claim("a", 0, "gate").await[0],
        "new",
        "the typed words work"
    );
}

/// `time.lua` reads the clock of the server holding the campaign's keys.
#[tokio::test]
async fn the_campaign_clock_is_the_servers() {
    let f = Fixture::new(&[1], "", "").await;
    let mut c = common::redis_conn().await;
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let ms = f.store.now_ms(&f.k).await.unwrap();
    assert!((ms - (s * 1000 + us / 1000)).abs() < 5_000, "{ms} vs {s}");
}
