//! Background tasks, apart from the request handlers: the gate's group
//! committer, and the worker that runs one flusher (redis-lua) or drainer
//! (redis-queue) per live campaign.

pub mod committer;
pub mod drainer;
pub mod flusher;
pub mod holds;
pub mod orphans;
pub mod reconcile;
pub mod stream;
pub mod worker;
