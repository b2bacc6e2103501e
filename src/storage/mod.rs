//! Storage: the source of truth (PostgreSQL, or MySQL/MariaDB) and Redis
//! (admission state and Lua scripts), apart from HTTP.

pub mod error;
pub mod mysql;
pub mod pg;
pub mod pool;
pub mod redis;
pub mod store;
pub mod tx;

pub use error::StoreError;
pub use store::Store;
pub use tx::StoreTx;
