//! Admission modes: one module (or folder) per mode, all behind
//! [`Admission`], dispatched by [`Admissions`], which the mode registry
//! ([`crate::for_each_mode`]) generates.
//!
//! A mode holds everything of its own: its claim, status and cancel, its
//! setup when a campaign is created, its background task per live campaign
//! (gate's orphan sweeper, redis-lua's flusher, redis-queue's drainer), and
//! for a Redis mode how the claim script decides ([`ScriptMode`]). The rest
//! of the service (HTTP, the worker, the reconciler, the CLI) asks the mode
//! through these hooks instead of matching on it. Every mode keeps the
//! invariants of docs/ARCHITECTURE.md; they differ in where the decision is
//! made (PostgreSQL row lock, conditional update, Redis Lua) and when a
//! grant becomes durable. Nothing here speaks HTTP.

mod admission;
pub mod db_atomic;
pub mod db_common;
pub mod db_lock;
mod error;
pub mod gate;
pub mod redis_common;
pub mod redis_lua;
pub mod redis_queue;
mod registry;

pub use crate::storage::redis::stream::TaskEnv;
pub use admission::{Admission, Answer, Cancel, Deps, Status};
pub use error::{AdmissionError, CancelOutcome};
pub use registry::{script_mode, Admissions};
