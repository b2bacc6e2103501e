//! Shards: a campaign with `shards: n` spreads each pool's stock over `n`
//! Redis states (hash tags, so cluster masters). A user's home shard holds
//! the user's answer; each shard starts with a contiguous range of the
//! pool's slots, and stock moves between shards only when one runs dry
//! (docs/ARCHITECTURE.md, "Shards", says why that never undersells).

use super::UserId;

/// The shard holding `user`'s answer: stable across processes and
/// versions (FNV-1a of the id), so a repeat finds its first answer.
pub fn home_shard(user: &UserId, nshards: u16) -> u16 {
    if nshards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(nshards)) as u16
}

/// The slots shard `shard` of `nshards` starts with in a pool of `stock`:
/// `lo..=hi`, contiguous, near-equal, together exactly `1..=stock`. Empty
/// (`lo == hi + 1`) when the stock is smaller than the shard count.
pub fn shard_range(stock: i32, shard: u16, nshards: u16) -> (i32, i32) {
    let n = i64::from(nshards.max(1));
    let (s, stock) = (i64::from(shard), i64::from(stock));
    let lo = s * stock / n + 1;
    let hi = (s + 1) * stock / n;
    (lo as i32, hi as i32)
}

/// The shard whose starting range holds `slot`.
pub fn range_owner(stock: i32, slot: i32, nshards: u16) -> u16 {
    (0..nshards.max(1))
        .find(|&s| {
            let (lo, hi) = shard_range(stock, s, nshards);
            (lo..=hi).contains(&slot)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_stock_exactly_once() {
        for stock in [1, 2, 3, 7, 100, 1001] {
            for n in [1_u16, 2, 3, 8, 64] {
                let mut next = 1;
                for s in 0..n {
                    let (lo, hi) = shard_range(stock, s, n);
                    assert_eq!(lo, next, "stock {stock}, {n} shards, shard {s}");
                    assert!(hi >= lo - 1);
                    next = hi + 1;
                    for slot in lo..=hi {
                        assert_eq!(range_owner(stock, slot, n), s);
                    }
                }
                assert_eq!(next, stock + 1);
            }
        }
    }

    #[test]
    fn users_spread_and_stay_home() {
        let n = 4;
        let mut counts = [0; 4];
        for i in 0..4000 {
            let u = UserId::parse(format!("user-{i}")).unwrap();
            let h = home_shard(&u, n);
            assert_eq!(h, home_shard(&u, n));
            counts[h as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(home_shard(&UserId::parse("x".to_string()).unwrap(), 1), 0);
    }
}
