//! Wiring: connect the stores, start the background tasks, serve HTTP, and
//! shut everything down in order on SIGTERM/SIGINT.
//!
//! Built from a plain [`ServeConfig`]; this module does not know the
//! command line (anything convertible into a `ServeConfig` will do).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    config::{ConnConfig, Role, ServeConfig},
    http::{self, AppState},
    modes::redis_common::committer,
    modes::{redis_common::RedisCommon, Admissions, Deps},
    storage::redis::stream::StreamConfig,
    storage::{redis::RedisStore, Store},
    tasks::{confirmations, reconcile, webhooks, worker},
};

/// A built, not yet running, service.
pub struct Application {
    /// Where it listens (port 0 resolved).
    addr: SocketAddr,
    /// The bound listener.
    listener: TcpListener,
    /// The `--ops-addr` listener and its address, when there is one.
    ops: Option<(TcpListener, SocketAddr)>,
    /// Shared state of the handlers.
    state: AppState,
    /// Flips to true to stop the background tasks.
    stop_tx: watch::Sender<bool>,
    /// The worker's tasks, when this process runs one.
    worker: Vec<JoinHandle<()>>,
    /// Which parts run.
    role: Role,
    /// Connection timeouts and cap.
    conns: ConnConfig,
    /// Flips to true when shutdown starts: event streams end at once
    /// rather than keep the server waiting up to `sse_max`.
    closing_tx: watch::Sender<bool>,
}

impl Application {
    /// Connects the stores (applying migrations), starts the background
    /// tasks of the role, and binds the listener.
    pub async fn build(config: impl Into<ServeConfig>) -> anyhow::Result<Self> {
        let args: ServeConfig = config.into();
        args.validate()?;
        let jwt = http::auth::JwtVerifier::from_config(&args.jwt)?.map(Arc::new);
        if jwt.is_none() {
            tracing::warn!(
                "--insecure-trust-user-id and no JWT key: user calls are NOT authenticated, the \
                 user_id in each request is trusted as is"
            );
        }
        let limits = http::limits::RateLimits::from_config(&args.rates);
        let webhook_allow = crate::domain::WebhookAllow::parse(&args.webhooks.allow)
            .context("--webhook-allow: each entry must be host or host:port")?;
        crate::telemetry::init_metrics();
        let db = Store::connect(&args.stores.database_url, args.stores.db_max_connections)
            .await
            .context("connecting to the database (DATABASE_URL)")?;
        let redis = RedisStore::connect(
            &args.stores.redis_url,
            &args.stores.redis_prefix,
            args.stores.redis_timeout,
        )
        .await
        .context("connecting to Redis")?;
        let committer = committer::spawn(
            db.clone(),
            redis.clone(),
            committer::CommitterConfig {
                max_batch: args.commit_max_batch.max(1),
                max_inflight: args.commit_inflight.max(1),
                linger: args.commit_linger,
            },
        );
        let common = RedisCommon::new(db.clone(), redis.clone(), args.pending_wait)
            .with_orphan_after(args.orphan_after);
        let admissions = Arc::new(Admissions::new(&Deps {
            db: db.clone(),
            common: common.clone(),
            committer,
        }));
        let admin_token: Arc<str> = match args.admin_token.as_deref() {
            Some(t) if !t.is_empty() => t.into(),
            _ => {
                let t = crate::domain::generate_code();
                tracing::warn!(token = %t, "FIRSTCOME_ADMIN_TOKEN is not set: using this random admin token");
                t.into()
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (closing_tx, closing_rx) = watch::channel(false);
        tokio::spawn(crate::telemetry::upkeep(stop_rx.clone()));
        if limits.enabled() {
            tokio::spawn(
                limits
                    .clone()
                    .janitor(Duration::from_secs(60), stop_rx.clone()),
            );
        }
        let worker_wakeup = Arc::new(tokio::sync::Notify::new());
        let mut worker = Vec::new();
        if matches!(args.role, Role::Worker | Role::All) {
            worker.push(tokio::spawn(worker::run(
                admissions.clone(),
                StreamConfig {
                    batch: args.stream_batch.max(1),
                    ..StreamConfig::default()
                },
                worker_wakeup.clone(),
                stop_rx.clone(),
            )));
            worker.push(tokio::spawn(confirmations::run(
                common.clone(),
                stop_rx.clone(),
            )));
            worker.push(tokio::spawn(webhooks::run(
                db.clone(),
                args.webhooks.clone(),
                stop_rx.clone(),
            )));
            if !args.reconcile_interval.is_zero() {
                worker.push(tokio::spawn(reconcile::run(
                    common,
                    args.reconcile_interval,
                    stop_rx,
                )));
            }
        }
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("binding {}", args.addr))?;
        let addr = listener.local_addr()?;
        let ops = match args.ops_addr {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the ops address {a}"))?;
                let a = l.local_addr()?;
                Some((l, a))
            }
            None => None,
        };
        let progress = http::progress::QueueProgress::default();
        let state = AppState::new(http::AppInner {
            db,
            redis,
            admissions: admissions.clone(),
            admin_token_digest: http::auth::token_digest(&admin_token),
            confirm_token_digest: args
                .confirm_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(http::auth::token_digest),
            campaigns: Arc::new(RwLock::new(HashMap::new())),
            campaign_loads: Default::default(),
            sse_max: args.sse_max,
            closing: closing_rx,
            streams: http::streams::StreamSlots::new(args.effective_stream_caps()),
            worker_wakeup,
            jwt,
            limits,
            request_timeout: args.conns.request_timeout,
            campaign_bodies: http::campaign_cache::BodyCache::new(args.campaign_cache),
            proxy_header: args
                .behind_proxy
                .as_deref()
                .map(|h| axum::http::HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .context("--behind-proxy")?,
            ops_apart: ops.is_some(),
            readiness: http::ops::Readiness::default(),
            progress: progress.clone(),
            fanout: http::fanout::Fanout::new(admissions.clone(), progress.clone()),
            webhook_allow: Arc::new(webhook_allow),
        });
        Ok(Self {
            addr,
            listener,
            ops,
            state,
            stop_tx,
            closing_tx,
            worker,
            role: args.role,
            conns: args.conns,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the `--ops-addr` listener, if any.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(|(_, a)| *a)
    }

    /// A handle that stops the background tasks (tests use it to kill a
    /// worker mid-run).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop_tx.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and
    /// stops the background tasks.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, ops_addr = ?self.ops_addr(), role = ?self.role, "firstcome listening");
        let app = if self.role == Role::Worker {
            http::worker_router(self.state.clone())
        } else {
            http::router(self.state.clone())
        };
        let ops = self
            .ops
            .map(|(l, _)| (l, http::ops_router(self.state.clone())));
        let closing = self.closing_tx;
        // Both listeners stop on the same signal: the one that flips
        // `closing` (which also ends the event streams).
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|c| *c).await;
        };
        let (public_stop, ops_stop) = (closing.subscribe(), closing.subscribe());
        let trigger = async move {
            shutdown.await;
            let _ = closing.send(true);
        };
        // Not axum::serve: it sets no hyper timer, so no header timeout.
        let public = http::serve::serve(self.listener, app, self.conns, stopped(public_stop));
        let ops = async move {
            if let Some((l, r)) = ops {
                http::serve::serve(l, r, self.conns, stopped(ops_stop)).await;
            }
        };
        tokio::join!(trigger, public, ops);
        let _ = self.stop_tx.send(true);
        for w in self.worker {
            let _ = w.await;
        }
        tracing::info!("firstcome stopped");
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
