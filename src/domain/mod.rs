//! Domain types: parsed, validated values with no I/O.
//!
//! Everything that crosses the HTTP boundary is parsed into one of these
//! types first ("parse, don't validate"), so the admission modes never see a
//! malformed user id, an empty pool list or a negative stock.

mod campaign;
mod claim;
pub mod draw;
mod ids;
mod mode;
pub mod shard;
pub mod webhook;

pub use campaign::{
    Campaign, NewCampaign, NewCampaignError, NewPool, Pool, RawCampaign, KEY_GRACE_SECS,
    MAX_SHARDS, MAX_STOCK, OPEN_ENDED_KEY_LIFETIME_SECS,
};
pub use claim::{generate_code, ClaimOutcome, ClaimStatus, RejectReason};
pub use ids::{CampaignId, IdError, PoolName, UserId};
pub use mode::Mode;
pub use webhook::{Webhook, WebhookAllow, WebhookError};
