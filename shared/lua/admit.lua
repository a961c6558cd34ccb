-- Admit a request (Accounts.admit), atomically: check every rate-limit window and the
-- balance; only if all pass, count the windows, deduct the cost, create the job record
-- (fields from shared.jobrecord.new_record), watch it, store the Idempotency-Key and
-- append a 'reserve' ledger entry. A refused request changes nothing.
-- The job's times are re-based on Redis' clock (the one clock every host compares them
-- with): created = TIME, and the deadline and watch time keep their distance from `now`.
-- KEYS[1] job record
-- KEYS[2] the key's balance
-- KEYS[3] the key's ledger stream
-- KEYS[4] the Idempotency-Key's record (untouched when `idempotency` is '')
-- KEYS[5] the watch set (untouched when `watch_at` is '')
-- KEYS[6] the sink's set of key ids whose ledger has entries to move (shared.sink)
-- KEYS[7..] one rate-limit window counter per entry of `windows`
-- ARGV[1] JSON:
--   cost             micro-units to deduct
--   unlimited        true: no balance is checked or deducted
--   windows          [{limit, amount, ttl}] for KEYS[7..], in order
--   idempotency      the value stored under KEYS[4] ('' = no Idempotency-Key)
--   idempotency_ttl  seconds it is kept
--   record           the job record's fields (strings); created and deadline are re-based
--   now              the web host's clock (unix time), which `deadline` and `watch_at` count from
--   deadline         the job's deadline, in the web host's clock
--   watch_at         when the job is looked at if nobody sent it, in the web host's clock
--                    ('' = not watched)
--   ttl              seconds the record lives
--   key_id           the API key's id (named in KEYS[6])
-- Returns {'ok', balance, <each window's count after it>...}, {'duplicate', stored value},
-- {'limited', window index, its count, its PTTL} or {'balance', balance}.

local a = cjson.decode(ARGV[1])
if a.idempotency ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'duplicate', existing} end
end
local windows = a.windows
for i, w in ipairs(windows) do
  local cur = tonumber(redis.call('GET', KEYS[6 + i]) or '0')
  if cur + w.amount > w.limit then
    return {'limited', tostring(i), tostring(cur), tostring(redis.call('PTTL', KEYS[6 + i]))}
  end
end
local cost = tonumber(a.cost)
local balance = tonumber(redis.call('GET', KEYS[2]) or '0')
if not a.unlimited and balance < cost then
  return {'balance', tostring(balance)}
end
local used = {}
for i, w in ipairs(windows) do
  local count = redis.call('INCRBY', KEYS[6 + i], w.amount)
  if count == w.amount then redis.call('EXPIRE', KEYS[6 + i], w.ttl) end
  used[i] = tostring(count)
end
if not a.unlimited then balance = redis.call('DECRBY', KEYS[2], cost) end
local t = redis.call('TIME')
local created = tonumber(t[1]) + tonumber(t[2]) / 1000000
local shift = created - tonumber(a.now)
local record = a.record
record.created = string.format('%.6f', created)
record.deadline = string.format('%.6f', tonumber(a.deadline) + shift)
local fields = {}
for name, value in pairs(record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
-- the reaper's watch list: a job nobody has sent to a queue by then is sent again
if a.watch_at ~= '' then
  redis.call('ZADD', KEYS[5], tonumber(a.watch_at) + shift, record.job_id)
end
redis.call('EXPIRE', KEYS[1], tonumber(a.ttl))
if a.idempotency ~= '' then
  redis.call('SET', KEYS[4], a.idempotency, 'EX', tonumber(a.idempotency_ttl))
end
redis.call('XADD', KEYS[3], '*', 'kind', 'reserve', 'job', record.job_id,
  'model', record.model, 'images', record.n, 'amount', tostring(0 - cost), 'ts', record.created)
redis.call('SADD', KEYS[6], a.key_id)
local out = {'ok', tostring(balance)}
for i = 1, #windows do out[#out + 1] = used[i] end
return out
