-- fetch: promote due delayed messages, then lease up to `limit` ready ones.
-- KEYS: 8 per queue, in the consumer's order: ready, delayed, inflight, msg, wake, dead,
--       deadids, ids; then the revoked set (see revoke.lua)
-- ARGV: 1 number of queues, 2 limit, 3 consumer, 4 lease_us, 5 the call's nonce (part of
--       every token it hands out, with the queue's position, so tokens never repeat,
--       across queues too, even after Redis lost data),
--       6 history length
-- Returns: {n, wait_us, then n groups of 7: queue index (0-based), id, body, priority,
--           token, deliveries, revoked (0|1: revoked and not expired, looked up here
--           so that the worker needs no second round trip)}. With n = 0, wait_us is the
--           time until the earliest delayed message is due (-1: none), and the wake
--           lists are emptied. A member whose record is missing or unreadable is moved
--           to the dead letters with the reason, and the fetch goes on without it.
local now = now_us()
local nq, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local consumer, lease, nonce, keep = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local PER = 8
local function queue(q)
  local b = q * PER
  return {ready = KEYS[b + 1], delayed = KEYS[b + 2], inflight = KEYS[b + 3], msg = KEYS[b + 4],
          wake = KEYS[b + 5], dead = KEYS[b + 6], deadids = KEYS[b + 7], ids = KEYS[b + 8]}
end

for q = 0, nq - 1 do
  local k = queue(q)
  local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', fmt(now), 'WITHSCORES', 'LIMIT', 0, 1000)
  if #due > 0 then
    local members = {}
    for i = 1, #due, 2 do members[#members + 1] = due[i] end
    local raws = hmget(k.msg, members)
    local zargs, hargs = {}, {}
    for i, member in ipairs(members) do
      local st, why = decode(raws[i])
      if st then
        -- a delayed message joins the queue at its due time
        st.ord = ready_score(st.p, tonumber(due[i * 2]))
        zargs[#zargs + 1] = fmt(st.ord)
        zargs[#zargs + 1] = member
        hargs[#hargs + 1] = member
        hargs[#hargs + 1] = cmsgpack.pack(st)
      else
        bury_unreadable(k, member, raws[i], why, now)
      end
    end
    chunked('ZADD', k.ready, zargs, 2)
    chunked('HSET', k.msg, hargs, 2)
    chunked('ZREM', k.delayed, members)
  end
end

local candidates = {}
for q = 0, nq - 1 do
  local top = redis.call('ZRANGE', queue(q).ready, 0, limit - 1, 'WITHSCORES')
  for i = 1, #top, 2 do
    candidates[#candidates + 1] = {q, top[i], tonumber(top[i + 1])}
  end
end
table.sort(candidates, function(a, b)
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[2] < b[2]
end)

local by_queue, order = {}, {}
for i = 1, math.min(limit, #candidates) do
  local c = candidates[i]
  if not by_queue[c[1]] then
    by_queue[c[1]] = {}
    order[#order + 1] = c[1]
  end
  local list = by_queue[c[1]]
  list[#list + 1] = c[2]
end

local out = {0, -1}
local claimed = {}
for _, q in ipairs(order) do
  local k = queue(q)
  local members = by_queue[q]
  local raws = hmget(k.msg, members)
  local zargs, hargs = {}, {}
  for i, member in ipairs(members) do
    local st, why = decode(raws[i])
    if st then
      st.dl = st.dl + 1
      -- n counts every fetch and never goes down (release undoes dl)
      st.n = st.n + 1
      -- members are numbered per queue: the queue's position keeps tokens of one
      -- call apart across queues
      st.tok = member .. '.' .. st.n .. '.' .. nonce .. q
      st.con = consumer
      local hist = st.hist
      hist[#hist + 1] = {consumer, now}
      while #hist > keep do table.remove(hist, 1) end
      zargs[#zargs + 1] = fmt(now + lease)
      zargs[#zargs + 1] = member
      hargs[#hargs + 1] = member
      hargs[#hargs + 1] = cmsgpack.pack(st)
      claimed[q .. ' ' .. member] = st
    else
      bury_unreadable(k, member, raws[i], why, now)
    end
  end
  chunked('ZREM', k.ready, members)
  chunked('ZADD', k.inflight, zargs, 2)
  chunked('HSET', k.msg, hargs, 2)
  -- more left: pass the wake-up on to the next sleeping consumer
  if redis.call('ZCARD', k.ready) > 0 then wake(k.wake, 1) end
end

-- reply in the merged order, not queue by queue
local revoked = KEYS[nq * PER + 1]
for i = 1, math.min(limit, #candidates) do
  local q, member = candidates[i][1], candidates[i][2]
  local st = claimed[q .. ' ' .. member]
  if st then
    out[1] = out[1] + 1
    out[#out + 1] = q
    out[#out + 1] = st.id
    out[#out + 1] = st.body
    out[#out + 1] = st.p
    out[#out + 1] = st.tok
    out[#out + 1] = st.dl
    local score = redis.call('ZSCORE', revoked, st.id)
    out[#out + 1] = (score and math.floor(tonumber(score) / 2) > now / 1000) and 1 or 0
  end
end

if out[1] == 0 then
  local next_due = nil
  for q = 0, nq - 1 do
    local k = queue(q)
    -- every candidate was unreadable and buried: look again at once
    if redis.call('ZCARD', k.ready) > 0 then next_due = now end
    redis.call('DEL', k.wake)
    local first = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local d = tonumber(first[2])
      if not next_due or d < next_due then next_due = d end
    end
  end
  if next_due then out[2] = fmt(math.max(next_due - now, 0)) end
end
return out
