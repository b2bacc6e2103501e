//! The invariant checker: what each user was told ([`Seen`], typed by
//! [`SeenKind`]), whether a later state contradicts it, and the count of
//! every violation of the invariants (docs/ARCHITECTURE.md) from the grants export. Pure functions of
//! what the bench collected: no I/O, no clock, no service calls here.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

/// What a user was told (or what a status GET showed), in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub(crate) enum SeenKind {
    /// Not asked (the rush ended first), or not checked.
    #[default]
    None,
    /// 200 `granted`.
    Granted,
    /// 202 `queued` (redis-queue).
    Queued,
    /// `rejected`, reason `sold_out`.
    SoldOut,
    /// `rejected`, reason `not_open` or `closed`.
    Refused,
    /// `cancelled`: the user's own DELETE answered 200, or a status GET.
    Cancelled,
    /// 5xx or no answer.
    Error,
    /// redis-queue: queued, then the entry vanished with Redis' state
    /// (documented exposure).
    QueueLost,
    /// The user's DELETE got no answer: granted or cancelled are both right.
    CancelInDoubt,
    /// A status GET answered 404: the service forgot the user.
    Missing,
}

impl SeenKind {
    /// A user answered this asked and got an answer (not an error).
    pub(crate) fn asked(self) -> bool {
        matches!(
            self,
            Self::Granted | Self::Queued | Self::SoldOut | Self::Cancelled | Self::CancelInDoubt
        )
    }

    /// The bench cancelled (or tried to cancel) this user's grant.
    pub(crate) fn cancelled(self) -> bool {
        matches!(self, Self::Cancelled | Self::CancelInDoubt)
    }
}

/// What one user was told, compactly (a million of these must fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen {
    /// What the answer was.
    pub(crate) kind: SeenKind,
    /// Pool index asked for.
    pub(crate) pool: u8,
    /// Slot, when granted (or cancelled).
    pub(crate) slot: i32,
    /// Arrival number (-1 when the answer had none).
    pub(crate) seq: i64,
    /// Code, when granted (or cancelled).
    pub(crate) code: [u8; 16],
    /// When the answer was received, in ms since the run started.
    pub(crate) at: u32,
}

pub(crate) fn seen_from(status: u16, v: &Value, pool: u8) -> Seen {
    let mut s = Seen {
        pool,
        seq: v["seq"].as_i64().unwrap_or(-1),
        ..Default::default()
    };
    s.kind = match (status, v["status"].as_str(), v["reason"].as_str()) {
        (200, Some("granted"), _) => SeenKind::Granted,
        (202 | 200, Some("queued"), _) => SeenKind::Queued,
        (_, Some("rejected"), Some("sold_out")) => SeenKind::SoldOut,
        (_, Some("rejected"), _) => SeenKind::Refused,
        (_, Some("cancelled"), _) => SeenKind::Cancelled,
        _ => SeenKind::Error,
    };
    if matches!(s.kind, SeenKind::Granted | SeenKind::Cancelled) {
        s.slot = v["slot"].as_i64().unwrap_or(0) as i32;
        if let Some(c) = v["code"].as_str() {
            let b = c.as_bytes();
            let n = b.len().min(16);
            s.code[..n].copy_from_slice(&b[..n]);
        }
    }
    s
}

/// The same grant: pool, slot, code and arrival number.
pub(crate) fn same_grant(a: &Seen, b: &Seen) -> bool {
    a.pool == b.pool && a.slot == b.slot && a.code == b.code && (a.seq < 0 || a.seq == b.seq)
}

/// The same answer, whenever it was received.
pub(crate) fn same_answer(a: &Seen, b: &Seen) -> bool {
    Seen { at: 0, ..*a } == Seen { at: 0, ..*b }
}

/// Whether `now`, a user's state after the drain, contradicts the final
/// answer the user was `told` (docs/ARCHITECTURE.md, "A final answer once given is
/// never later replaced"). Only final answers (granted, sold_out) and the
/// user's own cancellation are compared; anything else is `false`.
pub(crate) fn changed(told: &Seen, now: &Seen) -> bool {
    match told.kind {
        SeenKind::Granted => !(now.kind == SeenKind::Granted && same_grant(told, now)),
        SeenKind::SoldOut => {
            !(now.kind == SeenKind::SoldOut && (told.seq < 0 || told.seq == now.seq))
        }
        SeenKind::Cancelled => now.kind != SeenKind::Cancelled,
        SeenKind::CancelInDoubt => {
            !(now.kind == SeenKind::Cancelled
                || (now.kind == SeenKind::Granted && same_grant(told, now)))
        }
        _ => false,
    }
}

/// Whether a user's state is compared after the drain.
pub(crate) fn checked(kind: SeenKind) -> bool {
    matches!(
        kind,
        SeenKind::Granted | SeenKind::SoldOut | SeenKind::Cancelled | SeenKind::CancelInDoubt
    )
}

/// Counts that must all be zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Violations {
    /// Pools with more active grants than stock (sum of the excess).
    pub oversold: usize,
    /// Users with more than one active grant.
    pub duplicates: usize,
    /// Active grants sharing a (pool, slot), or a slot outside 1..=stock.
    pub double_booked: usize,
    /// Stock left unclaimed although enough users asked.
    pub undersold: usize,
    /// Answers `granted` with no matching grant in PostgreSQL.
    pub lost: usize,
    /// redis-queue: sold_out answers with a lower seq than some grant.
    pub unfair: usize,
    /// Fair start: places whose rank is not the one recomputed from the
    /// revealed seed, users whose arrival number is not their rank, and a
    /// seed that does not match its commitment (`verify/draw.rs`).
    pub misdrawn: usize,
    /// Repeated claims or polls that contradicted the first answer.
    pub unstable: usize,
    /// Final answers (granted, sold_out) or own cancellations that the
    /// user's status GET contradicts once the rush drained: 404, another
    /// status, another slot, code or seq.
    pub changed: usize,
    /// With `--retry-secs`: users who never got an answer (liveness).
    pub unanswered: usize,
}

/// Documented losses when Redis loses its state (`--allow-redis-loss`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exposure {
    /// redis-lua: answers `granted` never flushed to PostgreSQL.
    pub lua_unflushed_lost: usize,
    /// redis-queue: users answered `queued` whose entry vanished (404 or
    /// still queued after the drain).
    pub queue_lost: usize,
    /// redis-lua: final answers (granted or sold_out) received within the
    /// write-behind window of the loss whose state changed since.
    pub lua_changed: usize,
    /// redis-lua: the write-behind window used, ms (0 when not applied).
    pub loss_window_ms: u64,
}

impl Violations {
    pub(crate) fn total(&self) -> usize {
        self.oversold
            + self.duplicates
            + self.double_booked
            + self.undersold
            + self.lost
            + self.unfair
            + self.misdrawn
            + self.unstable
            + self.changed
            + self.unanswered
    }

    /// `0`, or the non-zero counts by name.
    pub fn summary(&self) -> String {
        if self.total() == 0 {
            return "0".into();
        }
        let parts = [
            ("oversold", self.oversold),
            ("duplicates", self.duplicates),
            ("double_booked", self.double_booked),
            ("undersold", self.undersold),
            ("lost", self.lost),
            ("unfair", self.unfair),
            ("misdrawn", self.misdrawn),
            ("unstable", self.unstable),
            ("changed", self.changed),
            ("unanswered", self.unanswered),
        ];
        parts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the verifier is told about the run.
pub(crate) struct Check {
    /// redis-queue: every granted seq must be below every sold_out one.
    pub(crate) fairness: bool,
    /// redis-lua with Redis' state lost: answers received in this range
    /// (ms since the run started, inclusive) may have been lost with the
    /// write-behind, and are counted as exposure, not violations.
    pub(crate) lua_loss: Option<(i64, i64)>,
}

/// Checks every invariant from the grants export, the answers users were
/// given (`seen`) and their state after the drain (`finals`, `None` kinds
/// not checked); returns the violations and the redis-lua exposure.
pub(crate) fn verify(
    pools: &[(String, i64, f64)],
    names: &[String],
    seen: &[Seen],
    finals: &[Seen],
    grants: &[Value],
    check: &Check,
) -> (Violations, Exposure) {
    let mut v = Violations::default();
    let mut e = Exposure::default();
    let exposed = |s: &Seen| {
        check
            .lua_loss
            .is_some_and(|(from, to)| (from..=to).contains(&(s.at as i64)))
    };
    let idx: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut per_pool = vec![0i64; pools.len()];
    let mut users = HashSet::new();
    let mut slots = HashSet::new();
    let mut codes = HashSet::new();
    let mut max_granted_seq = vec![i64::MIN; pools.len()];
    for g in grants {
        let p = idx
            .get(g["pool"].as_str().unwrap_or(""))
            .copied()
            .unwrap_or(0);
        per_pool[p] += 1;
        if !users.insert(g["user_id"].as_str().unwrap_or("").to_string()) {
            v.duplicates += 1;
        }
        let slot = g["slot"].as_i64().unwrap_or(0);
        if !slots.insert((p, slot)) || slot < 1 || slot > pools[p].1 {
            v.double_booked += 1;
        }
        codes.insert(g["code"].as_str().unwrap_or("").to_string());
        max_granted_seq[p] = max_granted_seq[p].max(g["seq"].as_i64().unwrap_or(0));
    }
    for (p, (_, stock, _)) in pools.iter().enumerate() {
        v.oversold += (per_pool[p] - stock).max(0) as usize;
        // Only users that got an answer count as asking; errors may have
        // been refused before any reservation. A user who cancelled asked
        // too: the bench then claims the pool again until sold_out, so the
        // returned stock is asked for.
        let asked = seen
            .iter()
            .filter(|s| s.pool as usize == p && s.kind.asked())
            .count() as i64;
        if asked >= *stock && per_pool[p] < *stock {
            v.undersold += (stock - per_pool[p]) as usize;
        }
    }
    for s in seen.iter().filter(|s| s.kind == SeenKind::Granted) {
        let code = String::from_utf8_lossy(&s.code)
            .trim_end_matches('\0')
            .to_string();
        if !codes.contains(&code) {
            if exposed(s) {
                e.lua_unflushed_lost += 1;
            } else {
                v.lost += 1;
            }
        }
    }
    for (user, (s, now)) in seen.iter().zip(finals).enumerate() {
        if now.kind != SeenKind::None && changed(s, now) {
            if exposed(s) && matches!(s.kind, SeenKind::Granted | SeenKind::SoldOut) {
                e.lua_changed += 1;
            } else {
                v.changed += 1;
                // A few examples, to find the cause from the round's log.
                if v.changed <= 5 {
                    eprintln!("changed answer: user #{user} was told {s:?}, now {now:?}");
                }
            }
        }
    }
    if check.fairness {
        for s in seen.iter().filter(|s| s.kind == SeenKind::SoldOut) {
            if s.seq >= 0 && s.seq < max_granted_seq[s.pool as usize] {
                v.unfair += 1;
            }
        }
    }
    (v, e)
}

pub(crate) mod draw;
#[cfg(test)]
mod tests;
