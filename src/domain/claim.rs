//! A claim's outcome (the one answer type: the HTTP body, the Redis codec
//! and the bench's record are conversions of it), its status, refusal
//! reasons and coupon codes. No I/O.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{PoolName, UserId};

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// No stock left in the pool.
    SoldOut,
    /// Before `opens_at`.
    NotOpen,
    /// At or after `closes_at`.
    Closed,
}

impl RejectReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::SoldOut => "sold_out",
            RejectReason::NotOpen => "not_open",
            RejectReason::Closed => "closed",
        }
    }
}

/// The state of a user's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimStatus {
    /// Durable grant (or, in redis-lua, acknowledged and being flushed).
    Granted,
    /// Accepted, waiting for the drainer (redis-queue).
    Queued,
    /// Refused.
    Rejected,
    /// Granted, then cancelled; the slot went back to stock.
    Cancelled,
}

/// A user's answer: the body of every claim endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The user holds `slot` of `pool`, with coupon `code`.
    Granted {
        /// Who.
        user_id: UserId,
        /// Which pool.
        pool: PoolName,
        /// Seat number, 1..=stock.
        slot: i32,
        /// Unguessable coupon code.
        code: String,
        /// Arrival sequence number.
        seq: i64,
    },
    /// Waiting in the queue (redis-queue).
    Queued {
        /// Who.
        user_id: UserId,
        /// Arrival sequence number; `None` while pre-queued before the
        /// draw (fair start), which gives it.
        seq: Option<i64>,
    },
    /// Refused for `reason`.
    Rejected {
        /// Who.
        user_id: UserId,
        /// Why.
        reason: RejectReason,
        /// Arrival sequence number, when one was drawn.
        seq: Option<i64>,
    },
    /// Was granted, then cancelled.
    Cancelled {
        /// Who.
        user_id: UserId,
        /// Which pool.
        pool: PoolName,
        /// The released seat number.
        slot: i32,
        /// The released coupon code.
        code: String,
        /// Arrival sequence number.
        seq: i64,
    },
    /// Left the queue before being admitted (redis-queue): the place was
    /// given up, nothing was held. Shown as `cancelled`, without a seat.
    Left {
        /// Who.
        user_id: UserId,
        /// The arrival number the place had, if it had one yet.
        seq: Option<i64>,
    },
}

impl ClaimOutcome {
    /// The claim's status.
    pub fn status(&self) -> ClaimStatus {
        match self {
            ClaimOutcome::Granted { .. } => ClaimStatus::Granted,
            ClaimOutcome::Queued { .. } => ClaimStatus::Queued,
            ClaimOutcome::Rejected { .. } => ClaimStatus::Rejected,
            ClaimOutcome::Cancelled { .. } | ClaimOutcome::Left { .. } => ClaimStatus::Cancelled,
        }
    }

    /// Whether no further state change will happen on its own.
    pub fn is_final(&self) -> bool {
        !matches!(self, ClaimOutcome::Queued { .. })
    }
}

/// Alphabet of coupon codes: Crockford base32 (no I, L, O, U), easy to read
/// aloud and type.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a coupon code: 16 x 5 bits = 80 bits of entropy, so codes
/// are neither guessable nor likely to collide (PostgreSQL's unique index
/// catches the rest).
pub const CODE_LEN: usize = 16;

/// A fresh coupon code from the thread's CSPRNG (ChaCha, reseeded from the OS).
pub fn generate_code() -> String {
    let mut rng = rand::thread_rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_long_and_distinct() {
        let a = generate_code();
        let b = generate_code();
        assert_eq!(a.len(), CODE_LEN);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| CODE_ALPHABET.contains(&c)));
    }
}
