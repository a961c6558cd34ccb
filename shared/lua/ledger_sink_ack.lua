-- Forget ledger entries the sink has committed to SQL (shared.sink.Sink): delete each
-- id from the key's stream and, once the stream is empty, take the key out of the
-- pending set. Run only after the SQL transaction holding the entries committed, so an
-- entry leaves Redis only when it is kept; deleting an id already gone does nothing.
-- The (empty) stream itself stays: it keeps its last id, so a new entry's id is never
-- one already in SQL.
-- KEYS[1] the key's ledger stream
-- KEYS[2] the sink's set of key ids whose ledger has entries to move
-- ARGV[1] JSON:
--   ids     the stream ids committed to SQL
--   key_id  the API key's id (its member in KEYS[2])
-- Returns {deleted, left}: ids deleted now, entries still in the stream.

local a = cjson.decode(ARGV[1])
local deleted = 0
for _, id in ipairs(a.ids) do
  deleted = deleted + redis.call('XDEL', KEYS[1], id)
end
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[2], a.key_id) end
return {deleted, left}
