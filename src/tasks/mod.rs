//! Background tasks that serve every mode, apart from the request handlers:
//! the worker (runs each live campaign's mode tasks, keeps keys alive,
//! checks the Redis server), the hold sweeper, the reconciler and webhook
//! delivery. A mode's
//! own tasks (gate's orphan sweeper, redis-lua's flusher, redis-queue's
//! drainer) live in its folder under `modes/`; nothing here matches on a
//! mode.

pub mod confirmations;
pub mod reconcile;
mod report;
mod sharded;
pub mod webhooks;
pub mod worker;
