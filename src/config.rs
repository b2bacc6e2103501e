//! The settings of a serving process as plain values: what the wiring
//! (`app`) and the HTTP layer read, and the checks they must pass before
//! anything starts.
//!
//! No clap here and no defaults: `cli` parses the command line and the
//! environment (its attributes are the one place defaults are written) and
//! builds these structs from the result. This module imports nothing of the
//! crate.

use std::{net::SocketAddr, time::Duration};

mod webhooks;
pub use webhooks::WebhookConfig;

/// Which parts of the service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// HTTP API only.
    Api,
    /// Background worker only (flushers, drainers).
    Worker,
    /// Both.
    All,
}

/// Why a configuration is refused at startup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--production` without `--admin-token`.
    #[error("--production needs an admin token (--admin-token or FIRSTCOME_ADMIN_TOKEN, at least {MIN_ADMIN_TOKEN_LEN} characters)")]
    ProductionWithoutAdminToken,
    /// A confirm token too short, or the admin token again.
    #[error("--confirm-token must be at least {MIN_ADMIN_TOKEN_LEN} characters in production and differ from the admin token")]
    WeakConfirmToken,
    /// `--production` without a JWT key.
    #[error("--production needs a JWT key for user calls (--jwt-secret/FIRSTCOME_JWT_SECRET or --jwt-public-key/FIRSTCOME_JWT_PUBLIC_KEY)")]
    ProductionWithoutJwtKey,
    /// `--production` without a required audience.
    #[error("--production needs --jwt-audience (FIRSTCOME_JWT_AUDIENCE): a token issued for another service must not be accepted")]
    ProductionWithoutAudience,
    /// `--production` without a required issuer.
    #[error("--production needs --jwt-issuer (FIRSTCOME_JWT_ISSUER): a token from another issuer must not be accepted")]
    ProductionWithoutIssuer,
    /// Both a secret and a public key.
    #[error("give either --jwt-secret or --jwt-public-key, not both")]
    TwoJwtKeys,
    /// An HS256 secret too short to resist brute force.
    #[error("--jwt-secret must be at least {MIN_JWT_SECRET_LEN} bytes")]
    ShortJwtSecret,
    /// A connection timeout that is zero, or an idle timeout that could cut
    /// a request or a stream that is still working.
    #[error("timeouts must be above zero, and --idle-timeout-secs above both --request-timeout-secs and the SSE keep-alive ({SSE_KEEP_ALIVE_SECS} s)")]
    BadTimeouts,
    /// A connection cap of zero would serve nobody.
    #[error("--max-connections must be at least 1")]
    NoConnections,
    /// `--production` with an admin token anyone could guess.
    #[error("--production needs an admin token of at least {MIN_ADMIN_TOKEN_DISTINCT} different characters (a long run of one character is guessable)")]
    WeakAdminToken,
    /// `--production` without a per-user rate limit.
    #[error("--production needs a per-user rate limit (--rate-per-user / FIRSTCOME_RATE_PER_USER above 0)")]
    ProductionWithoutUserLimit,
    /// No JWT key and no explicit trust in the request's user id.
    #[error("no JWT key for user calls (--jwt-secret/FIRSTCOME_JWT_SECRET or --jwt-public-key/FIRSTCOME_JWT_PUBLIC_KEY): anyone could act as anyone; give a key, or --insecure-trust-user-id (FIRSTCOME_INSECURE_TRUST_USER_ID=true) behind a gateway that sets user ids, or for demos and load tests")]
    NoJwtKey,
    /// A database URL of a kind the service cannot keep its truth in.
    #[error("DATABASE_URL names a {0}:// database: the source of truth is PostgreSQL (postgres://user@host:port/db) or MySQL/MariaDB with InnoDB (mysql:// or mariadb://)")]
    UnsupportedDatabase(String),
    /// A stream cap of zero would refuse every stream.
    #[error("--sse-max-streams, --sse-per-user and --sse-per-ip must be at least 1")]
    NoStreams,
    /// `--production` without a per-address rate limit.
    #[error("--production needs a per-address rate limit (--rate-per-ip / FIRSTCOME_RATE_PER_IP above 0; behind a proxy, with --behind-proxy naming the header it sets)")]
    ProductionWithoutIpLimit,
    /// `--production` without a limit on failed token checks per address.
    #[error("--production needs --bad-tokens-per-ip (FIRSTCOME_BAD_TOKENS_PER_IP) above 0: failed token checks from one address must be limited before more are verified")]
    ProductionWithoutBadTokenLimit,
    /// `--production` with the operations endpoints on the public listener.
    #[error("--production needs --ops-addr (FIRSTCOME_OPS_ADDR): /metrics, /readyz and /openapi.json must not be served on the public address")]
    ProductionWithoutOpsAddr,
    /// `--behind-proxy` names something that is not a header name.
    #[error("--behind-proxy must name an HTTP header (e.g. x-forwarded-for)")]
    BadProxyHeader,
    /// `--ops-addr` is the public address.
    #[error("--ops-addr must differ from --addr")]
    OpsAddrIsPublic,
    /// `--production` without a list of webhook hosts.
    #[error("--production needs --webhook-allow (FIRSTCOME_WEBHOOK_ALLOW): without it a campaign's webhook could make the worker call any address it reaches")]
    ProductionWithoutWebhookAllow,
    /// A webhook timeout or per-endpoint cap of zero would deliver nothing.
    #[error("--webhook-timeout-ms and --webhook-per-endpoint must be above zero")]
    BadWebhookDelivery,
}

/// Fewest different characters in an admin token the production profile
/// accepts.
pub const MIN_ADMIN_TOKEN_DISTINCT: usize = 10;

/// Shortest admin token accepted by the production profile.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Shortest HS256 secret accepted (RFC 7518 asks for at least the hash size).
pub const MIN_JWT_SECRET_LEN: usize = 32;
/// Seconds between the keep-alive comments of an SSE stream (axum's
/// default): a healthy stream writes at least this often, so the idle
/// timeout must be longer.
pub const SSE_KEEP_ALIVE_SECS: u64 = 15;

/// Bounds on client connections: what a slow or idle client may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// Longest wait for a complete request head, from the connection's
    /// opening or from the end of its previous response (hyper restarts it
    /// whenever a connection goes idle, so it also ends idle keep-alives).
    pub header_read_timeout: Duration,
    /// Longest a request may take, body read included (SSE streams excluded:
    /// they end at `sse_max`).
    pub request_timeout: Duration,
    /// A connection with no byte read or written for this long is closed
    /// (idle keep-alives, and streams whose client stopped reading).
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond, new ones wait in the
    /// listen backlog.
    pub max_connections: usize,
}

/// Connections to the stores.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    /// Bound on one Redis call on the request path.
    pub redis_timeout: Duration,
    /// Size of the PostgreSQL connection pool.
    pub db_max_connections: u32,
}

/// How user JWTs are verified; no key at all trusts the request's user id.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// HS256 secret.
    pub secret: Option<String>,
    /// RS256/ES256 public key: PEM text, or the path of a PEM file.
    pub public_key: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Without a key, trust the user id each request names
    /// (`--insecure-trust-user-id`: demos, load tests, a gateway that
    /// rewrites user ids); without it and without a key the service refuses
    /// to start.
    pub trust_user_id: bool,
}

/// Rate limits in requests per second (0 = off), each with its burst
/// (0 = the rate).
#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Per client IP on the /v1 API.
    pub per_ip: u32,
    /// Burst above `per_ip`.
    pub per_ip_burst: u32,
    /// Per user on user calls.
    pub per_user: u32,
    /// Burst above `per_user`.
    pub per_user_burst: u32,
    /// Failed token verifications per client address and second, beyond
    /// which the address' user calls get 429 before any verification
    /// (0 = off).
    pub bad_tokens_per_ip: u32,
}

/// Caps on open SSE streams per process (`http::streams`).
#[derive(Debug, Clone, Copy)]
pub struct StreamCaps {
    /// In all.
    pub total: usize,
    /// Per user id.
    pub per_user: u32,
    /// Per client address.
    pub per_ip: u32,
}

/// Everything a serving process needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Bearer token of admin calls; `None` (or empty) makes a random one.
    pub admin_token: Option<String>,
    /// Bearer token of the payment service: confirms holds, nothing else;
    /// `None` (or empty) leaves confirming to the admin token.
    pub confirm_token: Option<String>,
    /// Which parts run.
    pub role: Role,
    /// Stores.
    pub stores: StoreConfig,
    /// Most rows in one group commit (gate).
    pub commit_max_batch: usize,
    /// Group commits in flight at once (gate).
    pub commit_inflight: usize,
    /// How long a group commit waits for company (gate).
    pub commit_linger: Duration,
    /// Most stream entries per flusher or drainer batch.
    pub stream_batch: usize,
    /// How long a repeated claim waits for a pending grant.
    pub pending_wait: Duration,
    /// Age after which an unanswered gate reservation is settled.
    pub orphan_after: Duration,
    /// Longest a server-sent event stream stays open.
    pub sse_max: Duration,
    /// Caps on open SSE streams.
    pub stream_caps: StreamCaps,
    /// Period of the worker's drift check; zero turns it off.
    pub reconcile_interval: Duration,
    /// User JWTs.
    pub jwt: JwtConfig,
    /// Production profile: an admin token, a JWT key, a JWT audience and
    /// issuer are required.
    pub production: bool,
    /// Rate limits.
    pub rates: RateConfig,
    /// Connection timeouts and cap.
    pub conns: ConnConfig,
    /// How long a `GET /v1/campaigns/{id}` answer is served from memory
    /// (and may be by a CDN); zero turns the cache off.
    pub campaign_cache: Duration,
    /// The header a trusted reverse proxy writes the client's address into
    /// (its last value is taken: the hop the proxy appended); `None` keys
    /// per-address limits by the TCP peer.
    pub behind_proxy: Option<String>,
    /// Second listener for `/metrics`, `/readyz` and `/openapi.json`, which
    /// then leave the public one; `None` serves them on `addr`.
    pub ops_addr: Option<SocketAddr>,
    /// Webhook delivery and the hosts webhooks may name.
    pub webhooks: WebhookConfig,
}

impl ServeConfig {
    /// The stream caps in force: streams never take more than 90% of the
    /// connection cap, so probes and claims always find a connection.
    pub fn effective_stream_caps(&self) -> StreamCaps {
        let room = (self.conns.max_connections * 9 / 10).max(1);
        StreamCaps {
            total: self.stream_caps.total.min(room),
            ..self.stream_caps
        }
    }

    /// Checks the settings that must hold before anything starts: the
    /// production profile needs an admin token, a JWT key, and the `aud`
    /// and `iss` tokens must carry.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((scheme, _)) = self.stores.database_url.split_once("://") {
            if !matches!(scheme, "postgres" | "postgresql" | "mysql" | "mariadb") {
                return Err(ConfigError::UnsupportedDatabase(scheme.to_string()));
            }
        }
        let secret = self.jwt.secret.as_deref().filter(|s| !s.is_empty());
        let public = self.jwt.public_key.as_deref().filter(|s| !s.is_empty());
        if secret.is_some() && public.is_some() {
            return Err(ConfigError::TwoJwtKeys);
        }
        if secret.is_some_and(|s| s.len() < MIN_JWT_SECRET_LEN) {
            return Err(ConfigError::ShortJwtSecret);
        }
        let c = &self.conns;
        if c.header_read_timeout.is_zero()
            || c.request_timeout.is_zero()
            || c.idle_timeout <= c.request_timeout
            || c.idle_timeout <= Duration::from_secs(SSE_KEEP_ALIVE_SECS)
        {
            return Err(ConfigError::BadTimeouts);
        }
        if c.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let caps = &self.stream_caps;
        if caps.total == 0 || caps.per_user == 0 || caps.per_ip == 0 {
            return Err(ConfigError::NoStreams);
        }
        if let Some(h) = &self.behind_proxy {
            // RFC 9110 token characters: what a header name may hold.
            let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if h.is_empty() || !h.bytes().all(tchar) {
                return Err(ConfigError::BadProxyHeader);
            }
        }
        if self.ops_addr == Some(self.addr) && self.addr.port() != 0 {
            return Err(ConfigError::OpsAddrIsPublic);
        }
        if self.webhooks.timeout.is_zero() || self.webhooks.per_endpoint == 0 {
            return Err(ConfigError::BadWebhookDelivery);
        }

        if self.production {
            if self
                .admin_token
                .as_deref()
                .is_none_or(|t| t.len() < MIN_ADMIN_TOKEN_LEN)
            {
                return Err(ConfigError::ProductionWithoutAdminToken);
            }
            let token = self.admin_token.as_deref().unwrap_or_default();
            let distinct: std::collections::HashSet<char> = token.chars().collect();
            if distinct.len() < MIN_ADMIN_TOKEN_DISTINCT {
                return Err(ConfigError::WeakAdminToken);
            }
            if secret.is_none() && public.is_none() {
                return Err(ConfigError::ProductionWithoutJwtKey);
            }
            if let Some(t) = self.confirm_token.as_deref().filter(|t| !t.is_empty()) {
                if t.len() < MIN_ADMIN_TOKEN_LEN || Some(t) == self.admin_token.as_deref() {
                    return Err(ConfigError::WeakConfirmToken);
                }
            }
            if self.jwt.audience.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::ProductionWithoutAudience);
            }
            if self.jwt.issuer.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::ProductionWithoutIssuer);
            }
            if self.rates.per_user == 0 {
                return Err(ConfigError::ProductionWithoutUserLimit);
            }
            // Also the brake in front of JWT verification (`limits::limit_ip`
            // runs before any extractor), and on ids invented per request.
            if self.rates.per_ip == 0 {
                return Err(ConfigError::ProductionWithoutIpLimit);
            }
            if self.rates.bad_tokens_per_ip == 0 {
                return Err(ConfigError::ProductionWithoutBadTokenLimit);
            }
            if self.ops_addr.is_none() {
                return Err(ConfigError::ProductionWithoutOpsAddr);
            }
            if self.webhooks.allow.iter().all(|h| h.trim().is_empty()) {
                return Err(ConfigError::ProductionWithoutWebhookAllow);
            }
        }
        if secret.is_none() && public.is_none() && !self.jwt.trust_user_id {
            return Err(ConfigError::NoJwtKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
