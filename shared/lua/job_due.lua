-- The jobs whose watch time has come (JobStore.due), oldest first.
-- KEYS[1] the watch set
-- ARGV[1] JSON:
--   now    '' = Redis' clock, else a test's unix time (a string)
--   limit  at most this many ids
-- Returns a list of job ids.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock(a.now), 'LIMIT', 0, a.limit)
