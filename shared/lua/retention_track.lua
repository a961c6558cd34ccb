-- Note a job's storage folder in the retention index (ImageRetention.track): it is
-- deleted once Redis' clock passes now + retention. Noting it again moves it later, never earlier.
-- KEYS[1] the retention index (a sorted set: folder -> unix time it is due)
-- ARGV[1] JSON:
--   prefix     the folder, e.g. '2026/12/05/imgjob_...' (a storage key without '/')
--   retention  seconds to keep it
--   now        '' = Redis' clock, else a test's unix time (a string)
-- Returns the time it is due, as a string.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
local due = string.format('%.17g', tonumber(clock(a.now)) + tonumber(a.retention))
redis.call('ZADD', KEYS[1], 'GT', due, a.prefix)
return due
