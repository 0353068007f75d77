-- stats: the counts of one queue, and when its oldest ready message became ready.
-- KEYS: 1 ready, 2 delayed, 3 inflight, 4 dead
-- ARGV: none
-- Returns: {ready, delayed, in flight, dead, oldest ready time in us as a decimal string
--          (false: nothing ready)}. A due delayed message counts as ready (a fetch
--          promotes it), ready since its due time. The oldest is the least ready time
--          over the ten priority bands: the head of each band, not a scan.
local now = now_us()
local ready_key, delayed_key = KEYS[1], KEYS[2]
local due = redis.call('ZCOUNT', delayed_key, '-inf', fmt(now))
local oldest = nil
for band = 0, 9 do
  local head = redis.call('ZRANGEBYSCORE', ready_key, fmt(band * BAND), '(' .. fmt((band + 1) * BAND),
                          'WITHSCORES', 'LIMIT', 0, 1)
  if head[2] then
    local at = (tonumber(head[2]) - band * BAND) * 4
    if not oldest or at < oldest then oldest = at end
  end
end
if due > 0 then
  local first = tonumber(redis.call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')[2])
  if not oldest or first < oldest then oldest = first end
end
return {redis.call('ZCARD', ready_key) + due, redis.call('ZCARD', delayed_key) - due,
        redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]), oldest and fmt(oldest) or false}
