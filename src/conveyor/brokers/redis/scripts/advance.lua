-- advance: raise a mark to a value if that is above it (or it has none); or read it.
-- KEYS: 1 mark
-- ARGV: 1 value as a decimal string (empty: only read), 2 ttl_ms
-- Returns: the mark's value before the call, as the string stored (nil if none)
-- The value is kept as the caller's string and compared as a number; a raised mark
-- is SET with PX ttl, a mark left as it was keeps its expiry.
local current = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and (not current or tonumber(ARGV[1]) > tonumber(current)) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return current
