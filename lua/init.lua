-- init.lua: loads a campaign's admission state, at creation or when it is
-- rebuilt from PostgreSQL after Redis lost it. Does nothing if the state
-- is present (meta exists), so racing rebuilders cannot clobber live state.
-- Streams are kept if they survived; their consumer group is created.
--
-- KEYS[1] meta, [2] ans, [3] seq, [4] queued, [5] outbox, [6] queue, then per
-- pool i (0-based): KEYS[7 + 6i] left, [8 + 6i] hw, [9 + 6i] free, [10 + 6i]
-- sx, [11 + 6i] xf, [12 + 6i] got (the last three: sharded pools), and
-- then the pending zset (gate reservations died with the old state) and
-- the pre-queue list (fair start: its users' answers died with the state)
-- ARGV[1] expire-at (ms), [2] opens (ms or ''), [3] closes (ms or ''),
-- [4] mode, [5] number of pools, [6] seq, [7] queued, [8] generation,
-- [9] paused ('1' or '0'),
-- then per pool: its stock ('' for a sharded pool, whose bound is its
-- shard's range), left, hw, number of free slots, the free slots...,
-- then the number of answers, then user, answer pairs, and last the instant
-- the pre-queue opens (ms; '' when the campaign has none).
-- Returns 1 when loaded, 0 when the state was already there. meta records
-- this server's run_id and replication id (see same_server.lua), and, per
-- unsharded pool i, 'last:i': the stock the scripts bound slots by (an
-- operator's restock moves it: restock.lua).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local exp = ARGV[1]
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('DEL', KEYS[7 + 6 * tonumber(ARGV[5])], KEYS[8 + 6 * tonumber(ARGV[5])])
-- Keeps the answers hash (and so its expiry) in existence while empty.
-- '#' is outside the user-id alphabet, so no user can collide with it.
redis.call('HSET', KEYS[2], '#', '')
redis.call('SET', KEYS[3], ARGV[6])
redis.call('SET', KEYS[4], ARGV[7])
for _, s in ipairs({KEYS[5], KEYS[6]}) do
  -- A stream may have outlived the state, or been created again without
  -- its group by a write racing a partial expiry: the group must exist
  -- (an existing one answers BUSYGROUP, which is fine).
  redis.pcall('XGROUP', 'CREATE', s, 'g', '0', 'MKSTREAM')
  redis.call('PEXPIREAT', s, exp)
end
local np = tonumber(ARGV[5])
local a = 10
local lasts = {}
for i = 0, np - 1 do
  local k = 7 + 6 * i
  redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5])
  redis.call('HSET', KEYS[k + 3], 'ver', '0', 'retn', '0', 'held', '0')
  if ARGV[a] ~= '' then
    lasts[#lasts + 1] = 'last:' .. i
    lasts[#lasts + 1] = ARGV[a]
  end
  redis.call('SET', KEYS[k], ARGV[a + 1])
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  local nfree = tonumber(ARGV[a + 3])
  a = a + 4
  for j = 0, nfree - 1 do
    redis.call('ZADD', KEYS[k + 2], ARGV[a + j], ARGV[a + j])
  end
  a = a + nfree
  for j = 0, 3 do
    redis.call('PEXPIREAT', KEYS[k + j], exp)
  end
end
local nans = tonumber(ARGV[a])
a = a + 1
for j = 0, nans - 1 do
  redis.call('HSET', KEYS[2], ARGV[a + 2 * j], ARGV[a + 2 * j + 1])
end
for i = 2, 4 do
  redis.call('PEXPIREAT', KEYS[i], exp)
end
-- Written last: its presence tells the claim script that the state is whole.
-- 'run' names the server and the history it serves (see same_server.lua).
local run = (string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '?') .. ':' ..
  (string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or '?')
redis.call('HSET', KEYS[1], 'opens', ARGV[2], 'closes', ARGV[3], 'mode', ARGV[4], 'exp', exp,
  'gen', ARGV[8], 'run', run, 'paused', ARGV[9], 'pq', ARGV[#ARGV])
if #lasts > 0 then
  redis.call('HSET', KEYS[1], unpack(lasts))
end
redis.call('PEXPIREAT', KEYS[1], exp)
return 1
