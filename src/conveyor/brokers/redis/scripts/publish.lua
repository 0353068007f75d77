-- publish: store messages, of one or more queues, at one instant; ready ones wake
-- sleeping consumers.
-- KEYS: 5 per queue: ready, delayed, msg, wake, seq
-- ARGV: 1 n, then n groups of 5: queue index (0-based), id, body, priority,
--       eta_us ('' = now). Messages are given in the producer's order, which
--       equal priorities keep, across queues too.
-- Returns: n
local now = now_us()
local n = tonumber(ARGV[1])
local per_queue = {}
for i = 0, n - 1 do
  local at = 2 + i * 5
  local q = tonumber(ARGV[at])
  local group = per_queue[q]
  if not group then
    group = {ready = {}, delayed = {}, records = {}, count = 0}
    per_queue[q] = group
  end
  group.count = group.count + 1
  group[group.count] = i
end
for q, group in pairs(per_queue) do
  local ready, delayed, msg, wake_key, seq = KEYS[q * 5 + 1], KEYS[q * 5 + 2], KEYS[q * 5 + 3], KEYS[q * 5 + 4], KEYS[q * 5 + 5]
  local last = redis.call('INCRBY', seq, group.count)
  for j = 1, group.count do
    local i = group[j]
    local at = 2 + i * 5
    local p, eta = tonumber(ARGV[at + 3]), ARGV[at + 4]
    local member = string.format('%012d', last - group.count + j)
    local st = {id = ARGV[at + 1], body = ARGV[at + 2], p = p, dl = 0, n = 0, hist = {}, tok = false, ord = 0}
    if eta ~= '' and tonumber(eta) > now then
      group.delayed[#group.delayed + 1] = eta
      group.delayed[#group.delayed + 1] = member
    else
      -- + i: one instant for the whole call, so the call's own order breaks ties
      st.ord = ready_score(p, now) + i
      group.ready[#group.ready + 1] = fmt(st.ord)
      group.ready[#group.ready + 1] = member
    end
    group.records[#group.records + 1] = member
    group.records[#group.records + 1] = cmsgpack.pack(st)
  end
  redis.call('HSET', msg, unpack(group.records))
  if #group.delayed > 0 then
    local earliest = group.delayed[1]
    for j = 3, #group.delayed, 2 do
      if tonumber(group.delayed[j]) < tonumber(earliest) then earliest = group.delayed[j] end
    end
    wake_if_earliest(delayed, wake_key, earliest)
    redis.call('ZADD', delayed, unpack(group.delayed))
  end
  if #group.ready > 0 then
    redis.call('ZADD', ready, unpack(group.ready))
    wake(wake_key, #group.ready / 2)
  end
end
return n
