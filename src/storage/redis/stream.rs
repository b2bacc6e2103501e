//! The loop shared by the flusher and the drainer: hold the campaign's
//! lease, take over entries a dead worker left pending (XAUTOCLAIM), read
//! batches with a blocking XREADGROUP on a dedicated connection, hand them
//! to the handler, and acknowledge only after the handler succeeded.

use std::{collections::HashMap, future::Future, time::Duration};

use redis::{streams::StreamReadReply, Value};
use tokio::sync::watch;

use crate::storage::redis::{Lua, RedisConn, RedisStore, GROUP};

/// One stream entry: its id and fields.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Stream id, `ms-seq`.
    pub id: String,
    /// Field -> value.
    pub fields: HashMap<String, String>,
}

impl Entry {
    /// A field's value, or "" when absent.
    pub fn get(&self, f: &str) -> &str {
        self.fields.get(f).map(String::as_str).unwrap_or("")
    }

    /// Milliseconds since the epoch at which Redis appended the entry.
    pub fn appended_ms(&self) -> i64 {
        self.id
            .split('-')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    }
}

/// What processes a batch. Must be idempotent: a batch may be delivered
/// again after a crash between commit and acknowledgement.
pub trait Handler: Send + Sync + 'static {
    /// Processes entries in stream order. `Err` leaves them pending, to be
    /// retried after a backoff.
    fn handle(&mut self, entries: &[Entry]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Whether the campaign is over and its stream can be left.
    fn finished(&self) -> bool;
    /// The stream or its group is gone (Redis lost its state): rebuild the
    /// campaign's state from PostgreSQL rather than retry forever.
    fn recover(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Tuning of a stream loop.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// Most entries per batch.
    pub batch: usize,
    /// How long one blocking read waits.
    pub block: Duration,
    /// Lease time-to-live; renewed every iteration.
    pub lease_ttl: Duration,
    /// Longest backoff between failed attempts.
    pub max_backoff: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            batch: 1000,
            block: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What a background task runs with: the worker that runs it (the lease
/// holder's name), how stream consumers read, and the stop signal.
#[derive(Clone)]
pub struct TaskEnv {
    /// This worker's name (lease holder).
    pub worker: String,
    /// How stream consumers read (batch, lease, block).
    pub stream: StreamConfig,
    /// Turns true when the task must stop.
    pub shutdown: watch::Receiver<bool>,
}

/// Spawns [`run`] for `handler` over `stream`, under the lease `lease`.
pub fn spawn<H: Handler>(
    store: &RedisStore,
    stream: &str,
    lease: &str,
    env: TaskEnv,
    handler: H,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(
        store.clone(),
        stream.to_string(),
        lease.to_string(),
        env.worker,
        env.stream,
        handler,
        env.shutdown,
    ))
}

/// Runs `handler` over `stream` until shutdown or the handler is finished.
pub async fn run<H: Handler>(
    store: RedisStore,
    stream: String,
    lease: String,
    me: String,
    cfg: StreamConfig,
    mut handler: H,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<RedisConn> = None;
    let mut backoff = Duration::from_millis(10);
    let mut st = LoopState {
        leader: false,
        dirty: true,
        checked_pending: tokio::time::Instant::now(),
    };
    while !*shutdown.borrow() {
        if handler.finished() {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match store.dedicated().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "stream worker: redis unreachable");
                    pause(&mut shutdown, cfg.max_backoff).await;
                    continue;
                }
            },
        };
        match step(c, &stream, &lease, &me, &cfg, &mut handler, &mut st).await {
            Ok(true) => backoff = Duration::from_millis(10),
            Ok(false) => pause(&mut shutdown, cfg.lease_ttl / 5).await,
            Err(e) if e.to_string().contains("NOGROUP") => {
                tracing::warn!(stream = %stream, "stream worker: redis lost the stream; rebuilding from postgres");
                if let Err(e) = handler.recover().await {
                    tracing::warn!(error = %e, stream = %stream, "stream worker: rebuild failed, will retry");
                }
                pause(&mut shutdown, backoff).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
            Err(e) => {
                tracing::warn!(error = %e, stream = %stream, "stream worker: batch failed, will retry");
                metrics::counter!("firstcome_stream_batch_failures_total").increment(1);
                if e.downcast_ref::<redis::RedisError>().is_some() {
                    conn = None;
                    st.leader = false;
                }
                pause(&mut shutdown, backoff).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
            }
        }
    }
    // Hand the lease over at once rather than after its TTL.
    if st.leader {
        if let Some(c) = conn.as_mut() {
            let unlock = &store.scripts().unlock;
            let _: Result<i64, _> = unlock.run(c, &[&lease], &[&me]).await;
        }
    }
}

async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, shutdown.changed()).await;
}

/// What a stream loop remembers between iterations.
struct LoopState {
    /// Whether this worker holds the lease.
    leader: bool,
    /// Whether entries of ours may be pending (then read from id 0 first):
    /// after a takeover or a failed batch.
    dirty: bool,
    /// When our pending entries were last read (see [`PENDING_RECHECK`]).
    checked_pending: tokio::time::Instant,
}

/// `lua/lease.lua`: takes or keeps the lease (run on the loop's own
/// connection, not the shared one).
static LEASE: std::sync::LazyLock<Lua> =
    std::sync::LazyLock::new(|| Lua::new(include_str!("../../../lua/lease.lua")));

/// How often a leader reads its own pending entries even when no batch
/// failed: entries delivered to it whose reply never arrived (a reset
/// connection) would otherwise wait for the next failure or takeover.
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// One iteration; `Ok(false)` when not the lease holder.
async fn step<H: Handler>(
    c: &mut RedisConn,
    stream: &str,
    lease: &str,
    me: &str,
    cfg: &StreamConfig,
    handler: &mut H,
    st: &mut LoopState,
) -> anyhow::Result<bool> {
    let LoopState {
        leader,
        dirty,
        checked_pending,
    } = st;
    let ttl = cfg.lease_ttl.as_millis().to_string();
    let held: i64 = LEASE.run(c, &[lease], &[me, &ttl]).await?;
    if held == 0 {
        *leader = false;
        return Ok(false);
    }
    if !*leader {
        // Newly the holder: take over what a dead worker left pending.
        *leader = true;
        *dirty = true;
        claim_orphans(c, stream, me).await?;
    }
    // Our own pending entries first (a failed batch, or a predecessor's
    // taken over), then new ones. Only after a failure or a takeover can
    // there be any, which saves a round trip per batch otherwise.
    let mut entries = Vec::new();
    if *dirty || checked_pending.elapsed() >= PENDING_RECHECK {
        entries = read(c, stream, me, "0", cfg.batch, None).await?;
        *checked_pending = tokio::time::Instant::now();
    }
    // More than a batch may be pending (a takeover): come back until the
    // pending read finds none.
    let from_pending = !entries.is_empty();
    if entries.is_empty() {
        entries = read(c, stream, me, ">", cfg.batch, Some(cfg.block)).await?;
    }
    if entries.is_empty() {
        return Ok(true);
    }
    // Until acknowledged, a failure leaves these pending for the next step.
    *dirty = true;
    handler.handle(&entries).await?;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let _: () = redis::pipe()
        .cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(&ids)
        .ignore()
        .cmd("XDEL")
        .arg(stream)
        .arg(&ids)
        .ignore()
        .query_async(c)
        .await?;
    *dirty = from_pending;
    Ok(true)
}

async fn claim_orphans(c: &mut RedisConn, stream: &str, me: &str) -> anyhow::Result<()> {
    let mut cursor = "0-0".to_string();
    loop {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(me)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(1000)
            .arg("JUSTID")
            .query_async(c)
            .await?;
        let next = match &v {
            Value::Array(items) => items
                .first()
                .and_then(|x| redis::from_redis_value::<String>(x.clone()).ok()),
            _ => None,
        };
        match next {
            Some(n) if n != "0-0" => cursor = n,
            _ => return Ok(()),
        }
    }
}

async fn read(
    c: &mut RedisConn,
    stream: &str,
    me: &str,
    from: &str,
    count: usize,
    block: Option<Duration>,
) -> anyhow::Result<Vec<Entry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(GROUP).arg(me).arg("COUNT").arg(count);
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(b.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(stream).arg(from);
    let reply: Option<StreamReadReply> = cmd.query_async(c).await?;
    let mut out = Vec::new();
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for id in key.ids {
            let fields = id
                .map
                .into_iter()
                .filter_map(|(k, v)| redis::from_redis_value::<String>(v).ok().map(|v| (k, v)))
                .collect();
            out.push(Entry { id: id.id, fields });
        }
    }
    Ok(out)
}
