-- Give a running job back to the queue for its next route (JobStore.handoff, virtual
-- models): only the attempt holding the fence can; the job stays billed once.
-- KEYS[1] job record
-- KEYS[2] the watch set
-- ARGV[1] JSON:
--   attempt        the attempt handing off (a string)
--   job_id         the job's id (its member in the watch set)
--   candidate      the index of the next route (meta.routes)
--   note           why the route was given up, appended to the record's fallbacks
--   now            '' = Redis' clock, else a test's unix time (a string)
--   enqueue_grace  seconds until the job is looked at if nobody sent it
-- Returns 1 if handed off, else 0.

-- #include _clock.lua
-- #include _terminal.lua

local a = cjson.decode(ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if not st or is_terminal(st) then return 0 end
if redis.call('HGET', KEYS[1], 'attempt') ~= a.attempt then return 0 end
local notes = cjson.decode(redis.call('HGET', KEYS[1], 'fallbacks') or '[]')
notes[#notes + 1] = a.note
redis.call('HSET', KEYS[1], 'status', 'queued', 'candidate', a.candidate,
  'fallbacks', cjson.encode(notes), 'sends', 0)
redis.call('ZADD', KEYS[2], tonumber(clock(a.now)) + tonumber(a.enqueue_grace), a.job_id)
return 1
