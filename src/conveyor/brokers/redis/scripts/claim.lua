-- claim: claim a key for an owner unless someone holds it, or release the claim.
-- KEYS: 1 claim
-- ARGV: 1 action (claim|release), 2 owner; claim: 3 ttl_ms
-- Returns: claim: nil when claimed or already the owner's (its expiry unchanged),
-- else the current owner; release: 1 if the owner held it (deleted), else 0
-- SET NX PX with a look at the current owner; release is compare-and-delete.
local current = redis.call('GET', KEYS[1])
if ARGV[1] == 'release' then
  if current == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if current then
  if current == ARGV[2] then return false end
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
