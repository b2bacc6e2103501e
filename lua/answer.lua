-- answer.lua: one user's answer as a status read sees it, and whether the
-- state holding it is whole. A state whose answers hash is gone while meta
-- is still there (keys expiring one by one, an eviction) would answer "never
-- claimed" to users it told granted or sold out: it is forgotten here, as
-- claim.lua does, and the read goes elsewhere (PostgreSQL, or "retry" while
-- unflushed answers wait in the outbox).
--
-- KEYS[1] meta, KEYS[2] ans, KEYS[3] outbox
-- ARGV[1] user
-- Returns {gen, answer, outbox length}: gen '' when no whole state is
-- loaded, answer '' when the user has none here.
local gen = redis.call('HGET', KEYS[1], 'gen')
local a = redis.call('HGET', KEYS[2], ARGV[1])
if gen and redis.call('HEXISTS', KEYS[2], '#') == 0 then
  redis.call('DEL', KEYS[1])
  gen = false
end
return {gen or '', a or '', redis.call('XLEN', KEYS[3])}
