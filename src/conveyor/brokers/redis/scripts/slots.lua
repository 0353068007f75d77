-- slots: hold, renew or give back one of at most `limit` slots of a key (server clock).
-- KEYS: 1 slots
-- ARGV: 1 action (acquire|renew|release); acquire: 2 ttl_ms, 3 limit, 4 holder;
-- renew: 2 ttl_ms, then holders; release: 2 holder
-- Returns: acquire: 1 (held; a holder already holding has its expiry reset),
-- 0 (`limit` other holders hold unexpired slots); renew, release: 1
-- Expired holders are dropped first; the key expires with its last holder.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if ARGV[1] == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
local until_ms = fmt(now + tonumber(ARGV[2]))
if ARGV[1] == 'acquire' then
  local holder = ARGV[4]
  if not redis.call('ZSCORE', KEYS[1], holder)
      and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    return 0
  end
  redis.call('ZADD', KEYS[1], until_ms, holder)
else
  for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
end
expire_with_last(KEYS[1], now, 1)
return 1
