-- tally: count a member under a key once, however often it is added.
-- KEYS: 1 tally (a set)
-- ARGV: 1 member, 2 ttl_ms
-- Returns: how many distinct members the key holds (a new or expired key starts empty)
-- Adding a member again (a retried call, a task that ran twice) changes nothing but the
-- expiry, which is reset to ttl from now.
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('SCARD', KEYS[1])
