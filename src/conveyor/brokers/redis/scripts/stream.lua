-- stream: append entries to a capped stream (see keys.py: `P:stream:<name>`).
-- KEYS: 1 the stream
-- ARGV: 1 maxlen (the newest kept), 2 ttl_ms ('' = none: the stream's expiry, if it has
--       one, is left as it is), 3... the bodies, in order (field `b` of each entry)
-- Returns: the id of the last entry added (false when no body was given)
local key, maxlen, ttl = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local last = false
for i = 3, #ARGV do
  last = redis.call('XADD', key, '*', 'b', ARGV[i])
end
if last then
  redis.call('XTRIM', key, 'MAXLEN', maxlen)
  if ttl ~= '' then redis.call('PEXPIRE', key, ttl) end
end
return last
