-- answers.lua: the raw answers of many users of one campaign, for the
-- event streams' watcher (one call per tick whatever the number of streams).
-- Read only: a partial state (answers hash gone, meta still there) reads as
-- no state, and the watcher then asks PostgreSQL; answer.lua, which every
-- stream calls on a change, forgets that state as before.
--
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] outbox
-- ARGV users
-- Returns {gen, outbox length, answer of ARGV[1], answer of ARGV[2], ...}:
-- gen '' when no whole state is loaded, an answer '' when the user has none.
local gen = redis.call('HGET', KEYS[1], 'gen')
if gen and redis.call('HEXISTS', KEYS[2], '#') == 0 then
  gen = false
end
local out = {gen or '', redis.call('XLEN', KEYS[3])}
-- HMGET in chunks: unpack() of thousands of arguments overflows Lua's stack.
local chunk = 500
for i = 1, #ARGV, chunk do
  local last = math.min(i + chunk - 1, #ARGV)
  local a = redis.call('HMGET', KEYS[2], unpack(ARGV, i, last))
  for j = 1, #a do
    out[#out + 1] = a[j] or ''
  end
end
return out
