-- Piece: settle a job's bill, once, when it becomes terminal (see shared/billing.py).
--
-- settle(k, delivered, now): for a billed job not yet settled, refund the images
-- not delivered (unless the key is unlimited), append 'settle' (and 'refund')
-- entries to the ledger stream, name the key in the sink's pending set (the sink
-- moves the entries to SQL, then deletes them: nothing is trimmed), and mark the
-- record settled. The entries carry the usage `day` (the job's admission day).
--   k          {job = record, balance = , ledger = , pending = } key names
--   delivered  images delivered (at most the record's `n` count)
--   now        the time written in the ledger entries (a string)
local function settle(k, delivered, now)
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
  local day = redis.call('HGET', k.job, 'day')
  redis.call('XADD', k.ledger, '*', 'kind', 'settle', 'job', jid, 'model', model,
    'images', tostring(delivered), 'amount', tostring(0 - spent), 'ts', now, 'day', day)
  if refund > 0 then
    redis.call('XADD', k.ledger, '*', 'kind', 'refund', 'job', jid, 'model', model,
      'images', tostring(n - delivered), 'amount', tostring(refund), 'ts', now, 'day', day)
  end
  redis.call('SADD', k.pending, redis.call('HGET', k.job, 'key_id'))
  redis.call('HSET', k.job, 'settled', tostring(spent), 'refunded', tostring(refund))
end
