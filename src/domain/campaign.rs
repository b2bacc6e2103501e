//! Campaigns and pools: what an operator creates (parsed and validated from
//! the raw request, never trusted as is), the window, key lifetimes and the
//! limits every campaign stays within. No I/O.

use chrono::{DateTime, Utc};

use super::draw::MAX_PREQUEUE_SECS;
use super::{draw::DrawSeed, CampaignId, IdError, Mode, PoolName};

/// Largest stock of one pool. Slots are `i32` in PostgreSQL and the Redis
/// free-slot sets stay small enough to rebuild in one pass.
pub const MAX_STOCK: i64 = 10_000_000;
/// Most pools a campaign may have (seed 004 has 6 schools).
pub const MAX_POOLS: usize = 256;
/// Longest campaign name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Longest hold after closing: 30 days.
pub const MAX_HOLD_SECS: i64 = 30 * 24 * 3600;
/// Longest time a held grant may wait for its confirmation: 7 days.
pub const MAX_CONFIRM_SECS: i64 = 7 * 24 * 3600;
/// Default hold after closing, as seed 004 keeps seats for compensation.
pub const DEFAULT_HOLD_SECS: i64 = 2 * 3600;
/// Most Redis shards a campaign's pools may be spread over.
pub const MAX_SHARDS: u16 = 64;
/// Latest `closes_at`, counted from now: 400 days. `closes_at` decides how
/// long Redis keeps a campaign's keys, so it must not be absurdly far.
pub const MAX_CLOSES_AHEAD_SECS: i64 = 400 * 24 * 3600;
/// Latest `opens_at`, counted from now: 100 years (a campaign announced
/// without a date keeps no Redis keys beyond the open-ended lifetime).
pub const MAX_OPENS_AHEAD_SECS: i64 = 100 * 365 * 24 * 3600;
/// Earliest accepted `opens_at`/`closes_at` (2000-01-01T00:00:00Z): keeps
/// expiry times positive milliseconds and dates meaningful.
pub const EARLIEST_INSTANT_SECS: i64 = 946_684_800;

/// A pool as the creator asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPool {
    /// Its name, unique within the campaign.
    pub name: PoolName,
    /// How many grants it can hold at once; at least 1.
    pub stock: i32,
}

/// A campaign as the creator asked for it, already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCampaign {
    /// Free-text name.
    pub name: String,
    /// Admission mode.
    pub mode: Mode,
    /// Pools, at least one, names unique.
    pub pools: Vec<NewPool>,
    /// Active grants a user may hold; only 1 is supported (see ARCHITECTURE.md).
    pub per_user_limit: i32,
    /// Claims before this instant are refused with `not_open`.
    pub opens_at: Option<DateTime<Utc>>,
    /// Claims from this instant on are refused with `closed`.
    pub closes_at: Option<DateTime<Utc>>,
    /// Seconds after `closes_at` during which grants may still be cancelled
    /// and Redis keeps the campaign's keys.
    pub hold_secs: i64,
    /// When set, a grant is held until confirmed (payment done) and expires
    /// this many seconds after it was made.
    pub confirm_within_secs: Option<i64>,
    /// Redis shards each pool's stock is spread over (1 = unsharded).
    pub shards: u16,
    /// Fair start: seconds before `opens_at` during which claims are
    /// pre-queued, to be admitted at opening in drawn order (redis-queue).
    pub prequeue_secs: Option<i64>,
    /// Where events about its grants are POSTed, if anywhere (checked
    /// apart: the allow list is the service's, see [`super::webhook`]).
    pub webhook: Option<super::Webhook>,
}

/// Why a campaign definition was refused. Each maps to a stable error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NewCampaignError {
    /// Name empty or too long.
    #[error("name must be 1..={MAX_NAME_LEN} characters")]
    BadName,
    /// No pools given.
    #[error("a campaign needs at least one pool")]
    NoPools,
    /// Too many pools.
    #[error("a campaign may have at most {MAX_POOLS} pools")]
    TooManyPools,
    /// A pool name was malformed.
    #[error("{0}")]
    BadPoolName(IdError),
    /// Two pools share a name.
    #[error("pool {0:?} appears twice")]
    DuplicatePool(String),
    /// Stock out of range.
    #[error("stock must be between 1 and {MAX_STOCK}, got {0}")]
    BadStock(i64),
    /// per_user_limit other than 1.
    #[error("per_user_limit must be 1 (one active grant per user), got {0}")]
    BadPerUserLimit(i64),
    /// closes_at not after opens_at.
    #[error("closes_at must be after opens_at")]
    BadWindow,
    /// opens_at or closes_at before 2000 or too far ahead.
    #[error("{0}")]
    BadSchedule(String),
    /// hold_secs out of range.
    #[error("hold_secs must be between 0 and {MAX_HOLD_SECS}, got {0}")]
    BadHold(i64),
    /// confirm_within_secs out of range.
    #[error("confirm_within_secs must be between 1 and {MAX_CONFIRM_SECS}, got {0}")]
    BadConfirm(i64),
    /// shards out of range.
    #[error("shards must be between 1 and {MAX_SHARDS}, got {0}")]
    BadShards(i64),
    /// shards > 1 in a mode that cannot spread its stock.
    #[error("mode {0} cannot spread a pool over shards (only gate and redis-lua can; redis-queue's single arrival order needs one queue)")]
    ShardsUnsupported(Mode),
    /// prequeue_secs out of range, or without opens_at.
    #[error("prequeue_secs must be between 1 and {MAX_PREQUEUE_SECS} and needs opens_at")]
    BadPrequeue,
    /// prequeue_secs in a mode without a queue.
    #[error("mode {0} cannot pre-queue (only redis-queue admits a queue in drawn order)")]
    PrequeueUnsupported(Mode),
}

impl NewCampaignError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName => "invalid_name",
            Self::NoPools => "no_pools",
            Self::TooManyPools => "too_many_pools",
            Self::BadPoolName(_) => "invalid_pool",
            Self::DuplicatePool(_) => "duplicate_pool",
            Self::BadStock(_) => "invalid_stock",
            Self::BadPerUserLimit(_) => "invalid_per_user_limit",
            Self::BadWindow => "invalid_window",
            Self::BadSchedule(_) => "invalid_schedule",
            Self::BadHold(_) => "invalid_hold",
            Self::BadConfirm(_) => "invalid_confirm_within",
            Self::BadShards(_) => "invalid_shards",
            Self::ShardsUnsupported(_) => "shards_unsupported",
            Self::BadPrequeue => "invalid_prequeue",
            Self::PrequeueUnsupported(_) => "prequeue_unsupported",
        }
    }
}

impl NewCampaign {
    /// Checks a raw definition.
    pub fn parse(raw: RawCampaign) -> Result<Self, NewCampaignError> {
        let RawCampaign {
            name,
            mode,
            pools,
            per_user_limit,
            opens_at,
            closes_at,
            hold_secs,
            confirm_within_secs,
            shards,
            prequeue_secs,
        } = raw;
        let name = name.trim().to_string();
        // Control characters would forge lines in logs and terminals.
        if name.is_empty()
            || name.chars().count() > MAX_NAME_LEN
            || name.chars().any(char::is_control)
        {
            return Err(NewCampaignError::BadName);
        }
        if pools.is_empty() {
            return Err(NewCampaignError::NoPools);
        }
        if pools.len() > MAX_POOLS {
            return Err(NewCampaignError::TooManyPools);
        }
        let mut parsed: Vec<NewPool> = Vec::with_capacity(pools.len());
        for (pname, stock) in pools {
            let pname = PoolName::parse(pname).map_err(NewCampaignError::BadPoolName)?;
            if parsed.iter().any(|p| p.name == pname) {
                return Err(NewCampaignError::DuplicatePool(pname.as_str().into()));
            }
            if !(1..=MAX_STOCK).contains(&stock) {
                return Err(NewCampaignError::BadStock(stock));
            }
            parsed.push(NewPool {
                name: pname,
                stock: stock as i32,
            });
        }
        let per_user_limit = per_user_limit.unwrap_or(1);
        if per_user_limit != 1 {
            return Err(NewCampaignError::BadPerUserLimit(per_user_limit));
        }
        if let (Some(o), Some(c)) = (opens_at, closes_at) {
            if c <= o {
                return Err(NewCampaignError::BadWindow);
            }
        }
        check_schedule(Utc::now(), opens_at, closes_at)?;
        let hold_secs = hold_secs.unwrap_or(DEFAULT_HOLD_SECS);
        if !(0..=MAX_HOLD_SECS).contains(&hold_secs) {
            return Err(NewCampaignError::BadHold(hold_secs));
        }
        if let Some(c) = confirm_within_secs {
            if !(1..=MAX_CONFIRM_SECS).contains(&c) {
                return Err(NewCampaignError::BadConfirm(c));
            }
        }
        let mode = mode.unwrap_or(Mode::Gate);
        let shards = shards.unwrap_or(1);
        if !(1..=i64::from(MAX_SHARDS)).contains(&shards) {
            return Err(NewCampaignError::BadShards(shards));
        }
        if shards > 1 && !matches!(mode, Mode::Gate | Mode::RedisLua) {
            return Err(NewCampaignError::ShardsUnsupported(mode));
        }
        if let Some(p) = prequeue_secs {
            if !(1..=MAX_PREQUEUE_SECS).contains(&p) || opens_at.is_none() {
                return Err(NewCampaignError::BadPrequeue);
            }
            if mode != Mode::RedisQueue {
                return Err(NewCampaignError::PrequeueUnsupported(mode));
            }
        }
        Ok(Self {
            name,
            mode,
            pools: parsed,
            per_user_limit: per_user_limit as i32,
            opens_at,
            closes_at,
            hold_secs,
            confirm_within_secs,
            shards: shards as u16,
            prequeue_secs,
            webhook: None,
        })
    }
}

/// A campaign definition as it arrives, before any check.
#[derive(Debug, Clone, Default)]
pub struct RawCampaign {
    /// Free-text name.
    pub name: String,
    /// Admission mode.
    pub mode: Option<Mode>,
    /// `(name, stock)` pairs.
    pub pools: Vec<(String, i64)>,
    /// Active grants per user.
    pub per_user_limit: Option<i64>,
    /// Start of the window.
    pub opens_at: Option<DateTime<Utc>>,
    /// End of the window.
    pub closes_at: Option<DateTime<Utc>>,
    /// Hold after closing.
    pub hold_secs: Option<i64>,
    /// Confirmation deadline of held grants.
    pub confirm_within_secs: Option<i64>,
    /// Redis shards per pool.
    pub shards: Option<i64>,
    /// Fair start: the pre-queue's length before opening.
    pub prequeue_secs: Option<i64>,
}

/// Bounds of `opens_at` and `closes_at` as seen at `now`.
fn check_schedule(
    now: DateTime<Utc>,
    opens_at: Option<DateTime<Utc>>,
    closes_at: Option<DateTime<Utc>>,
) -> Result<(), NewCampaignError> {
    let earliest = DateTime::from_timestamp(EARLIEST_INSTANT_SECS, 0).expect("valid instant");
    for (field, at, ahead) in [
        ("opens_at", opens_at, MAX_OPENS_AHEAD_SECS),
        ("closes_at", closes_at, MAX_CLOSES_AHEAD_SECS),
    ] {
        let Some(at) = at else { continue };
        if at < earliest {
            return Err(NewCampaignError::BadSchedule(format!(
                "{field} must not be before 2000-01-01T00:00:00Z"
            )));
        }
        if at > now + chrono::Duration::seconds(ahead) {
            return Err(NewCampaignError::BadSchedule(format!(
                "{field} must be at most {} days ahead",
                ahead / 86_400
            )));
        }
    }
    Ok(())
}

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Database id.
    pub id: i64,
    /// Position within the campaign, 0-based; names Redis keys.
    pub idx: i32,
    /// Its name.
    pub name: PoolName,
    /// Its stock.
    pub stock: i32,
}

/// A campaign as stored. Immutable once created, so it is safe to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// Database id.
    pub id: CampaignId,
    /// Free-text name.
    pub name: String,
    /// Admission mode.
    pub mode: Mode,
    /// Active grants per user.
    pub per_user_limit: i32,
    /// Start of the claim window, if any.
    pub opens_at: Option<DateTime<Utc>>,
    /// End of the claim window, if any.
    pub closes_at: Option<DateTime<Utc>>,
    /// Seconds after closing during which cancellation stays possible.
    pub hold_secs: i64,
    /// Creation time; anchors key TTLs when there is no `closes_at`.
    pub created_at: DateTime<Utc>,
    /// Seconds a grant is held before it must be confirmed, if any.
    pub confirm_within_secs: Option<i64>,
    /// Redis shards each pool's stock is spread over (1 = unsharded); see
    /// [`super::shard`].
    pub shards: u16,
    /// Pools in creation order.
    pub pools: Vec<Pool>,
    /// Whether anyone may see it; unpublished, it answers like an unknown
    /// id to all but the admin.
    pub published: bool,
    /// Fair start: seconds before `opens_at` claims are pre-queued.
    pub prequeue_secs: Option<i64>,
    /// Fair start: the draw's seed (shown from opening only).
    pub draw_seed: Option<DrawSeed>,
    /// Its webhook endpoint, if any (the secret is not loaded with it).
    pub webhook_url: Option<String>,
    /// Whether an operator paused it (as loaded: the stores decide, see
    /// docs/ARCHITECTURE.md, "Operator controls").
    pub paused: bool,
}

/// Sliding lifetime of an open-ended campaign's Redis keys (no
/// `closes_at`): the worker pushes it forward long before it is reached,
/// and a rebuild starts it anew, so such a campaign works as long as it
/// exists.
pub const OPEN_ENDED_KEY_LIFETIME_SECS: i64 = 7 * 24 * 3600;

/// How long a closed campaign's Redis keys outlive `closes_at + hold_secs`:
/// whatever is still in an outbox or queue at the end is written to
/// PostgreSQL before its keys go, even with `hold_secs` 0.
pub const KEY_GRACE_SECS: i64 = 3600;

impl Campaign {
    /// The index of the pool named `name`; `None` for a name the campaign
    /// does not have (never a guess).
    pub fn pool_index(&self, name: &PoolName) -> Option<usize> {
        self.pools.iter().position(|p| &p.name == name)
    }

    /// The index of the pool whose id is `id`; `None` for another
    /// campaign's pool.
    pub fn pool_index_of(&self, id: i64) -> Option<usize> {
        self.pools.iter().position(|p| p.id == id)
    }

    /// Finds a pool by name, or the only pool when `name` is `None` and
    /// there is exactly one.
    pub fn pool(&self, name: Option<&PoolName>) -> Option<&Pool> {
        match name {
            Some(n) => self.pools.iter().find(|p| &p.name == n),
            None if self.pools.len() == 1 => self.pools.first(),
            None => None,
        }
    }

    /// The pool at position `idx`.
    pub fn pool_at(&self, idx: i32) -> Option<&Pool> {
        self.pools.get(usize::try_from(idx).ok()?)
    }

    /// Whether a claim at `now` falls inside the window; `Err` tells which side.
    pub fn window_check(&self, now: DateTime<Utc>) -> Result<(), super::RejectReason> {
        if let Some(o) = self.opens_at {
            if now < o {
                return Err(super::RejectReason::NotOpen);
            }
        }
        if let Some(c) = self.closes_at {
            if now >= c {
                return Err(super::RejectReason::Closed);
            }
        }
        Ok(())
    }

    /// When the pre-queue opens (fair start), if the campaign has one.
    pub fn prequeue_from(&self) -> Option<DateTime<Utc>> {
        Some(self.opens_at? - chrono::Duration::seconds(self.prequeue_secs?))
    }

    /// Checks a new `closes_at` for this campaign at `now`: after
    /// `opens_at`, within the bounds a creation has.
    pub fn check_closes_at(
        &self,
        closes_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), NewCampaignError> {
        if self.opens_at.is_some_and(|o| closes_at <= o) {
            return Err(NewCampaignError::BadWindow);
        }
        check_schedule(now, None, Some(closes_at))
    }

    /// The instant until which grants may be cancelled: closes_at + hold.
    pub fn hold_until(&self) -> Option<DateTime<Utc>> {
        self.closes_at
            .map(|c| c + chrono::Duration::seconds(self.hold_secs))
    }

    /// When the campaign's Redis keys may expire (before jitter):
    /// `closes_at + hold + grace`; `None` when open-ended (their expiry
    /// slides, see [`OPEN_ENDED_KEY_LIFETIME_SECS`]).
    pub fn keys_expire_at(&self) -> Option<DateTime<Utc>> {
        self.closes_at
            .map(|c| c + chrono::Duration::seconds(self.hold_secs + KEY_GRACE_SECS))
    }
}

#[cfg(test)]
#[path = "campaign_tests.rs"]
mod tests;
