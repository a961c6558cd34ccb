-- A send of a queued job reached the broker (JobStore.mark_sent): count it, and look
-- at the job again after resend_after (or, once max_sends are used, at its deadline).
-- KEYS[1] job record
-- KEYS[2] the watch set
-- ARGV[1] JSON:
--   now           '' = Redis' clock, else a test's unix time (a string)
--   resend_after  seconds until a sent job still queued is sent once more
--   max_sends     sends per queued spell
-- Returns 1 if the job is queued (and the send counted), else 0.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'deadline', 'job_id')
if f[1] ~= 'queued' then return 0 end
local sends = redis.call('HINCRBY', KEYS[1], 'sends', 1)
local at = tonumber(f[2])
if sends < tonumber(a.max_sends) then
  at = math.min(at, tonumber(clock(a.now)) + tonumber(a.resend_after))
end
redis.call('ZADD', KEYS[2], at, f[3])
return 1
