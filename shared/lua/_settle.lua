-- Piece: settle a job's bill, once, when it becomes terminal (see shared/billing.py).
--
-- settle(k, delivered, now): for a billed job not yet settled, refund the images
-- not delivered (unless the key is unlimited), append 'settle' (and 'refund') entries
-- to the ledger stream, name the key in the sink's pending set (the sink moves the
-- entries to SQL, then deletes them: nothing is trimmed), settle what the record's
-- `returns` lists (see give_back), and mark the record settled. The entries carry the
-- usage `day` (the job's admission day) and the end user (`user`).
-- The record's free images are the first ones delivered: only delivered images beyond
-- them cost `unit_price`.
-- The upstream's cost (the record's `cost`, when the worker knew it) goes into the
-- `settle` entry (`cost`, and `serving`: the real model), next to what the client paid:
-- the margin (summed from SQL, shared.history).
--   k          {job = record, balance = , ledger = , pending = , returns = {key names}}
--   delivered  images delivered (at most the record's `n` count)
--   now        the time written in the ledger entries (a string)

-- give_back(returns, keys, jid, n, delivered, free, refund, spent, user): undo, for
-- the images not delivered, what admission counted, and count what the end user got:
-- `returns` is the record's list of [key, kind, ...] and `keys` the KEYS the caller was
-- given for them (an entry whose key was not given is skipped). Kinds: 'log' a sliding
-- window (its members '<job id>:<i>' for i above `delivered` leave it), 'count' a
-- window counter (less the images not delivered), 'free' today's free images (less the
-- free images not delivered), 'money' a spending counter (less the refund) — a counter
-- that expired with its period is left alone; 'users' [key, 'users', ttl, most] the
-- day's usage hash by end user: `user`'s images and amount grow by `delivered` and
-- `spent` (under the field '*' once the hash holds `most` users), and it lives `ttl`
-- seconds.
local function give_back(returns, keys, jid, n, delivered, free, refund, spent, user)
  local free_back = free - math.min(free, delivered)
  for i, r in ipairs(returns) do
    local key, kind = r[1], r[2]
    if keys[i] == key then
      if kind == 'users' then
        local who = user or ''
        if redis.call('HEXISTS', keys[i], who .. '|images') == 0
            and redis.call('HLEN', keys[i]) >= 2 * r[4] then
          who = '*'
        end
        redis.call('HINCRBY', keys[i], who .. '|images', delivered)
        redis.call('HINCRBY', keys[i], who .. '|amount', spent)
        redis.call('EXPIRE', keys[i], r[3])
      elseif kind == 'log' then
        for j = delivered + 1, n do redis.call('ZREM', keys[i], jid .. ':' .. j) end
      else
        local amount = 0
        if kind == 'count' then amount = n - delivered
        elseif kind == 'free' then amount = free_back
        elseif kind == 'money' then amount = refund end
        if amount > 0 and redis.call('EXISTS', keys[i]) == 1 then
          if redis.call('DECRBY', keys[i], amount) < 0 then redis.call('SET', keys[i], 0, 'KEEPTTL') end
        end
      end
    end
  end
end

local function settle(k, delivered, now)
  if redis.call('HGET', k.job, 'billed') ~= '1' or redis.call('HGET', k.job, 'settled') then
    return
  end
  local charged = tonumber(redis.call('HGET', k.job, 'charged') or '0')
  local unit = tonumber(redis.call('HGET', k.job, 'unit_price') or '0')
  local n = tonumber(redis.call('HGET', k.job, 'n') or '0')
  if delivered > n then delivered = n end
  local free = tonumber(redis.call('HGET', k.job, 'free') or '0')
  local spent = math.max(0, delivered - free) * unit
  if spent > charged then spent = charged end
  local refund = charged - spent
  local model = redis.call('HGET', k.job, 'model')
  local jid = redis.call('HGET', k.job, 'job_id')
  if refund > 0 and redis.call('HGET', k.job, 'unlimited') ~= '1' then
    redis.call('INCRBY', k.balance, refund)
  end
  local who = redis.call('HGET', k.job, 'user') or ''
  local cost = redis.call('HGET', k.job, 'cost')
  local serving = redis.call('HGET', k.job, 'serving') or model
  local day = redis.call('HGET', k.job, 'day')
  local entry = {'kind', 'settle', 'job', jid, 'model', model, 'images', tostring(delivered),
    'amount', tostring(0 - spent), 'user', who, 'ts', now, 'day', day, 'serving', serving}
  if cost then
    entry[#entry + 1] = 'cost'
    entry[#entry + 1] = cost
  end
  redis.call('XADD', k.ledger, '*', unpack(entry))
  if refund > 0 then
    redis.call('XADD', k.ledger, '*', 'kind', 'refund', 'job', jid, 'model', model,
      'images', tostring(n - delivered), 'amount', tostring(refund), 'user', who, 'ts', now,
      'day', day)
  end
  redis.call('SADD', k.pending, redis.call('HGET', k.job, 'key_id'))
  local returns = redis.call('HGET', k.job, 'returns')
  if returns then
    give_back(cjson.decode(returns), k.returns or {}, jid, n, delivered, free, refund, spent,
      redis.call('HGET', k.job, 'user'))
  end
  redis.call('HSET', k.job, 'settled', tostring(spent), 'refunded', tostring(refund))
end
