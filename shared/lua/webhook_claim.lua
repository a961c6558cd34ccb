-- A delivery message claims its lease before it runs (workers.webhooks.deliver): the id
-- must still be due at the lease the pump gave the message (its token), else another
-- message has been sent since; the lease, and the key's in-flight entry, are renewed.
-- KEYS[1] the webhooks due set (member = job id, score = due time or lease end)
-- KEYS[2] the API key's in-flight set (member = job id, score = lease end)
-- ARGV[1] JSON:
--   job_id   the job whose delivery this is
--   token    the lease end the pump put in the message (a string)
--   renewed  the new lease end (a string)
-- Returns 1 if the message still holds the lease (now renewed), else 0.

local a = cjson.decode(ARGV[1])
local due = redis.call('ZSCORE', KEYS[1], a.job_id)
if not due or tonumber(due) ~= tonumber(a.token) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(a.renewed), a.job_id)
if redis.call('ZSCORE', KEYS[2], a.job_id) then
  redis.call('ZADD', KEYS[2], tonumber(a.renewed), a.job_id)
end
return 1
