-- Piece: terminal states and the one terminal transition of a job.
--
-- is_terminal(status): whether a status is final (shared.jobs.TERMINAL).
--
-- end_job(k, status, field, payload, now, delivered, channel): the job
-- becomes `status` with `field` = `payload` (result or error) and finished = now;
-- its bill is settled (`delivered` images kept, see _settle.lua); it leaves the
-- watch set; a job with a webhook is due for delivery now; its id is published on
-- `channel` for the web processes' waiters. A job becomes terminal once (callers
-- check is_terminal first), so all of this happens once.
--   k  {job, balance, ledger, pending, watch, webhooks_due, returns} key names
-- #include _settle.lua
local TERMINAL = {succeeded = true, failed = true, timed_out = true, canceled = true}

local function is_terminal(status)
  return TERMINAL[status] == true
end

local function end_job(k, status, field, payload, now, delivered, channel)
  redis.call('HSET', k.job, 'status', status, field, payload, 'finished', now)
  settle(k, delivered, now)
  local id = redis.call('HGET', k.job, 'job_id')
  redis.call('ZREM', k.watch, id)
  if redis.call('HEXISTS', k.job, 'webhook_url') == 1 then
    redis.call('ZADD', k.webhooks_due, tonumber(now), id)
  end
  redis.call('PUBLISH', channel, id)
end
