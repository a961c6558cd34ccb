-- Admit a request (Accounts.admit), atomically: check every rate-limit window, the free
-- images left today, the key's spending caps and the balance; only if all pass, count the
-- windows, use the free images, deduct the rest of the cost, count it as spent today and
-- this month, create the job record (fields from shared.jobrecord.new_record), watch it,
-- store the Idempotency-Key and append a 'reserve' ledger entry. A refused request
-- changes nothing.
-- A window is either sliding (a sorted set of one member per image, scored with when it
-- was admitted: a request fits if the members younger than `span` seconds and its own
-- images are at most `limit`) or a counter that expires when its UTC period ends.
-- The job's times are re-based on Redis' clock (the one clock every host compares them
-- with): created = TIME, and the deadline and watch time keep their distance from `now`.
-- KEYS[1] job record
-- KEYS[2] the key's balance
-- KEYS[3] the key's ledger stream
-- KEYS[4] the Idempotency-Key's record (untouched when `idempotency` is '')
-- KEYS[5] the watch set (untouched when `watch_at` is '')
-- KEYS[6] the free images used today (untouched when `free_per_day` is 0)
-- KEYS[7] the money spent today (a counter that expires with the UTC day)
-- KEYS[8] the money spent this month (a counter that expires with the UTC month)
-- KEYS[9] the sink's set of key ids whose ledger has entries to move (shared.sink)
-- KEYS[10..] one rate-limit window per entry of `windows`
-- ARGV[1] JSON:
--   n                images asked for
--   unit_price       micro-units per image
--   unlimited        true: no balance is checked or deducted
--   free_per_day     free images a day this request may use (0 = none)
--   free_ttl         seconds until the UTC day ends
--   budgets          [{cap, ttl}] for KEYS[7] and KEYS[8]; cap 0 = no cap
--   windows          [{limit, amount, ttl, span, since}] for KEYS[10..], in order;
--                    span 0: a counter; else a sliding window of `span` seconds whose
--                    members scored above `since` (now - span, a string) count
--   score            sliding windows' score of this request (the web host's now, a string)
--   idempotency      the value stored under KEYS[4] ('' = no Idempotency-Key)
--   idempotency_ttl  seconds it is kept
--   record           the job record's fields (strings); created, deadline, charged and
--                    free are written here
--   now              the web host's clock (unix time), which `deadline` and `watch_at` count from
--   deadline         the job's deadline, in the web host's clock
--   watch_at         when the job is looked at if nobody sent it, in the web host's clock
--                    ('' = not watched)
--   ttl              seconds the record lives
--   key_id           the API key's id (named in KEYS[9])
-- Returns {'ok', balance, free images used, charged, <each window's count after it>...},
-- {'duplicate', stored value}, {'limited', window index, its count, ms until it fits},
-- {'budget', 'day' | 'month', spent, charged} or {'balance', balance, charged}.

local a = cjson.decode(ARGV[1])
if a.idempotency ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'duplicate', existing} end
end
local windows = a.windows
for i, w in ipairs(windows) do
  local key = KEYS[9 + i]
  local cur
  if w.span > 0 then
    cur = redis.call('ZCOUNT', key, '(' .. w.since, '+inf')
  else
    cur = tonumber(redis.call('GET', key) or '0')
  end
  if cur + w.amount > w.limit then
    local wait
    if w.span > 0 then
      -- it fits once the (cur + amount - limit) oldest members counted now are older
      -- than the span; ZCARD - cur members are older already
      local stale = redis.call('ZCARD', key) - cur
      local oldest = redis.call('ZRANGE', key, stale + cur + w.amount - w.limit - 1,
        stale + cur + w.amount - w.limit - 1, 'WITHSCORES')
      if oldest[2] then
        wait = math.ceil((tonumber(oldest[2]) + w.span - tonumber(a.score)) * 1000)
      else
        wait = w.span * 1000  -- more than the whole limit (Accounts.admit refuses it first)
      end
    else
      wait = redis.call('PTTL', key)
    end
    return {'limited', tostring(i), tostring(cur), tostring(wait)}
  end
end
local n = tonumber(a.n)
local unit = tonumber(a.unit_price)
local free = 0
if a.free_per_day > 0 then
  free = a.free_per_day - tonumber(redis.call('GET', KEYS[6]) or '0')
  if free > n then free = n end
  if free < 0 then free = 0 end
end
local charge = (n - free) * unit
local periods = {'day', 'month'}
for i, b in ipairs(a.budgets) do
  local spent = tonumber(redis.call('GET', KEYS[6 + i]) or '0')
  if b.cap > 0 and charge > 0 and spent + charge > b.cap then
    return {'budget', periods[i], tostring(spent), tostring(charge)}
  end
end
local balance = tonumber(redis.call('GET', KEYS[2]) or '0')
if not a.unlimited and balance < charge then
  return {'balance', tostring(balance), tostring(charge)}
end
local jid = a.record.job_id
local used = {}
for i, w in ipairs(windows) do
  local key = KEYS[9 + i]
  if w.span > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', w.since)
    for j = 1, w.amount do
      redis.call('ZADD', key, a.score, jid .. ':' .. j)
    end
    redis.call('EXPIRE', key, w.ttl)
    used[i] = tostring(redis.call('ZCARD', key))
  else
    local count = redis.call('INCRBY', key, w.amount)
    if count == w.amount then redis.call('EXPIRE', key, w.ttl) end
    used[i] = tostring(count)
  end
end
if free > 0 then
  redis.call('INCRBY', KEYS[6], free)
  redis.call('EXPIRE', KEYS[6], a.free_ttl)
end
if charge > 0 then
  for i, b in ipairs(a.budgets) do
    redis.call('INCRBY', KEYS[6 + i], charge)
    redis.call('EXPIRE', KEYS[6 + i], b.ttl)
  end
end
if not a.unlimited then balance = redis.call('DECRBY', KEYS[2], charge) end
local t = redis.call('TIME')
local created = tonumber(t[1]) + tonumber(t[2]) / 1000000
local shift = created - tonumber(a.now)
local record = a.record
record.created = string.format('%.6f', created)
record.deadline = string.format('%.6f', tonumber(a.deadline) + shift)
record.charged = tostring(charge)
record.free = tostring(free)
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
  'model', record.model, 'images', record.n, 'amount', tostring(0 - charge),
  'free', record.free, 'user', record.user or '', 'ts', record.created)
redis.call('SADD', KEYS[9], a.key_id)
local out = {'ok', tostring(balance), tostring(free), tostring(charge)}
for i = 1, #windows do out[#out + 1] = used[i] end
return out
