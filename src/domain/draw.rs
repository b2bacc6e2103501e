//! The fair start's draw (issue 14): claims that arrive in the pre-queue
//! (up to `prequeue_secs` before `opens_at`) are admitted in an order drawn
//! from a seed fixed at creation, not in arrival order, so being a few
//! milliseconds closer to the server buys nothing.
//!
//! The order is a pure function of the seed and the list of pre-queued
//! users, so anyone can recompute it: each user's key is
//! `SHA-256(seed || user_id)` (the seed's 32 bytes followed by the user id's
//! UTF-8 bytes), and the order is the users sorted by key, ascending
//! (byte-wise; ties, which SHA-256 makes practically impossible, by user
//! id). The campaign shows `draw_commitment = hex(SHA-256(seed))` from
//! creation, so the seed cannot be chosen after the list is known, and the
//! seed itself (`draw_seed`, hex) from opening, when the list is closed.
//! No I/O.

use sha2::{Digest, Sha256};

/// Longest pre-queue: 7 days before opening.
pub const MAX_PREQUEUE_SECS: i64 = 7 * 24 * 3600;

/// A draw's seed: 32 random bytes, fixed when the campaign is created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DrawSeed(pub [u8; 32]);

impl std::fmt::Debug for DrawSeed {
    // Never printed by accident (logs) before the opening.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrawSeed(..)")
    }
}

impl DrawSeed {
    /// A fresh seed from the thread's CSPRNG.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        Self(b)
    }

    /// From stored bytes; `None` unless exactly 32.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }

    /// The seed as lowercase hex (what the campaign shows from opening).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// `hex(SHA-256(seed))`: shown from creation.
    pub fn commitment(&self) -> String {
        hex(&Sha256::digest(self.0))
    }

    /// A user's place key: `SHA-256(seed || user_id)`.
    pub fn key(&self, user_id: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(user_id.as_bytes());
        h.finalize().into()
    }

    /// Puts `entries` (user id first) in draw order.
    pub fn order<T>(&self, entries: &mut [(String, T)]) {
        entries.sort_by_cached_key(|(u, _)| (self.key(u), u.clone()));
    }
}

/// Lowercase hex of `b`.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commitment_and_the_order_follow_the_published_recipe() {
        let seed = DrawSeed([7u8; 32]);
        // Computed independently: python3, hashlib.sha256(bytes([7]*32)).hexdigest()
        assert_eq!(
            seed.commitment(),
            "4bb06f8e4e3a7715d201d573d0aa423762e55dabd61a2c02278fa56cc6d294e0"
        );
        // hashlib.sha256(bytes([7]*32) + b"a").hexdigest()
        assert_eq!(
            hex(&seed.key("a")),
            "8a13193699443cd5b1dc4e3a57854e3b038ef658d06aed2323dfd8052e59f947"
        );
        let mut users: Vec<(String, ())> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|u| (u.to_string(), ()))
            .collect();
        seed.order(&mut users);
        let keys: Vec<[u8; 32]> = users.iter().map(|(u, _)| seed.key(u)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by key");
        // Another seed, another order (for these five users).
        let mut again = users.clone();
        DrawSeed([8u8; 32]).order(&mut again);
        assert_ne!(users, again);
        assert_eq!(format!("{seed:?}"), "DrawSeed(..)");
    }
}
