//! Command-line and environment configuration (clap, env fallbacks).

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// firstcome: hand a limited stock to whoever asks first.
#[derive(Debug, Parser)]
#[command(name = "firstcome", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at startup: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and/or the background worker.
    Serve(ServeArgs),
    /// Create or inspect campaigns through a running service.
    #[command(subcommand)]
    Campaign(crate::cli::CampaignCmd),
    /// Compare Redis with PostgreSQL for Redis-mode campaigns, repair drift,
    /// and report what was repaired.
    Reconcile(ReconcileArgs),
    /// List or replay redis-queue dead letters.
    #[command(subcommand)]
    Dlq(crate::cli::DlqCmd),
}

/// `firstcome reconcile`.
#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Only this campaign (default: every live Redis-mode campaign).
    #[arg(long)]
    pub campaign: Option<i64>,
    /// Report only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stores.
    #[command(flatten)]
    pub stores: StoreArgs,
}

/// Which parts of the service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// HTTP API only.
    Api,
    /// Background worker only (flushers, drainers).
    Worker,
    /// Both.
    All,
}

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

/// `firstcome serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FIRSTCOME_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Bearer token of admin calls. Without one, a random token is made and
    /// logged at startup.
    #[arg(long, env = "FIRSTCOME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Which parts to run.
    #[arg(long, env = "FIRSTCOME_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Stores.
    #[command(flatten)]
    pub stores: StoreArgs,
    /// Most rows in one group commit (gate).
    #[arg(long, env = "FIRSTCOME_COMMIT_MAX_BATCH", default_value_t = 512)]
    pub commit_max_batch: usize,
    /// Group commits in flight at once (gate).
    #[arg(long, env = "FIRSTCOME_COMMIT_INFLIGHT", default_value_t = 4)]
    pub commit_inflight: usize,
    /// Most stream entries the flusher (redis-lua) or drainer (redis-queue)
    /// takes per batch.
    #[arg(long, env = "FIRSTCOME_STREAM_BATCH", default_value_t = 1000)]
    pub stream_batch: usize,
    /// How long a group commit waits for company, in microseconds (gate).
    #[arg(long, env = "FIRSTCOME_COMMIT_LINGER_US", default_value_t = 500)]
    pub commit_linger_us: u64,
    /// How long a repeated claim waits for a pending grant, in milliseconds.
    #[arg(long, env = "FIRSTCOME_PENDING_WAIT_MS", default_value_t = 3000)]
    pub pending_wait_ms: u64,
    /// Age (by Redis' clock) after which a gate reservation whose request
    /// never answered is settled from PostgreSQL, in milliseconds. Safety
    /// does not depend on it (a late commit is fenced off); it bounds how
    /// long a dead request's stock stays reserved.
    #[arg(long, env = "FIRSTCOME_ORPHAN_AFTER_MS", default_value_t = 20_000)]
    pub orphan_after_ms: u64,
    /// Longest a server-sent event stream stays open, in seconds.
    #[arg(long, env = "FIRSTCOME_SSE_MAX_SECS", default_value_t = 600)]
    pub sse_max_secs: u64,
    /// How often the worker looks for drift between Redis and PostgreSQL,
    /// in seconds: counters first, every answer only on drift (0 turns the
    /// periodic pass off).
    #[arg(long, env = "FIRSTCOME_RECONCILE_INTERVAL_SECS", default_value_t = 30)]
    pub reconcile_interval_secs: u64,
    /// HS256 secret of user JWTs. With it (or a public key) every user call
    /// needs `Authorization: Bearer <jwt>` and acts for the token's `sub`.
    #[arg(long, env = "FIRSTCOME_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Public key of user JWTs (RS256 or ES256): PEM text, or the path of a
    /// PEM file.
    #[arg(long, env = "FIRSTCOME_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// Required `aud` of user JWTs, if set.
    #[arg(long, env = "FIRSTCOME_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` of user JWTs, if set.
    #[arg(long, env = "FIRSTCOME_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Production profile: refuse to start without an admin token and a JWT
    /// key.
    #[arg(long, env = "FIRSTCOME_PRODUCTION", default_value_t = false)]
    pub production: bool,
    /// Requests per second per client IP on the /v1 API (0 = no limit).
    /// Off by default: load tests send everything from 127.0.0.1, and
    /// behind a proxy every client shares its address.
    #[arg(long, env = "FIRSTCOME_RATE_PER_IP", default_value_t = 0)]
    pub rate_per_ip: u32,
    /// Burst allowed above `--rate-per-ip` (0 = same as the rate).
    #[arg(long, env = "FIRSTCOME_RATE_PER_IP_BURST", default_value_t = 0)]
    pub rate_per_ip_burst: u32,
    /// Requests per second per user on user calls (0 = no limit).
    #[arg(long, env = "FIRSTCOME_RATE_PER_USER", default_value_t = 20)]
    pub rate_per_user: u32,
    /// Burst allowed above `--rate-per-user` (0 = same as the rate).
    #[arg(long, env = "FIRSTCOME_RATE_PER_USER_BURST", default_value_t = 40)]
    pub rate_per_user_burst: u32,
}

/// Why a configuration is refused at startup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--production` without `--admin-token`.
    #[error("--production needs an admin token (--admin-token or FIRSTCOME_ADMIN_TOKEN, at least {MIN_ADMIN_TOKEN_LEN} characters)")]
    ProductionWithoutAdminToken,
    /// `--production` without a JWT key.
    #[error("--production needs a JWT key for user calls (--jwt-secret/FIRSTCOME_JWT_SECRET or --jwt-public-key/FIRSTCOME_JWT_PUBLIC_KEY)")]
    ProductionWithoutJwtKey,
    /// Both a secret and a public key.
    #[error("give either --jwt-secret or --jwt-public-key, not both")]
    TwoJwtKeys,
    /// An HS256 secret too short to resist brute force.
    #[error("--jwt-secret must be at least {MIN_JWT_SECRET_LEN} bytes")]
    ShortJwtSecret,
}

/// Shortest admin token accepted by the production profile.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Shortest HS256 secret accepted (RFC 7518 asks for at least the hash size).
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl ServeArgs {
    /// Defaults for tests: the given stores, port 0, a fixed admin token.
    pub fn for_tests(
        database_url: &str,
        redis_url: &str,
        redis_prefix: &str,
        admin_token: &str,
    ) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("addr"),
            admin_token: Some(admin_token.into()),
            role: Role::All,
            stores: StoreArgs {
                database_url: database_url.into(),
                redis_url: redis_url.into(),
                redis_prefix: redis_prefix.into(),
                redis_timeout_ms: 1000,
                db_max_connections: 16,
            },
            commit_max_batch: 512,
            commit_inflight: 4,
            stream_batch: 1000,
            commit_linger_us: 500,
            pending_wait_ms: 3000,
            orphan_after_ms: 20_000,
            sse_max_secs: 60,
            reconcile_interval_secs: 0,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_audience: None,
            jwt_issuer: None,
            production: false,
            rate_per_ip: 0,
            rate_per_ip_burst: 0,
            rate_per_user: 0,
            rate_per_user_burst: 0,
        }
    }

    /// Checks the settings that must hold before anything starts: the
    /// production profile needs an admin token and a JWT key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let public = self.jwt_public_key.as_deref().filter(|s| !s.is_empty());
        if secret.is_some() && public.is_some() {
            return Err(ConfigError::TwoJwtKeys);
        }
        if secret.is_some_and(|s| s.len() < MIN_JWT_SECRET_LEN) {
            return Err(ConfigError::ShortJwtSecret);
        }
        if self.production {
            if self
                .admin_token
                .as_deref()
                .is_none_or(|t| t.len() < MIN_ADMIN_TOKEN_LEN)
            {
                return Err(ConfigError::ProductionWithoutAdminToken);
            }
            if secret.is_none() && public.is_none() {
                return Err(ConfigError::ProductionWithoutJwtKey);
            }
        }
        Ok(())
    }

    /// Redis call bound.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.stores.redis_timeout_ms)
    }
}
