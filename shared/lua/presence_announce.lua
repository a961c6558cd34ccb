-- A worker process says which families it serves (shared.presence.Presence.announce):
-- in each family's zset its member's score becomes now + ttl (Redis' clock); members
-- whose time ran out are dropped, and the zset expires ttl after its last announcement.
-- KEYS[1] the presence zset of a family announced (member = worker, score = until)
-- KEYS[2..] the presence zsets of more families announced
-- ARGV[1] JSON:
--   worker  the announcing worker process (node name and pid)
--   ttl_ms  how long the announcement holds unless renewed, in milliseconds
-- Returns the time announced until (a string, Redis' clock).

local a = cjson.decode(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl_ms = tonumber(a.ttl_ms)
local ends = now + ttl_ms / 1000
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', tostring(now))
  redis.call('ZADD', KEYS[i], tostring(ends), a.worker)
  if redis.call('PTTL', KEYS[i]) < ttl_ms then redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
return tostring(ends)
