-- Forget an Idempotency-Key if it still names this request's job
-- (Accounts.release_idempotency); another job's key is left alone.
-- KEYS[1] the Idempotency-Key's record
-- ARGV[1] JSON:
--   value  what this request stored under it
-- Returns 1 if released, else 0.

local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) == a.value then return redis.call('DEL', KEYS[1]) end
return 0
