//! The webhook flags of `firstcome serve` ([`WebhookArgs`]), flattened into
//! [`super::ServeArgs`].

use std::time::Duration;

use clap::Args;

use crate::config::WebhookConfig;

/// Webhook delivery and the hosts a campaign's webhook may name.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Hosts a campaign's webhook URL may name, comma-separated
    /// `host` (any port) or `host:port`. Without it any host is accepted,
    /// loopback and private addresses included (the worker would call
    /// whatever an admin names: SSRF); `--production` requires it.
    #[arg(
        long,
        env = "FIRSTCOME_WEBHOOK_ALLOW",
        value_delimiter = ',',
        value_name = "HOST[:PORT],..."
    )]
    pub webhook_allow: Vec<String>,
    /// Longest one delivery attempt may take, in milliseconds.
    #[arg(long, env = "FIRSTCOME_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// How long an event is retried without a 2xx before its next failure
    /// makes it dead (listed, redeliverable), in seconds: 24 h.
    #[arg(
        long,
        env = "FIRSTCOME_WEBHOOK_DEAD_AFTER_SECS",
        default_value_t = 86_400
    )]
    pub webhook_dead_after_secs: u64,
    /// Bound of the first retry delay, in milliseconds; it doubles per
    /// attempt and the delay is drawn below it (full jitter).
    #[arg(long, env = "FIRSTCOME_WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000)]
    pub webhook_retry_base_ms: u64,
    /// Largest bound of a retry delay, in milliseconds: 1 h.
    #[arg(
        long,
        env = "FIRSTCOME_WEBHOOK_RETRY_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_retry_max_ms: u64,
    /// Deliveries in flight at once to one endpoint URL, per worker.
    #[arg(long, env = "FIRSTCOME_WEBHOOK_PER_ENDPOINT", default_value_t = 4)]
    pub webhook_per_endpoint: usize,
}

impl From<WebhookArgs> for WebhookConfig {
    fn from(a: WebhookArgs) -> Self {
        Self {
            allow: a.webhook_allow,
            timeout: Duration::from_millis(a.webhook_timeout_ms),
            dead_after: Duration::from_secs(a.webhook_dead_after_secs),
            retry_base: Duration::from_millis(a.webhook_retry_base_ms),
            retry_max: Duration::from_millis(a.webhook_retry_max_ms),
            per_endpoint: a.webhook_per_endpoint,
        }
    }
}
