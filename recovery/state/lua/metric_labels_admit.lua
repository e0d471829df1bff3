-- KEYS[1] the integration's set of admitted endpoints; ARGV[1] endpoint, ARGV[2] limit.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('SADD', KEYS[1], ARGV[1])
    return 1
end
return 0
