//! The fair start's draw, checked from outside (invariant 6 with a
//! pre-queue: the pre-queue in drawn order, then arrival order). The seed
//! must hash to the commitment the campaign showed from its creation, the
//! published ranks must be the order of `SHA-256(seed || user_id)`
//! recomputed here (with this crate's own SHA-256, not the service's code),
//! and every drawn user's arrival number must be their rank, so the
//! verifier's seq-based fairness check covers the drawn order too.

use hyper::Method;
use sha2::{Digest, Sha256};

use super::{SeenKind, Violations};
use crate::{api::Api, verify::Seen};

/// One published place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    /// 1-based rank.
    pub(crate) rank: i64,
    /// The user.
    pub(crate) user: String,
}

/// Reads the campaign's commitment and its whole published draw (paged);
/// `None` while the draw is not recorded.
pub(crate) async fn fetch(
    api: &Api,
    id: i64,
    secs: f64,
) -> anyhow::Result<Option<(String, String, Vec<Place>)>> {
    let mut places = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/v1/campaigns/{id}/draw?limit=1000&after={a}"),
            None => format!("/v1/campaigns/{id}/draw?limit=1000"),
        };
        let (s, v) = api
            .call_any(0, Method::GET, &path, None, true, secs)
            .await?;
        anyhow::ensure!(s == 200, "draw answered {s}: {v}");
        if v["drawn"] != true {
            return Ok(None);
        }
        for p in v["places"].as_array().into_iter().flatten() {
            places.push(Place {
                rank: p["rank"].as_i64().unwrap_or(0),
                user: p["user_id"].as_str().unwrap_or_default().to_string(),
            });
        }
        match v["next"].as_i64() {
            Some(n) => after = Some(n),
            None => {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                return Ok(Some((text("draw_seed"), text("draw_commitment"), places)));
            }
        }
    }
}

/// Counts the draw's violations into `v.misdrawn`: a seed that is not the
/// commitment's, each place whose rank is not the recomputed one, and each
/// drawn user (named `u<index>` by the bench) whose final answer carries
/// another arrival number than their rank.
pub(crate) fn check(
    seed_hex: &str,
    commitment: &str,
    places: &[Place],
    finals: &[Seen],
    v: &mut Violations,
) {
    let seed = match decode_hex(seed_hex) {
        Some(s) => s,
        None => {
            v.misdrawn += 1;
            return;
        }
    };
    if hex(&Sha256::digest(&seed)) != commitment {
        v.misdrawn += 1;
    }
    let mut by_rank = places.to_vec();
    by_rank.sort_by_key(|p| p.rank);
    let mut order: Vec<&str> = places.iter().map(|p| p.user.as_str()).collect();
    order.sort_by_cached_key(|u| {
        let mut h = Sha256::new();
        h.update(&seed);
        h.update(u.as_bytes());
        h.finalize().to_vec()
    });
    for (i, (p, want)) in by_rank.iter().zip(&order).enumerate() {
        if p.rank != i as i64 + 1 || p.user != *want {
            v.misdrawn += 1;
        }
    }
    for p in places {
        let Some(s) = p
            .user
            .strip_prefix('u')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| finals.get(i))
        else {
            continue;
        };
        if matches!(s.kind, SeenKind::Granted | SeenKind::SoldOut) && s.seq != p.rank {
            v.misdrawn += 1;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(seed: &[u8], users: &[&str]) -> Vec<Place> {
        let mut u: Vec<&str> = users.to_vec();
        u.sort_by_cached_key(|x| {
            let mut h = Sha256::new();
            h.update(seed);
            h.update(x.as_bytes());
            h.finalize().to_vec()
        });
        u.iter()
            .enumerate()
            .map(|(i, x)| Place {
                rank: i as i64 + 1,
                user: x.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_true_draw_passes_and_a_swapped_or_uncommitted_one_does_not() {
        let seed = [7_u8; 32];
        let commitment = hex(&Sha256::digest(seed));
        let good = places(&seed, &["u0", "u1", "u2", "u3"]);
        let mut v = Violations::default();
        check(&hex(&seed), &commitment, &good, &[], &mut v);
        assert_eq!(v.misdrawn, 0);
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        (swapped[0].rank, swapped[1].rank) = (1, 2);
        check(&hex(&seed), &commitment, &swapped, &[], &mut v);
        assert_eq!(v.misdrawn, 2);
        let mut v = Violations::default();
        check(&hex(&[8_u8; 32]), &commitment, &good, &[], &mut v);
        assert!(v.misdrawn >= 1);
    }

    #[test]
    fn a_drawn_user_must_carry_their_rank_as_arrival_number() {
        let seed = [1_u8; 32];
        let commitment = hex(&Sha256::digest(seed));
        let drawn = places(&seed, &["u0", "u1"]);
        let mut finals = vec![Seen::default(); 2];
        for p in &drawn {
            let i: usize = p.user[1..].parse().unwrap();
            finals[i].kind = SeenKind::Granted;
            finals[i].seq = p.rank;
        }
        let mut v = Violations::default();
        check(&hex(&seed), &commitment, &drawn, &finals, &mut v);
        assert_eq!(v.misdrawn, 0);
        finals[0].seq += 5;
        check(&hex(&seed), &commitment, &drawn, &finals, &mut v);
        assert_eq!(v.misdrawn, 1);
    }
}
