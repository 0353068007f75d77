-- rate: take one permit for a key by the generic cell rate algorithm (server clock).
-- KEYS: 1 rate
-- ARGV: 1 emission interval in us (period / limit), 2 period in us, 3 request id
-- Returns: 0 when a permit was taken (or this request took one earlier: a call retried
--          after a lost reply takes no second permit), else the us until one is free
--          (nothing taken)
-- The key holds the theoretical arrival time (TAT, us) followed by the ids of the last
-- requests granted, space-separated, and expires once the TAT has passed: a TAT in the
-- past means the same as none. A request at `now` is granted when
-- max(TAT, now) + interval - period <= now (burst tolerance period - interval).
local KEEP = 16
local now = now_us()
local interval, period, request = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stored = redis.call('GET', KEYS[1]) or '0'
local granted = {}
for word in string.gmatch(stored, '%S+') do granted[#granted + 1] = word end
for i = 2, #granted do
  if granted[i] == request then return 0 end
end
local tat = math.max(tonumber(granted[1]) or 0, now)
local allow_at = tat + interval - period
if allow_at > now then
  return math.max(math.ceil(allow_at - now), 1)
end
local new_tat = tat + interval
local ttl_ms = math.max(math.ceil((new_tat - now) / 1000), 1)
local words = {fmt(new_tat), request}
for i = 2, math.min(#granted, KEEP) do words[#words + 1] = granted[i] end
redis.call('SET', KEYS[1], table.concat(words, ' '), 'PX', fmt(ttl_ms))
return 0
