//! What the reconciler reports of one pass over a campaign (kept apart so
//! the sharded pass, `sharded.rs`, and the per-shard pass, `reconcile.rs`,
//! share it without importing each other).

use serde::Serialize;

use crate::{
    domain::{Campaign, Mode},
    modes::redis_common::RedisCommon,
};

/// What one pass over a campaign found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Campaign id.
    pub campaign: i64,
    /// Mode.
    pub mode: String,
    /// Why nothing was compared: `not a redis mode`, `expired`, `busy`.
    pub skipped: Option<String>,
    /// Redis had no state: rebuilt from PostgreSQL.
    pub rebuilt: bool,
    /// Users compared.
    pub users: usize,
    /// Answers replaced by PostgreSQL's (missing, or cancelled/expired in
    /// PostgreSQL but still granted in Redis).
    pub answers_repaired: usize,
    /// Pools whose stock counter or free slots were corrected.
    pub pools_repaired: usize,
    /// Stock returned to (positive) or taken from (negative) the door.
    pub stock_delta: i64,
    /// Gate reservations whose API process died, settled from PostgreSQL.
    pub orphans_settled: usize,
    /// Redis answers `granted` with no grant in PostgreSQL. In redis-lua
    /// after the outbox drained these are acknowledged grants that were lost
    /// (the mode's exposure); elsewhere they are drift. Never handed out again.
    pub unbacked_grants: usize,
    /// Stock left per pool after the pass (the final pass reports leftovers).
    pub remaining: Vec<i64>,
}

impl Report {
    /// A busy pass's only repair: gate's orphaned reservations, settled
    /// from each shard's pending set, oldest first, as the worker's sweeper
    /// does (`firstcome reconcile` may run with no worker). A failure is
    /// logged; the next pass tries again.
    pub(super) async fn settle_gate_orphans(&mut self, common: &RedisCommon, c: &Campaign) {
        if c.mode != Mode::Gate {
            return;
        }
        match crate::modes::gate::orphans::sweep_once(common, c).await {
            Ok(n) => self.orphans_settled += n,
            Err(e) => {
                tracing::warn!(error = %e, campaign = %c.id, "reconciler: orphan sweep failed")
            }
        }
    }
}
