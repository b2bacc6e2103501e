//! `firstcome serve`: its flags ([`ServeArgs`]) and their conversion into
//! the plain [`ServeConfig`] the application is built from.
//!
//! The clap attributes below are the only place the defaults are written;
//! [`ServeArgs::for_tests`] parses them too rather than repeat them.

use std::{net::SocketAddr, time::Duration};

use clap::{
    builder::{EnumValueParser, PossibleValue, TypedValueParser},
    Args, FromArgMatches, ValueEnum,
};

use super::{stores::StoreArgs, webhooks::WebhookArgs};
use crate::config::{
    ConfigError, ConnConfig, JwtConfig, RateConfig, Role, ServeConfig, StreamCaps,
};

/// The command-line face of [`Role`]: its names and help text.
#[derive(Debug, Clone, Copy)]
struct RoleArg(Role);

impl ValueEnum for RoleArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            RoleArg(Role::Api),
            RoleArg(Role::Worker),
            RoleArg(Role::All),
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        // Exhaustive: a new role does not compile until it has a name here.
        Some(match self.0 {
            Role::Api => PossibleValue::new("api").help("HTTP API only"),
            Role::Worker => {
                PossibleValue::new("worker").help("Background worker only (flushers, drainers)")
            }
            Role::All => PossibleValue::new("all").help("Both"),
        })
    }
}

/// Parses `--role` straight into a [`Role`].
fn role_parser() -> impl TypedValueParser<Value = Role> {
    EnumValueParser::<RoleArg>::new().map(|r| r.0)
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
    /// Bearer token of the payment service: it may confirm holds
    /// (`POST .../claims/{user_id}/confirm`) and nothing else. Without one,
    /// only the admin token confirms.
    #[arg(long, env = "FIRSTCOME_CONFIRM_TOKEN", hide_env_values = true)]
    pub confirm_token: Option<String>,
    /// Which parts to run.
    #[arg(long, env = "FIRSTCOME_ROLE", value_parser = role_parser(), default_value = "all")]
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
    /// How long a group commit waits for company while another is in
    /// flight, in microseconds (gate, and the durable refusals of
    /// redis-queue). 0: batches form only while every slot is busy, which
    /// measured best at light load and no worse at saturation.
    #[arg(long, env = "FIRSTCOME_COMMIT_LINGER_US", default_value_t = 0)]
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
    /// Most SSE streams one process keeps open; beyond, 503
    /// `stream_capacity` (clients poll instead). At most 90% of
    /// `--max-connections`, so streams never hold every connection.
    #[arg(long, env = "FIRSTCOME_SSE_MAX_STREAMS", default_value_t = 5_000)]
    pub sse_max_streams: usize,
    /// Most SSE streams open at once for one user; beyond, 429.
    #[arg(long, env = "FIRSTCOME_SSE_PER_USER", default_value_t = 2)]
    pub sse_per_user: u32,
    /// Most SSE streams open at once from one client address (IPv6: its
    /// /64); beyond, 429.
    #[arg(long, env = "FIRSTCOME_SSE_PER_IP", default_value_t = 100)]
    pub sse_per_ip: u32,
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
    /// Without a JWT key, trust the user id each request names: anyone can
    /// act as anyone. For demos, load tests, or behind a gateway that
    /// authenticates users and sets the user id; without a key and without
    /// this flag the service refuses to start.
    #[arg(
        long,
        env = "FIRSTCOME_INSECURE_TRUST_USER_ID",
        default_value_t = false
    )]
    pub insecure_trust_user_id: bool,
    /// Production profile: refuse to start without an admin token, a JWT
    /// key, `--jwt-audience`, `--jwt-issuer`, per-user and per-address rate
    /// limits, a limit on failed token checks, `--ops-addr` and
    /// `--webhook-allow`.
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
    /// Failed user-token checks (bad signature, expired, malformed...) per
    /// client address and second; beyond, that address' user calls get 429
    /// before their token is verified, for the rest of the second (0 = no
    /// limit). Valid tokens never count, so a rush from one address is not
    /// slowed. Required by `--production`.
    #[arg(long, env = "FIRSTCOME_BAD_TOKENS_PER_IP", default_value_t = 0)]
    pub bad_tokens_per_ip: u32,
    /// Seconds a client has to send a complete request head, from the
    /// connection's opening or from the end of its previous response;
    /// then the connection is closed (slow headers, idle keep-alives).
    #[arg(long, env = "FIRSTCOME_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a request may take, body included; beyond, 503
    /// `request_timeout`. SSE streams are excluded (`--sse-max-secs`).
    #[arg(long, env = "FIRSTCOME_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds without a byte read or written after which a connection is
    /// closed. Must exceed `--request-timeout-secs` and the SSE keep-alive
    /// (15 s).
    #[arg(long, env = "FIRSTCOME_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Most client connections open at once; beyond, new connections wait
    /// in the listen backlog until one closes. Keep it below the process'
    /// file descriptor limit.
    #[arg(long, env = "FIRSTCOME_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Milliseconds a `GET /v1/campaigns/{id}` answer (a 404 included) is
    /// served from memory, and `max-age` tells caches in front (whole
    /// seconds); 0 turns the cache off. Counts are at most this stale.
    #[arg(long, env = "FIRSTCOME_CAMPAIGN_CACHE_MS", default_value_t = 1000)]
    pub campaign_cache_ms: u64,
    /// Behind a reverse proxy: the header it writes the client's address
    /// into (e.g. `x-forwarded-for`). Per-address limits then key by the
    /// last address of that header, the one the proxy appended (earlier
    /// ones are the client's to write). Without it, the TCP peer address.
    /// Only set it when every request comes through the proxy.
    #[arg(long, env = "FIRSTCOME_BEHIND_PROXY", value_name = "HEADER")]
    pub behind_proxy: Option<String>,
    /// Address of a second listener for `/metrics`, `/readyz` and
    /// `/openapi.json` (and `/healthz`), which then answer 404 on `--addr`.
    /// Required by `--production`.
    #[arg(long, env = "FIRSTCOME_OPS_ADDR")]
    pub ops_addr: Option<SocketAddr>,
    /// Webhooks.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

impl ServeArgs {
    /// The defaults of the flags with the given stores, port 0, a fixed
    /// admin token, a smaller pool, short SSE streams, and neither the
    /// periodic reconcile nor the per-user limit (tests drive those
    /// themselves).
    pub fn for_tests(
        database_url: &str,
        redis_url: &str,
        redis_prefix: &str,
        admin_token: &str,
    ) -> Self {
        // Without the environment: whatever FIRSTCOME_* the shell running
        // the tests has set must not change them.
        let mut cmd = Self::augment_args(clap::Command::new("serve"));
        let ids: Vec<_> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
        for id in ids {
            cmd = cmd.mut_arg(id, |a| a.env(None::<&'static str>));
        }
        let matches = cmd
            .try_get_matches_from([
                "serve".to_string(),
                "--addr=127.0.0.1:0".into(),
                format!("--admin-token={admin_token}"),
                format!("--database-url={database_url}"),
                format!("--redis-url={redis_url}"),
                format!("--redis-prefix={redis_prefix}"),
                "--db-max-connections=16".into(),
                "--sse-max-secs=60".into(),
                "--reconcile-interval-secs=0".into(),
                "--rate-per-user=0".into(),
                "--rate-per-user-burst=0".into(),
                // The tests name users; those about JWTs set a key.
                "--insecure-trust-user-id".into(),
            ])
            .expect("the test flags parse");
        Self::from_arg_matches(&matches).expect("the test flags make ServeArgs")
    }

    /// Checks the configuration these flags make (see
    /// [`ServeConfig::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ServeConfig::from(self.clone()).validate()
    }
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        Self {
            addr: a.addr,
            admin_token: a.admin_token,
            confirm_token: a.confirm_token,
            role: a.role,
            stores: a.stores.into(),
            commit_max_batch: a.commit_max_batch,
            commit_inflight: a.commit_inflight,
            commit_linger: Duration::from_micros(a.commit_linger_us),
            stream_batch: a.stream_batch,
            pending_wait: Duration::from_millis(a.pending_wait_ms),
            orphan_after: Duration::from_millis(a.orphan_after_ms),
            sse_max: Duration::from_secs(a.sse_max_secs),
            stream_caps: StreamCaps {
                total: a.sse_max_streams,
                per_user: a.sse_per_user,
                per_ip: a.sse_per_ip,
            },
            reconcile_interval: Duration::from_secs(a.reconcile_interval_secs),
            jwt: JwtConfig {
                secret: a.jwt_secret,
                public_key: a.jwt_public_key,
                audience: a.jwt_audience,
                issuer: a.jwt_issuer,
                trust_user_id: a.insecure_trust_user_id,
            },
            production: a.production,
            rates: RateConfig {
                per_ip: a.rate_per_ip,
                per_ip_burst: a.rate_per_ip_burst,
                per_user: a.rate_per_user,
                per_user_burst: a.rate_per_user_burst,
                bad_tokens_per_ip: a.bad_tokens_per_ip,
            },
            conns: ConnConfig {
                header_read_timeout: Duration::from_secs(a.header_read_timeout_secs),
                request_timeout: Duration::from_secs(a.request_timeout_secs),
                idle_timeout: Duration::from_secs(a.idle_timeout_secs),
                max_connections: a.max_connections,
            },
            campaign_cache: Duration::from_millis(a.campaign_cache_ms),
            behind_proxy: a
                .behind_proxy
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            ops_addr: a.ops_addr,
            webhooks: a.webhooks.into(),
        }
    }
}
