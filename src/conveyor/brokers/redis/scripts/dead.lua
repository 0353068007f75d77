-- dead: list, requeue or drop dead letters of one queue.
-- KEYS: 1 dead, 2 msg, 3 ready, 4 wake
-- ARGV: 1 action (list|requeue|drop), 2 limit (list) or message id (requeue|drop)
-- Returns: list: flat groups of 7: id, body, priority, reason, deliveries, died_us, history JSON
--          requeue|drop: 1 when the oldest dead letter with that id was found, else 0
local action = ARGV[1]
if action == 'list' then
  local out = {}
  local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  if #members == 0 then return out end
  local raws = redis.call('HMGET', KEYS[2], unpack(members))
  for i = 1, #members do
    if raws[i] then
      local st = cmsgpack.unpack(raws[i])
      out[#out + 1] = st.id
      out[#out + 1] = st.body
      out[#out + 1] = st.p
      out[#out + 1] = st.reason or ''
      out[#out + 1] = st.dl
      out[#out + 1] = fmt(st.died or 0)
      out[#out + 1] = cjson.encode(st.hist)
    end
  end
  return out
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do
  local raw = redis.call('HGET', KEYS[2], member)
  if raw then
    local st = cmsgpack.unpack(raw)
    if st.id == ARGV[2] then
      redis.call('ZREM', KEYS[1], member)
      if action == 'drop' then
        redis.call('HDEL', KEYS[2], member)
      else
        st.dl = 0
        st.reason = nil
        st.died = nil
        st.hist = {}
        st.ord = ready_score(st.p, now_us())
        save(KEYS[2], member, st)
        redis.call('ZADD', KEYS[3], fmt(st.ord), member)
        wake(KEYS[4], 1)
      end
      return 1
    end
  end
end
return 0
