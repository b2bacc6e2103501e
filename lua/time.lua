-- time.lua: Redis' clock, read on the server that holds a campaign's keys
-- (on a Redis Cluster a keyless TIME goes to any node, possibly a failed
-- one, and nodes' clocks may differ; reservations are stamped by the
-- campaign's own node).
--
-- KEYS[1] any key of the campaign (it routes the call; it is not read)
-- ARGV none
-- Returns {seconds, microseconds}, as TIME.
return redis.call('TIME')
