-- workers: the worker registry, one hash (see keys.py: `P:workers`), each field's value
-- "<expiry in ms>:<info>" by the server's clock.
-- KEYS: 1 the registry hash
-- ARGV: 1 'beat', 2 name, 3 info, 4 ttl_ms: record the worker until ttl from now; the
--       key expires with its longest-lived beat
--       1 'gone', 2 name: forget the worker
--       1 'list': the live workers; expired fields are deleted
-- Returns: beat and gone: 1; list: {name, info, name, info, ...}
local now = now_ms()
local key, op = KEYS[1], ARGV[1]
if op == 'beat' then
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', key, ARGV[2], fmt(now + ttl) .. ':' .. ARGV[3])
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  return 1
end
if op == 'gone' then
  redis.call('HDEL', key, ARGV[2])
  return 1
end
local all = redis.call('HGETALL', key)
local live, expired = {}, {}
for i = 1, #all, 2 do
  local value = all[i + 1]
  local colon = string.find(value, ':', 1, true)
  local expiry = colon and tonumber(string.sub(value, 1, colon - 1))
  if expiry and expiry > now then
    live[#live + 1] = all[i]
    live[#live + 1] = string.sub(value, colon + 1)
  else
    expired[#expired + 1] = all[i]
  end
end
chunked('HDEL', key, expired)
return live
