-- Heartbeat of a lease (Capacity.extend): a lease that has not expired gets a new expiry.
-- KEYS[1] the lease's zset
-- ARGV[1] JSON:
--   token       the lease's member
--   now         the caller's unix time (a string)
--   expires_at  the new expiry (a string)
--   ttl_ms      the zset's real-time expiry is kept at least this long
-- Returns 1 if extended, 0 if the lease had expired.

local a = cjson.decode(ARGV[1])
local score = redis.call('ZSCORE', KEYS[1], a.token)
if not score or tonumber(score) <= tonumber(a.now) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', a.expires_at, a.token)
if redis.call('PTTL', KEYS[1]) < tonumber(a.ttl_ms) then redis.call('PEXPIRE', KEYS[1], a.ttl_ms) end
return 1
