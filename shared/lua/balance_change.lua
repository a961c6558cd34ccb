-- An operator's change of a balance (BalanceChanges.apply), atomically: add `amount`
-- (negative to take back), append a ledger entry with the reason and the admin key,
-- and remember the Idempotency-Key, so a retry changes nothing and answers the same.
-- KEYS[1] the key's balance
-- KEYS[2] the key's ledger stream
-- KEYS[3] the Idempotency-Key's record (untouched when `idempotency` is '')
-- KEYS[4] the sink's set of key ids whose ledger has entries to move (shared.sink)
-- ARGV[1] JSON:
--   amount           micro-units to add (may be negative), an integer as a string
--   kind             the ledger entry's kind: topup | adjust
--   reason           why (kept in the ledger entry)
--   admin            the admin key id that made the change
--   ts               the time written in the entry (unix seconds, a string)
--   request          a digest of the request's body, stored with the Idempotency-Key
--   idempotency      '' or the Idempotency-Key (its record is KEYS[3])
--   idempotency_ttl  seconds it is kept
--   floor            true: refuse a change that leaves the balance below zero
--   key_id           the API key's id (named in KEYS[4])
-- Returns {'ok', balance, entry id}, {'duplicate', stored value ("digest|balance|entry id")}
-- or {'negative', balance}.

local a = cjson.decode(ARGV[1])
if a.idempotency ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {'duplicate', existing} end
end
local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
if a.floor and balance + tonumber(a.amount) < 0 then return {'negative', tostring(balance)} end
balance = redis.call('INCRBY', KEYS[1], a.amount)
local id = redis.call('XADD', KEYS[2], '*',
  'kind', a.kind, 'job', '', 'model', '', 'images', 0, 'amount', a.amount, 'ts', a.ts,
  'reason', a.reason, 'admin', a.admin)
redis.call('SADD', KEYS[4], a.key_id)
if a.idempotency ~= '' then
  redis.call('SET', KEYS[3], a.request .. '|' .. balance .. '|' .. id, 'EX', a.idempotency_ttl)
end
return {'ok', tostring(balance), id}
