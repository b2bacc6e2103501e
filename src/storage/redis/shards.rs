//! The typed calls of a sharded pool's scripts (`give.lua`, `take.lua`,
//! `publish.lua`, `marks.lua`) and of its transfer records; the protocol
//! that uses them is in `modes/redis_common/shards.rs`.

use super::{CampaignKeys, RedisStore, RedisStoreError};

/// What `give.lua` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gave {
    /// No whole state on that shard.
    NoInit,
    /// That shard's state is of another generation.
    Stale,
    /// These slots, recorded as transfer in flight until confirmed.
    Slots(Vec<i32>),
    /// Nothing given: what the shard holds.
    Nothing(Holding),
}

/// A shard's holding of one pool, as the sold-out proof reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// Bumped whenever stock arrives there.
    pub ver: String,
    /// Units given back, waiting to be published.
    pub retn: i64,
    /// Transfers it gave that are not confirmed yet.
    pub out: i64,
    /// Units at its door.
    pub left: i64,
    /// Cancels not yet durable whose slot comes back here (redis-lua).
    pub held: i64,
}

impl Holding {
    /// Whether nothing is claimable, coming back, or in flight here.
    pub fn empty(&self) -> bool {
        self.retn == 0 && self.out == 0 && self.left <= 0 && self.held == 0
    }
}

fn num(r: &[String], i: usize) -> Result<i64, RedisStoreError> {
    r.get(i)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| RedisStoreError::Protocol(format!("shard reply {r:?}")))
}

impl RedisStore {
    /// `give.lua`: shard `k` gives up to `want` units of pool `pidx` to
    /// shard `to` (transfer `id`), or reports its holding (`want` 0).
    #[allow(clippy::too_many_arguments)]
    pub async fn give(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        id: &str,
        to: u16,
        want: i64,
        gen: i64,
        hi: i32,
    ) -> Result<Gave, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys = [&k.meta, &p.left, &p.hw, &p.free, &p.sx, &p.xf].map(String::as_str);
        let args = [
            id,
            &to.to_string(),
            &want.to_string(),
            &gen.to_string(),
            &hi.to_string(),
        ];
        let r: Vec<String> = self.eval(&self.scripts().give, &keys, &args).await?;
        Ok(match r.first().map(String::as_str) {
            Some("noinit") => Gave::NoInit,
            Some("stale") => Gave::Stale,
            Some("gave") => Gave::Slots(
                r[1..]
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| RedisStoreError::Protocol(format!("give: {r:?}")))?,
            ),
            Some("none") => Gave::Nothing(Holding {
                ver: r.get(1).cloned().unwrap_or_default(),
                retn: num(&r, 2)?,
                out: num(&r, 3)?,
                left: num(&r, 4)?,
                held: num(&r, 5)?,
            }),
            _ => return Err(RedisStoreError::Protocol(format!("give: {r:?}"))),
        })
    }

    /// `take.lua`: shard `k` receives transfer `id`'s `slots`; 1 added, 0
    /// already received, -1 no whole state of generation `gen` there.
    pub async fn take(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        id: &str,
        gen: i64,
        slots: &[i32],
    ) -> Result<i64, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys = [&k.meta, &p.left, &p.free, &p.sx, &p.got].map(String::as_str);
        let mut args = vec![id.to_string(), gen.to_string()];
        args.extend(slots.iter().map(i32::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.eval(&self.scripts().take, &keys, &args).await
    }

    /// Forgets transfer `id` on the shard that gave it (the recipient has
    /// it).
    pub async fn transfer_done(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        id: &str,
    ) -> Result<(), RedisStoreError> {
        let (xf, id) = (k.pool(pidx)?.xf.clone(), id.to_string());
        self.run(|mut c| async move {
            redis::cmd("HDEL")
                .arg(&xf)
                .arg(&id)
                .query_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }

    /// The transfers shard `k` gave in pool `pidx` that are not confirmed:
    /// (id, recipient shard, slots).
    pub async fn transfers(
        &self,
        k: &CampaignKeys,
        pidx: usize,
    ) -> Result<Vec<(String, u16, Vec<i32>)>, RedisStoreError> {
        let xf = k.pool(pidx)?.xf.clone();
        let m: std::collections::HashMap<String, String> = self
            .run(|mut c| async move { redis::cmd("HGETALL").arg(&xf).query_async(&mut c).await })
            .await?;
        m.into_iter()
            .map(|(id, v)| {
                let bad = || RedisStoreError::Protocol(format!("transfer {id}: {v}"));
                let (to, slots) = v.split_once('|').ok_or_else(bad)?;
                let slots = slots
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<i32>, _>>()
                    .map_err(|_| bad())?;
                Ok((id.clone(), to.parse().map_err(|_| bad())?, slots))
            })
            .collect()
    }

    /// `publish.lua`: makes the units shard `k` got back in pool `pidx`
    /// claimable; how many.
    pub async fn publish(&self, k: &CampaignKeys, pidx: usize) -> Result<i64, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys = [&k.meta, &p.left, &p.sx].map(String::as_str);
        self.eval(&self.scripts().publish, &keys, &[]).await
    }

    /// `marks.lua`: sets shard `k`'s sold-out mark of pool `pidx` if its
    /// `ver` and generation are still `seen` and it holds nothing
    /// (`Some`), or clears it (`None`); `true` when done.
    pub async fn mark(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        seen: Option<(&str, i64)>,
    ) -> Result<bool, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys = [&k.meta, &p.left, &p.sx, &p.xf].map(String::as_str);
        let gen = seen.map(|s| s.1.to_string()).unwrap_or_default();
        let args = match seen {
            Some((v, _)) => ["set", v, gen.as_str()],
            None => ["clear", "", ""],
        };
        Ok(self
            .eval::<i64>(&self.scripts().marks, &keys, &args)
            .await?
            == 1)
    }

    /// `returned.lua`: shard `k` gets back `slot` of pool `pidx`, whose
    /// cancel of grant `code` (decided in generation `gen`) is now durable;
    /// `true` when it did (once per cancel).
    pub async fn returned(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        slot: i32,
        gen: i64,
        code: &str,
    ) -> Result<bool, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys = [&k.meta, &p.free, &p.sx, &p.got].map(String::as_str);
        let (slot, gen) = (slot.to_string(), gen.to_string());
        let args = [slot.as_str(), gen.as_str(), code];
        Ok(self
            .eval::<i64>(&self.scripts().returned, &keys, &args)
            .await?
            == 1)
    }
}
