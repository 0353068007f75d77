-- settle: release, requeue, retry or dead-letter one delivery, fenced by its token.
-- Idempotent: the record keeps the token and outcome of its last settle, so a call
-- retried after a lost reply gets the first attempt's outcome.
-- KEYS: 1 ready, 2 delayed, 3 inflight, 4 msg, 5 wake, 6 dead, 7 deadids, 8 ids, 9 lost
-- ARGV: 1 action (release|requeue|retry|dead), 2 token,
--       release: -
--       requeue: 3 max_deliveries, 4 reason if dead-lettered
--       retry:   3 body, 4 eta_us ('' = now)
--       dead:    3 reason
-- Returns: 'stale' | 'released' | 'requeued' | 'dead' | 'retried', or 'done' when this
--          token settled the message earlier and the message has moved on since
local now = now_us()
local action, token = ARGV[1], ARGV[2]
local member = member_of(token)
if not member then return 'stale' end
local q = {dead = KEYS[6], deadids = KEYS[7], ids = KEYS[8], msg = KEYS[4]}
local state, st = standing(KEYS[4], KEYS[9], token, redis.call('HGET', KEYS[4], member))
if state == 'mine' then return st.lo end
if state == 'gone' then return 'done' end
if state ~= 'current' then return 'stale' end
redis.call('ZREM', KEYS[3], member)
local outcome
if action == 'release' then
  -- never started: undo this delivery's count and history entry
  st.dl = st.dl - 1
  table.remove(st.hist)
  to_ready(KEYS[1], member, st)
  wake(KEYS[5], 1)
  outcome = 'released'
elseif action == 'requeue' then
  if st.dl >= tonumber(ARGV[3]) then
    to_dead(q, member, st, ARGV[4], now)
    outcome = 'dead'
  else
    to_ready(KEYS[1], member, st)
    wake(KEYS[5], 1)
    outcome = 'requeued'
  end
elseif action == 'retry' then
  st.body = ARGV[3]
  st.dl = 0
  st.tok = false
  st.con = false
  local eta = ARGV[4]
  if eta ~= '' and tonumber(eta) > now then
    wake_if_earliest(KEYS[2], KEYS[5], eta)
    redis.call('ZADD', KEYS[2], eta, member)
  else
    st.ord = ready_score(st.p, now)
    redis.call('ZADD', KEYS[1], fmt(st.ord), member)
    wake(KEYS[5], 1)
  end
  outcome = 'retried'
else
  to_dead(q, member, st, ARGV[3], now)
  outcome = 'dead'
end
st.lt = token
st.lo = outcome
save(KEYS[4], member, st)
return outcome
