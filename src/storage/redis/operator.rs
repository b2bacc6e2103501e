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

/// The caller's hold on the campaign's rebuild lock, checked by the
/// script that writes under it: a caller whose lock expired (a slow
/// statement, a pause) must not write what it read before another holder
/// changed it.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// The lock's key (`CampaignKeys::rebuild_lock` of shard 0).
    pub lock: &'a str,
    /// The caller's token in it.
    pub token: &'a str,
}

/// What `settings.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied.
    Done,
    /// No state is loaded: the next rebuild reads PostgreSQL.
    NoState,
    /// The caller no longer holds the lock: nothing changed.
    Lost,
}

/// What `restock.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restocked {
    /// Applied (or every pool already had its new stock).
    Done,
    /// No whole state is loaded: whoever loads it reads PostgreSQL.
    NoState,
    /// The caller no longer holds the rebuild lock: nothing changed.
    Lost,
    /// Pool `pidx` has only `left` units at the door, fewer than the
    /// lower takes away (the others are granted, reserved or queued).
    Short {
        /// The pool's index.
        pidx: usize,
        /// Units left at the door.
        left: i64,
        /// The stock Redis bounded the pool by.
        was: i64,
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
    /// keys' expiry to a loaded state, checking `fence` when given (it must
    /// be in the shard's hash slot: shard 0's).
    pub async fn settings(
        &self,
        k: &CampaignKeys,
        paused: bool,
        closes_ms: Option<i64>,
        expire_at_ms: i64,
        fence: Option<Fence<'_>>,
    ) -> Result<Applied, RedisStoreError> {
        let args = [
            if paused { "1" } else { "0" }.to_string(),
            closes_ms.map(|t| t.to_string()).unwrap_or_default(),
            expire_at_ms.to_string(),
            fence.map(|f| f.token.to_string()).unwrap_or_default(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut keys = k.all();
        if let Some(f) = fence {
            keys.push(f.lock);
        }
        match self
            .eval::<i64>(&self.scripts().settings, &keys, &args)
            .await?
        {
            1 => Ok(Applied::Done),
            0 => Ok(Applied::NoState),
            -1 => Ok(Applied::Lost),
            other => Err(RedisStoreError::Protocol(format!(
                "settings.lua answered {other}"
            ))),
        }
    }

    /// `restock.lua`: sets the stock of the pools in `changes` (the others
    /// are left alone), all or nothing, if `fence` still holds.
    pub async fn restock(
        &self,
        k: &CampaignKeys,
        changes: &[StockChange],
        fence: Fence<'_>,
    ) -> Result<Restocked, RedisStoreError> {
        let n = k.pools.len();
        let mut args: Vec<String> = Vec::with_capacity(2 + 2 * n);
        args.extend([fence.token.to_string(), n.to_string()]);
        for i in 0..n {
            match changes.iter().find(|c| c.pidx == i) {
                Some(c) => args.extend([c.stock.to_string(), c.was.to_string()]),
                None => args.extend([String::new(), String::new()]),
            }
        }
        let mut keys: Vec<&str> = vec![&k.meta, &k.outbox, fence.lock];
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
            Some("lost") => Ok(Restocked::Lost),
            Some("short") => Ok(Restocked::Short {
                pidx: num(1)? as usize,
                left: num(2)?,
                was: num(3)?,
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
