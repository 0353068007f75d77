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
-- Lua's unpack() fails past a few thousand values ("too many results to unpack"):
-- every variadic call on a list of unknown length goes through these, in chunks.
local CHUNK = 1000
-- redis.call(cmd, key, <head...>, items...) in chunks of `per` * CHUNK items (per: the
-- number of items that belong together, 2 for ZADD/HSET pairs).
local function chunked(cmd, key, items, per, head)
  local size = CHUNK * (per or 1)
  for i = 1, #items, size do
    local last = math.min(i + size - 1, #items)
    if head then
      redis.call(cmd, key, head, unpack(items, i, last))
    else
      redis.call(cmd, key, unpack(items, i, last))
    end
  end
end
-- HMGET of any number of fields; missing ones are false, as HMGET gives them.
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do out[i + j - 1] = part[j] end
  end
  return out
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
-- A record, or nil and why it cannot be used. Scripts never fail on a bad record (a
-- failed script leaves its earlier writes in place and would fail again on every call):
-- whoever meets one moves it to the dead letters with the reason.
local MISSING = 'its record was missing from Redis (evicted? maxmemory-policy must be noeviction)'
local function decode(raw)
  if not raw then return nil, MISSING end
  local ok, st = pcall(cmsgpack.unpack, raw)
  if not ok or type(st) ~= 'table' or type(st.id) ~= 'string' or type(st.body) ~= 'string'
      or type(st.p) ~= 'number' or type(st.dl) ~= 'number' or type(st.ord) ~= 'number' then
    return nil, 'its record in Redis cannot be decoded (corrupt)'
  end
  if type(st.hist) ~= 'table' then st.hist = {} end
  st.n = tonumber(st.n) or 0
  return st
end
local function save(msg_key, member, st)
  redis.call('HSET', msg_key, member, cmsgpack.pack(st))
end
-- The id index (KEYS `ids`): message id -> member of the newest live record with that id.
local function unindex(ids_key, id, member)
  if redis.call('HGET', ids_key, id) == member then redis.call('HDEL', ids_key, id) end
end
-- The dead-letter index (KEYS `deadids`): message id -> its dead members, oldest first.
local function dead_index_add(deadids_key, id, member)
  local have = redis.call('HGET', deadids_key, id)
  redis.call('HSET', deadids_key, id, have and (have .. ' ' .. member) or member)
end
local function dead_index_remove(deadids_key, id, member)
  local have = redis.call('HGET', deadids_key, id)
  if not have then return end
  local rest = {}
  for m in string.gmatch(have, '%S+') do
    if m ~= member then rest[#rest + 1] = m end
  end
  if #rest == 0 then
    redis.call('HDEL', deadids_key, id)
  else
    redis.call('HSET', deadids_key, id, table.concat(rest, ' '))
  end
end
-- Delete these members of a queue: from `zset_key` and their records, each record's id
-- first given to `forget(id, member)` (its index entry).
local function delete_members(zset_key, msg_key, members, forget)
  local raws = hmget(msg_key, members)
  for i, member in ipairs(members) do
    local st = decode(raws[i])
    if st then forget(st.id, member) end
  end
  chunked('HDEL', msg_key, members)
  chunked('ZREM', zset_key, members)
end
-- Hand a record back to ready at its old place (release, requeue, lost lease).
local function to_ready(ready_key, member, st)
  st.tok = false
  st.con = false
  redis.call('ZADD', ready_key, fmt(st.ord), member)
end
-- Move a record to the dead letters (the caller saves it). `q` holds the queue's keys
-- by role: dead, deadids, ids.
local function to_dead(q, member, st, reason, now)
  st.tok = false
  st.con = false
  st.reason = reason
  st.died = now
  redis.call('ZADD', q.dead, fmt(now), member)
  unindex(q.ids, st.id, member)
  dead_index_add(q.deadids, st.id, member)
end
-- Bury a member whose record is missing or unreadable: a dead letter that keeps the
-- raw bytes as its body, so that nothing leaves the queue without a trace.
local function bury_unreadable(q, member, raw, why, now)
  local st = {id = 'unreadable:' .. member, body = raw or '', p = 0, dl = 0, n = 0, ord = 0,
              hist = {}, tok = false, con = false}
  to_dead(q, member, st, why, now)
  save(q.msg, member, st)
end
-- A delivery token's standing, for calls fenced by it (ack, settle, renew):
-- 'current' (st is the record), 'lost' (its lease expired and was reclaimed: someone
-- else may have the message now), 'mine' (this token settled the record earlier: a
-- retry after a lost reply; st.lo is what it did), 'gone' (no record, never reclaimed:
-- this token acknowledged it earlier), or 'stale' (anything else).
local function standing(msg_key, lost_key, token, raw)
  local st = nil
  if raw then st = decode(raw) end
  if st and st.tok == token then return 'current', st end
  if redis.call('ZSCORE', lost_key, token) then return 'lost', st end
  if st and st.lt == token then return 'mine', st end
  if not raw then return 'gone', nil end
  return 'stale', st
end
-- Make a coordination key expire with the latest score of its zset (an expiry in ms).
local function expire_with_last(key, now, div)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, fmt(math.max(math.floor(tonumber(last[2]) / div) - now, 1)))
  end
end
