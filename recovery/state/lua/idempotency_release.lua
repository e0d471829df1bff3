-- KEYS[1] success key, KEYS[2] claim key; ARGV[1] holder, ARGV[2] job id, ARGV[3] ttl s,
-- ARGV[4] '1' to record success.
if ARGV[4] == '1' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
