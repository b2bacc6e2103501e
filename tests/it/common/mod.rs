//! Test support: `spawn_app` starts the service in-process on port 0 over a
//! fresh PostgreSQL database and a unique Redis key prefix, so tests run in
//! parallel and in any order (the zero2prod pattern).
#![allow(dead_code)]

mod sql;
mod stores;
pub use sql::*;
pub use stores::*;

use std::time::Duration;

use firstcome::storage::Store;
use firstcome::{app::Application, cli::ServeArgs};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{mysql::MySqlConnection, Connection, PgConnection, PgPool, Row};
use tokio::sync::{oneshot, watch};

/// Admin token of every test app.
pub const TOKEN: &str = "test-admin-token";

/// The path of `user`'s claim in campaign `id`.
pub fn claim_path(id: i64, user: &str) -> String {
    format!("/v1/campaigns/{id}/claims/{user}")
}

/// A running app.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The `--ops-addr` listener's `http://127.0.0.1:PORT`, if any.
    pub ops_base: Option<String>,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Direct access to the app's database (PostgreSQL or MySQL), for
    /// assertions through the store's own operations, [`count`] and
    /// [`TestApp::pg`].
    pub db: Store,
    /// Its database URL.
    pub db_url: String,
    /// Its Redis key prefix.
    pub prefix: String,
    /// Its Redis URL (one server, or a cluster's nodes comma-separated).
    pub redis_url: String,
    /// Stops its background tasks (the worker) without stopping HTTP.
    pub stop_worker: watch::Sender<bool>,
    /// Stops the whole app.
    shutdown: Option<oneshot::Sender<()>>,
    /// The app's task.
    task: Option<tokio::task::JoinHandle<()>>,
    /// The database this app created and drops when it goes (unset for a
    /// second process of the same deployment).
    owned_db: Option<String>,
}

/// Starts an app with default settings on a fresh database.
pub async fn spawn_app() -> TestApp {
    let name = unique("db");
    let db_url = fresh_database(&name).await;
    spawn_app_on(&db_url, &name, |_| {}).await.owning_database()
}

/// Starts an app whose worker is stopped at once: nothing drains,
/// flushes or sweeps unless the test does it.
pub async fn spawn_app_without_worker() -> TestApp {
    let app = spawn_app().await;
    app.stop_worker.send(true).unwrap();
    app
}

/// A second API process of the same deployment (no worker: one started
/// and stopped afterwards could already be draining what it found).
pub async fn spawn_api_on(db_url: &str, prefix: &str) -> TestApp {
    spawn_app_on(db_url, prefix, |a| a.role = firstcome::config::Role::Api).await
}

/// Starts an app on an existing database and prefix (a second process of
/// the same deployment), with settings adjusted by `tweak`.
pub async fn spawn_app_on(
    db_url: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut ServeArgs),
) -> TestApp {
    let mut args = ServeArgs::for_tests(db_url, &redis_url(), prefix, TOKEN);
    tweak(&mut args);
    let app_redis_url = args.stores.redis_url.clone();
    let app = Application::build(args).await.expect("build app");
    let base = format!("http://{}", app.addr());
    let ops_base = app.ops_addr().map(|a| format!("http://{a}"));
    let stop_worker = app.stopper();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .expect("app runs");
    });
    // The app migrated the database already: a plain pool, connected on
    // first use (a migrating connect here delayed the caller's next step,
    // e.g. stopping this app's worker, by a few round trips).
    let db = lazy_store(db_url);
    TestApp {
        base,
        ops_base,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            // Below the server's header-read timeout (see src/client.rs).
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
        db,
        db_url: db_url.to_string(),
        prefix: prefix.to_string(),
        redis_url: app_redis_url,
        stop_worker,
        shutdown: Some(tx),
        task: Some(task),
        owned_db: None,
    }
}

impl TestApp {
    /// The app's PostgreSQL pool, for the tests that reach into
    /// PostgreSQL-only machinery (a trigger that stalls a statement, a
    /// table lock); scripts/test.sh skips those on MySQL.
    pub fn pg(&self) -> &PgPool {
        match &self.db {
            Store::Pg(db) => db,
            Store::MySql(_) => panic!("a PostgreSQL-only test ran on MySQL: skip it there"),
        }
    }

    /// A client of an app started elsewhere (no database, no control).
    pub fn client_only(base: &str) -> TestApp {
        TestApp {
            base: base.to_string(),
            ops_base: None,
            http: reqwest::Client::new(),
            db: lazy_store(&database_url()),
            db_url: String::new(),
            prefix: String::new(),
            redis_url: redis_url(),
            stop_worker: watch::channel(false).0,
            shutdown: None,
            task: None,
            owned_db: None,
        }
    }

    /// Makes this app drop its database when it goes, so that test runs
    /// do not pile databases up.
    pub fn owning_database(mut self) -> Self {
        self.owned_db = self.db_url.rsplit_once('/').map(|(_, n)| n.to_string());
        self
    }

    /// Stops the app and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// POST /v1/campaigns with the admin token; panics unless 201.
    pub async fn create_campaign(&self, spec: Value) -> Value {
        let (s, v) = self.post_admin("/v1/campaigns", spec).await;
        assert_eq!(s, 201, "create campaign: {v}");
        v
    }

    /// A campaign of `mode` with pools `(name, stock)`; returns its id.
    pub async fn campaign(&self, mode: &str, pools: &[(&str, i64)]) -> i64 {
        let pools: Vec<Value> = pools
            .iter()
            .map(|(n, s)| json!({"name": n, "stock": s}))
            .collect();
        self.create_campaign(json!({"name": format!("test {mode}"), "mode": mode, "pools": pools}))
            .await["id"]
            .as_i64()
            .expect("id")
    }

    /// POST with the admin token.
    pub async fn post_admin(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// A claim.
    pub async fn claim(&self, id: i64, user: &str, pool: Option<&str>) -> (u16, Value) {
        let mut body = json!({"user_id": user});
        if let Some(p) = pool {
            body["pool"] = json!(p);
        }
        let path = format!("/v1/campaigns/{id}/claims");
        self.send(Method::POST, &path, Some(body)).await
    }

    /// GET a claim's state.
    pub async fn status(&self, id: i64, user: &str) -> (u16, Value) {
        self.send(Method::GET, &claim_path(id, user), None).await
    }

    /// DELETE a claim.
    pub async fn cancel(&self, id: i64, user: &str) -> (u16, Value) {
        self.send(Method::DELETE, &claim_path(id, user), None).await
    }

    /// Any request without auth; (status, JSON or Null).
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Every active grant through the paged export.
    pub async fn grants(&self, id: i64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let r = self
                .http
                .get(format!(
                    "{}/v1/campaigns/{id}/grants?limit=100&after={after}",
                    self.base
                ))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = r.json().await.expect("json");
            out.extend(v["grants"].as_array().cloned().unwrap_or_default());
            match v["next"].as_str() {
                Some(n) => after = n.to_string(),
                None => return out,
            }
        }
    }

    /// The campaign body, fresh: with the admin token, which skips the
    /// one-second cache of public reads.
    pub async fn campaign_body(&self, id: i64) -> Value {
        self.http
            .get(format!("{}/v1/campaigns/{id}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// Waits (with a deadline) until `cond` holds on the campaign body.
    pub async fn wait_campaign(&self, id: i64, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.campaign_body(id).await;
            if cond(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no claim is queued and PostgreSQL holds `n` active
    /// grants (counted in PostgreSQL itself: the campaign read is cached
    /// for a second, and a stale count could match before the flush).
    pub async fn wait_durable(&self, id: i64, n: i64) {
        self.wait_campaign(id, "nothing queued", |v| v["queued"].as_i64() == Some(0))
            .await;
        let sql = "SELECT count(*) FROM grants WHERE campaign_id = $1 AND state = 'active'";
        until(&format!("{n} durable grants"), || async move {
            count(self, sql, id).await == n
        })
        .await;
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.base)).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// The deployment's Redis side and a campaign as stored, with its key
    /// names: to drive scripts and settling directly.
    pub async fn redis_side(
        &self,
        id: i64,
    ) -> (
        firstcome::modes::redis_common::RedisCommon,
        firstcome::domain::Campaign,
        std::sync::Arc<firstcome::storage::redis::CampaignKeys>,
    ) {
        let common = common_for(self).await;
        let c = self
            .db
            .load_campaign(firstcome::domain::CampaignId(id))
            .await
            .unwrap()
            .expect("the campaign exists");
        let k = common.keys(&c);
        (common, c, k)
    }

    /// Checks invariants 1-3 straight from PostgreSQL; returns active grants.
    pub async fn assert_db_invariants(&self, id: i64) -> i64 {
        /// Each query counts the violations of one invariant.
        const CHECKS: [(&str, &str); 4] = [
            (
                "oversold pool",
                "SELECT count(*) FROM pools p WHERE p.campaign_id = $1 AND p.stock <
                   (SELECT count(*) FROM grants g WHERE g.pool_id = p.id AND g.state = 'active')",
            ),
            (
                "duplicate grants",
                "SELECT count(*) FROM (SELECT user_id FROM grants WHERE campaign_id = $1 AND state = 'active'
                 GROUP BY user_id HAVING count(*) > 1) d",
            ),
            (
                "slot out of range",
                "SELECT count(*) FROM grants g JOIN pools p ON p.id = g.pool_id
                 WHERE g.campaign_id = $1 AND g.state = 'active' AND (g.slot < 1 OR g.slot > p.stock)",
            ),
            (
                "double-booked slot",
                "SELECT count(*) FROM (SELECT pool_id, slot FROM grants WHERE campaign_id = $1 AND state = 'active'
                 GROUP BY pool_id, slot HAVING count(*) > 1) d",
            ),
        ];
        for (what, sql) in CHECKS {
            assert_eq!(count(self, sql, id).await, 0, "{what}");
        }
        count(
            self,
            "SELECT count(*) FROM grants WHERE campaign_id = $1 AND state = 'active'",
            id,
        )
        .await
    }
}

/// Sum of `granted` over a campaign body's pools.
pub fn total_granted(v: &Value) -> i64 {
    v["pools"]
        .as_array()
        .map(|ps| ps.iter().map(|p| p["granted"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(-1)
}

impl Drop for TestApp {
    /// Stops the app and drops the database it owns (also when the test
    /// failed: a failed run must not leave databases behind either).
    fn drop(&mut self) {
        if self.owned_db.take().is_none() {
            return;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let url = self.db_url.clone();
        // Drop cannot await, and runs inside the test's runtime: a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(drop_database(&url));
            Some(())
        })
        .join();
    }
}

/// The Redis side of `app`'s deployment, for driving scripts, settling and
/// the reconciler directly.
pub async fn common_for(app: &TestApp) -> firstcome::modes::redis_common::RedisCommon {
    let db = lazy_store(&app.db_url);
    let redis = firstcome::storage::redis::RedisStore::connect(
        &app.redis_url,
        &app.prefix,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    firstcome::modes::redis_common::RedisCommon::new(db, redis, Duration::from_secs(3))
}

/// Waits with a deadline (30 s) until `f` is true.
pub async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Waits with a deadline (30 s) until `f` gives a value, and returns it.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims for every user of `users` at once, each in its own task, at
/// most `at_once` in flight; the answers in the order of `users`.
pub async fn claim_all(
    app: &std::sync::Arc<TestApp>,
    id: i64,
    users: impl IntoIterator<Item = String>,
    at_once: usize,
) -> Vec<(String, (u16, Value))> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once));
    let tasks: Vec<_> = users
        .into_iter()
        .map(|user| {
            let (app, gate) = (app.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let answer = app.claim(id, &user, None).await;
                (user, answer)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
