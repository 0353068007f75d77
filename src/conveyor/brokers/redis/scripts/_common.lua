-- Shared helpers, prepended to every script when it is loaded.
-- Times are microseconds from the Redis server's clock: one clock for every client.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms()
  return math.floor(now_us() / 1000)
end
-- 9e14 per priority band, ready time in 4-us units: exact in a double until 2084.
local BAND = 900000000000000
local function ready_score(priority, at_us)
  return (9 - priority) * BAND + math.floor(at_us / 4)
end
local function fmt(n)
  return string.format('%.0f', n)
end
local function member_of(token)
  return string.match(token, '^([^.]+)%.')
end
local function wake(key, n)
  local have = redis.call('LLEN', key)
  local add = math.min(n, 64 - have)
  if add > 0 then
    local ones = {}
    for i = 1, add do ones[i] = '1' end
    redis.call('LPUSH', key, unpack(ones))
  end
end
-- Wake one blocked consumer if `eta_us` is earlier than every delayed message of the
-- queue: consumers block no longer than the earliest one they saw, so a new earliest
-- one must make one of them look again (it then promotes the message when it is due).
local function wake_if_earliest(delayed_key, wake_key, eta_us)
  local first = redis.call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')
  if first[2] == nil or tonumber(eta_us) < tonumber(first[2]) then
    wake(wake_key, 1)
  end
end
-- Record of a member whose current token is `token`, or nil (stale / gone).
local function current(msg_key, token)
  local member = member_of(token)
  if not member then return nil, nil end
  local raw = redis.call('HGET', msg_key, member)
  if not raw then return nil, member end
  local st = cmsgpack.unpack(raw)
  if st.tok ~= token then return nil, member end
  return st, member
end
local function save(msg_key, member, st)
  redis.call('HSET', msg_key, member, cmsgpack.pack(st))
end
-- Hand a record back to ready at its old place (release, requeue, lost lease).
local function to_ready(ready_key, member, st)
  st.tok = false
  st.con = false
  redis.call('ZADD', ready_key, fmt(st.ord), member)
end
local function to_dead(dead_key, member, st, reason, now)
  st.tok = false
  st.con = false
  st.reason = reason
  st.died = now
  redis.call('ZADD', dead_key, fmt(now), member)
end
-- Make a coordination key expire with the latest score of its zset (an expiry in ms).
local function expire_with_last(key, now, div)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, fmt(math.max(math.floor(tonumber(last[2]) / div) - now, 1)))
  end
end
