-- Count a failure (Breakers.record_failure): failures within the window are kept in a
-- zset; `threshold` of them open a closed breaker, and a failure once the cool-down is
-- over (the half-open trial failed) opens it again.
-- KEYS[1] the breaker's state hash (opened_at, trial_until)
-- KEYS[2] the breaker's failures zset (score = time)
-- ARGV[1] JSON:
--   now        the caller's unix time (a string)
--   since      failures before this time are forgotten (a string)
--   member     this failure's member
--   window_ms  the failures zset expires this long after the last failure
--   threshold  failures within the window that open the breaker
--   cooldown   seconds a breaker stays open
-- Returns {failures, opened_at or '', trial_until or ''}.

local a = cjson.decode(ARGV[1])
local now = tonumber(a.now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', a.since)
redis.call('ZADD', KEYS[2], a.now, a.member)
redis.call('PEXPIRE', KEYS[2], a.window_ms)
local failures = redis.call('ZCARD', KEYS[2])
local opened = redis.call('HGET', KEYS[1], 'opened_at')
local reopen = false
if opened then
  reopen = now >= tonumber(opened) + tonumber(a.cooldown)
else
  reopen = failures >= tonumber(a.threshold)
end
if reopen then
  redis.call('HSET', KEYS[1], 'opened_at', a.now)
  redis.call('HDEL', KEYS[1], 'trial_until')
end
return {failures, redis.call('HGET', KEYS[1], 'opened_at') or '',
        redis.call('HGET', KEYS[1], 'trial_until') or ''}
