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

/// The Lua scripts, compiled into the binary from `lua/`.
pub struct Scripts {
    /// Admission decision (all Redis modes).
    pub claim: Lua,
    /// Replace expected answers (gate commit, queue grant).
    pub promote: Lua,
    /// Compensation: give back a reservation's stock and slot.
    pub release: Lua,
    /// Cancel a granted answer, freeing its slot.
    pub cancel: Lua,
    /// Slot allocation for queued claims, in order.
    pub allocate: Lua,
    /// Load a campaign's state (creation or rebuild).
    pub init: Lua,
    /// The reconciler's compare-and-set fix of a pool's counters.
    pub repair: Lua,
    /// Put a dead-lettered claim back in the queue.
    pub replay: Lua,
    /// Forget a state whose generation PostgreSQL has moved past.
    pub drop_stale: Lua,
    /// Push an open-ended campaign's key expiry forward.
    pub refresh: Lua,
    /// Forget a state another Redis server loaded (restart, failover).
    pub same_server: Lua,
    /// Release a lock or lease still held with our token.
    pub unlock: Lua,
    /// How many outbox entries a rebuild waits for.
    pub outbox_to_flush: Lua,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            claim: Lua::new(include_str!("../../../lua/claim.lua")),
            promote: Lua::new(include_str!("../../../lua/promote.lua")),
            release: Lua::new(include_str!("../../../lua/release.lua")),
            cancel: Lua::new(include_str!("../../../lua/cancel.lua")),
            allocate: Lua::new(include_str!("../../../lua/allocate.lua")),
            init: Lua::new(include_str!("../../../lua/init.lua")),
            repair: Lua::new(include_str!("../../../lua/repair.lua")),
            replay: Lua::new(include_str!("../../../lua/replay.lua")),
            drop_stale: Lua::new(include_str!("../../../lua/drop_stale.lua")),
            refresh: Lua::new(include_str!("../../../lua/refresh.lua")),
            same_server: Lua::new(include_str!("../../../lua/same_server.lua")),
            unlock: Lua::new(include_str!("../../../lua/unlock.lua")),
            outbox_to_flush: Lua::new(include_str!("../../../lua/outbox_to_flush.lua")),
        }
    }
}
