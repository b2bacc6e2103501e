//! The fair start's draw, run by the drainer when it meets the marker
//! `freeze.lua` put ahead of every claim after opening: the pre-queue is
//! read from Redis, put in drawn order (`domain::draw`), recorded whole in
//! PostgreSQL (the published list), then admitted page by page through the
//! drainer's usual allocate-insert-promote path, each user numbered by
//! their place. Every step is idempotent, so a drainer that dies half-way
//! (or a second one after it) redoes it from the recorded list.

use std::collections::HashMap;

use super::drainer::{Drainer, INSERT_CHUNK};
use crate::storage::redis::stream::Entry;

impl Drainer {
    /// Admits the pre-queue in drawn order.
    pub(super) async fn admit_draw(&mut self) -> anyhow::Result<()> {
        let c = self.campaign.clone();
        let k = self.common.keys(&c);
        let seed = c
            .draw_seed
            .ok_or_else(|| anyhow::anyhow!("campaign {} has a draw marker but no seed", c.id))?;
        if self.db.draw_size(c.id).await? == 0 {
            let mut list = self.common.redis.prequeued(&k).await?;
            seed.order(&mut list);
            if self.db.record_draw(c.id, &list).await? {
                tracing::info!(campaign = %c.id, users = list.len(), "fair start: draw recorded");
            }
        }
        // The entries' ids carry the opening instant, so the queue's
        // claim-to-durable histogram counts a pre-queued wait from there.
        let opened_ms = c.opens_at.map_or(0, |t| t.timestamp_millis());
        let mut after = 0;
        loop {
            let page = self
                .db
                .draw_entries(c.id, after, INSERT_CHUNK as i64)
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = last.rank;
            let places: Vec<(&str, i64)> =
                page.iter().map(|e| (e.user_id.as_str(), e.rank)).collect();
            self.common.redis.place_drawn(&k, &places).await?;
            let entries: Vec<Entry> = page
                .iter()
                .map(|e| Entry {
                    id: format!("{opened_ms}-{}", e.rank),
                    fields: HashMap::from([
                        ("u".to_string(), e.user_id.clone()),
                        ("p".to_string(), e.pool_idx.to_string()),
                        ("s".to_string(), e.rank.to_string()),
                    ]),
                })
                .collect();
            self.drain(&entries).await?;
        }
    }
}
