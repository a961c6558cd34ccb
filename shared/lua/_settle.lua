-- Piece: settle a job's bill, once, when it becomes terminal (see shared/billing.py).
--
-- settle(k, delivered, now, maxlen): for a billed job not yet settled, refund the
-- images not delivered (unless the key is unlimited), append 'settle' (and
-- 'refund') entries to the ledger stream (trimmed to about `maxlen`), add the
-- delivered images and their cost to the usage hash, and mark the record settled.
-- The upstream's cost (the record's `cost`, when the worker knew it) goes into the
-- `settle` entry (`cost`, and `serving`: the real model) and the usage hash
-- (`<day>|<model>|cost`), next to what the client paid: the margin.
--   k          {job = record, balance = , ledger = , usage = } key names
--   delivered  images delivered (at most the record's `n` count)
--   now        the time written in the ledger entries (a string)
local function settle(k, delivered, now, maxlen)
  if redis.call('HGET', k.job, 'billed') ~= '1' or redis.call('HGET', k.job, 'settled') then
    return
  end
  local charged = tonumber(redis.call('HGET', k.job, 'charged') or '0')
  local unit = tonumber(redis.call('HGET', k.job, 'unit_price') or '0')
  local n = tonumber(redis.call('HGET', k.job, 'n') or '0')
  if delivered > n then delivered = n end
  local spent = delivered * unit
  if spent > charged then spent = charged end
  local refund = charged - spent
  local model = redis.call('HGET', k.job, 'model')
  local jid = redis.call('HGET', k.job, 'job_id')
  if refund > 0 and redis.call('HGET', k.job, 'unlimited') ~= '1' then
    redis.call('INCRBY', k.balance, refund)
  end
  local cost = redis.call('HGET', k.job, 'cost')
  local serving = redis.call('HGET', k.job, 'serving') or model
  redis.call('XADD', k.ledger, 'MAXLEN', '~', maxlen, '*', 'kind', 'settle', 'job', jid,
    'model', model, 'images', tostring(delivered), 'amount', tostring(-spent), 'ts', now,
    'cost', cost or '', 'serving', serving)
  if refund > 0 then
    redis.call('XADD', k.ledger, 'MAXLEN', '~', maxlen, '*', 'kind', 'refund', 'job', jid,
      'model', model, 'images', tostring(n - delivered), 'amount', tostring(refund), 'ts', now)
  end
  local day = redis.call('HGET', k.job, 'day')
  redis.call('HINCRBY', k.usage, day .. '|' .. model .. '|images', delivered)
  redis.call('HINCRBY', k.usage, day .. '|' .. model .. '|amount', spent)
  if cost then
    redis.call('HINCRBY', k.usage, day .. '|' .. model .. '|cost', tonumber(cost))
  end
  redis.call('HSET', k.job, 'settled', tostring(spent), 'refunded', tostring(refund))
end
