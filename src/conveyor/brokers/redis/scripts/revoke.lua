-- revoke: record task ids as revoked, or look a batch of them up (server clock).
-- KEYS: 1 revoked
-- ARGV: 1 action (add|check); add: 2 ttl_ms, 3 terminate (0|1), then ids;
-- check: then ids
-- Returns: add: 0; check: per id 0 (not revoked or expired), 1 (revoked),
-- 2 (revoked, terminate)
-- A member's score is its expiry in ms x 2 + terminate. Adding again keeps the
-- later expiry, and terminate once recorded. Each add drops the expired
-- members first; the key expires with its last member.
local now = now_ms()
if ARGV[1] == 'check' then
  local out = {}
  for i = 2, #ARGV do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    local code = 0
    if score then
      score = tonumber(score)
      if math.floor(score / 2) > now then code = 1 + score % 2 end
    end
    out[i - 1] = code
  end
  return out
end
local until_ms, terminate = now + tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now * 2 + 1))
for i = 4, #ARGV do
  local expiry, flag = until_ms, terminate
  local old = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if old then
    old = tonumber(old)
    expiry = math.max(expiry, math.floor(old / 2))
    flag = math.max(flag, old % 2)
  end
  redis.call('ZADD', KEYS[1], fmt(expiry * 2 + flag), ARGV[i])
end
expire_with_last(KEYS[1], now, 2)
return 0
