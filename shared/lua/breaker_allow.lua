-- May the caller call the upstream now (Breakers.allow)? CLOSED: yes. OPEN: no. Cool-down
-- over (HALF_OPEN): yes for exactly one caller, who takes the trial token until trial_until.
-- KEYS[1] the breaker's state hash (opened_at, trial_until)
-- ARGV[1] JSON:
--   now          the caller's unix time (a string)
--   cooldown     seconds a breaker stays open
--   trial_until  when a trial taken now frees its token (a string)
-- Returns 1 (allowed) or 0.

local a = cjson.decode(ARGV[1])
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened then return 1 end
local now = tonumber(a.now)
if now < tonumber(opened) + tonumber(a.cooldown) then return 0 end
local trial = redis.call('HGET', KEYS[1], 'trial_until')
if trial and now < tonumber(trial) then return 0 end
redis.call('HSET', KEYS[1], 'trial_until', a.trial_until)
return 1
