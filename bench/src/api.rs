//! The service's API processes as the bench sees them: one keep-alive
//! client per `--url`, the request timeout, and the retry over processes
//! that calls outside the rush use. Transport only: what an answer means is
//! decided in `verify` and `probe`, not here.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use firstcome::client::Client;
use hyper::Method;
use serde_json::Value;

use crate::args::{urls, BenchArgs};

/// The service's API processes, with the bench's request timeout.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) clients: Arc<Vec<Client>>,
    /// `--request-timeout-secs`, if any.
    pub(crate) timeout: Option<Duration>,
}

impl Api {
    /// The API processes of `--url`, `conc` connections each, with the
    /// admin token and `--request-timeout-secs`.
    pub(crate) fn service(args: &BenchArgs, conc: usize) -> Self {
        Self {
            clients: Arc::new(
                urls(&args.url)
                    .iter()
                    .map(|u| Client::new(u, Some(args.admin_token.clone()), conc))
                    .collect(),
            ),
            timeout: (args.request_timeout_secs > 0.0)
                .then(|| Duration::from_secs_f64(args.request_timeout_secs)),
        }
    }

    /// The `--metrics-url` processes: read for /metrics only, without the
    /// admin token, one connection each.
    pub(crate) fn metrics_only(urls: &[String], timeout: Option<Duration>) -> Self {
        Self {
            clients: Arc::new(urls.iter().map(|u| Client::new(u, None, 1)).collect()),
            timeout,
        }
    }

    /// One call on client `k` (modulo their number); no answer within the
    /// timeout is an error, like a refused connection.
    pub(crate) async fn call(
        &self,
        k: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        admin: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let c = &self.clients[k % self.clients.len()];
        match self.timeout {
            Some(t) => tokio::time::timeout(t, c.call(method, path, body, admin))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {t:?}"))?,
            None => c.call(method, path, body, admin).await,
        }
    }

    /// Calls `path` on the clients in turn (from `from`), until one answers
    /// without a 5xx or `secs` have passed; the last answer or error
    /// otherwise.
    pub(crate) async fn call_any(
        &self,
        from: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        admin: bool,
        secs: f64,
    ) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut k = from;
        loop {
            let r = self.call(k, method.clone(), path, body, admin).await;
            let ok = matches!(&r, Ok((s, _)) if *s < 500);
            if ok || Instant::now() > deadline {
                return r;
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every grant of a campaign, from whichever client answers.
    pub(crate) async fn all_grants(&self, id: i64, secs: f64) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut k = 0;
        loop {
            let c = &self.clients[k % self.clients.len()];
            // The whole export (paged) within a few timeouts.
            let r = match self.timeout {
                Some(t) => tokio::time::timeout(t * 4, c.all_grants(id))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("export: no answer"))),
                None => c.all_grants(id).await,
            };
            match r {
                Ok(g) => return Ok(g),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// /metrics of every process that answers, one after the other.
    pub(crate) async fn scrape_all(&self) -> String {
        let mut all = String::new();
        for c in self.clients.iter() {
            let t = self.timeout.unwrap_or(Duration::from_secs(2));
            if let Ok(Ok(text)) = tokio::time::timeout(t, c.text("/metrics")).await {
                all.push_str(&text);
                all.push('\n');
            }
        }
        all
    }

    /// /metrics of the first process that answers (within 2 s each).
    pub(crate) async fn scrape(&self) -> String {
        for c in self.clients.iter() {
            let t = self.timeout.unwrap_or(Duration::from_secs(2));
            if let Ok(Ok(t)) = tokio::time::timeout(t, c.text("/metrics")).await {
                return t;
            }
        }
        String::new()
    }
}
