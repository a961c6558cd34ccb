-- Count one ended job in its minute's and its hour's hash (shared.jobstats.count): one
-- round trip instead of a pipeline of increments, on the job-ending path of every job.
-- KEYS[1] the minute's hash (ig:stats:m:<unix minute>)
-- KEYS[2] the hour's hash (ig:stats:h:<unix hour>)
-- ARGV[1] JSON:
--   prefix       '<model>|': the fields' common start
--   fields       JSON object of field suffix -> count to add (e.g. {"jobs":1,"lat3":1})
--   minute_ttl   seconds the minute's hash is kept
--   hour_ttl     seconds the hour's hash is kept
-- Returns 1.

local a = cjson.decode(ARGV[1])
local function count(hash, ttl)
  for field, n in pairs(a.fields) do
    redis.call('HINCRBY', hash, a.prefix .. field, n)
  end
  redis.call('EXPIRE', hash, ttl)
end
count(KEYS[1], a.minute_ttl)
count(KEYS[2], a.hour_ttl)
return 1
