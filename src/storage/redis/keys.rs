//! The key layout: every key of a campaign's shard carries that shard's
//! hash tag, so a script only ever touches one cluster slot.
//!
//! An unsharded campaign is tagged `{c42}`. Shard `s` of `n > 1` is tagged
//! `{c42.s.x}`, with the smallest `x` that puts its cluster slot in a window
//! a quarter into the `s`-th of `n` equal arcs of the slot ring: a cluster
//! created with even slot ranges (`redis-cli --cluster create`) then spreads
//! the shards over its masters instead of leaving it to the hash (three
//! shards on three masters land one on each). Shard 0 holds the
//! campaign-wide keys: the rebuild lock, the queue, the dead letters.

/// Number of hash slots of a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16_384;

/// Names of one pool's keys (in one shard).
#[derive(Debug, Clone)]
pub struct PoolKeys {
    /// Stock still available at the door.
    pub left: String,
    /// Highest slot ever handed out.
    pub hw: String,
    /// Released slots (zset, score = slot).
    pub free: String,
    /// Sharded pools: `ver` (bumped whenever stock arrives), `so` (set when
    /// the whole pool was seen sold out), `retn` (units given back but not
    /// yet published), `held` (redis-lua cancels not yet durable whose slot
    /// comes back here); see docs/ARCHITECTURE.md, "Shards".
    pub sx: String,
    /// Sharded pools: transfers this shard gave and the recipient has not
    /// yet confirmed, transfer id -> `recipient|slot,slot,...`.
    pub xf: String,
    /// Sharded pools: transfers this shard received (transfer id -> 1), so
    /// that completing one twice adds its slots once; and (`c:<code>`) the
    /// redis-lua cancels whose slot it got back (`returned.lua`).
    pub got: String,
}

/// Names of one campaign shard's keys.
#[derive(Debug, Clone)]
pub struct CampaignKeys {
    /// Which shard (0-based).
    pub shard: u16,
    /// How many shards the campaign has.
    pub nshards: u16,
    /// Window and expiry; its presence means the state is loaded.
    pub meta: String,
    /// user -> answer.
    pub ans: String,
    /// Arrival counter.
    pub seq: String,
    /// Claims waiting in the queue (redis-queue).
    pub queued: String,
    /// Write-behind outbox stream (redis-lua).
    pub outbox: String,
    /// Arrival queue stream (redis-queue).
    pub queue: String,
    /// Dead letters (redis-queue).
    pub dlq: String,
    /// Held while the state is rebuilt from PostgreSQL.
    pub rebuild_lock: String,
    /// Held by the one worker that flushes or drains this shard.
    pub lease: String,
    /// Gate reservations in flight: user -> reservation time (ms).
    pub pending: String,
    /// Fair start (redis-queue): the pre-queued users, in arrival order.
    pub prequeue: String,
    /// Per pool, by index.
    pub pools: Vec<PoolKeys>,
}

/// The hash tag of shard `shard` of `nshards` of campaign `id`.
pub fn shard_tag(id: i64, shard: u16, nshards: u16) -> String {
    let base = format!("c{id}");
    if nshards <= 1 {
        return base;
    }
    // A window a quarter of an arc wide, a quarter into the shard's arc:
    // away from the arcs' ends, where a cluster created with even slot
    // ranges puts the boundaries between masters.
    let arc = CLUSTER_SLOTS / u32::from(nshards);
    let window = (arc / 4).max(1);
    let start = u32::from(shard) * arc + window;
    (0u32..)
        .map(|x| format!("{base}.{shard}.{x}"))
        .find(|t| (key_slot(t) + CLUSTER_SLOTS - start) % CLUSTER_SLOTS < window)
        .expect("some suffix lands in every window")
}

/// The cluster slot of a hash tag (CRC16/XMODEM, as Redis computes it).
pub fn key_slot(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % CLUSTER_SLOTS
}

impl CampaignKeys {
    /// The keys of shard `shard` of `nshards` of campaign `id` with
    /// `npools` pools under `prefix`.
    pub fn new(prefix: &str, id: i64, npools: usize, shard: u16, nshards: u16) -> Self {
        let base = format!("{prefix}:{{{}}}", shard_tag(id, shard, nshards));
        Self {
            shard,
            nshards,
            meta: format!("{base}:meta"),
            ans: format!("{base}:ans"),
            seq: format!("{base}:seq"),
            queued: format!("{base}:queued"),
            outbox: format!("{base}:outbox"),
            queue: format!("{base}:queue"),
            dlq: format!("{base}:dlq"),
            rebuild_lock: format!("{base}:lock:rebuild"),
            lease: format!("{base}:lease"),
            pending: format!("{base}:pending"),
            prequeue: format!("{base}:pq"),
            pools: (0..npools)
                .map(|i| PoolKeys {
                    left: format!("{base}:p{i}:left"),
                    hw: format!("{base}:p{i}:hw"),
                    free: format!("{base}:p{i}:free"),
                    sx: format!("{base}:p{i}:sx"),
                    xf: format!("{base}:p{i}:xf"),
                    got: format!("{base}:p{i}:got"),
                })
                .collect(),
        }
    }

    /// Whether the campaign has more than one shard.
    pub fn sharded(&self) -> bool {
        self.nshards > 1
    }

    /// Every key name of the shard that carries its expiry, meta first.
    pub fn all(&self) -> Vec<&str> {
        let mut v = vec![
            self.meta.as_str(),
            &self.ans,
            &self.seq,
            &self.queued,
            &self.outbox,
            &self.queue,
            &self.dlq,
            &self.pending,
            &self.prequeue,
        ];
        for p in &self.pools {
            v.extend([p.left.as_str(), &p.hw, &p.free, &p.sx, &p.xf, &p.got]);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsharded_campaign_keeps_its_names() {
        let k = CampaignKeys::new("fc", 42, 1, 0, 1);
        assert_eq!(k.meta, "fc:{c42}:meta");
        assert_eq!(k.pools[0].left, "fc:{c42}:p0:left");
    }

    #[test]
    fn shards_land_in_distinct_arcs_of_the_slot_ring() {
        for id in [1_i64, 7, 42, 1000] {
            for n in [2_u16, 3, 4, 8, 64] {
                let arc = CLUSTER_SLOTS / u32::from(n);
                let arcs: std::collections::HashSet<u32> = (0..n)
                    .map(|s| key_slot(&shard_tag(id, s, n)) / arc)
                    .collect();
                assert_eq!(arcs.len(), n as usize, "campaign {id}, {n} shards");
            }
        }
    }

    #[test]
    fn three_shards_land_on_three_even_masters() {
        // redis-cli --cluster create's ranges for three masters.
        let master = |slot: u32| match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        for id in [1_i64, 7, 42, 1000] {
            let on: std::collections::HashSet<u32> = (0..3)
                .map(|s| master(key_slot(&shard_tag(id, s, 3))))
                .collect();
            assert_eq!(on.len(), 3, "campaign {id}");
        }
    }

    #[test]
    fn the_slot_is_redis_own() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("c42"), key_slot("c42"));
    }
}
