//! Webhook delivery: the worker's task that sends the outbox
//! (`webhook_events`, written by triggers in the transaction of each fact)
//! to each campaign's endpoint, signed per Standard Webhooks, retried with
//! exponential backoff and full jitter until a 2xx, dead after the
//! configured time. At least once: an event is marked delivered only after
//! its 2xx, so a crash between the two sends it again, with the same
//! `webhook-id` (receivers deduplicate on it).

use std::{collections::HashMap, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt;
use rand::Rng;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    config::WebhookConfig,
    domain::webhook::{secret_key, sign},
    storage::{pg::DueEvent, Store},
};

/// How often an idle worker looks for due events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Most events claimed per round (at most `per_endpoint` in flight per URL).
pub const BATCH: i64 = 64;

/// Most deliveries one worker has in flight at once, all endpoints together.
pub const MAX_INFLIGHT: usize = 256;

/// How long past its timeout a claimed attempt stays leased: another
/// worker takes the event again only once this worker surely gave up.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// How often the outbox lag gauges are refreshed.
pub const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true, then waits for the deliveries in
/// flight (each bounded by the attempt timeout).
pub async fn run(db: Store, cfg: WebhookConfig, mut shutdown: watch::Receiver<bool>) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot build the HTTP client; no delivery");
            return;
        }
    };
    let cfg = Arc::new(cfg);
    // Deliveries in flight, each ending with its endpoint URL, and how many
    // go to each URL: a slow endpoint holds its own slots, never another's.
    let mut inflight: JoinSet<String> = JoinSet::new();
    let mut busy: HashMap<String, i64> = HashMap::new();
    let mut next_lag = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        if tokio::time::Instant::now() >= next_lag {
            next_lag = tokio::time::Instant::now() + LAG_INTERVAL;
            report_lag(&db).await;
        }
        while let Some(done) = inflight.try_join_next() {
            finished(&mut busy, done);
        }
        let room = MAX_INFLIGHT.saturating_sub(inflight.len()) as i64;
        if room > 0 {
            let snapshot: Vec<(String, i64)> = busy.iter().map(|(u, n)| (u.clone(), *n)).collect();
            let lease = cfg.timeout + LEASE_MARGIN;
            let per = cfg.per_endpoint as i64;
            match db
                .claim_due_events(BATCH.min(room), per, lease, &snapshot)
                .await
            {
                Ok(due) if !due.is_empty() => {
                    for e in due {
                        *busy.entry(e.url.clone()).or_default() += 1;
                        let (db, client, cfg) = (db.clone(), client.clone(), cfg.clone());
                        inflight.spawn(async move {
                            // A panic (a bug) must still free the slot; the
                            // event's lease ends and it is due again.
                            let run = AssertUnwindSafe(attempt(&db, &client, &cfg, &e));
                            if run.catch_unwind().await.is_err() {
                                tracing::error!(event = e.id, "webhooks: a delivery panicked");
                            }
                            e.url
                        });
                    }
                    // More may be due at once.
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot claim due events; will retry")
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            Some(done) = inflight.join_next(), if !inflight.is_empty() => finished(&mut busy, done),
        }
    }
    while let Some(done) = inflight.join_next().await {
        finished(&mut busy, done);
    }
}

/// Frees the endpoint slot of a delivery that ended.
fn finished(busy: &mut HashMap<String, i64>, done: Result<String, tokio::task::JoinError>) {
    match done {
        Ok(url) => {
            if let Some(n) = busy.get_mut(&url) {
                *n -= 1;
                if *n <= 0 {
                    busy.remove(&url);
                }
            }
        }
        // Only an aborted task ends without its URL, and none is aborted.
        Err(e) => tracing::error!(error = %e, "webhooks: a delivery task was lost"),
    }
}

/// Refreshes the outbox lag gauges.
async fn report_lag(db: &Store) {
    match db.webhook_lag().await {
        Ok((n, age)) => {
            metrics::gauge!("firstcome_webhook_pending").set(n as f64);
            metrics::gauge!("firstcome_webhook_oldest_pending_seconds").set(age);
        }
        Err(e) => tracing::debug!(error = %e, "webhooks: cannot read the lag"),
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

/// One attempt at one event, and its outcome recorded.
async fn attempt(db: &Store, client: &reqwest::Client, cfg: &WebhookConfig, e: &DueEvent) {
    let (status, error) = match send(client, e).await {
        Ok(s) if (200..300).contains(&s) => {
            let r = db.event_delivered(e.id, s).await;
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
    match db
        .event_failed(e.id, status, &error, retry_in, cfg.dead_after)
        .await
    {
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
