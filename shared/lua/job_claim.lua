-- Claim a job for a run (JobStore.claim): a non-terminal job becomes running under a
-- new attempt number (the fencing token), unless another live worker runs it; a job
-- past its deadline ends timed_out instead (settled, refunded, announced).
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
--   worker         the claiming worker's name, kept in the record
--   stale_after    seconds a running job may go without a heartbeat
--   late           seconds past the deadline a running job's worker has to end it
--   timeout_error  the error JSON written if the deadline has passed
--   done_channel   where the id of a job that ended is published
-- Returns {'run', attempt, now, <the record as HGETALL gives it>...}, or {'missing'},
-- {'terminal', status}, {'busy'} (another live worker runs it) or {'expired'}.

-- #include _clock.lua
-- #include _terminal.lua

local a = cjson.decode(ARGV[1])
local k = {job = KEYS[1], balance = KEYS[2], ledger = KEYS[3], pending = KEYS[4],
  watch = KEYS[5], webhooks_due = KEYS[6], returns = {unpack(KEYS, 7)}}
local now = clock(a.now)
local st = redis.call('HGET', k.job, 'status')
if not st then return {'missing'} end
if is_terminal(st) then return {'terminal', st} end
if st == 'running' then
  local beat = redis.call('ZSCORE', k.watch, a.job_id)
  if beat and tonumber(beat) > tonumber(now) then return {'busy'} end
end
local deadline = tonumber(redis.call('HGET', k.job, 'deadline'))
if tonumber(now) >= deadline then
  end_job(k, 'timed_out', 'error', a.timeout_error, now, 0, a.done_channel)
  return {'expired'}
end
local attempt = redis.call('HINCRBY', k.job, 'attempt', 1)
redis.call('HSET', k.job, 'status', 'running', 'started', now, 'worker', a.worker)
redis.call('ZADD', k.watch,
  math.min(tonumber(now) + tonumber(a.stale_after), deadline + tonumber(a.late)), a.job_id)
local out = redis.call('HGETALL', k.job)
table.insert(out, 1, now)
table.insert(out, 1, tostring(attempt))
table.insert(out, 1, 'run')
return out
