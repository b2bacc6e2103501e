//! Webhook delivery: the worker's task that sends the outbox
//! (`webhook_events`, written by triggers in the transaction of each fact)
//! to each campaign's endpoint, signed per Standard Webhooks, retried with
//! exponential backoff and full jitter until a 2xx, dead after the
//! configured time. At least once: an event is marked delivered only after
//! its 2xx, so a crash between the two sends it again, with the same
//! `webhook-id` (receivers deduplicate on it).

use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{
    config::WebhookConfig,
    domain::webhook::{secret_key, sign},
    storage::pg::{self, DueEvent},
};

/// How often an idle worker looks for due events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Most events claimed per round (at most `per_endpoint` of them per URL).
pub const BATCH: i64 = 64;

/// How long past its timeout a claimed attempt stays leased: another
/// worker takes the event again only once this worker surely gave up.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How often the outbox lag gauges are refreshed.
pub const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true.
pub async fn run(db: PgPool, cfg: WebhookConfig, mut shutdown: watch::Receiver<bool>) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot build the HTTP client; no delivery");
            return;
        }
    };
    let mut next_lag = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        if tokio::time::Instant::now() >= next_lag {
            next_lag = tokio::time::Instant::now() + LAG_INTERVAL;
            match pg::webhook_lag(&db).await {
                Ok((n, age)) => {
                    metrics::gauge!("firstcome_webhook_pending").set(n as f64);
                    metrics::gauge!("firstcome_webhook_oldest_pending_seconds").set(age);
                }
                Err(e) => tracing::debug!(error = %e, "webhooks: cannot read the lag"),
            }
        }
        match deliver_once(&db, &client, &cfg).await {
            // A full round: more may be due at once.
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot claim due events; will retry"),
        }
        let _ = tokio::time::timeout(POLL_INTERVAL, shutdown.changed()).await;
    }
}

/// The HTTP client of deliveries: the attempt timeout, and no redirects
/// (a redirect could lead the worker to a host the allow list refuses).
pub fn client(cfg: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("firstcome-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Claims one round of due events and attempts each once, all at once
/// (the claim already capped each endpoint at `per_endpoint`); returns how
/// many were attempted.
pub async fn deliver_once(
    db: &PgPool,
    client: &reqwest::Client,
    cfg: &WebhookConfig,
) -> Result<usize, pg::PgError> {
    let due = pg::claim_due_events(
        db,
        BATCH,
        cfg.per_endpoint as i64,
        cfg.timeout + LEASE_MARGIN,
    )
    .await?;
    let n = due.len();
    join_all(due.iter().map(|e| attempt(db, client, cfg, e))).await;
    Ok(n)
}

/// One attempt at one event, and its outcome recorded.
async fn attempt(db: &PgPool, client: &reqwest::Client, cfg: &WebhookConfig, e: &DueEvent) {
    let (status, error) = match send(client, e).await {
        Ok(s) if (200..300).contains(&s) => {
            let r = pg::event_delivered(db, e.id, s).await;
            if let Err(err) = r {
                // Sent again later: at least once.
                tracing::warn!(error = %err, event = e.id, "webhooks: cannot record a delivery");
            }
            metrics::counter!("firstcome_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            return;
        }
        Ok(s) => (Some(s), format!("HTTP {s}")),
        Err(err) => (None, err),
    };
    let retry_in = backoff(cfg, e.attempts, &mut rand::thread_rng());
    match pg::event_failed(db, e.id, status, &error, retry_in, cfg.dead_after).await {
        Ok(dead) => {
            let outcome = if dead { "dead" } else { "failed" };
            metrics::counter!("firstcome_webhook_deliveries_total", "outcome" => outcome)
                .increment(1);
            if dead {
                tracing::warn!(event = e.id, campaign = e.campaign_id, error = %error, "webhook event dead-lettered");
            }
        }
        Err(err) => tracing::warn!(error = %err, event = e.id, "webhooks: cannot record a failure"),
    }
}

/// POSTs one event; its HTTP status, or why there was none.
async fn send(client: &reqwest::Client, e: &DueEvent) -> Result<u16, String> {
    let key = secret_key(&e.secret).ok_or("the campaign's secret does not decode")?;
    let id = e.webhook_id();
    let ts = chrono::Utc::now().timestamp();
    let signature = sign(&key, &id, ts, e.body.as_bytes());
    let resp = client
        .post(&e.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(e.body.clone())
        .send()
        .await
        // Without the URL: it is the admin's to read, not the log's.
        .map_err(|err| err.without_url().to_string())?;
    Ok(resp.status().as_u16())
}

/// The delay before attempt `attempts + 1`: drawn uniformly from 0 to
/// `min(retry_max, retry_base * 2^(attempts - 1))` (full jitter: retries
/// of many events failing together spread out rather than stampede).
pub fn backoff(cfg: &WebhookConfig, attempts: i32, rng: &mut impl Rng) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let bound = cfg
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(cfg.retry_max);
    bound.mul_f64(rng.gen::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_full_jitter() {
        let cfg = WebhookConfig {
            allow: vec![],
            timeout: Duration::from_secs(1),
            dead_after: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            per_endpoint: 4,
        };
        let mut rng = rand::thread_rng();
        for (attempts, bound) in [(1, 1), (2, 2), (3, 4), (7, 60), (1000, 60)] {
            for _ in 0..200 {
                let d = backoff(&cfg, attempts, &mut rng);
                assert!(d <= Duration::from_secs(bound), "{attempts}: {d:?}");
            }
        }
        // Jitter: not always the bound.
        let ds: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(&cfg, 5, &mut rng)).collect();
        assert!(ds.len() > 1);
    }
}
