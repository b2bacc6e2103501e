//! Faults of whole processes: Redis going away and coming back (a private
//! redis-server the test kills and restarts), an API process dying with
//! reservations, a worker rebuilding, a restart that lost the last writes.

use super::*;

/// A private redis-server that the test can kill and restart.
struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        Self::start_in(port, &std::env::temp_dir()).await
    }

    /// Starts on `port` with its snapshot file in `dir` (a restart in the
    /// same directory loads the last `SAVE`).
    async fn start_in(port: u16, dir: &std::path::Path) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().expect("utf-8 temp dir"),
                "--dbfilename",
                &format!("fc-test-{port}.rdb"),
                // Replicas sync at once (tests that fail over).
                "--repl-diskless-sync-delay",
                "0",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH (scripts/services.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(url.as_str()) {
                if let Ok(mut conn) = c.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "private redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            child: Some(child),
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_answers_503_then_recovers_by_itself() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut redis = PrivateRedis::start(port).await;
    let name = common::unique("down");
    let db_url = common::fresh_database(&name).await;
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_on(&db_url, &name, |a| {
        a.stores.redis_url = url.clone();
        a.stores.redis_timeout_ms = 300;
    })
    .await
    .owning_database();
    let id = app.campaign("gate", &[("main", 10)]).await;
    let (s, first) = app.claim(id, "before", None).await;
    assert_eq!(s, 200);
    // A campaign that closes in a moment, with a grant told before.
    let closes_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let closing = app
        .create_campaign(serde_json::json!({"name": "closing", "mode": "gate",
            "pools": [{"name": "main", "stock": 5}], "closes_at": closes_at.to_rfc3339()}))
        .await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.claim(closing, "early", None).await.0, 200);
    // (Each poll a new user: a repeat would get its first answer.)
    let polls = std::sync::atomic::AtomicUsize::new(0);
    common::until("the campaign closed", || async {
        let n = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        app.claim(closing, &format!("late-{n}"), None).await.1["reason"] == "closed"
    })
    .await;

    redis.kill().await;
    // Red-team B5: the repeat after closing must read the first answer;
    // unreadable, it is a 503, never `closed` (the user was granted).
    let (s, v) = app.claim(closing, "early", None).await;
    assert_eq!(s, 503, "{v}");
    // Bounded answers, never a hang: 503 with Retry-After.
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        app.http
            .post(format!("{}/v1/campaigns/{id}/claims", app.base))
            .json(&serde_json::json!({"user_id":"during"}))
            .send(),
    )
    .await
    .expect("a claim must not hang while redis is down")
    .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (s, v) = app.send(reqwest::Method::GET, "/readyz", None).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("redis_unavailable")));

    // Redis comes back empty; the service recovers by itself.
    let _redis = PrivateRedis::start(redis.port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = app.claim(id, "after", None).await;
        if s == 200 {
            assert_eq!(v["status"], "granted");
            break;
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not recover: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.claim(id, "before", None).await, (200, first));
    // Readiness is checked at most once a second: ready within it.
    common::until("ready again", || async {
        app.send(reqwest::Method::GET, "/readyz", None).await.0 == 200
    })
    .await;
    assert_eq!(app.assert_db_invariants(id).await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_of_a_dead_api_process_are_settled_by_the_worker() {
    let app = spawn_app().await;
    let id = app.campaign("gate", &[("main", 3)]).await;
    app.claim(id, "alive", None).await;
    // Two reservations left by a process killed before it answered, a
    // minute ago: one whose commit landed, one whose commit never did.
    let base = format!("{}:{{c{id}}}", app.prefix);
    let old = chrono::Utc::now().timestamp_millis() - 60_000;
    let mut c = redis_conn().await;
    for (user, slot, code) in [
        ("committed", 2, "CODECOMMITTED000"),
        ("lost", 3, "CODELOST00000000"),
    ] {
        let answer = format!("P|0|{slot}|{code}|{slot}|{old}");
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(format!("{base}:ans"))
            .arg(user)
            .arg(&answer)
            .ignore()
            .cmd("ZADD")
            .arg(format!("{base}:pending"))
            .arg(old)
            .arg(user)
            .ignore()
            .cmd("DECR")
            .arg(format!("{base}:p0:left"))
            .ignore()
            .cmd("INCR")
            .arg(format!("{base}:p0:hw"))
            .ignore()
            .query_async(&mut c)
            .await
            .unwrap();
    }
    execute(
        &app,
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq)
         SELECT $1, id, 'committed', 2, 'CODECOMMITTED000', 2 FROM pools WHERE campaign_id = $1",
        id,
    )
    .await;
    // Nobody asks again: the worker settles both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = redis::cmd("ZCARD")
            .arg(format!("{base}:pending"))
            .query_async(&mut c)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphans not settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = app.status(id, "committed").await;
    assert_eq!(
        (s, v["status"].as_str(), v["slot"].as_i64()),
        (200, Some("granted"), Some(2))
    );
    assert_eq!(
        app.status(id, "lost").await.0,
        404,
        "a lost reservation is released"
    );
    // Its stock and slot went back: the next claimant gets slot 3.
    let (s, v) = app.claim(id, "next", None).await;
    assert_eq!((s, v["slot"].as_i64()), (200, Some(3)), "{v}");
    assert_eq!(app.assert_db_invariants(id).await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_rebuilds_a_lost_state_without_waiting_for_a_claim() {
    let app = spawn_app().await;
    for mode in ["redis-lua", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 5)]).await;
        app.claim(id, "a", None).await;
        app.wait_durable(id, 1).await;
        assert!(delete_campaign_keys(&app.prefix, id).await > 0);
        let meta = format!("{}:{{c{id}}}:meta", app.prefix);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let exists = common::exists(&meta).await;
            if exists {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mode}: the worker did not rebuild"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(app.status(id, "a").await.1["status"], "granted", "{mode}");
    }
    app.stop().await;
}

/// Issue 11, S6: a Redis restart (or failover) that brings a campaign's
/// state back without its last writes (here: the snapshot taken before
/// them). meta is there, so nothing looked lost; the state's server marker
/// (lua/same_server.lua) tells the worker, which rebuilds from PostgreSQL
/// under a new generation. Afterwards the late winners keep their answers
/// and exactly the stock PostgreSQL still has is sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_that_lost_the_last_writes_is_rebuilt_from_postgres() {
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir();
        let _ = std::fs::remove_file(dir.join(format!("fc-test-{port}.rdb")));
        let mut redis = PrivateRedis::start_in(port, &dir).await;
        let url = format!("redis://127.0.0.1:{port}");
        let name = common::unique("restart");
        let db_url = common::fresh_database(&name).await;
        let app = spawn_app_on(&db_url, &name, |a| {
            a.stores.redis_url = url.clone();
            a.stores.redis_timeout_ms = 300;
        })
        .await
        .owning_database();
        let id = app.campaign(mode, &[("main", 10)]).await;
        for i in 0..4 {
            let (s, _) = app.claim(id, &format!("early-{i}"), None).await;
            assert!(matches!(s, 200 | 202), "{mode}: {s}");
        }
        app.wait_durable(id, 4).await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
        for i in 0..4 {
            let (s, _) = app.claim(id, &format!("late-{i}"), None).await;
            assert!(matches!(s, 200 | 202), "{mode}: {s}");
        }
        app.wait_durable(id, 8).await;
        let mut late = Vec::new();
        for i in 0..4 {
            let (s, v) = app.status(id, &format!("late-{i}")).await;
            assert_eq!(s, 200, "{mode}: {v}");
            late.push(v);
        }

        // PostgreSQL hangs meanwhile (the campaigns table locked): the
        // worker's listing waits, its server check must not (red-team B1).
        let lock = common::TableLock::take(&db_url, "campaigns").await;
        // The restart loads the snapshot: the state is back, the late
        // writes are not, and the server is another one.
        redis.kill().await;
        let _redis = PrivateRedis::start_in(port, &dir).await;
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let left: Option<i64> = redis::cmd("GET")
            .arg(format!("{name}:{{c{id}}}:p0:left"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, Some(10 - 4), "{mode}: the snapshot holds the state");
        let meta = format!("{name}:{{c{id}}}:meta");
        common::until("the state dropped while PostgreSQL hangs", || {
            let (mut conn, meta) = (conn.clone(), meta.clone());
            async move {
                let there: bool = redis::cmd("EXISTS")
                    .arg(&meta)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(true);
                !there
            }
        })
        .await;
        lock.release().await;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .unwrap();
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap()
            .trim()
            .to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let run: Option<String> = redis::cmd("HGET")
                .arg(&meta)
                .arg("run")
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            if run.is_some_and(|r| r.starts_with(&format!("{run_id}:"))) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{mode}: the state loaded by the old server was not rebuilt"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Late winners keep their answers; the 2 slots left go, no more.
        // (503 asks the client to retry: the first call after the restart
        // may meet a connection the restart broke.)
        for (i, before) in late.iter().enumerate() {
            let user = format!("late-{i}");
            let (s, v) = retry_503(|| app.status(id, &user)).await;
            assert_eq!((s, &v), (200, before), "{mode}: late-{i} after the restart");
        }
        let mut won = 0;
        for i in 0..8 {
            let user = format!("new-{i}");
            let (s, v) = retry_503(|| app.claim(id, &user, None)).await;
            match s {
                200 | 202 => won += 1,
                409 => assert_eq!(v["reason"], "sold_out", "{mode}: {v}"),
                _ => panic!("{mode}: new-{i} answered {s} {v}"),
            }
        }
        assert_eq!(won, 2, "{mode}: the stock PostgreSQL had left");
        app.wait_durable(id, 10).await;
        assert_eq!(app.assert_db_invariants(id).await, 10, "{mode}");
        app.stop().await;
        let _ = std::fs::remove_file(dir.join(format!("fc-test-{port}.rdb")));
    }
}

/// Calls `f` until it answers something other than 503 (bounded).
async fn retry_503<F, Fut>(mut f: F) -> (u16, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = f().await;
        if s != 503 || tokio::time::Instant::now() >= deadline {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Red-team B2: a server that was made a replica of a lagging server and
/// then promoted again keeps its run_id but serves the other server's
/// (older) history; its replication id tells, and the state is dropped.
/// A replica attaching to it, which renames its history but moves no data,
/// does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_that_came_back_through_a_failover_is_dropped() {
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (pa, pb) = (free_port(), free_port());
    let (_a, _b) = (PrivateRedis::start(pa).await, PrivateRedis::start(pb).await);
    let url = |p: u16| format!("redis://127.0.0.1:{p}");
    let conn = |p: u16| async move {
        let c = redis::Client::open(url(p)).unwrap();
        c.get_multiplexed_async_connection().await.unwrap()
    };
    let (mut ca, mut cb) = (conn(pa).await, conn(pb).await);
    let prefix = common::unique("failover");
    let timeout = Duration::from_secs(2);
    let store = firstcome::storage::redis::RedisStore::connect(&url(pa), &prefix, timeout)
        .await
        .unwrap();
    let k = store.keys(firstcome::domain::CampaignId(1), 1, 1)[0].clone();
    let st = common::init_state("gate", &[3], "", "");
    assert!(store.init_state(&k, &st).await.unwrap());
    assert!(
        !store.forget_if_moved(&k).await.unwrap(),
        "loaded here: kept"
    );

    /// Makes the server behind `c` a replica of `master`, or a master
    /// again with `None`.
    async fn replica_of(c: &mut redis::aio::MultiplexedConnection, master: Option<u16>) {
        let mut cmd = redis::cmd("REPLICAOF");
        match master {
            Some(p) => cmd.arg("127.0.0.1").arg(p),
            None => cmd.arg("NO").arg("ONE"),
        };
        let _: () = cmd.query_async(c).await.unwrap();
    }
    /// Waits until the replica behind `c` is in sync with its master.
    async fn synced(c: &redis::aio::MultiplexedConnection) {
        common::until("the replica in sync", || {
            let mut c = c.clone();
            async move {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                info.contains("master_link_status:up")
            }
        })
        .await;
    }
    // B copies A's state, then takes over (A's later writes would be lost).
    replica_of(&mut cb, Some(pa)).await;
    synced(&cb).await;
    // A's first replica renamed A's history (a new master_replid) without
    // changing its data: the state is kept (red-team C2).
    assert!(
        !store.forget_if_moved(&k).await.unwrap(),
        "a replica attaching moves no data: kept"
    );
    replica_of(&mut cb, None).await;
    // A follows B, then becomes the master again: same process, B's data.
    replica_of(&mut ca, Some(pb)).await;
    synced(&ca).await;
    replica_of(&mut ca, None).await;
    let meta_back: bool = redis::cmd("EXISTS")
        .arg(&k.meta)
        .query_async(&mut ca)
        .await
        .unwrap();
    assert!(meta_back, "the state came back through B");
    assert!(
        store.forget_if_moved(&k).await.unwrap(),
        "a state that came back through another server is dropped"
    );
}
