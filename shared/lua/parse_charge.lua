-- Charge a body's bytes to its API key's token bucket before it is parsed
-- (api.parse_limit.ParseLimit.charge); time is Redis' clock.
-- KEYS[1] the bucket (hash: tokens, ts)
-- ARGV[1] JSON:
--   cost   bytes to parse
--   rate   bytes per second the bucket refills
--   burst  the bucket's size in bytes
-- Returns {1, "0"} when charged, else {0, seconds until the cost fits (a decimal string)}.

local a = cjson.decode(ARGV[1])
local cost = tonumber(a.cost)
local rate = tonumber(a.rate)
local burst = tonumber(a.burst)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if cost > tokens then
  return {0, tostring((cost - tokens) / rate)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, "0"}
