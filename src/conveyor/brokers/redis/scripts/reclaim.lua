-- reclaim: return messages whose lease expired to ready, or dead past max deliveries;
-- then keep the dead letters within their cap and expiry.
-- KEYS: 1 ready, 2 inflight, 3 msg, 4 wake, 5 dead, 6 deadids, 7 ids, 8 lost
-- ARGV: 1 max_deliveries, 2 batch limit, 3 the server time (us) the caller read just
--       before this call, 4 how late (us) this call may run after that time,
--       5 dead-letter cap, 6 dead-letter expiry (us), 7 how long (us) a reclaimed
--       token is remembered, 8 how many are remembered at most
-- Returns: {'late'} when the call ran too late (it waited behind a stalled server:
--          every lease may look expired, live workers' included; nothing is done), else
--          {'ok', then flat groups of 3: id, 'requeued' | 'dead', deliveries}
-- A reclaimed token goes to `lost`, so that its holder's ack or settle, even one retried
-- after a lost reply, is refused rather than mistaken for its own earlier success.
local now = now_us()
if now - tonumber(ARGV[3]) > tonumber(ARGV[4]) then return {'late'} end
local max = tonumber(ARGV[1])
local q = {dead = KEYS[5], deadids = KEYS[6], ids = KEYS[7], msg = KEYS[3]}
local out = {'ok'}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now), 'LIMIT', 0, tonumber(ARGV[2]))
if #expired > 0 then
  local raws = hmget(KEYS[3], expired)
  local woken = 0
  for i, member in ipairs(expired) do
    local st, why = decode(raws[i])
    if not st then
      bury_unreadable(q, member, raws[i], why, now)
    else
      if st.tok then redis.call('ZADD', KEYS[8], fmt(now), st.tok) end
      local disposition
      if st.dl >= max then
        to_dead(q, member, st, 'lease expired after ' .. st.dl .. ' deliveries (consumer gone)', now)
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
  chunked('ZREM', KEYS[2], expired)
  if woken > 0 then wake(KEYS[4], woken) end
end
-- forget old reclaimed tokens (by age, and beyond the cap)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', fmt(now - tonumber(ARGV[7])))
redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(tonumber(ARGV[8]) + 1))
-- dead letters past their expiry, then the oldest beyond the cap, a bounded batch a call
local function drop(members)
  delete_members(KEYS[5], KEYS[3], members, function(id, member)
    dead_index_remove(KEYS[6], id, member)
  end)
end
drop(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', fmt(now - tonumber(ARGV[6])), 'LIMIT', 0, CHUNK))
local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[5])
if over > 0 then drop(redis.call('ZRANGE', KEYS[5], 0, math.min(over, CHUNK) - 1)) end
return out
