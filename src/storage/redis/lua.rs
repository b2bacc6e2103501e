//! The Lua scripts of `lua/`, compiled in: each with its SHA-cached handle
//! and its source. The typed calls are in `scripts.rs`.

use redis::Script;

/// One Lua script: its SHA-cached handle and its source.
pub struct Lua {
    /// Runs by SHA, loading on NOSCRIPT.
    pub script: Script,
    /// The source, for a plain EVAL when the cache is flushed again between
    /// the load and the EVALSHA (SCRIPT FLUSH in a loop, failover storms).
    pub src: &'static str,
}

impl Lua {
    fn new(src: &'static str) -> Self {
        Self {
            script: Script::new(src),
            src,
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
}
