-- The folders whose retention has passed (ImageRetention.due), longest due first.
-- KEYS[1] the retention index
-- ARGV[1] JSON:
--   now    '' = Redis' clock, else a test's unix time (a string)
--   limit  at most this many folders
-- Returns a list of folders.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock(a.now), 'LIMIT', 0, a.limit)
