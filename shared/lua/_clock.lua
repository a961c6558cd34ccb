-- Piece: the one clock every host compares times with.
--
-- clock(given): the time a caller passed (a test's unix time, as a string), or
-- Redis' own clock ('TIME') when `given` is ''. A string, for HSET and XADD.
-- Redis 7 replicates a script's effects, so reading TIME before writing is allowed.
local function clock(given)
  if given ~= '' then return given end
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
