//! Redis: the shared connection, the key layout and the Lua scripts.
//!
//! Every key of a campaign carries the campaign's hash tag (`{c42}`), so a
//! script only ever touches one cluster slot. Keys are built here and passed
//! through `KEYS`; scripts never build key names. Scripts are `.lua` files
//! compiled in, run by SHA and loaded again on `NOSCRIPT` (redis-rs'
//! `Script::invoke_async` does that) after a restart, failover or
//! `SCRIPT FLUSH`.

mod keys;
mod lua;
pub mod operator;
pub mod prequeue;
pub mod queue;
pub mod scripts;
pub mod shards;
pub mod stream;

pub use keys::{key_slot, shard_tag, CampaignKeys, PoolKeys};
pub use lua::{Lua, Scripts};

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    Cmd, FromRedisValue, Pipeline, RedisFuture, Value,
};

use crate::domain::CampaignId;

/// Round trips to Redis of this process (a command, a script call or a
/// pipeline counts once; through [`RedisConn`], which every call takes),
/// exported
/// as `firstcome_redis_calls_total`: the flood test and SECURITY.md's
/// figures bound Redis work with it. A plain atomic, not a `metrics`
/// counter, so the claim path pays an add, not a registry lookup.
pub static CALLS: AtomicU64 = AtomicU64::new(0);

/// Errors of the Redis boundary.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The command failed or the connection is down.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A script answered something it never answers (a bug).
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

/// How the claim script decides (ARGV[4] of `claim.lua`): each Redis mode
/// declares one (`Admission::SCRIPT`), so the script knows behaviours, not
/// modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptMode {
    /// A pending reservation (`P`); the caller commits it before answering
    /// (gate).
    Reserve,
    /// Granted at once (`G`); the outbox carries grants and cancels to
    /// PostgreSQL behind (redis-lua).
    WriteBehind,
    /// An arrival number (`Q`); the drainer allocates in order
    /// (redis-queue).
    Enqueue,
}

impl ScriptMode {
    /// The word the scripts read.
    pub fn as_arg(self) -> &'static str {
        match self {
            ScriptMode::Reserve => "reserve",
            ScriptMode::WriteBehind => "write-behind",
            ScriptMode::Enqueue => "enqueue",
        }
    }

    /// The stream this mode's claims feed: the queue when enqueuing, else
    /// the outbox (empty unless writing behind).
    pub fn stream(self, k: &CampaignKeys) -> &str {
        match self {
            ScriptMode::Enqueue => &k.queue,
            _ => &k.outbox,
        }
    }
}

/// One pool's counters as `init.lua` loads them.
#[derive(Debug, Clone, Default)]
pub struct PoolState {
    /// The stock the scripts bound the pool's slots by (`last:<pool>` in
    /// meta); `None` for a sharded pool, bounded by its shard's range.
    pub last: Option<i32>,
    /// Stock still available at the door.
    pub left: i64,
    /// Highest slot ever handed out.
    pub hw: i32,
    /// Released slots below `hw`.
    pub free: Vec<i32>,
}

/// A campaign's admission state as `init.lua` loads it (at creation, or
/// rebuilt from PostgreSQL).
#[derive(Debug, Clone)]
pub struct InitState {
    /// When the keys expire (ms since epoch).
    pub expire_at_ms: i64,
    /// Window start (ms), if any.
    pub opens_ms: Option<i64>,
    /// Window end (ms), if any.
    pub closes_ms: Option<i64>,
    /// Fair start: when the pre-queue opens (ms), if the campaign has one.
    pub prequeue_ms: Option<i64>,
    /// Mode name.
    pub mode: String,
    /// Last arrival number handed out.
    pub seq: i64,
    /// Claims waiting in the queue.
    pub queued: i64,
    /// The state's generation (`campaigns.redis_gen` when it was read).
    pub gen: i64,
    /// Whether an operator paused the campaign (claims of new users wait).
    pub paused: bool,
    /// Per pool, by index.
    pub pools: Vec<PoolState>,
    /// Stored answers: (user, encoded answer).
    pub answers: Vec<(String, String)>,
}

/// Name of the consumer group on both streams.
pub const GROUP: &str = "g";

/// A connection to Redis: one server, or a Redis Cluster (every campaign's
/// keys share a hash tag, so each script runs on the one node holding its
/// slot; the cluster client follows MOVED/ASK and failovers).
#[derive(Clone)]
pub enum RedisConn {
    /// One server: a multiplexed connection that reconnects by itself.
    Node(ConnectionManager),
    /// A dedicated multiplexed connection to one server (blocking reads).
    Dedicated(redis::aio::MultiplexedConnection),
    /// A Redis Cluster: one multiplexed connection per node, routed by key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Dedicated(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        CALLS.fetch_add(1, Ordering::Relaxed);
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Dedicated(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(c) => c.get_db(),
            RedisConn::Dedicated(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Attempts to reconnect to a cluster node before it is dropped from the
/// client's view until the next topology refresh (~50+100+200 ms apart).
const CLUSTER_NODE_ATTEMPTS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(3).unwrap();

/// Where connections come from: one server's client, or a cluster's.
enum Clients {
    /// `REDIS_URL` names one server.
    Node(redis::Client),
    /// `REDIS_URL` names several cluster nodes, comma-separated.
    Cluster(Box<ClusterClient>),
}

/// The shared Redis handle: one multiplexed, self-reconnecting connection
/// for requests (per node, on a cluster), and the client to open dedicated
/// connections for blocking stream reads.
#[derive(Clone)]
pub struct RedisStore {
    /// Shared by every request; reconnects by itself.
    conn: RedisConn,
    /// For blocking reads (`XREADGROUP BLOCK`), which must not stall the
    /// shared connection.
    clients: Arc<Clients>,
    /// Key prefix, e.g. `fc`; tests use a unique one each.
    prefix: Arc<str>,
    /// Bound on any one request-path call.
    timeout: Duration,
    /// The scripts.
    scripts: Arc<Scripts>,
    /// Key names per campaign, built once: a claim would otherwise format a
    /// dozen names per request (campaigns never change their pools).
    keys: Arc<KeyCache>,
}

/// Key names by (campaign id, number of pools, number of shards): one
/// entry per shard.
type KeyCache = RwLock<HashMap<(i64, usize, u16), Arc<Vec<Arc<CampaignKeys>>>>>;

/// One answer swap of `promote.lua`: (user, expected answer, new answer).
pub type AnswerSwap = (String, String, String);

/// Most campaigns whose key names are kept; past it the cache starts over
/// (a name costs a `format!`, never a Redis call).
const KEY_CACHE_MAX: usize = 10_000;

impl RedisStore {
    /// Connects to `url`: one server (`redis://host:port`), or a Redis
    /// Cluster when it names several nodes, comma-separated (any of them
    /// lets the client discover the rest). Fails if Redis cannot be
    /// reached at all at startup.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisStoreError> {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let connecting = async {
            if nodes.len() > 1 {
                // A node that fails for good (its replica promoted) is given
                // up after a few attempts, which makes the client read the
                // topology again; by default it would retry the dead node
                // for ever and never learn of the promotion.
                // No retries: the client would send a command again after
                // a lost reply, and a claim script, a SET NX or a blocking
                // stream read is not safe to repeat (the read's entries
                // would sit in the pending list unseen). A failed call is
                // a 503 the client retries, as on one server.
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(0)
                    .max_connection_attempts(CLUSTER_NODE_ATTEMPTS)
                    .build()?;
                let conn = client.get_async_connection().await?;
                Ok::<_, RedisStoreError>((
                    RedisConn::Cluster(conn),
                    Clients::Cluster(Box::new(client)),
                ))
            } else {
                let client = redis::Client::open(url)?;
                let cfg = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let conn = client.get_connection_manager_with_config(cfg).await?;
                Ok((RedisConn::Node(conn), Clients::Node(client)))
            }
        };
        let (conn, clients) = tokio::time::timeout(timeout * 4, connecting)
            .await
            .map_err(|_| RedisStoreError::Timeout(timeout * 4))??;
        Ok(Self {
            conn,
            clients: Arc::new(clients),
            prefix: prefix.into(),
            timeout,
            scripts: Arc::new(Scripts::new()),
            keys: Arc::default(),
        })
    }

    /// The key names of a campaign's shards (index = shard).
    pub fn keys(&self, id: CampaignId, npools: usize, nshards: u16) -> Arc<Vec<Arc<CampaignKeys>>> {
        let k = (id.0, npools, nshards);
        if let Some(v) = self.keys.read().expect("key cache lock").get(&k) {
            return v.clone();
        }
        let n = nshards.max(1);
        let v: Arc<Vec<Arc<CampaignKeys>>> = Arc::new(
            (0..n)
                .map(|s| Arc::new(CampaignKeys::new(&self.prefix, id.0, npools, s, n)))
                .collect(),
        );
        let mut m = self.keys.write().expect("key cache lock");
        if m.len() >= KEY_CACHE_MAX {
            m.clear();
        }
        m.insert(k, v.clone());
        v
    }

    /// The scripts.
    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// A clone of the shared connection.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// A new dedicated connection for blocking reads (on a cluster, a
    /// cluster connection of its own).
    pub async fn dedicated(&self) -> Result<RedisConn, RedisStoreError> {
        let fut = async {
            Ok::<_, redis::RedisError>(match &*self.clients {
                Clients::Node(c) => {
                    RedisConn::Dedicated(c.get_multiplexed_async_connection().await?)
                }
                Clients::Cluster(c) => RedisConn::Cluster(c.get_async_connection().await?),
            })
        };
        tokio::time::timeout(self.timeout * 4, fut)
            .await
            .map_err(|_| RedisStoreError::Timeout(self.timeout * 4))?
            .map_err(Into::into)
    }

    /// Runs `f` on the shared connection, bounded by the timeout.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisStoreError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.timeout, f(self.conn.clone()))
            .await
            .map_err(|_| RedisStoreError::Timeout(self.timeout))?
            .map_err(Into::into)
    }

    /// Runs a script (by SHA, by source on NOSCRIPT), bounded by the timeout.
    pub async fn eval<T: FromRedisValue>(
        &self,
        lua: &Lua,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, RedisStoreError> {
        let mut conn = self.conn.clone();
        let call = lua.run(&mut conn, keys, args);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisStoreError::Timeout(self.timeout))?
            .map_err(Into::into)
    }

    /// Checks Redis answers.
    pub async fn ping(&self) -> Result<(), RedisStoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }
}
