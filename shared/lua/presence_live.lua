-- How many live workers announce each family (shared.presence.Presence.served): members
-- whose announcement holds past now (Redis' clock, or a test's time).
-- KEYS[1] the presence zset of a family asked about
-- KEYS[2..] the presence zsets of more families asked about
-- ARGV[1] JSON:
--   now  '' = Redis' clock, else a test's unix time (a string)
-- Returns a list: the live count of each key, in order.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
local now = clock(a.now)
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return counts
