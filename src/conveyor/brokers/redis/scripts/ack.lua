-- ack: delete delivered messages whose token is current; then, for the deliveries
-- acknowledged here, store their results (the worker's ack and result write in one
-- round trip when the result backend is on this Redis; a stale token stores nothing).
-- KEYS: 1 inflight, 2 msg, then one result key per write
-- ARGV: 1 number of tokens n, then n tokens, then per write 4 values: the index
--       (1-based) of its token, the value, its PX in ms, the payload to PUBLISH
--       on the channel named as its key
-- Returns: per token 1 (acked), 0 (stale: the message was delivered again), -1 (gone)
local n = tonumber(ARGV[1])
local members, result, done = {}, {}, {}
for i = 1, n do members[i] = member_of(ARGV[1 + i]) or '' end
local raws = redis.call('HMGET', KEYS[2], unpack(members))
for i = 1, n do
  local token = ARGV[1 + i]
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
local w = 0
for at = n + 2, #ARGV, 4 do
  w = w + 1
  if result[tonumber(ARGV[at])] == 1 then
    local key = KEYS[2 + w]
    redis.call('SET', key, ARGV[at + 1], 'PX', ARGV[at + 2])
    redis.call('PUBLISH', key, ARGV[at + 3])
  end
end
return result
