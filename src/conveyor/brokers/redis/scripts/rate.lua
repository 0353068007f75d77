-- rate: take one permit for a key by the generic cell rate algorithm (server clock).
-- KEYS: 1 rate
-- ARGV: 1 emission interval in us (period / limit), 2 period in us
-- Returns: 0 when a permit was taken, else the us until one is free (nothing taken)
-- The key holds the theoretical arrival time (TAT, us), and expires once it has
-- passed: a TAT in the past means the same as none. A request at `now` is granted
-- when max(TAT, now) + interval - period <= now (burst tolerance period - interval).
local now = now_us()
local interval, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local allow_at = tat + interval - period
if allow_at > now then
  return math.max(math.ceil(allow_at - now), 1)
end
local new_tat = tat + interval
local ttl_ms = math.max(math.ceil((new_tat - now) / 1000), 1)
redis.call('SET', KEYS[1], fmt(new_tat), 'PX', fmt(ttl_ms))
return 0
