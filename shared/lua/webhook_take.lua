-- The pump takes a due delivery (workers.webhook_pump.pump_once): its score moves to the
-- lease end, which decides which pump owns it; with a per-key cap, the key's in-flight
-- set (expired leases dropped first) must have room, else the id is deferred.
-- KEYS[1] the webhooks due set (member = job id, score = due time or lease end)
-- KEYS[2] the API key's in-flight set (member = job id, score = lease end)
-- ARGV[1] JSON:
--   job_id       the due job
--   now          Redis' time of this pass (a string)
--   lease        the lease end (a string)
--   cap          deliveries of one key in flight at most (0: no cap)
--   defer_until  where an id of a key at its cap is pushed (a string)
-- Returns 1 if this pump took the id, 0 if not due (or another pump took it),
-- -1 if deferred.

local a = cjson.decode(ARGV[1])
local due = redis.call('ZSCORE', KEYS[1], a.job_id)
if not due or tonumber(due) > tonumber(a.now) then return 0 end
local cap = tonumber(a.cap)
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', a.now)
  if not redis.call('ZSCORE', KEYS[2], a.job_id) and redis.call('ZCARD', KEYS[2]) >= cap then
    redis.call('ZADD', KEYS[1], tonumber(a.defer_until), a.job_id)
    return -1
  end
  redis.call('ZADD', KEYS[2], tonumber(a.lease), a.job_id)
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(a.lease) - tonumber(a.now)) + 60)
end
redis.call('ZADD', KEYS[1], tonumber(a.lease), a.job_id)
return 1
