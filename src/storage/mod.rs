//! Storage: the source of truth (PostgreSQL, or MySQL/MariaDB) and Redis
//! (admission state and Lua scripts), apart from HTTP.

pub mod error;
pub mod mysql;
pub mod pg;
pub mod redis;
pub mod store;
pub mod tx;

pub use error::StoreError;
pub use store::Store;
pub use tx::StoreTx;

/// Database connections opened at start and kept open (at most the pool's
/// size): the group committer's transactions in flight, a campaign read, a
/// background task. Opening one mid-rush cost a commit several ms.
pub const WARM_CONNECTIONS: u32 = 6;

/// A pooled connection idle this long is pinged before it is handed out
/// (it may have outlived a database restart); busier ones are not, which
/// saves a round trip per transaction under load.
pub const PING_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
