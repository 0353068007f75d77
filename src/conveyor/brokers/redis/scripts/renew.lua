-- renew: extend the leases of current deliveries.
-- KEYS: 1 inflight, 2 msg
-- ARGV: 1 lease_us, then tokens
-- Returns: 1-based positions (among the tokens) of deliveries whose lease is lost
local now = now_us()
local until_us = fmt(now + tonumber(ARGV[1]))
local members, lost, zargs = {}, {}, {}
for i = 2, #ARGV do members[#members + 1] = member_of(ARGV[i]) or '' end
local raws = redis.call('HMGET', KEYS[2], unpack(members))
for i, member in ipairs(members) do
  if raws[i] and cmsgpack.unpack(raws[i]).tok == ARGV[i + 1] then
    zargs[#zargs + 1] = until_us
    zargs[#zargs + 1] = member
  else
    lost[#lost + 1] = i
  end
end
if #zargs > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(zargs)) end
return lost
