//! Operator changes of a live campaign carried to its Redis state: the
//! settings (pause, window, expiry) and pools' stock (`settings.lua`,
//! `restock.lua`).

use super::{CampaignKeys, RedisStore, RedisStoreError};

/// A pool's stock change, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockChange {
    /// The pool's index in the campaign.
    pub pidx: usize,
    /// Its new stock.
    pub stock: i32,
    /// The stock the caller knew before (used only by a state loaded
    /// before restocks existed, which does not record its bound).
    pub was: i32,
}

/// What `restock.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restocked {
    /// Applied (or every pool already had its new stock).
    Done,
    /// No state is loaded: whoever loads it reads PostgreSQL.
    NoState,
    /// Pool `pidx` has only `left` units at the door, fewer than the
    /// lower takes away (the others are granted, reserved or queued).
    Short {
        /// The pool's index.
        pidx: usize,
        /// Units left at the door.
        left: i64,
    },
    /// Pool `pidx`'s slot `slot`, above the new stock, is held (or its
    /// history is not yet durable).
    SlotTaken {
        /// The pool's index.
        pidx: usize,
        /// The slot.
        slot: i32,
    },
}

impl RedisStore {
    /// `settings.lua`: applies the pause flag, the window's end and the
    /// keys' expiry to a loaded state; `false` when none is loaded.
    pub async fn settings(
        &self,
        k: &CampaignKeys,
        paused: bool,
        closes_ms: Option<i64>,
        expire_at_ms: i64,
    ) -> Result<bool, RedisStoreError> {
        let args = [
            if paused { "1" } else { "0" }.to_string(),
            closes_ms.map(|t| t.to_string()).unwrap_or_default(),
            expire_at_ms.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.eval_did(&self.scripts().settings, &k.all(), &args)
            .await
    }

    /// `restock.lua`: sets the stock of the pools in `changes` (the others
    /// are left alone), all or nothing.
    pub async fn restock(
        &self,
        k: &CampaignKeys,
        changes: &[StockChange],
    ) -> Result<Restocked, RedisStoreError> {
        let n = k.pools.len();
        let mut args: Vec<String> = Vec::with_capacity(1 + 2 * n);
        args.push(n.to_string());
        for i in 0..n {
            match changes.iter().find(|c| c.pidx == i) {
                Some(c) => args.extend([c.stock.to_string(), c.was.to_string()]),
                None => args.extend([String::new(), String::new()]),
            }
        }
        let mut keys: Vec<&str> = vec![&k.meta, &k.outbox];
        for p in &k.pools {
            keys.extend([p.left.as_str(), p.hw.as_str(), p.free.as_str()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r: Vec<String> = self.eval(&self.scripts().restock, &keys, &args).await?;
        let num = |i: usize| -> Result<i64, RedisStoreError> {
            r.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| RedisStoreError::Protocol(format!("restock.lua answered {r:?}")))
        };
        match r.first().map(String::as_str) {
            Some("done") => Ok(Restocked::Done),
            Some("nostate") => Ok(Restocked::NoState),
            Some("short") => Ok(Restocked::Short {
                pidx: num(1)? as usize,
                left: num(2)?,
            }),
            Some("slot") => Ok(Restocked::SlotTaken {
                pidx: num(1)? as usize,
                slot: num(2)? as i32,
            }),
            _ => Err(RedisStoreError::Protocol(format!(
                "restock.lua answered {r:?}"
            ))),
        }
    }
}
