//! Settings of webhook delivery (`tasks::webhooks`) and of the endpoints a
//! campaign may name.

use std::time::Duration;

/// How the worker delivers the webhook outbox.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `host[:port]` entries a webhook URL's host must match; empty: any
    /// host (development). `--production` requires a list (SSRF).
    pub allow: Vec<String>,
    /// Longest one delivery attempt may take (connect to last byte).
    pub timeout: Duration,
    /// Pending this long without a 2xx, an event's next failure makes it
    /// dead (kept, listed, redeliverable by the admin).
    pub dead_after: Duration,
    /// First retry delay's upper bound; it doubles per attempt (full
    /// jitter: the delay is drawn uniformly below the bound).
    pub retry_base: Duration,
    /// Largest bound a retry delay is drawn below.
    pub retry_max: Duration,
    /// Deliveries in flight at once to one endpoint URL, per worker.
    pub per_endpoint: usize,
}
