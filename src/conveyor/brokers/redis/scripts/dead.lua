-- dead: list, look up, requeue, drop or purge the dead letters of one queue.
-- KEYS: 1 dead, 2 msg, 3 ready, 4 wake, 5 deadids, 6 ids
-- ARGV: 1 action (list|get|requeue|drop|purge);
--       list: 2 limit; get|requeue|drop: 2 message id; purge: 2 batch size
-- Returns: list: flat groups of 7: id, body, priority, reason, deliveries, died_us,
--          history JSON; get: one such group, or an empty list;
--          requeue|drop: 1 when the oldest dead letter with that id was found, else 0;
--          purge: how many were deleted (fewer than the batch size: none left)
local action = ARGV[1]
local function entry(out, st)
  out[#out + 1] = st.id
  out[#out + 1] = st.body
  out[#out + 1] = st.p
  out[#out + 1] = st.reason or ''
  out[#out + 1] = st.dl
  out[#out + 1] = fmt(st.died or 0)
  out[#out + 1] = cjson.encode(st.hist)
end
if action == 'list' then
  local out = {}
  local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  local raws = hmget(KEYS[2], members)
  for i = 1, #members do
    local st = decode(raws[i])
    if st then entry(out, st) end
  end
  return out
end
if action == 'purge' then
  local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  delete_members(KEYS[1], KEYS[2], members, function(id, member)
    dead_index_remove(KEYS[5], id, member)
  end)
  return #members
end
-- by id: the oldest dead letter of this id, through the index (never a scan)
local have = redis.call('HGET', KEYS[5], ARGV[2])
local member = have and string.match(have, '^(%S+)')
local st = member and decode(redis.call('HGET', KEYS[2], member))
if not st then
  if action == 'get' then return {} end
  return 0
end
if action == 'get' then
  local out = {}
  entry(out, st)
  return out
end
redis.call('ZREM', KEYS[1], member)
dead_index_remove(KEYS[5], st.id, member)
if action == 'drop' then
  redis.call('HDEL', KEYS[2], member)
else
  st.dl = 0
  st.reason = nil
  st.died = nil
  st.hist = {}
  st.lt = nil
  st.lo = nil
  st.ord = ready_score(st.p, now_us())
  save(KEYS[2], member, st)
  redis.call('ZADD', KEYS[3], fmt(st.ord), member)
  redis.call('HSET', KEYS[6], st.id, member)
  wake(KEYS[4], 1)
end
return 1
