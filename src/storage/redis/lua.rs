//! The Lua scripts of `lua/`, compiled in: each with its SHA-cached handle
//! and its source. The typed calls are in `scripts.rs`.

use redis::Script;

/// One Lua script: its SHA-cached handle and its source.
pub struct Lua {
    /// Its SHA (the handle computes it once).
    pub script: Script,
    /// The source, for the EVAL after a NOSCRIPT.
    pub src: &'static str,
}

impl Lua {
    /// The script of `src`.
    pub(crate) fn new(src: &'static str) -> Self {
        Self {
            script: Script::new(src),
            src,
        }
    }

    /// Runs the script on `conn`: EVALSHA, then on NOSCRIPT (a restart, a
    /// failover, SCRIPT FLUSH) a plain EVAL, which caches it again. Both are
    /// routed by key on a cluster; redis-rs' own reload sends SCRIPT LOAD to
    /// every master instead, and fails while any one of them is down.
    pub async fn run<T, C>(
        &self,
        conn: &mut C,
        keys: &[&str],
        args: &[&str],
    ) -> redis::RedisResult<T>
    where
        T: redis::FromRedisValue,
        C: redis::aio::ConnectionLike + Send,
    {
        let by_sha = redis::cmd("EVALSHA")
            .arg(self.script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .query_async(conn)
            .await;
        match by_sha {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("EVAL")
                    .arg(self.src)
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args)
                    .query_async(conn)
                    .await
            }
            other => other,
        }
    }
}

/// Declares [`Scripts`]: one field per `lua/<name>.lua`, compiled in.
macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        /// The Lua scripts, compiled into the binary from `lua/`.
        pub struct Scripts {
            $($(#[$doc])* pub $name: Lua,)*
        }

        impl Scripts {
            pub(super) fn new() -> Self {
                Self {
                    $($name: Lua::new(include_str!(concat!(
                        "../../../lua/",
                        stringify!($name),
                        ".lua"
                    ))),)*
                }
            }
        }
    };
}

scripts! {
    /// Admission decision (all Redis modes).
    claim;
    /// Replace expected answers (gate commit, queue grant).
    promote;
    /// Compensation: give back a reservation's stock and slot.
    release;
    /// Cancel a granted answer, freeing its slot.
    cancel;
    /// Slot allocation for queued claims, in order.
    allocate;
    /// Load a campaign's state (creation or rebuild).
    init;
    /// The reconciler's compare-and-set fix of a pool's counters.
    repair;
    /// Put a dead-lettered claim back in the queue.
    replay;
    /// Forget a state whose generation PostgreSQL has moved past.
    drop_stale;
    /// Push an open-ended campaign's key expiry forward.
    refresh;
    /// Forget a state another Redis server loaded (restart, failover).
    same_server;
    /// Release a lock or lease still held with our token.
    unlock;
    /// How many outbox entries a rebuild waits for.
    outbox_to_flush;
    /// Redis' clock on the campaign's node.
    time;
    /// One user's answer, and whether the state holding it is whole.
    answer;
    /// A sharded pool's shard gives stock to a dry one.
    give;
    /// A dry shard receives the stock given to it.
    take;
    /// A shard makes the units it got back claimable.
    publish;
    /// A shard's sold-out mark: set after a proof, cleared before a publish.
    marks;
    /// A sharded redis-lua pool gets back a cancel's slot once it is durable.
    returned;
    /// Many users' raw answers at once (the event streams' watcher).
    answers;
    /// Fair start: close the pre-queue at opening, ahead of every claim.
    freeze;
    /// Fair start: pre-queued users get their drawn place in the queue.
    drawn;
    /// A queued user leaves: the place is skipped, its unit freed.
    leave;
    /// The drainer's progress: the last arrival number it answered.
    progress;
    /// An operator's change of a live campaign (pause, window, expiry).
    settings;
    /// An operator's change of pools' stock (unsharded campaigns).
    restock;
}
