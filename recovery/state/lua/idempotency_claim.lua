-- KEYS[1] success key, KEYS[2] claim key, KEYS[3] delivery counter, KEYS[4] the success key
-- as written before keys were scoped (see `legacy_success_key`); ARGV[1] holder, ARGV[2] claim
-- ttl ms, ARGV[3] counter ttl s. Returns {answer, deliveries of this message} and, after
-- 'succeeded', the id of the job whose success the key records.
local deliveries = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local done = redis.call('GET', KEYS[1]) or redis.call('GET', KEYS[4])
if done then return {'succeeded', deliveries, done} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'busy', deliveries} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'claimed', deliveries}
