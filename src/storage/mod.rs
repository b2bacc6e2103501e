//! Storage: PostgreSQL (source of truth) and Redis (admission state and
//! Lua scripts), apart from HTTP.

pub mod pg;
pub mod redis;
