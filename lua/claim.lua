-- claim.lua: one atomic admission decision for the Redis modes.
--
-- KEYS[1] meta    hash: opens, closes (ms since epoch, '' = none), exp, gen,
--                 paused ('1' while an operator paused the campaign)
-- KEYS[2] ans     hash: user -> answer (the answer forms are listed in
--                 docs/ARCHITECTURE.md, "Answers in Redis")
-- KEYS[3] seq     arrival counter
-- KEYS[4] left    stock still available at the door for this pool
-- KEYS[5] hw      highest slot ever handed out in this pool
-- KEYS[6] free    zset of released slots of this pool (score = slot)
-- KEYS[7] stream  outbox (write-behind) or queue (enqueue); unused by reserve
-- KEYS[8] queued  number of queued claims (redis-queue)
-- KEYS[9] pending zset user -> reservation time (gate), so a worker can
--         settle reservations whose API process died
-- KEYS[10] sx     sharded pools: hash ver, so (sold-out mark), retn
-- KEYS[11] xf     sharded pools: transfers given and not yet confirmed
-- KEYS[12] pq     fair start (redis-queue): list of the pre-queued claims,
--                 'pidx|user', in arrival order
-- ARGV[1] user, ARGV[2] pool index, ARGV[3] fresh coupon code,
-- ARGV[4] how to decide (storage::redis::ScriptMode): 'reserve' (gate: a
--         pending reservation, committed by the caller), 'write-behind'
--         (redis-lua: granted now, the outbox carries it to PostgreSQL) or
--         'enqueue' (redis-queue: an arrival number, the drainer allocates);
-- ARGV[5] the last slot of this shard's range (the pool's stock when
--         unsharded, where meta's 'last:<pool>' wins: an operator's
--         restock moves it before a process' copy learns), ARGV[6] the
--         number of shards (the arrival counter's step, so shards never
--         share a number), ARGV[7] for a sharded
--         pool found dry: the `ver` seen dry by the caller's sold-out check
--         (docs/ARCHITECTURE.md, "Shards"), '' otherwise, and ARGV[8] the
--         generation that proof was made in
--
-- Returns {'noinit'} when the campaign's state is not loaded (Redis lost it
-- or it was never built), {'dry', ver, gen, retn, out, held} when a sharded
-- pool's shard has no stock and the pool is not known to be sold out (the
-- caller moves stock here from another shard, or proves the whole pool
-- sold out and calls again with ARGV[7] = ver), {'dup', answer, gen} for a repeated claim,
-- {'not_open'} / {'closed'} outside the window (not remembered),
-- {'unfrozen'} after the opening of a campaign with a pre-queue that is not
-- yet closed (the caller runs freeze.lua and calls again), or
-- {'paused'} for a new claim while an operator paused the campaign (nothing
-- remembered: no arrival number, no answer),
-- {'not_open'} / {'closed'} outside the window (not remembered), or
-- {'new', answer, gen}; gen is the state's generation (see the migration
-- answers_that_never_change), which every durable write derived from this
-- decision must carry.
--
-- A refusal is final, so it must survive the loss of this state: gate and
-- redis-queue store it as 'X|seq' (refusing) until PostgreSQL holds it, then
-- the caller promotes it to 'R|sold_out|seq'; redis-lua stores the final
-- answer at once and appends it to the outbox, like its grants.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'noinit'}
end
local user = ARGV[1]
local w = redis.call('HMGET', KEYS[1], 'opens', 'closes', 'exp', 'gen', 'paused', 'pq', 'pqs',
  'last:' .. ARGV[2])
local gen = w[4] or '0'
local prev = redis.call('HGET', KEYS[2], user)
if prev then
  return {'dup', prev, gen}
end
-- Operator pause: users with an answer keep it (above), new ones are told
-- to come back, and nothing is written for them.
if w[5] == '1' then
  return {'paused'}
end
-- A whole state has its answers hash (with its placeholder '#'), its
-- arrival counter, its stock counter and its high-water mark. One of them
-- gone alone (expired or evicted before meta) is a state that would decide
-- wrongly (a missing counter reads as sold out, a restarted arrival counter
-- reuses numbers, a restarted high-water mark hands out taken slots):
-- forget it, so the caller rebuilds from PostgreSQL.
local left = redis.call('GET', KEYS[4])
if redis.call('HEXISTS', KEYS[2], '#') == 0 or not redis.call('GET', KEYS[3])
  or not left or not redis.call('GET', KEYS[5]) then
  redis.call('DEL', KEYS[1])
  return {'noinit'}
end
left = tonumber(left)
-- Redis' clock, so that every API process agrees on the window.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pq = w[6] and w[6] ~= ''
if w[1] and w[1] ~= '' and now < tonumber(w[1]) then
  if pq and ARGV[4] == 'enqueue' and now >= tonumber(w[6]) then
    -- Fair start: pre-queued without an arrival number; the draw at
    -- opening gives it its place (docs/ARCHITECTURE.md, "Fair start").
    local a = 'W|' .. ARGV[2]
    redis.call('HSET', KEYS[2], user, a)
    redis.call('RPUSH', KEYS[12], ARGV[2] .. '|' .. user)
    redis.call('HINCRBY', KEYS[1], 'pqc:' .. ARGV[2], 1)
    if w[3] then
      redis.call('PEXPIREAT', KEYS[12], w[3])
    end
    return {'new', a, gen}
  end
  return {'not_open'}
end
if pq and not w[7] then
  -- Nobody takes an arrival number before the pre-queue's have been set
  -- aside: they come first.
  return {'unfrozen'}
end
if w[2] and w[2] ~= '' and now >= tonumber(w[2]) then
  return {'closed'}
end
local mode = ARGV[4]
if mode ~= 'reserve' and mode ~= 'write-behind' and mode ~= 'enqueue' then
  -- A caller speaking another version's words must not decide anything.
  return redis.error_reply('claim.lua: unknown script mode ' .. tostring(mode))
end
-- A slot beyond the stock is never handed out: if the counter says stock
-- is left but every slot of the range is taken, the counter is wrong
-- (drift); it is set to what the slots say, and the claim is refused.
local step = tonumber(ARGV[6]) or 1
local last = tonumber(ARGV[5])
if step == 1 and w[8] then
  last = tonumber(w[8])
end
if left > 0 and mode ~= 'enqueue' and redis.call('ZCARD', KEYS[6]) == 0
  and tonumber(redis.call('GET', KEYS[5]) or '0') >= last then
  redis.call('SET', KEYS[4], '0', 'KEEPTTL')
  left = 0
end
if left <= 0 and step > 1 then
  -- A dry shard refuses only when the pool is marked sold out, or the
  -- caller proved it sold out, in this generation, since `ver` (nothing
  -- arrived here since); never while units come back here (retn: given
  -- back, held: a cancel not yet flushed) or leave it (out): a mark left
  -- by a caller that died before publishing must not hide them.
  local x = redis.call('HMGET', KEYS[10], 'ver', 'so', 'retn', 'held')
  local ver, retn, held = x[1] or '0', tonumber(x[3] or '0'), tonumber(x[4] or '0')
  local out = redis.call('HLEN', KEYS[11])
  local busy = retn > 0 or out > 0 or held > 0
  if not x[2] or busy then
    if ARGV[7] ~= ver or ARGV[8] ~= gen or busy then
      return {'dry', ver, gen, tostring(retn), tostring(out), tostring(held)}
    end
    redis.call('HSET', KEYS[10], 'so', '1')
    if w[3] then
      redis.call('PEXPIREAT', KEYS[10], w[3])
    end
  end
end
local seq = redis.call('INCRBY', KEYS[3], step)
if left <= 0 then
  local a
  if mode == 'write-behind' then
    a = 'R|sold_out|' .. seq
    redis.call('XADD', KEYS[7], '*', 'op', 'r', 'u', user, 's', seq, 'g', gen)
  else
    a = 'X|' .. seq
  end
  redis.call('HSET', KEYS[2], user, a)
  return {'new', a, gen}
end
redis.call('DECR', KEYS[4])
local pidx = ARGV[2]
if mode == 'enqueue' then
  -- The drainer allocates the slot, in arrival order.
  local a = 'Q|' .. pidx .. '|' .. seq
  redis.call('HSET', KEYS[2], user, a)
  redis.call('XADD', KEYS[7], '*', 'u', user, 'p', pidx, 's', seq)
  redis.call('INCR', KEYS[8])
  return {'new', a, gen}
end
local slot
local f = redis.call('ZPOPMIN', KEYS[6])
if f[1] then
  slot = f[1]
else
  slot = tostring(redis.call('INCR', KEYS[5]))
end
local code = ARGV[3]
local a
if mode == 'reserve' then
  -- Pending until PostgreSQL commits; the time lets a sweeper resolve a
  -- reservation whose API process died before answering.
  a = 'P|' .. pidx .. '|' .. slot .. '|' .. code .. '|' .. seq .. '|' .. now
  redis.call('ZADD', KEYS[9], now, user)
  if w[3] then
    redis.call('PEXPIREAT', KEYS[9], w[3])
  end
else
  a = 'G|' .. pidx .. '|' .. slot .. '|' .. code .. '|' .. seq
  redis.call('XADD', KEYS[7], '*', 'op', 'g', 'u', user, 'p', pidx, 'sl', slot, 'c', code, 's', seq, 'g', gen)
end
redis.call('HSET', KEYS[2], user, a)
return {'new', a, gen}
