-- ack: delete delivered messages whose token is current.
-- KEYS: 1 inflight, 2 msg
-- ARGV: tokens
-- Returns: per token 1 (acked), 0 (stale: the message was delivered again), -1 (gone)
local members, result, done = {}, {}, {}
for i, token in ipairs(ARGV) do members[i] = member_of(token) or '' end
local raws = redis.call('HMGET', KEYS[2], unpack(members))
for i, token in ipairs(ARGV) do
  if not raws[i] then
    result[i] = -1
  elseif cmsgpack.unpack(raws[i]).tok == token then
    result[i] = 1
    done[#done + 1] = members[i]
  else
    result[i] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
  redis.call('HDEL', KEYS[2], unpack(done))
end
return result
