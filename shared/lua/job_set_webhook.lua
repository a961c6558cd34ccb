-- Write the webhook delivery state of an existing job record (JobStore.set_webhook_state),
-- keeping the record at least `keep` seconds more. A record that expired is not recreated.
-- KEYS[1] job record
-- ARGV[1] JSON:
--   state  the delivery state's JSON text, stored as given
--   keep   seconds the record must live at least (0: leave its TTL alone)
-- Returns 1 if written, 0 if the record is gone.

local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook', a.state)
local keep = tonumber(a.keep)
if keep > 0 and redis.call('TTL', KEYS[1]) < keep then redis.call('EXPIRE', KEYS[1], keep) end
return 1
