-- What a reaper does with a job whose watch time has come (JobStore.reap). A running
-- job whose worker stopped beating gets a new attempt (fencing the lost run off) and
-- is queued again; a queued job is sent again (at most max_sends per queued spell,
-- then it waits for its deadline); a job past its deadline ends timed_out.
-- KEYS[1] job record
-- KEYS[2] the key's balance
-- KEYS[3] the key's ledger stream
-- KEYS[4] the sink's set of key ids whose ledger has entries to move (shared.sink)
-- KEYS[5] the watch set
-- KEYS[6] the webhooks due set
-- KEYS[7..] the keys of the record's `returns`, in order (what admission counted, given
--           back for images not delivered; see _settle.lua)
-- ARGV[1] JSON:
--   now            '' = Redis' clock, else a test's unix time (a string)
--   job_id         the job's id (its member in the watch set)
--   enqueue_grace  seconds until a requeued job is looked at again
--   max_sends      sends per queued spell
--   timeout_error  the error JSON written if the deadline has passed
--   done_channel   where the id of a job that ended is published
-- Returns {'takeover', attempt} or {'requeue'} (the caller sends the job), or {'expired'},
-- {'wait'}, {'fresh'}, {'terminal'}, {'missing'} (nothing to do).

-- #include _clock.lua
-- #include _terminal.lua

local a = cjson.decode(ARGV[1])
local k = {job = KEYS[1], balance = KEYS[2], ledger = KEYS[3], pending = KEYS[4],
  watch = KEYS[5], webhooks_due = KEYS[6], returns = {unpack(KEYS, 7)}}
local now = clock(a.now)
local at = redis.call('ZSCORE', k.watch, a.job_id)
if not at or tonumber(at) > tonumber(now) then return {'fresh'} end
local st = redis.call('HGET', k.job, 'status')
if not st or is_terminal(st) then
  redis.call('ZREM', k.watch, a.job_id)
  return {st and 'terminal' or 'missing'}
end
local deadline = tonumber(redis.call('HGET', k.job, 'deadline'))
if tonumber(now) >= deadline then
  end_job(k, 'timed_out', 'error', a.timeout_error, now, 0, a.done_channel)
  return {'expired'}
end
local again = math.min(tonumber(now) + tonumber(a.enqueue_grace), deadline)
if st == 'running' then
  -- its worker stopped beating: fence the lost run off and queue the job again
  local attempt = redis.call('HINCRBY', k.job, 'attempt', 1)
  redis.call('HINCRBY', k.job, 'takeovers', 1)
  redis.call('HSET', k.job, 'status', 'queued', 'sends', 0)
  redis.call('ZADD', k.watch, again, a.job_id)
  return {'takeover', tostring(attempt)}
end
if tonumber(redis.call('HGET', k.job, 'sends') or '0') >= tonumber(a.max_sends) then
  redis.call('ZADD', k.watch, deadline, a.job_id)
  return {'wait'}
end
redis.call('ZADD', k.watch, again, a.job_id)
return {'requeue'}
