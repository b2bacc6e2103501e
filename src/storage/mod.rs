//! Storage: PostgreSQL (source of truth) and Redis (admission state and
//! Lua scripts), apart from HTTP; MySQL/MariaDB's schema beside them
//! (issue 17, not yet a store of the modes).

pub mod mysql;
pub mod pg;
pub mod redis;
