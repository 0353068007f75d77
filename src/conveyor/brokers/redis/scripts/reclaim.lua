-- reclaim: return messages whose lease expired to ready, or dead past max deliveries.
-- KEYS: 1 ready, 2 inflight, 3 msg, 4 wake, 5 dead
-- ARGV: 1 max_deliveries, 2 batch limit
-- Returns: flat groups of 3: id, 'requeued' | 'dead', deliveries
local now = now_us()
local max = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
local out, woken = {}, 0
if #expired == 0 then return out end
local raws = redis.call('HMGET', KEYS[3], unpack(expired))
for i, member in ipairs(expired) do
  if raws[i] then
    local st = cmsgpack.unpack(raws[i])
    local disposition
    if st.dl >= max then
      to_dead(KEYS[5], member, st, 'lease expired after ' .. st.dl .. ' deliveries (consumer gone)', now)
      disposition = 'dead'
    else
      to_ready(KEYS[1], member, st)
      woken = woken + 1
      disposition = 'requeued'
    end
    save(KEYS[3], member, st)
    out[#out + 1] = st.id
    out[#out + 1] = disposition
    out[#out + 1] = st.dl
  end
end
redis.call('ZREM', KEYS[2], unpack(expired))
if woken > 0 then wake(KEYS[4], woken) end
return out
