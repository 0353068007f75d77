-- incr: add one to a counter that expires `ttl` after its last increment.
-- KEYS: 1 counter
-- ARGV: 1 ttl_ms
-- Returns: the new value (1 for a new or expired counter)
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
