//! `settings.lua` and the pause branches of `claim.lua` and
//! `allocate.lua`, straight at Redis.

use firstcome::storage::redis::operator::{Applied, Fence};

use super::Fixture;

/// A key's absolute expiry (ms).
async fn pexpiretime(f: &Fixture, key: &str) -> i64 {
    let key = key.to_string();
    f.store
        .run(|mut c| async move {
            redis::cmd("PEXPIRETIME")
                .arg(&key)
                .query_async(&mut c)
                .await
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_paused_state_admits_no_new_user_and_writes_nothing() {
    let f = Fixture::new(&[2], "", "").await;
    let first = f.claim("a", 0, "gate").await;
    assert_eq!(first[0], "new");
    let exp = (chrono::Utc::now() + chrono::Duration::hours(2)).timestamp_millis();
    assert_eq!(
        f.store.settings(&f.k, true, None, exp, None).await.unwrap(),
        Applied::Done
    );
    for mode in ["gate", "lua", "queue"] {
        assert_eq!(f.claim("b", 0, mode).await, vec!["paused"], "{mode}");
    }
    // A repeat still gets its answer; nothing counted for the refused.
    assert_eq!(f.claim("a", 0, "gate").await[0], "dup");
    assert_eq!(f.get(&f.k.seq).await.as_deref(), Some("1"));
    assert_eq!(f.get(&f.k.pools[0].left).await.as_deref(), Some("1"));
    // The drainer allocates nothing while paused.
    let stocks = [2_i64];
    let r = f
        .store
        .allocate(&f.k, &stocks, &[("a", "C1")])
        .await
        .unwrap();
    assert_eq!(r, vec!["paused"]);
    // Every key follows the new expiry.
    for key in [&f.k.meta, &f.k.ans, &f.k.seq, &f.k.pools[0].left] {
        assert_eq!(pexpiretime(&f, key).await, exp, "{key}");
    }
    assert_eq!(
        f.store
            .settings(&f.k, false, None, exp, None)
            .await
            .unwrap(),
        Applied::Done
    );
    assert_eq!(f.claim("b", 0, "gate").await[0], "new");
}

#[tokio::test]
async fn settings_move_the_window_and_never_create_a_state() {
    let f = Fixture::new(&[2], "", "").await;
    let exp = (chrono::Utc::now() + chrono::Duration::hours(2)).timestamp_millis();
    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).timestamp_millis();
    assert_eq!(
        f.store
            .settings(&f.k, false, Some(past), exp, None)
            .await
            .unwrap(),
        Applied::Done
    );
    assert_eq!(f.claim("a", 0, "gate").await, vec!["closed"]);
    assert_eq!(
        f.store
            .settings(&f.k, false, None, exp, None)
            .await
            .unwrap(),
        Applied::Done
    );
    assert_eq!(f.claim("a", 0, "gate").await[0], "new");
    // No state: nothing written (a partial meta would look loaded).
    let meta = f.k.meta.clone();
    f.store
        .run(|mut c| async move {
            redis::cmd("DEL")
                .arg(&meta)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .unwrap();
    assert_eq!(
        f.store.settings(&f.k, true, None, exp, None).await.unwrap(),
        Applied::NoState
    );
    assert!(!f.ttl_ok(&f.k.meta).await);
}

#[tokio::test]
async fn settings_under_a_lock_no_longer_held_change_nothing() {
    let f = Fixture::new(&[2], "", "").await;
    let exp = (chrono::Utc::now() + chrono::Duration::hours(2)).timestamp_millis();
    let fence = Fence {
        lock: &f.k.rebuild_lock,
        token: "mine",
    };
    // The lock expired and another holder took it.
    f.set(&f.k.rebuild_lock, "theirs").await;
    let r = f.store.settings(&f.k, true, None, exp, Some(fence)).await;
    assert_eq!(r.unwrap(), Applied::Lost);
    assert_eq!(f.claim("a", 0, "gate").await[0], "new");
    f.set(&f.k.rebuild_lock, "mine").await;
    let r = f.store.settings(&f.k, true, None, exp, Some(fence)).await;
    assert_eq!(r.unwrap(), Applied::Done);
    assert_eq!(f.claim("b", 0, "gate").await, vec!["paused"]);
}
