//! Issue 13, first part: the service on a Redis Cluster (3 masters, 3
//! replicas, brought up by `scripts/services.sh cluster`). Every Redis mode
//! rushes clean; several API processes and one worker share one cluster;
//! a master failover is caught by the server marker and the campaign is
//! rebuilt from PostgreSQL without losing an acknowledged grant.

use std::{sync::Arc, time::Duration};

use crate::{
    common::{self, claim_all, cluster_url, spawn_app_on, until, TestApp},
    rush::rush_on,
};
use firstcome::config::Role;

/// An app on a fresh database and the shared local cluster.
async fn app_on_cluster(url: &str, tweak: impl FnOnce(&mut firstcome::cli::ServeArgs)) -> TestApp {
    let name = common::unique("cluster");
    let db_url = common::fresh_database(&name).await;
    spawn_app_on(&db_url, &name, |a| {
        a.stores.redis_url = url.to_string();
        tweak(a);
    })
    .await
    .owning_database()
}

macro_rules! cluster_rush_tests {
    ($($name:ident: $mode:expr,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let app = Arc::new(app_on_cluster(&cluster_url(), |_| {}).await);
                let pools = &[("s1", 30), ("s2", 30), ("s3", 40)];
                rush_on(&app, $mode, pools, 300, 800).await;
            }
        )*
    };
}

cluster_rush_tests! {
    gate_rushes_clean_on_a_cluster: "gate",
    redis_lua_rushes_clean_on_a_cluster: "redis-lua",
    redis_queue_rushes_clean_on_a_cluster: "redis-queue",
}

/// Two API processes (`--role api`) and one worker, one cluster, one
/// PostgreSQL: a rush through both APIs sells the stock exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_and_a_worker_share_a_cluster() {
    let url = cluster_url();
    let name = common::unique("cluster2");
    let db_url = common::fresh_database(&name).await;
    let on = |role: Role| {
        let (db_url, name, url) = (db_url.clone(), name.clone(), url.clone());
        async move {
            spawn_app_on(&db_url, &name, |a| {
                a.stores.redis_url = url;
                a.role = role;
            })
            .await
        }
    };
    let worker = on(Role::Worker).await.owning_database();
    let api1 = Arc::new(on(Role::Api).await);
    let api2 = Arc::new(on(Role::Api).await);
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let id = api1.campaign(mode, &[("main", 50)]).await;
        let (a, b) = tokio::join!(
            claim_all(&api1, id, (0..150).map(|i| format!("u{i}")), 32),
            claim_all(&api2, id, (75..225).map(|i| format!("u{i}")), 32),
        );
        for (u, (s, v)) in a.iter().chain(&b) {
            assert!(matches!(s, 200 | 202 | 409), "{mode}: {u} {s} {v}");
        }
        api1.wait_durable(id, 50).await;
        assert_eq!(api1.assert_db_invariants(id).await, 50, "{mode}");
        // Both processes tell each user the same final answer.
        for i in (0..225).step_by(7) {
            let u = format!("u{i}");
            let (s1, v1) = api1.status(id, &u).await;
            let (s2, v2) = api2.status(id, &u).await;
            assert_eq!((s1, &v1), (s2, &v2), "{mode}: {u}");
            assert!(
                v1["status"] == "granted" || v1["status"] == "rejected",
                "{mode}: {v1}"
            );
        }
    }
    for app in [api1, api2] {
        Arc::into_inner(app).unwrap().stop().await;
    }
    worker.stop().await;
}

/// Runs `redis-cli ARGS` against `port`; its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A master fails (kill -9) and its replica is promoted: the replica holds
/// the state under the old master's marker, so the worker drops it and
/// rebuilds it from PostgreSQL. Every grant told before the failover is
/// still granted, nothing is oversold, and claims go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_master_failover_is_rebuilt_without_losing_a_grant() {
    failover("gate").await;
}

/// The same for redis-queue: nothing acknowledged (202) is lost either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_master_failover_is_rebuilt_without_losing_a_grant() {
    failover("redis-queue").await;
}

/// One failover of the master holding a `mode` campaign, on a cluster of
/// its own.
async fn failover(mode: &str) {
    let dir = std::env::temp_dir().join(common::unique("fc-cluster"));
    let url = common::start_cluster(Some(&dir));
    let ports: Vec<u16> = url
        .split(',')
        .map(|u| u.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let app = Arc::new(app_on_cluster(&url, |a| a.stores.redis_timeout_ms = 500).await);
    {
        let id = app.campaign(mode, &[("main", 40)]).await;
        let before = claim_all(&app, id, (0..20).map(|i| format!("early{i}")), 8).await;
        app.wait_durable(id, 20).await;
        // The master holding the campaign's slot, and its pid.
        let meta = format!("{}:{{c{id}}}:meta", app.prefix);
        let slot: u16 = cli(ports[0], &["cluster", "keyslot", &meta])
            .trim()
            .parse()
            .unwrap();
        let nodes = cli(ports[0], &["cluster", "nodes"]);
        let master = nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split_whitespace().skip(8).any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
            })
            .expect("a master holds the slot");
        let port: u16 = master
            .split_whitespace()
            .nth(1)
            .unwrap()
            .split(['@', ':'])
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let pid = std::fs::read_to_string(dir.join(format!("cluster/{port}/redis.pid"))).unwrap();
        let old_run = cli(port, &["hget", &meta, "run"]);
        assert_eq!(
            old_run.trim().len(),
            81,
            "{mode}: the marker is run_id:replid ({old_run})"
        );
        std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        // The replica takes over; the worker sees another server's state.
        let alive: Vec<u16> = ports.iter().copied().filter(|p| *p != port).collect();
        until("the cluster whole after the failover", || {
            let alive = alive.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    cli(alive[0], &["cluster", "info"]).contains("cluster_state:ok")
                })
                .await
                .unwrap()
            }
        })
        .await;
        // Every acknowledged answer holds; claims go on to sell out.
        for (u, (s, v)) in &before {
            let (gs, gv) = retry_503(&app, id, u).await;
            assert_eq!(gs, 200, "{mode}: {u}: {gv}");
            if *s == 200 {
                assert_eq!(gv["code"], v["code"], "{mode}: {u} keeps its grant");
            }
        }
        let after = claim_all(&app, id, (0..60).map(|i| format!("late{i}")), 8).await;
        let ok = after
            .iter()
            .filter(|(_, (s, _))| matches!(s, 200 | 202))
            .count();
        assert!(ok <= 20, "{mode}: {ok} more granted than the 20 left");
        app.wait_durable(id, 40).await;
        assert_eq!(app.assert_db_invariants(id).await, 40, "{mode}");
        // The state on the new master was loaded there, not inherited: its
        // marker is the new master's (the old one's was dropped).
        let run = cli(alive[0], &["-c", "hget", &meta, "run"]);
        let run = run.trim();
        assert_eq!(run.len(), 81, "{mode}: a marker ({run})");
        assert_ne!(
            run,
            old_run.trim(),
            "{mode}: the inherited state was dropped"
        );
    }
    Arc::into_inner(app).unwrap().stop().await;
    let _ =
        std::process::Command::new(env!("CARGO_MANIFEST_DIR").to_string() + "/scripts/services.sh")
            .arg("cluster-stop")
            .env("FIRSTCOME_DATA_DIR", &dir)
            .status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user's status, retried while the cluster answers 503 (a failover in
/// progress asks the client to retry).
async fn retry_503(app: &TestApp, id: i64, user: &str) -> (u16, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = app.status(id, user).await;
        if s != 503 || tokio::time::Instant::now() >= deadline {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
