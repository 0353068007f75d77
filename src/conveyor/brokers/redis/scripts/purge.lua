-- purge: delete the ready and delayed messages of one queue.
-- KEYS: 1 ready, 2 delayed, 3 msg, 4 wake
-- ARGV: -
-- Returns: how many were deleted
local count = 0
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local members = redis.call('ZRANGE', key, 0, -1)
  for i = 1, #members, 1000 do
    local chunk = {unpack(members, i, math.min(i + 999, #members))}
    redis.call('HDEL', KEYS[3], unpack(chunk))
  end
  count = count + #members
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[4])
return count
