-- End a job (JobStore.succeed / fail / cancel / expire_if_overdue): only if it is not
-- terminal yet and, when an attempt is given, that attempt still holds the fence, so a
-- slow or duplicated run never overwrites a newer one's outcome. Settles the bill.
-- KEYS[1] job record
-- KEYS[2] the key's balance
-- KEYS[3] the key's ledger stream
-- KEYS[4] the sink's set of key ids whose ledger has entries to move (shared.sink)
-- KEYS[5] the watch set
-- KEYS[6] the webhooks due set
-- KEYS[7..] the keys of the record's `returns`, in order (what admission counted, given
--           back for images not delivered; see _settle.lua)
-- ARGV[1] JSON:
--   attempt        the attempt ending it ('' = whichever holds it)
--   status         the terminal status
--   field          'result' or 'error'
--   payload        that field's JSON text
--   delivered      images delivered (the rest is refunded)
--   overdue_only   true: only if the deadline has passed
--   now            '' = Redis' clock, else a test's unix time (a string)
--   done_channel   where the job's id is published
--   cost           what the upstream charged, micro-units ('' or absent = unknown);
--                  written with cost_source before the bill is settled (_settle.lua)
--   cost_source    upstream | usage | compute | catalog
-- Returns 0 if this call did not end the job; if it did, {1, settled, refunded,
-- unlimited, finished}: the micro-units its settlement spent and gave back ('' for an
-- unbilled job), '1' for a key without a balance (shared.metrics counts the money) and
-- the time it ended (shared.jobstats counts the job without reading the record again).

-- #include _clock.lua
-- #include _terminal.lua

local a = cjson.decode(ARGV[1])
local k = {job = KEYS[1], balance = KEYS[2], ledger = KEYS[3], pending = KEYS[4],
  watch = KEYS[5], webhooks_due = KEYS[6], returns = {unpack(KEYS, 7)}}
local st = redis.call('HGET', k.job, 'status')
if not st or is_terminal(st) then return 0 end
if a.attempt ~= '' and redis.call('HGET', k.job, 'attempt') ~= a.attempt then return 0 end
local now = clock(a.now)
if a.overdue_only and tonumber(now) < tonumber(redis.call('HGET', k.job, 'deadline')) then
  return 0
end
if a.cost ~= nil and a.cost ~= '' then
  redis.call('HSET', k.job, 'cost', tostring(a.cost), 'cost_source', tostring(a.cost_source or ''))
end
end_job(k, a.status, a.field, a.payload, now, a.delivered, a.done_channel)
return {1, redis.call('HGET', k.job, 'settled') or '', redis.call('HGET', k.job, 'refunded') or '',
  redis.call('HGET', k.job, 'unlimited') or '', now}
