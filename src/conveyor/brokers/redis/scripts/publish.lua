-- publish: store messages, of one or more queues, at one instant; ready ones wake
-- sleeping consumers. Idempotent per message id: a message whose id is already waiting
-- in its queue (ready or delayed) is not stored again, so a call retried after a lost
-- reply enqueues nothing twice. (A message in flight does not count: a running task
-- may send a new message with its own id.)
-- KEYS: 6 per queue: ready, delayed, msg, wake, seq, ids
-- ARGV: 1 n, then n groups of 5: queue index (0-based), id, body, priority,
--       eta_us ('' = now). Messages are given in the producer's order, which
--       equal priorities keep, across queues too.
-- Returns: the number of messages stored (the others were waiting already)
local now = now_us()
local n = tonumber(ARGV[1])
local per_queue = {}
for i = 0, n - 1 do
  local at = 2 + i * 5
  local q = tonumber(ARGV[at])
  local group = per_queue[q]
  if not group then
    group = {ready = {}, delayed = {}, records = {}, index = {}, count = 0}
    per_queue[q] = group
  end
  group.count = group.count + 1
  group[group.count] = i
end
local stored = 0
for q, group in pairs(per_queue) do
  local b = q * 6
  local ready, delayed, msg, wake_key, seq, ids = KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6]
  -- one HMGET for the ids, one for the records of the ids already known (rare)
  local id_list = {}
  for j = 1, group.count do id_list[j] = ARGV[2 + group[j] * 5 + 1] end
  local known = hmget(ids, id_list)
  local found, where = {}, {}
  for j = 1, group.count do
    if known[j] then
      found[#found + 1] = known[j]
      where[#found] = j
    end
  end
  local waiting = {}
  if #found > 0 then
    local raws = hmget(msg, found)
    for f = 1, #found do
      local st = decode(raws[f])
      if st and not st.tok then waiting[where[f]] = true end
    end
  end
  local fresh = {}
  for j = 1, group.count do
    if not waiting[j] then fresh[#fresh + 1] = group[j] end
  end
  local last = #fresh > 0 and redis.call('INCRBY', seq, #fresh) or 0
  for j, i in ipairs(fresh) do
    local at = 2 + i * 5
    local id, p, eta = ARGV[at + 1], tonumber(ARGV[at + 3]), ARGV[at + 4]
    local member = string.format('%012d', last - #fresh + j)
    local st = {id = id, body = ARGV[at + 2], p = p, dl = 0, n = 0, hist = {}, tok = false, ord = 0}
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
    group.index[#group.index + 1] = id
    group.index[#group.index + 1] = member
  end
  stored = stored + #fresh
  if #fresh > 0 then
    chunked('HSET', msg, group.records, 2)
    chunked('HSET', ids, group.index, 2)
  end
  if #group.delayed > 0 then
    local earliest = group.delayed[1]
    for j = 3, #group.delayed, 2 do
      if tonumber(group.delayed[j]) < tonumber(earliest) then earliest = group.delayed[j] end
    end
    wake_if_earliest(delayed, wake_key, earliest)
    chunked('ZADD', delayed, group.delayed, 2)
  end
  if #group.ready > 0 then
    chunked('ZADD', ready, group.ready, 2)
    wake(wake_key, #group.ready / 2)
  end
end
return stored
