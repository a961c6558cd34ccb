-- Set a key's balance (Accounts.set_balance), atomically with an 'adjust' ledger entry
-- of the difference, so the ledger still adds up to the balance (`imagegate ledger
-- verify`).
-- KEYS[1] the key's balance
-- KEYS[2] the key's ledger stream
-- KEYS[3] the sink's set of key ids whose ledger has entries to move
-- ARGV[1] JSON:
--   micros  the new balance, micro-units (a string)
--   key_id  the API key's id (its member in KEYS[3])
--   ts      the time written in the entry (a string)
-- Returns the difference written (micro-units, may be 0 or negative).

local a = cjson.decode(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(a.micros)
redis.call('SET', KEYS[1], a.micros)
local delta = new - old
redis.call('XADD', KEYS[2], '*', 'kind', 'adjust', 'job', '', 'model', '', 'images', '0',
  'amount', string.format('%d', delta), 'ts', a.ts)
redis.call('SADD', KEYS[3], a.key_id)
return delta
