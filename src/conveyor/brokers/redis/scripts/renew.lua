-- renew: extend the leases of current deliveries.
-- KEYS: 1 inflight, 2 msg, 3 lost
-- ARGV: 1 lease_us, then tokens
-- Returns: 1-based positions (among the tokens) of deliveries whose lease is lost (it
--          expired and was reclaimed). A token that settled its message (acked,
--          released...) since the caller looked is not lost: there is nothing to renew.
local now = now_us()
local until_us = fmt(now + tonumber(ARGV[1]))
local members, lost, zargs = {}, {}, {}
for i = 2, #ARGV do members[#members + 1] = member_of(ARGV[i]) or '' end
local raws = hmget(KEYS[2], members)
for i, member in ipairs(members) do
  local state = standing(KEYS[2], KEYS[3], ARGV[i + 1], raws[i])
  if state == 'current' then
    zargs[#zargs + 1] = until_us
    zargs[#zargs + 1] = member
  elseif state == 'lost' then
    lost[#lost + 1] = i
  end
end
chunked('ZADD', KEYS[1], zargs, 2, 'XX')
return lost
