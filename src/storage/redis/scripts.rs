//! The Lua scripts (`lua/*.lua`, compiled in) and one typed call per
//! script: each takes the campaign's [`CampaignKeys`] and builds its KEYS
//! list here, in the order the script's header documents, so no caller
//! writes a KEYS list by hand. The few plain commands on a campaign's keys
//! (dead letters, the reservations index, the state's generation) are typed
//! here too.

use redis::AsyncCommands;

use super::{
    AnswerSwap, CampaignKeys, InitState, PoolKeys, RedisStore, RedisStoreError, ScriptMode,
};

/// How a compensating release leaves the reservation's pool
/// (`release.lua`'s ARGV).
#[derive(Debug, Clone, Default)]
pub struct ReleaseArgs<'a> {
    /// The user.
    pub user: &'a str,
    /// The answer the release expects (compare-and-set).
    pub expected: &'a str,
    /// The answer afterwards; '' deletes it.
    pub replacement: &'a str,
    /// The slot to free.
    pub free_slot: Option<i32>,
    /// Change of the queued counter.
    pub queued_delta: i64,
    /// Whether the unit of stock goes back to the door.
    pub give_back: bool,
    /// A slot PostgreSQL says is held, to mark taken.
    pub mark_taken: Option<i32>,
    /// Sharded pools: this shard's starting range `(lo, hi)`; a unit given
    /// back then waits to be published.
    pub range: Option<(i32, i32)>,
}

fn opt(x: Option<i32>) -> String {
    x.map(|s| s.to_string()).unwrap_or_default()
}

impl CampaignKeys {
    /// The keys of pool `pidx`; an error, never a guess, for an index the
    /// campaign does not have.
    pub fn pool(&self, pidx: usize) -> Result<&PoolKeys, RedisStoreError> {
        self.pools
            .get(pidx)
            .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))
    }
}

impl RedisStore {
    /// Runs a script that answers 1 when it did what it was asked, 0 when
    /// it found nothing to do.
    pub(super) async fn eval_did(
        &self,
        lua: &super::Lua,
        keys: &[&str],
        args: &[&str],
    ) -> Result<bool, RedisStoreError> {
        Ok(self.eval::<i64>(lua, keys, args).await? == 1)
    }

    /// `claim.lua`: one admission decision for `user` in pool `pidx`;
    /// `hi` is the last slot of this shard's range (the stock when
    /// unsharded), `proof` the `ver` and generation a sold-out proof saw
    /// (sharded).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        user: &str,
        code: &str,
        mode: ScriptMode,
        hi: i64,
        proof: Option<(&str, i64)>,
    ) -> Result<Vec<String>, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys: [&str; 12] = [
            &k.meta,
            &k.ans,
            &k.seq,
            &p.left,
            &p.hw,
            &p.free,
            mode.stream(k),
            &k.queued,
            &k.pending,
            &p.sx,
            &p.xf,
            &k.prequeue,
        ];
        let args = [
            user,
            &pidx.to_string(),
            code,
            mode.as_arg(),
            &hi.to_string(),
            &k.nshards.max(1).to_string(),
            proof.map_or("", |p| p.0),
            &proof.map(|p| p.1.to_string()).unwrap_or_default(),
        ];
        self.eval(&self.scripts().claim, &keys, &args).await
    }

    /// `release.lua`: gives a reservation back (compare-and-set on the
    /// answer): 1 when it did, 0 when the answer had changed, 2 when it did
    /// but a slot to mark taken is outside this shard's range and not
    /// free here (the caller drops the state).
    pub async fn release(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        r: &ReleaseArgs<'_>,
    ) -> Result<i64, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys: [&str; 8] = [
            &k.meta, &k.ans, &p.left, &p.free, &k.queued, &k.pending, &p.hw, &p.sx,
        ];
        let range = r
            .range
            .map(|(lo, hi)| format!("{lo}|{hi}"))
            .unwrap_or_default();
        let args = [
            r.user,
            r.expected,
            r.replacement,
            &opt(r.free_slot),
            &r.queued_delta.to_string(),
            if r.give_back { "1" } else { "0" },
            &opt(r.mark_taken),
            &range,
        ];
        self.eval(&self.scripts().release, &keys, &args).await
    }

    /// `cancel.lua`: turns `user`'s grant in pool `pidx` into a cancelled
    /// one (only the grant `code`, when given); writing behind, the cancel
    /// is appended to the outbox.
    pub async fn cancel(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        user: &str,
        code: Option<&str>,
        write_behind: bool,
    ) -> Result<Vec<String>, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys: [&str; 6] = [&k.meta, &k.ans, &p.left, &p.free, &k.outbox, &p.sx];
        let behind = if write_behind {
            ScriptMode::WriteBehind.as_arg()
        } else {
            ""
        };
        let sharded = if k.sharded() { "1" } else { "" };
        let args = [user, behind, code.unwrap_or(""), &pidx.to_string(), sharded];
        self.eval(&self.scripts().cancel, &keys, &args).await
    }

    /// `allocate.lua`: slots for queued claims, in order; `users_codes` are
    /// (user, fresh code) pairs. Returns the generation, then one answer per
    /// pair.
    pub async fn allocate(
        &self,
        k: &CampaignKeys,
        stocks: &[i64],
        users_codes: &[(&str, &str)],
    ) -> Result<Vec<String>, RedisStoreError> {
        let mut keys: Vec<&str> = vec![&k.ans, &k.meta, &k.queued];
        for p in &k.pools {
            keys.extend([p.hw.as_str(), p.free.as_str()]);
        }
        let stocks: Vec<String> = stocks.iter().map(i64::to_string).collect();
        let np = stocks.len().to_string();
        let mut args: Vec<&str> = Vec::with_capacity(1 + stocks.len() + users_codes.len() * 2);
        args.push(&np);
        args.extend(stocks.iter().map(String::as_str));
        for (u, c) in users_codes {
            args.extend([*u, *c]);
        }
        self.eval(&self.scripts().allocate, &keys, &args).await
    }

    /// `repair.lua`: the reconciler's compare-and-set fix of pool `pidx`'s
    /// counters; `seen` is (seq, left, free-set size) as read, `want_left`
    /// computed for the pool's `stock` (refused if the state bounds the
    /// pool by another: a restock moved it). `true` when applied.
    pub async fn repair(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        seen: (i64, i64, usize),
        (stock, want_left): (i32, i64),
        want_free: &[i32],
    ) -> Result<bool, RedisStoreError> {
        let p = k.pool(pidx)?;
        let mut args: Vec<String> = vec![
            seen.0.to_string(),
            seen.1.to_string(),
            seen.2.to_string(),
            want_left.to_string(),
            pidx.to_string(),
            stock.to_string(),
        ];
        args.extend(want_free.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let keys: [&str; 4] = [&k.meta, &k.seq, &p.left, &p.free];
        self.eval_did(&self.scripts().repair, &keys, &args).await
    }

    /// `replay.lua`: puts the dead letter `id` (user, pool, seq) back in
    /// the queue, or refuses it if the pool sold out meanwhile.
    pub async fn replay(
        &self,
        k: &CampaignKeys,
        pidx: usize,
        user: &str,
        seq: &str,
        id: &str,
    ) -> Result<Vec<String>, RedisStoreError> {
        let p = k.pool(pidx)?;
        let keys: [&str; 6] = [&k.ans, &p.left, &k.queue, &k.queued, &k.dlq, &k.meta];
        let args = [user, &pidx.to_string(), seq, id];
        self.eval(&self.scripts().replay, &keys, &args).await
    }

    /// Every (user, answer) of the shard's answers hash, read without
    /// blocking the rush (HSCAN), its placeholder left out ('#', or '_'
    /// with no answer in states loaded before it left the user-id
    /// alphabet).
    pub async fn scan_answers(
        &self,
        k: &CampaignKeys,
    ) -> Result<Vec<(String, String)>, RedisStoreError> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let ans = k.ans.clone();
            let (next, items): (u64, Vec<(String, String)>) = self
                .run(|mut conn| async move {
                    redis::cmd("HSCAN")
                        .arg(&ans)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            out.extend(
                items
                    .into_iter()
                    .filter(|(u, a)| u != "#" && !(u == "_" && a.is_empty())),
            );
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The generation of the campaign's loaded state (`None`: no state).
    pub async fn state_generation(&self, k: &CampaignKeys) -> Result<Option<i64>, RedisStoreError> {
        let meta = k.meta.clone();
        self.run(|mut c| async move { c.hget(&meta, "gen").await })
            .await
    }

    /// Up to `limit` users whose gate reservation was made before
    /// `cutoff_ms` (Redis time), oldest first.
    pub async fn pending_before(
        &self,
        k: &CampaignKeys,
        cutoff_ms: i64,
        limit: isize,
    ) -> Result<Vec<String>, RedisStoreError> {
        let pending = k.pending.clone();
        self.run(|mut c| async move {
            c.zrangebyscore_limit(&pending, "-inf", cutoff_ms, 0, limit)
                .await
        })
        .await
    }

    /// Drops `user` from the reservations index (its reservation settled).
    pub async fn forget_pending(
        &self,
        k: &CampaignKeys,
        user: &str,
    ) -> Result<(), RedisStoreError> {
        let (pending, user) = (k.pending.clone(), user.to_string());
        self.run(|mut c| async move { c.zrem(&pending, &user).await })
            .await
    }

    /// `drop_stale.lua`: forgets the state if it is still of generation
    /// `gen`; `true` when it did.
    pub async fn drop_stale(&self, k: &CampaignKeys, gen: i64) -> Result<bool, RedisStoreError> {
        let gen = gen.to_string();
        self.eval_did(&self.scripts().drop_stale, &[&k.meta], &[&gen])
            .await
    }

    /// `same_server.lua`: forgets a state another server loaded; `true`
    /// when it did.
    pub async fn forget_if_moved(&self, k: &CampaignKeys) -> Result<bool, RedisStoreError> {
        self.eval_did(&self.scripts().same_server, &[&k.meta], &[])
            .await
    }

    /// `unlock.lua`: releases `lock` if it is still held with `token`;
    /// `true` when it did.
    pub async fn unlock(&self, lock: &str, token: &str) -> Result<bool, RedisStoreError> {
        self.eval_did(&self.scripts().unlock, &[lock], &[token])
            .await
    }

    /// `outbox_to_flush.lua`: how many entries of a surviving outbox a
    /// rebuild waits for (0: none, or nobody has flushed them for
    /// `max_age_ms`).
    pub async fn outbox_to_flush(
        &self,
        k: &CampaignKeys,
        max_age_ms: i64,
    ) -> Result<i64, RedisStoreError> {
        self.eval(
            &self.scripts().outbox_to_flush,
            &[&k.outbox, &k.lease],
            &[&max_age_ms.to_string()],
        )
        .await
    }

    /// `answer.lua`: `user`'s answer for a status read: (the generation of
    /// the whole state holding it, if one is loaded; the answer, if Redis
    /// has one; how many entries wait in the outbox). A partial state is
    /// forgotten on the way.
    pub async fn read_answer(
        &self,
        k: &CampaignKeys,
        user: &str,
    ) -> Result<(Option<i64>, Option<String>, i64), RedisStoreError> {
        let (gen, ans, outbox): (String, String, i64) = self
            .eval(
                &self.scripts().answer,
                &[&k.meta, &k.ans, &k.outbox],
                &[user],
            )
            .await?;
        let gen = match gen.as_str() {
            "" => None,
            g => Some(
                g.parse()
                    .map_err(|_| RedisStoreError::Protocol(format!("bad gen {g}")))?,
            ),
        };
        Ok((gen, Some(ans).filter(|a| !a.is_empty()), outbox))
    }

    /// `answers.lua`: the raw answers of `users` in one call (the event
    /// streams' watcher): the generation of the whole state holding them
    /// (`None` when none is loaded), then each user's answer in order.
    pub async fn read_answers(
        &self,
        k: &CampaignKeys,
        users: &[&str],
    ) -> Result<(Option<i64>, Vec<Option<String>>), RedisStoreError> {
        let mut out: Vec<redis::Value> = self
            .eval(
                &self.scripts().answers,
                &[&k.meta, &k.ans, &k.outbox],
                users,
            )
            .await?;
        let bad = || RedisStoreError::Protocol("bad answers.lua reply".into());
        if out.len() != users.len() + 2 {
            return Err(bad());
        }
        let text = |v: redis::Value| -> Result<String, RedisStoreError> {
            redis::from_redis_value(v).map_err(|_| bad())
        };
        let answers = out
            .split_off(2)
            .into_iter()
            .map(|v| text(v).map(|a| Some(a).filter(|a| !a.is_empty())))
            .collect::<Result<Vec<_>, _>>()?;
        let gen = match text(out.swap_remove(0))?.as_str() {
            "" => None,
            g => Some(g.parse().map_err(|_| bad())?),
        };
        Ok((gen, answers))
    }

    /// `time.lua`: Redis' clock (ms since epoch) on the node holding the
    /// campaign's keys.
    pub async fn now_ms(&self, k: &CampaignKeys) -> Result<i64, RedisStoreError> {
        let (s, us): (i64, i64) = self.eval(&self.scripts().time, &[&k.meta], &[]).await?;
        Ok(s * 1000 + us / 1000)
    }

    /// `refresh.lua`: pushes every key's expiry to `expire_at_ms` if the
    /// current one is before `due_before_ms`; `true` when it did.
    pub async fn refresh(
        &self,
        k: &CampaignKeys,
        expire_at_ms: i64,
        due_before_ms: i64,
    ) -> Result<bool, RedisStoreError> {
        let args = [&expire_at_ms.to_string(), &due_before_ms.to_string()];
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.eval_did(&self.scripts().refresh, &k.all(), &args)
            .await
    }

    /// Replaces answers still equal to the expected ones (`promote.lua`):
    /// `triples` are (user, expected, new). Returns how many were replaced.
    pub async fn promote(
        &self,
        k: &CampaignKeys,
        triples: &[AnswerSwap],
        decrement_queued: bool,
    ) -> Result<i64, RedisStoreError> {
        let mut args: Vec<&str> = Vec::with_capacity(1 + triples.len() * 3);
        args.push(if decrement_queued { "1" } else { "0" });
        for (u, e, n) in triples {
            args.extend([u.as_str(), e.as_str(), n.as_str()]);
        }
        self.eval(
            &self.scripts().promote,
            &[&k.ans, &k.queued, &k.pending],
            &args,
        )
        .await
    }

    /// Loads a campaign's state with `init.lua`. `Ok(false)` when the state
    /// was already there (a racing rebuild never clobbers live state).
    pub async fn init_state(
        &self,
        k: &CampaignKeys,
        st: &InitState,
    ) -> Result<bool, RedisStoreError> {
        let ms = |t: Option<i64>| t.map(|t| t.to_string()).unwrap_or_default();
        let mut args: Vec<String> = vec![
            st.expire_at_ms.to_string(),
            ms(st.opens_ms),
            ms(st.closes_ms),
            st.mode.clone(),
            st.pools.len().to_string(),
            st.seq.to_string(),
            st.queued.to_string(),
            st.gen.to_string(),
            if st.paused { "1" } else { "0" }.to_string(),
        ];
        for p in &st.pools {
            args.extend([
                p.last.map(|s| s.to_string()).unwrap_or_default(),
                p.left.to_string(),
                p.hw.to_string(),
                p.free.len().to_string(),
            ]);
            args.extend(p.free.iter().map(|s| s.to_string()));
        }
        args.push(st.answers.len().to_string());
        for (u, a) in &st.answers {
            args.extend([u.clone(), a.clone()]);
        }
        args.push(ms(st.prequeue_ms));
        let mut keys: Vec<&str> = vec![&k.meta, &k.ans, &k.seq, &k.queued, &k.outbox, &k.queue];
        for p in &k.pools {
            keys.extend([
                p.left.as_str(),
                p.hw.as_str(),
                p.free.as_str(),
                p.sx.as_str(),
                p.xf.as_str(),
                p.got.as_str(),
            ]);
        }
        keys.extend([k.pending.as_str(), &k.prequeue]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.eval_did(&self.scripts().init, &keys, &args).await
    }
}
