-- purge: delete a batch of the ready and delayed messages of one queue (the caller
-- repeats it until a call deletes fewer than the batch size: never one long script).
-- KEYS: 1 ready, 2 delayed, 3 msg, 4 wake, 5 ids
-- ARGV: 1 batch size
-- Returns: how many were deleted
local batch = tonumber(ARGV[1])
local count = 0
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local members = redis.call('ZRANGE', key, 0, batch - count - 1)
  delete_members(key, KEYS[3], members, function(id, member) unindex(KEYS[5], id, member) end)
  count = count + #members
  if count >= batch then break end
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[4]) end
return count
