//! `StoreArgs`, the store flags every subcommand that touches PostgreSQL
//! and Redis shares, and the connections of the one-shot maintenance
//! commands (`reconcile`, `dlq`).

use std::time::Duration;

use clap::Args;

use crate::{
    config::StoreConfig,
    domain::{Campaign, CampaignId},
    modes::redis_common::RedisCommon,
    storage::{redis::RedisStore, Store},
};

/// Connections to the stores.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/firstcome"
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key (several deployments can share a Redis).
    #[arg(long, env = "FIRSTCOME_REDIS_PREFIX", default_value = "fc")]
    pub redis_prefix: String,
    /// Bound on one Redis call on the request path, in milliseconds.
    #[arg(long, env = "FIRSTCOME_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "FIRSTCOME_DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
}

impl From<StoreArgs> for StoreConfig {
    fn from(a: StoreArgs) -> Self {
        Self {
            database_url: a.database_url,
            redis_url: a.redis_url,
            redis_prefix: a.redis_prefix,
            redis_timeout: Duration::from_millis(a.redis_timeout_ms),
            db_max_connections: a.db_max_connections,
        }
    }
}

/// The stores of a maintenance command: a small pool (one command, a few
/// queries), whatever `--db-max-connections` says for a server.
pub(super) async fn open(s: &StoreArgs) -> anyhow::Result<RedisCommon> {
    let db = Store::connect(&s.database_url, 4).await?;
    let redis = RedisStore::connect(
        &s.redis_url,
        &s.redis_prefix,
        Duration::from_millis(s.redis_timeout_ms),
    )
    .await?;
    Ok(RedisCommon::new(db, redis, Duration::from_secs(3)))
}

/// Campaign `id`, or an error naming it.
pub(super) async fn campaign(common: &RedisCommon, id: i64) -> anyhow::Result<Campaign> {
    common
        .db
        .load_campaign(CampaignId(id))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no campaign {id}"))
}
