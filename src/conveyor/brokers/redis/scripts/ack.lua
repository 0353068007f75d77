-- ack: delete delivered messages whose token is current; then, for the deliveries
-- acknowledged here, store their results (the worker's ack and result write in one
-- round trip when the result backend is on this Redis; a stale token stores nothing).
-- Idempotent: a call retried after a lost reply recognises its own earlier ack.
-- KEYS: 1 inflight, 2 msg, 3 ids, 4 lost, then one result key per write
-- ARGV: 1 number of tokens n, then n tokens, then per write 4 values: the index
--       (1-based) of its token, the value, its PX in ms, the payload to PUBLISH
--       on the channel named as its key
-- Returns: per token 1 (acked), 2 (acked earlier by this token: a retried call), or
--          0 (stale: its lease was lost and the message may have been delivered again)
local n = tonumber(ARGV[1])
local members, result, done = {}, {}, {}
for i = 1, n do members[i] = member_of(ARGV[1 + i]) or '' end
local raws = hmget(KEYS[2], members)
for i = 1, n do
  local state, st = standing(KEYS[2], KEYS[4], ARGV[1 + i], raws[i])
  if state == 'current' then
    result[i] = 1
    done[#done + 1] = members[i]
    unindex(KEYS[3], st.id, members[i])
  elseif state == 'gone' then
    result[i] = 2
  else
    result[i] = 0
  end
end
chunked('ZREM', KEYS[1], done)
chunked('HDEL', KEYS[2], done)
local w = 0
for at = n + 2, #ARGV, 4 do
  w = w + 1
  if result[tonumber(ARGV[at])] == 1 then
    local key = KEYS[4 + w]
    redis.call('SET', key, ARGV[at + 1], 'PX', ARGV[at + 2])
    redis.call('PUBLISH', key, ARGV[at + 3])
  end
end
return result
