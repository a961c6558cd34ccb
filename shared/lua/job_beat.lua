-- Heartbeat of one worker process (JobStore.beat): each job still running under the
-- attempt the worker runs it as gets a new watch time, now + stale_after (capped at
-- its deadline + late).
-- KEYS[1] the watch set
-- KEYS[2..] job records, one per entry of `attempts`
-- ARGV[1] JSON:
--   now          '' = Redis' clock, else a test's unix time (a string)
--   stale_after  seconds a running job may go without a heartbeat
--   late         seconds past the deadline a running job's worker has to end it
--   attempts     the attempt (a string) each job of KEYS[2..] runs as, in order
-- Returns how many jobs are still held.

-- #include _clock.lua

local a = cjson.decode(ARGV[1])
local now = tonumber(clock(a.now))
local held = 0
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'attempt', 'deadline', 'job_id')
  if f[1] == 'running' and f[2] == a.attempts[i - 1] then
    local at = math.min(now + tonumber(a.stale_after), tonumber(f[3]) + tonumber(a.late))
    redis.call('ZADD', KEYS[1], at, f[4])
    held = held + 1
  end
end
return held
