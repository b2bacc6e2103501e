//! A small keep-alive HTTP/1.1 client for the CLI and the benchmark
//! (hyper), speaking the v1 API.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HyperClient},
    rt::TokioExecutor,
};
use serde_json::Value;

/// Client of one firstcome service.
#[derive(Clone)]
pub struct Client {
    /// Pooled keep-alive connections.
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    /// e.g. `http://127.0.0.1:8080`.
    base: String,
    /// Admin bearer token, for admin calls.
    token: Option<String>,
    /// Who acts, sent with admin calls (`X-Firstcome-Actor`) for the log
    /// of operator actions.
    actor: Option<String>,
}

impl Client {
    /// A client of `base` keeping up to `max_idle` idle connections.
    pub fn new(base: &str, token: Option<String>, max_idle: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        // Idle connections are dropped before the server's header-read
        // timeout (10 s by default) closes them, so a request is never sent
        // on a connection the server is closing.
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(Duration::from_secs(5))
            .build(conn);
        Self {
            inner,
            base: base.trim_end_matches('/').to_string(),
            token,
            actor: None,
        }
    }

    /// The same client, naming `actor` in its admin calls.
    pub fn with_actor(mut self, actor: Option<String>) -> Self {
        self.actor = actor;
        self
    }

    /// Sends a request; returns the status and the JSON body (`Null` when
    /// the body is empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        admin: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if admin {
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if let Some(a) = &self.actor {
                req = req.header("x-firstcome-actor", a);
            }
        }
        let bytes = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let resp = self
            .inner
            .request(req.body(Full::new(bytes))?)
            .await
            .context("request failed")?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// GET `path` as text (e.g. /metrics).
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{}", self.base, path))
            .body(Full::new(Bytes::new()))?;
        let resp = self.inner.request(req).await.context("request failed")?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Creates a campaign (admin); returns its body.
    pub async fn create_campaign(&self, spec: &Value) -> anyhow::Result<Value> {
        let (s, v) = self
            .call(Method::POST, "/v1/campaigns", Some(spec), true)
            .await?;
        anyhow::ensure!(s == 201, "create campaign answered {s}: {v}");
        Ok(v)
    }

    /// Every active grant of a campaign, through the paged export.
    pub async fn all_grants(&self, id: i64) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/campaigns/{id}/grants?limit=10000&after={a}"),
                None => format!("/v1/campaigns/{id}/grants?limit=10000"),
            };
            let (s, v) = self.call(Method::GET, &path, None, true).await?;
            anyhow::ensure!(s == 200, "grants export answered {s}: {v}");
            out.extend(v["grants"].as_array().cloned().unwrap_or_default());
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return Ok(out),
            }
        }
    }
}
