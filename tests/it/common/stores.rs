//! The stores tests run against: the URLs `scripts/services.sh` printed,
//! a fresh database per test, the local Redis Cluster, direct Redis access.

use super::*;

/// Which database the suite keeps its truth in: `FIRSTCOME_TEST_DB=mysql`
/// runs it on MySQL/MariaDB (`MYSQL_URL`), anything else on PostgreSQL
/// (`DATABASE_URL`). scripts/test.sh runs the suite once on each.
pub fn on_mysql() -> bool {
    std::env::var("FIRSTCOME_TEST_DB").is_ok_and(|v| v == "mysql")
}

/// The base database URL of the suite's store (the one
/// `scripts/services.sh` printed).
pub fn database_url() -> String {
    if on_mysql() {
        return mysql_url();
    }
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/firstcome".into())
}

/// MariaDB's base URL (`scripts/services.sh mysql` prints it).
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/firstcome".into())
}

/// The Redis URL.
/// The local Redis Cluster's node URLs, comma-separated: `REDIS_CLUSTER_URL`
/// if set, else `scripts/services.sh cluster` brings one up (once per run;
/// it keeps running until `scripts/services.sh cluster-stop`).
pub fn cluster_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| match std::env::var("REDIS_CLUSTER_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => start_cluster(None),
    })
    .clone()
}

/// Runs `scripts/services.sh cluster` (with `FIRSTCOME_DATA_DIR` = `dir`
/// when given: a cluster of its own) and returns its node URLs.
pub fn start_cluster(dir: Option<&std::path::Path>) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(root.join("scripts/services.sh"));
    cmd.arg("cluster").stderr(std::process::Stdio::inherit());
    if let Some(d) = dir {
        cmd.env("FIRSTCOME_DATA_DIR", d);
    }
    let out = cmd.output().expect("scripts/services.sh cluster");
    assert!(out.status.success(), "scripts/services.sh cluster failed");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .strip_prefix("export REDIS_CLUSTER_URL='")
        .and_then(|u| u.strip_suffix('\''))
        .unwrap_or_else(|| panic!("unexpected output: {text}"))
        .to_string()
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique name for this test's database and Redis prefix.
pub fn unique(tag: &str) -> String {
    format!(
        "fc_test_{tag}_{}",
        firstcome::domain::generate_code().to_lowercase()
    )
}

/// Creates a fresh database on the suite's store; returns its URL.
pub async fn fresh_database(name: &str) -> String {
    let base = database_url();
    let server = base
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .expect("url has a database");
    if on_mysql() {
        return fresh_mysql_database(name).await;
    } else {
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("connect to postgres");
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .expect("create test database");
    }
    format!("{server}/{name}")
}

/// Creates a fresh database on MariaDB (`MYSQL_URL`), whichever store the
/// suite runs on; returns its URL.
pub async fn fresh_mysql_database(name: &str) -> String {
    let (server, _) = mysql_url()
        .rsplit_once('/')
        .map(|(s, d)| (s.to_string(), d.to_string()))
        .expect("url has a database");
    let mut admin = MySqlConnection::connect(&server)
        .await
        .expect("connect to mariadb");
    sqlx::query(&format!("CREATE DATABASE `{name}`"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("{server}/{name}")
}

/// Drops a test database (ending its connections), reporting failures.
pub async fn drop_database(db_url: &str) {
    let Some((server, name)) = db_url.rsplit_once('/') else {
        return;
    };
    let result = if db_url.starts_with("mysql://") {
        match MySqlConnection::connect(server).await {
            Ok(mut admin) => {
                // As PostgreSQL's FORCE: end the sessions still in it (a
                // pooled connection may hold a transaction whose rollback
                // waits for the connection's next use, and with it a
                // metadata lock DROP would wait on), then drop, waiting
                // a minute at most.
                let ids: Vec<u64> = sqlx::query_scalar(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?",
                )
                .bind(name)
                .fetch_all(&mut admin)
                .await
                .unwrap_or_default();
                for id in ids {
                    let _ = sqlx::query(&format!("KILL CONNECTION {id}"))
                        .execute(&mut admin)
                        .await;
                }
                sqlx::raw_sql(&format!(
                    "SET SESSION lock_wait_timeout = 60; DROP DATABASE IF EXISTS `{name}`"
                ))
                .execute(&mut admin)
                .await
                .map(drop)
            }
            Err(e) => Err(e),
        }
    } else {
        match PgConnection::connect(&format!("{server}/postgres")).await {
            // FORCE ends the app's connections.
            Ok(mut admin) => {
                sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut admin)
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        }
    };
    if let Err(e) = result {
        eprintln!("could not drop test database {name}: {e}");
    }
}

/// A Redis connection for direct checks.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A fresh campaign state for the Lua scripts: one pool per stock entry,
/// the window in ms ('' for none), keys alive for an hour.
pub fn init_state(
    mode: &str,
    stocks: &[i64],
    opens_ms: &str,
    closes_ms: &str,
) -> firstcome::storage::redis::InitState {
    use firstcome::storage::redis::{InitState, PoolState};
    InitState {
        expire_at_ms: (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis(),
        opens_ms: opens_ms.parse().ok(),
        closes_ms: closes_ms.parse().ok(),
        prequeue_ms: None,
        mode: mode.into(),
        seq: 0,
        queued: 0,
        gen: 0,
        paused: false,
        pools: stocks
            .iter()
            .map(|&left| PoolState {
                left,
                ..Default::default()
            })
            .collect(),
        answers: Vec::new(),
    }
}

/// Deletes `keys` on the tests' Redis (a key lost, evicted or expired).
pub async fn del(keys: impl redis::ToRedisArgs) {
    let mut c = redis_conn().await;
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Sets `key` to `value` on the tests' Redis (a lock another holder took).
pub async fn set(key: &str, value: &str) {
    let mut c = redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Whether `key` exists on the tests' Redis.
pub async fn exists(key: &str) -> bool {
    let mut c = redis_conn().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}
