-- Take a lease on the least busy key index of a family (Capacity.acquire): drop expired
-- leases, pick the index with the fewest active ones that is below per_key and not
-- skipped (ties: round-robin from after the last index chosen), add the lease.
-- KEYS[1] the family's rotation counter
-- KEYS[2..] the lease zsets of key indexes 0, 1, ... (member = token, score = expires_at)
-- ARGV[1] JSON:
--   now         the caller's unix time (a string); leases that expired by then are dropped
--   per_key     leases a key index may hold (<= 0: no cap)
--   expires_at  the new lease's expiry (a string)
--   token       the new lease's member
--   ttl_ms      the zset's real-time expiry is kept at least this long
--   skip        key indexes not to pick
-- Returns the key index leased, or nil when every key is full.

local a = cjson.decode(ARGV[1])
local n = #KEYS - 1
local per_key = tonumber(a.per_key)
local skip = {}
for _, i in ipairs(a.skip) do skip[i] = true end
local counts = {}
for i = 0, n - 1 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', a.now)
  counts[i] = redis.call('ZCARD', KEYS[i + 2])
end
local start = (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) % n
local best = -1
for j = 0, n - 1 do
  local i = (start + j) % n
  if not skip[i] and (per_key <= 0 or counts[i] < per_key)
     and (best < 0 or counts[i] < counts[best]) then
    best = i
  end
end
if best < 0 then return false end
local slot = KEYS[best + 2]
redis.call('ZADD', slot, a.expires_at, a.token)
if redis.call('PTTL', slot) < tonumber(a.ttl_ms) then redis.call('PEXPIRE', slot, a.ttl_ms) end
redis.call('SET', KEYS[1], (best + 1) % n)
return best
