//! `restock.lua` (an operator's change of pools' stock) and the bound it
//! sets for `claim.lua`, `allocate.lua` and `repair.lua`, straight at
//! Redis.

use firstcome::storage::redis::operator::{Fence, Restocked, StockChange};

use super::Fixture;

/// `pidx`'s new stock, from `was`.
fn to(pidx: usize, was: i32, stock: i32) -> StockChange {
    StockChange { pidx, stock, was }
}

/// The token the tests hold the rebuild lock with.
const TOKEN: &str = "tok";

impl Fixture {
    /// `restock.lua` holding the rebuild lock.
    async fn restock(&self, changes: &[StockChange]) -> Restocked {
        self.set(&self.k.rebuild_lock, TOKEN).await;
        let fence = Fence {
            lock: &self.k.rebuild_lock,
            token: TOKEN,
        };
        self.store.restock(&self.k, changes, fence).await.unwrap()
    }

    /// A cancel's effect on the counters: `slot` released, its unit back
    /// at the door.
    async fn free_slot(&self, pool: usize, slot: i32) {
        let p = self.k.pools[pool].clone();
        self.store
            .run(|mut c| async move {
                redis::pipe()
                    .zadd(&p.free, slot, slot)
                    .incr(&p.left, 1)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .unwrap();
    }

    /// The slot in `user`'s answer (`P|pidx|slot|...`, `G|...`, or
    /// `Q|pidx|seq|slot|...` once allocated).
    async fn slot_of(&self, user: &str) -> Option<i32> {
        let a = self.hget(&self.k.ans, user).await?;
        let parts: Vec<&str> = a.split('|').collect();
        match parts[0] {
            "P" | "G" => parts[2].parse().ok(),
            "Q" => parts.get(3).and_then(|s| s.parse().ok()),
            _ => None,
        }
    }

    async fn hset(&self, key: &str, pairs: &[(&str, &str)]) {
        let key = key.to_string();
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        self.store
            .run(|mut c| async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(pairs)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .unwrap();
    }

    async fn hget(&self, key: &str, field: &str) -> Option<String> {
        let (key, field) = (key.to_string(), field.to_string());
        self.store
            .run(|mut c| async move {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(&field)
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_raise_adds_units_whose_slots_continue_the_numbering() {
    let f = Fixture::new(&[2], "", "").await;
    for u in ["a", "b"] {
        assert_eq!(f.claim(u, 0, "gate").await[0], "new");
    }
    assert_eq!(f.claim("c", 0, "gate").await[1], "X|3");
    let r = f.restock(&[to(0, 2, 4)]).await;
    assert_eq!(r, Restocked::Done);
    // Applied once: a retry of the same change adds nothing.
    let r = f.restock(&[to(0, 2, 4)]).await;
    assert_eq!(r, Restocked::Done);
    assert_eq!(f.hget(&f.k.meta, "last:0").await.as_deref(), Some("4"));
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("2"));
    // The fixture's claims still pass the stock 2 it loaded: the bound in
    // meta wins, as it must for a process holding an older copy.
    for (u, slot) in [("d", 3), ("e", 4)] {
        assert_eq!(f.claim(u, 0, "gate").await[0], "new");
        assert_eq!(f.slot_of(u).await, Some(slot));
    }
    assert!(f.claim("g", 0, "gate").await[1].starts_with('X'));
    // A repair computed for another stock than the state's is refused.
    let seen = (6, 0, 0);
    assert!(!f.store.repair(&f.k, 0, seen, (2, 0), &[]).await.unwrap());
    assert!(f.store.repair(&f.k, 0, seen, (4, 0), &[]).await.unwrap());
}

#[tokio::test]
async fn a_lower_takes_its_units_from_the_door_only() {
    let f = Fixture::new(&[5], "", "").await;
    for u in ["a", "b"] {
        assert_eq!(f.claim(u, 0, "gate").await[0], "new");
    }
    // Two taken, three at the door: down to 1 would take four.
    let r = f.restock(&[to(0, 5, 1)]).await;
    assert_eq!(
        r,
        Restocked::Short {
            pidx: 0,
            left: 3,
            was: 5
        }
    );
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("3"));
    let r = f.restock(&[to(0, 5, 3)]).await;
    assert_eq!(r, Restocked::Done);
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("1"));
    assert_eq!(f.claim("c", 0, "gate").await[0], "new");
    assert_eq!(f.slot_of("c").await, Some(3));
    assert!(f.claim("d", 0, "gate").await[1].starts_with('X'));
}

#[tokio::test]
async fn a_lower_is_refused_above_a_held_slot_and_drops_released_ones() {
    let f = Fixture::new(&[5], "", "").await;
    for u in ["a", "b", "c"] {
        assert_eq!(f.claim(u, 0, "gate").await[0], "new");
    }
    f.free_slot(0, 1).await;
    // Enough units at the door (3), but slot 3 is held.
    let r = f.restock(&[to(0, 5, 2)]).await;
    assert_eq!(r, Restocked::SlotTaken { pidx: 0, slot: 3 });
    f.free_slot(0, 3).await;
    let r = f.restock(&[to(0, 5, 2)]).await;
    assert_eq!(r, Restocked::Done);
    // Slot 3 is gone for good; slot 1 comes back; then sold out.
    assert_eq!(f.get(&f.k.pools[0].hw).await.as_deref(), Some("2"));
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("1"));
    assert_eq!(f.claim("d", 0, "gate").await[0], "new");
    assert_eq!(f.slot_of("d").await, Some(1));
    assert!(f.claim("e", 0, "gate").await[1].starts_with('X'));
}

#[tokio::test]
async fn a_refused_pool_changes_no_pool_and_a_lost_state_nothing() {
    let f = Fixture::new(&[3, 3], "", "").await;
    for u in ["a", "b"] {
        assert_eq!(f.claim(u, 1, "gate").await[0], "new");
    }
    let r = f.restock(&[to(0, 3, 1), to(1, 3, 1)]).await;
    assert_eq!(
        r,
        Restocked::Short {
            pidx: 1,
            left: 1,
            was: 3
        }
    );
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("3"));
    assert_eq!(f.hget(&f.k.meta, "last:0").await, None);
    common_del(&f, &f.k.meta).await;
    let r = f.restock(&[to(0, 3, 9)]).await;
    assert_eq!(r, Restocked::NoState);
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("3"));
}

#[tokio::test]
async fn redis_lua_lowers_below_a_handed_out_slot_only_once_its_history_is_durable() {
    let f = Fixture::new(&[5], "", "").await;
    for u in ["a", "b"] {
        assert_eq!(f.claim(u, 0, "lua").await[0], "new");
    }
    // b's grant cancelled, its slot back; both facts still in the outbox.
    f.free_slot(0, 2).await;
    let r = f.restock(&[to(0, 5, 1)]).await;
    assert_eq!(r, Restocked::SlotTaken { pidx: 0, slot: 2 });
    // Flushed: PostgreSQL holds the history, slot 2 may go.
    common_del(&f, &f.k.outbox).await;
    let r = f.restock(&[to(0, 5, 1)]).await;
    assert_eq!(r, Restocked::Done);
    assert!(f.claim("c", 0, "lua").await[1].starts_with("R|sold_out"));
}

#[tokio::test]
async fn the_drainer_allocates_up_to_the_restocked_bound() {
    let f = Fixture::new(&[1], "", "").await;
    let r = f.restock(&[to(0, 1, 2)]).await;
    assert_eq!(r, Restocked::Done);
    for u in ["a", "b"] {
        assert_eq!(f.claim(u, 0, "queue").await[0], "new");
    }
    // The drainer passes the stock it loaded (1); meta's bound (2) wins.
    let out = f
        .store
        .allocate(&f.k, &[1], &[("a", "C1"), ("b", "C2")])
        .await
        .unwrap();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(f.slot_of("a").await, Some(1));
    assert_eq!(f.slot_of("b").await, Some(2));
}

async fn common_del(f: &Fixture, key: &str) {
    let key = key.to_string();
    f.store
        .run(|mut c| async move { redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_restock_without_the_lock_or_on_a_partial_state_changes_nothing() {
    let f = Fixture::new(&[3], "", "").await;
    f.set(&f.k.rebuild_lock, "another").await;
    let fence = Fence {
        lock: &f.k.rebuild_lock,
        token: TOKEN,
    };
    let r = f.store.restock(&f.k, &[to(0, 3, 5)], fence).await.unwrap();
    assert_eq!(r, Restocked::Lost);
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("3"));
    // `left` lost alone: a raise must not recreate it as the difference.
    common_del(&f, &f.k.pools[0].left).await;
    assert_eq!(f.restock(&[to(0, 3, 5)]).await, Restocked::NoState);
    assert_eq!(f.get(&f.k.pools[0].left).await, None);
    assert_eq!(
        f.get(&f.k.meta).await,
        None,
        "the partial state is forgotten"
    );
}

#[tokio::test]
async fn a_raise_after_a_crowded_freeze_goes_to_the_door() {
    // A closed pre-queue of 5 for 2 units: 3 beyond the stock ('pqx').
    let f = Fixture::new(&[0], "", "").await;
    f.hset(
        &f.k.meta,
        &[("pqs", "1"), ("pqn", "5"), ("pqx:0", "3"), ("last:0", "2")],
    )
    .await;
    assert_eq!(f.restock(&[to(0, 2, 6)]).await, Restocked::Done);
    // All four units at the door (the drainer gives their slots to ranks
    // 3..5 first; a later arrival holding one is refused in its turn).
    assert_eq!(f.hget(&f.k.meta, "pqx:0").await.as_deref(), Some("3"));
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("4"));
}

#[tokio::test]
async fn a_drawn_place_refused_beyond_the_stock_counts_down_the_excess() {
    let f = Fixture::new(&[0], "", "").await;
    f.hset(
        &f.k.meta,
        &[("pqs", "1"), ("pqn", "4"), ("pqx:0", "2"), ("last:0", "2")],
    )
    .await;
    f.hset(&f.k.ans, &[("r3", "Q|0|3"), ("late", "Q|0|5")])
        .await;
    f.set(&f.k.queued, "2").await;
    f.set(&f.k.pools[0].hw, "2").await;
    // Rank 3 finds no slot: refused, one claimant fewer beyond the stock.
    let out = f.store.allocate(&f.k, &[2], &[("r3", "C3")]).await.unwrap();
    assert_eq!(out[1], "X|3");
    assert_eq!(f.hget(&f.k.meta, "pqx:0").await.as_deref(), Some("1"));
    // A later arrival (beyond the pre-queue) refused: pqx untouched.
    let out = f
        .store
        .allocate(&f.k, &[2], &[("late", "C5")])
        .await
        .unwrap();
    assert_eq!(out[1], "X|5");
    assert_eq!(f.hget(&f.k.meta, "pqx:0").await.as_deref(), Some("1"));
}
