-- outbox_to_flush.lua: the entries a redis-lua rebuild should let the
-- flusher write first. They are answers already told (grants, refusals,
-- cancels), of the replaced state's generation: once the rebuild bumps the
-- generation the flusher drops them, so the rebuild waits for them while
-- the outbox has its consumer group (a flusher can read it) and either a
-- flusher holds the campaign's lease (it is making progress, however
-- slowly: PostgreSQL may be slow) or the oldest entry is younger than
-- ARGV[1] ms (a worker may be starting). Otherwise 0: an outbox nobody
-- flushes must not hold the campaign's claims hostage for ever; its
-- entries are then dropped by the flusher and counted as exposure.
--
-- KEYS[1] outbox, KEYS[2] the campaign's stream lease
-- ARGV[1] the oldest entry's age limit (ms) when no flusher holds the lease
-- Returns the number of entries to wait for, or 0.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local has = false
for _, g in ipairs(groups) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i + 1] == 'g' then has = true end
  end
end
if not has then return 0 end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(string.match(first[1], '^(%d+)'))
if now - ms > tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
return redis.call('XLEN', KEYS[1])
