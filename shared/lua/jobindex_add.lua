-- Add a queued job to the admin API's search index (shared.jobindex.add), both sets
-- trimmed to their latest entries: one round trip per request instead of a pipeline.
-- KEYS[1] every key's recent jobs (a sorted set: job id -> created)
-- KEYS[2] the job's API key's recent jobs (the same)
-- ARGV[1] JSON:
--   job_id       the job
--   created      its creation time, unix seconds (a string)
--   max_recent   entries KEYS[1] keeps
--   max_per_key  entries KEYS[2] keeps
--   ttl          seconds KEYS[2] lives on (it expires with the job records)
-- Returns 1.

local a = cjson.decode(ARGV[1])
redis.call('ZADD', KEYS[1], a.created, a.job_id)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -a.max_recent - 1)
redis.call('ZADD', KEYS[2], a.created, a.job_id)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -a.max_per_key - 1)
redis.call('EXPIRE', KEYS[2], a.ttl)
return 1
