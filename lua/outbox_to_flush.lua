-- outbox_to_flush.lua: the entries a redis-lua rebuild should let the
-- flusher write first: those of an outbox that has its consumer group (a flusher can read it) and whose
-- oldest entry is younger than ARGV[1] ms (the flusher is making
-- progress). Otherwise 0: an outbox nobody can or does flush must not
-- hold the campaign's claims hostage; its entries, of the replaced state's
-- generation, are then dropped by the flusher and counted as exposure.
--
-- KEYS[1] outbox
-- ARGV[1] the oldest entry's age limit (ms)
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
if now - ms > tonumber(ARGV[1]) then return 0 end
return redis.call('XLEN', KEYS[1])
