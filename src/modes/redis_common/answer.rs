//! Answers as the Redis modes store them (`kind|fields`), their codec, and
//! how they read as claim outcomes.

use crate::{
    domain::{Campaign, ClaimOutcome, RejectReason, UserId},
    storage::redis::RedisStoreError,
};

/// An answer as stored in the campaign's `ans` hash. The text form is
/// `kind|fields...` with `|` as separator (user ids and codes never hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// `G|pidx|slot|code|seq`
    Granted {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
    },
    /// `P|pidx|slot|code|seq|ms`: gate reservation, commit in flight.
    Pending {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
        /// Redis time of the reservation, ms.
        at_ms: i64,
    },
    /// `Q|pidx|seq` or, once the drainer allocated, `Q|pidx|seq|slot|code`.
    Queued {
        /// Pool index.
        pidx: i32,
        /// Arrival number.
        seq: i64,
        /// Allocated slot and code, if any.
        alloc: Option<(i32, String)>,
    },
    /// `R|reason|seq`: final, and durable (gate, redis-queue) or in the
    /// outbox (redis-lua).
    Rejected {
        /// Arrival number.
        seq: i64,
    },
    /// `D|pidx|seq`: a queued claim the drainer dead-lettered; shown as
    /// queued until an operator replays it (`firstcome dlq replay`).
    DeadLettered {
        /// Pool index.
        pidx: i32,
        /// Arrival number.
        seq: i64,
    },
    /// `X|seq`: refused, not yet durable (gate, redis-queue). Never shown
    /// as final: the caller makes it durable, then promotes it to `R`.
    Refusing {
        /// Arrival number.
        seq: i64,
    },
    /// `W|pidx`: pre-queued before opening (fair start, redis-queue); the
    /// draw turns it into `Q` with its drawn place as arrival number.
    PreQueued {
        /// Pool index.
        pidx: i32,
    },
    /// `L|pidx|seq`: left the queue (seq 0 when it left pre-queued).
    Left {
        /// Pool index.
        pidx: i32,
        /// Arrival number, 0 when it had none.
        seq: i64,
    },
    /// `C|pidx|slot|code|seq`
    Cancelled {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
    },
}

impl Stored {
    /// Parses the stored text.
    pub fn parse(s: &str) -> Result<Self, RedisStoreError> {
        let bad = || RedisStoreError::Protocol(format!("bad answer {s:?}"));
        let f: Vec<&str> = s.split('|').collect();
        let int = |i: usize| -> Result<i64, RedisStoreError> {
            f.get(i).and_then(|x| x.parse().ok()).ok_or_else(bad)
        };
        let text = |i: usize| -> Result<String, RedisStoreError> {
            f.get(i).map(|x| x.to_string()).ok_or_else(bad)
        };
        Ok(match f.first().copied() {
            Some("G") => Stored::Granted {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
            },
            Some("P") => Stored::Pending {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
                at_ms: int(5)?,
            },
            Some("Q") => Stored::Queued {
                pidx: int(1)? as i32,
                seq: int(2)?,
                alloc: if f.len() >= 5 {
                    Some((int(3)? as i32, text(4)?))
                } else {
                    None
                },
            },
            Some("R") => Stored::Rejected { seq: int(2)? },
            Some("X") => Stored::Refusing { seq: int(1)? },
            Some("D") => Stored::DeadLettered {
                pidx: int(1)? as i32,
                seq: int(2)?,
            },
            Some("W") => Stored::PreQueued {
                pidx: int(1)? as i32,
            },
            Some("L") => Stored::Left {
                pidx: int(1)? as i32,
                seq: int(2)?,
            },
            Some("C") => Stored::Cancelled {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
            },
            _ => return Err(bad()),
        })
    }

    /// The stored text.
    pub fn encode(&self) -> String {
        match self {
            Stored::Granted {
                pidx,
                slot,
                code,
                seq,
            } => format!("G|{pidx}|{slot}|{code}|{seq}"),
            Stored::Pending {
                pidx,
                slot,
                code,
                seq,
                at_ms,
            } => format!("P|{pidx}|{slot}|{code}|{seq}|{at_ms}"),
            Stored::Queued {
                pidx,
                seq,
                alloc: None,
            } => format!("Q|{pidx}|{seq}"),
            Stored::Queued {
                pidx,
                seq,
                alloc: Some((slot, code)),
            } => format!("Q|{pidx}|{seq}|{slot}|{code}"),
            Stored::Rejected { seq } => format!("R|sold_out|{seq}"),
            Stored::Refusing { seq } => format!("X|{seq}"),
            Stored::DeadLettered { pidx, seq } => format!("D|{pidx}|{seq}"),
            Stored::PreQueued { pidx } => format!("W|{pidx}"),
            Stored::Left { pidx, seq } => format!("L|{pidx}|{seq}"),
            Stored::Cancelled {
                pidx,
                slot,
                code,
                seq,
            } => format!("C|{pidx}|{slot}|{code}|{seq}"),
        }
    }

    /// The answer a client sees. A pending reservation is not shown as
    /// granted (it is not durable yet): the caller waits for it to settle.
    pub fn outcome(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<ClaimOutcome, RedisStoreError> {
        let pool = |pidx: i32| {
            campaign
                .pool_at(pidx)
                .map(|p| p.name.clone())
                .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))
        };
        Ok(match self {
            Stored::Granted {
                pidx,
                slot,
                code,
                seq,
            } => ClaimOutcome::Granted {
                user_id: user.clone(),
                pool: pool(*pidx)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
            Stored::Pending { seq, .. }
            | Stored::Queued { seq, .. }
            | Stored::Refusing { seq }
            | Stored::DeadLettered { seq, .. } => ClaimOutcome::Queued {
                user_id: user.clone(),
                seq: Some(*seq),
            },
            Stored::PreQueued { .. } => ClaimOutcome::Queued {
                user_id: user.clone(),
                seq: None,
            },
            Stored::Left { seq, .. } => ClaimOutcome::Left {
                user_id: user.clone(),
                seq: (*seq > 0).then_some(*seq),
            },
            Stored::Rejected { seq } => ClaimOutcome::Rejected {
                user_id: user.clone(),
                reason: RejectReason::SoldOut,
                seq: Some(*seq),
            },
            Stored::Cancelled {
                pidx,
                slot,
                code,
                seq,
            } => ClaimOutcome::Cancelled {
                user_id: user.clone(),
                pool: pool(*pidx)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
        })
    }
}

impl Stored {
    /// A durable answer (as PostgreSQL gives it) in its stored form.
    pub fn from_outcome(c: &Campaign, o: &ClaimOutcome) -> Result<Self, RedisStoreError> {
        Ok(match o {
            ClaimOutcome::Granted {
                pool,
                slot,
                code,
                seq,
                ..
            }
            | ClaimOutcome::Cancelled {
                pool,
                slot,
                code,
                seq,
                ..
            } => {
                let (pidx, slot, code, seq) = (pool_index(c, pool)?, *slot, code.clone(), *seq);
                if matches!(o, ClaimOutcome::Granted { .. }) {
                    Stored::Granted {
                        pidx,
                        slot,
                        code,
                        seq,
                    }
                } else {
                    Stored::Cancelled {
                        pidx,
                        slot,
                        code,
                        seq,
                    }
                }
            }
            ClaimOutcome::Rejected { seq, .. } => Stored::Rejected {
                seq: seq.unwrap_or(0),
            },
            ClaimOutcome::Queued { .. } | ClaimOutcome::Left { .. } => {
                return Err(RedisStoreError::Protocol(
                    "queued (or left) is never durable".into(),
                ))
            }
        })
    }
}

/// The index of the campaign's pool named `name`; an error, never a guess,
/// for a name the campaign does not have.
pub fn pool_index(c: &Campaign, name: &crate::domain::PoolName) -> Result<i32, RedisStoreError> {
    c.pool_index(name)
        .map(|i| i as i32)
        .ok_or_else(|| RedisStoreError::Protocol(format!("campaign {} has no pool {name}", c.id)))
}

/// A campaign's state as PostgreSQL has it.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// Each user's latest grant as a stored answer (granted or cancelled).
    pub answers: Vec<(String, Stored)>,
    /// Active slots per pool index, sorted.
    pub active: Vec<Vec<i32>>,
    /// Highest arrival number seen.
    pub max_seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_answers_round_trip() {
        for s in [
            "G|0|3|ABC|7",
            "P|1|2|XYZ|9|1700000000000",
            "Q|0|5",
            "Q|0|5|4|KODE",
            "R|sold_out|11",
            "C|2|1|K|3",
            "X|12",
            "D|1|13",
        ] {
            assert_eq!(Stored::parse(s).unwrap().encode(), s);
        }
        assert!(Stored::parse("Z|1").is_err());
        assert!(Stored::parse("G|a|1|c|1").is_err());
    }
}
